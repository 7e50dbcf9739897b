"""ONNX Runtime speed of the exported graphs (``codec bench onnx``), timed exactly like
:func:`codec.bench.model.benchmark_model` (best of ``repeats`` on the same noise-like input, same threads), so the
figures sit beside PyTorch's.  The graphs come from an export directory (``codec export``) or are exported to a
temporary directory first (encoder and decoder only)."""
from __future__ import annotations

import tempfile
import time
from typing import Any, Dict, Optional

import torch

from codec.errors import CodecError

from .model import _time_round_trip

__all__ = ["benchmark_onnx"]


def benchmark_onnx(model, seconds: float = 10.0, nq: int = 8, threads: int = 2, repeats: int = 3,
                   onnx_dir: Optional[str] = None, **_: Any) -> Dict[str, Any]:
    """Offline encode / decode speed of the ONNX graphs in ONNX Runtime (CPU, ``threads`` intra-op threads).

    Returns ``{"seconds", "nq", "threads", "encode_x_realtime", "decode_x_realtime", "encode_s", "decode_s",
    "export_s", "onnxruntime"}`` (``export_s``: time to export when no ``onnx_dir`` is given, else 0)."""
    try:
        import onnxruntime
    except ImportError:
        raise CodecError("the ONNX benchmark needs onnxruntime (pip install codec[deploy]).") from None
    from codec.deploy.onnx import export_onnx
    from codec.deploy.runtime import OnnxCodec

    with tempfile.TemporaryDirectory(prefix="codec-onnx-") as tmp:
        t0 = time.perf_counter()
        if onnx_dir:
            directory, export_s = onnx_dir, 0.0
        else:
            directory = tmp
            export_onnx(model, tmp, nq=nq, graphs=("encoder", "decoder"))
            export_s = time.perf_counter() - t0
        oc = OnnxCodec(directory, threads=threads)
        man = oc.manifest
        if (man["sample_rate"], man["hop_length"]) != (model.sample_rate, model.hop_length):
            raise CodecError(f"the ONNX export in '{onnx_dir}' is for {man['sample_rate']} Hz / hop "
                             f"{man['hop_length']}, not this model's {model.sample_rate} Hz / hop {model.hop_length}.")
        sr = model.sample_rate
        g = torch.Generator().manual_seed(0)
        x = (0.1 * torch.randn(1, 1, int(seconds * sr), generator=g)).numpy()
        e, d, codes = _time_round_trip(oc.encode, lambda c: oc.decode(c[:, :nq]), x, sr, repeats)
    return {"seconds": float(seconds), "nq": int(min(nq, codes.shape[1])), "threads": int(threads),
            "encode_x_realtime": seconds / e, "decode_x_realtime": seconds / d, "encode_s": e, "decode_s": d,
            "export_s": export_s, "onnxruntime": onnxruntime.__version__}
