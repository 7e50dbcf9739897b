"""Deployment: ONNX and ``torch.export`` graphs of a codec model, and an ONNX Runtime runner.

* :func:`export_onnx` — encoder, decoder and streaming-step graphs plus ``manifest.json`` (``codec export``).
* :func:`export_program` / :func:`export_graphs` — the same graphs as ``torch.export`` programs.
* :class:`OnnxCodec` — run an export directory with ONNX Runtime (offline and frame by frame).
"""
from __future__ import annotations

from typing import Any

__all__ = ["export_onnx", "export_program", "export_graphs", "OnnxCodec"]


def __getattr__(name: str) -> Any:  # lazy: torch.export / onnxruntime are imported when used
    if name in ("export_onnx", "export_program", "export_graphs"):
        from . import onnx

        return getattr(onnx, name)
    if name == "OnnxCodec":
        from .runtime import OnnxCodec

        return OnnxCodec
    raise AttributeError(f"module 'codec.deploy' has no attribute '{name}'")
