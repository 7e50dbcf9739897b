"""codec: a neural audio codec toolkit (causal conv encoder, residual VQ, conv decoder, streaming).

>>> import codec
>>> model = codec.load("speech-24k")          # or a directory written by codec.save_pretrained
>>> codes = model.encode(wav, sample_rate=sr, nq=8)
>>> audio = model.decode(codes)
>>> codec.save_codes("x.codes", codes, model, orig_length=wav.shape[-1], orig_sample_rate=sr)
>>> codes, header = codec.load_codes("x.codes")
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "save_pretrained", "save_codes", "load_codes", "CodecModel", "CodecConfig", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .config import CodecConfig
    from .model import CodecModel


def load(path_or_name, device=None):
    """Load a model directory or pretrained name (see :func:`codec.pretrained.load`)."""
    from .pretrained import load as _load

    return _load(path_or_name, device=device)


def save_pretrained(model, directory, half: bool = False, int8: bool = False) -> str:
    """Write ``model`` as a model directory (see :func:`codec.pretrained.save_pretrained`; ``half`` stores
    float16 weights, ``int8`` int8 weight matrices with a scale per row); returns the weights hash."""
    from .pretrained import save_pretrained as _save

    return _save(model, directory, half=half, int8=int8)


def save_codes(path, codes, model, orig_length=None, orig_sample_rate=None, orig_channels=None, model_name=None):
    """Write codes ``[nq, F]`` / ``[C, nq, F]`` made by ``model`` to a ``.codes`` file, byte-identical to
    ``codec encode`` (see :func:`codec.codes_io.save_codes`); returns the header."""
    from .codes_io import save_codes as _save

    return _save(path, codes, model, orig_length, orig_sample_rate, orig_channels, model_name)


def load_codes(path):
    """Read a ``.codes`` file -> ``(codes LongTensor [C, nq, F], header)`` (see :func:`codec.codes_io.load_codes`)."""
    from .codes_io import load_codes as _load_codes

    return _load_codes(path)


def __getattr__(name: str) -> Any:  # lazy: importing codec does not import torch
    if name == "CodecModel":
        from .model import CodecModel

        return CodecModel
    if name == "CodecConfig":
        from .config import CodecConfig

        return CodecConfig
    raise AttributeError(f"module 'codec' has no attribute '{name}'")
