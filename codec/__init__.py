"""codec: a neural audio codec toolkit (causal conv encoder, residual VQ, conv decoder, streaming).

>>> import codec
>>> model = codec.load("speech-24k")          # or a directory written by codec.save_pretrained
>>> codes = model.encode(wav, sample_rate=sr, nq=8)
>>> audio = model.decode(codes)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "save_pretrained", "CodecModel", "CodecConfig", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .config import CodecConfig
    from .model import CodecModel


def load(path_or_name, device=None):
    """Load a model directory or pretrained name (see :func:`codec.pretrained.load`)."""
    from .pretrained import load as _load

    return _load(path_or_name, device=device)


def save_pretrained(model, directory) -> str:
    """Write ``model`` as a model directory (see :func:`codec.pretrained.save_pretrained`); returns the weights
    hash."""
    from .pretrained import save_pretrained as _save

    return _save(model, directory)


def __getattr__(name: str) -> Any:  # lazy: importing codec does not import torch
    if name == "CodecModel":
        from .model import CodecModel

        return CodecModel
    if name == "CodecConfig":
        from .config import CodecConfig

        return CodecConfig
    raise AttributeError(f"module 'codec' has no attribute '{name}'")
