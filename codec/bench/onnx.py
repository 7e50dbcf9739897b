"""ONNX Runtime speed of the exported graphs (``codec bench onnx``), timed exactly like
:func:`codec.bench.model.benchmark_model` (best of ``repeats`` on the same noise-like input, same threads), so the
figures sit beside PyTorch's; and the parity of their codes and audio with PyTorch's on real recordings
(:func:`onnx_parity`, ``codec bench onnx --parity MANIFEST``).  The graphs come from an export directory
(``codec export``) or are exported to a temporary directory first (encoder and decoder only)."""
from __future__ import annotations

import contextlib
import tempfile
import time
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from codec.errors import CodecError

from .model import _time_round_trip

__all__ = ["benchmark_onnx", "onnx_parity"]


def benchmark_onnx(model, seconds: float = 10.0, nq: int = 8, threads: int = 2, repeats: int = 3,
                   onnx_dir: Optional[str] = None, precision: Optional[str] = None, **_: Any) -> Dict[str, Any]:
    """Offline encode / decode speed of the ONNX graphs in ONNX Runtime (CPU, ``threads`` intra-op threads).

    Returns ``{"seconds", "nq", "threads", "precision", "encode_x_realtime", "decode_x_realtime", "encode_s",
    "decode_s", "export_s", "onnxruntime"}`` (``export_s``: time to export when no ``onnx_dir`` is given, else 0;
    ``precision``: the encoder graph's, from the export's manifest; ``precision`` chooses it for a temporary
    export)."""
    try:
        import onnxruntime
    except ImportError:
        raise CodecError("the ONNX benchmark needs onnxruntime (pip install codec[deploy]).") from None
    with _graphs(model, onnx_dir, nq, threads, precision) as (oc, export_s):
        sr = model.sample_rate
        g = torch.Generator().manual_seed(0)
        x = (0.1 * torch.randn(1, 1, int(seconds * sr), generator=g)).numpy()
        e, d, codes = _time_round_trip(oc.encode, lambda c: oc.decode(c[:, :nq]), x, sr, repeats)
    return {"seconds": float(seconds), "nq": int(min(nq, codes.shape[1])), "threads": int(threads),
            "precision": _precision(oc), "encode_x_realtime": seconds / e, "decode_x_realtime": seconds / d,
            "encode_s": e, "decode_s": d,
            "export_s": export_s, "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def _graphs(model, onnx_dir: Optional[str], nq: int, threads: int, precision: Optional[str] = None) -> Iterator:
    """``(OnnxCodec, export seconds)`` for ``onnx_dir``, or for the model's encoder and decoder exported with ``nq``
    levels in ``precision`` to a temporary directory (removed on exit); refuses an export made for another rate or
    hop."""
    from codec.deploy.onnx import export_onnx
    from codec.deploy.runtime import OnnxCodec

    with tempfile.TemporaryDirectory(prefix="codec-onnx-") as tmp:
        t0 = time.perf_counter()
        if onnx_dir:
            directory, export_s = onnx_dir, 0.0
        else:
            directory = tmp
            export_onnx(model, tmp, nq=nq, graphs=("encoder", "decoder"), precision=precision)
            export_s = time.perf_counter() - t0
        oc = OnnxCodec(directory, threads=threads)
        man = oc.manifest
        if (man["sample_rate"], man["hop_length"]) != (model.sample_rate, model.hop_length):
            raise CodecError(f"the ONNX export in '{onnx_dir}' is for {man['sample_rate']} Hz / hop "
                             f"{man['hop_length']}, not this model's {model.sample_rate} Hz / hop {model.hop_length}.")
        yield oc, export_s


def _precision(oc) -> str:
    """The encoder graphs' precision recorded in an export's manifest (exports before it was recorded: float32)."""
    return str(oc.manifest.get("precision", "float32"))


def onnx_parity(model, inputs: Union[str, Sequence[str]], nq: int = 8, max_files: int = 8, threads: int = 1,
                onnx_dir: Optional[str] = None, precision: Optional[str] = None, **_: Any) -> Dict[str, Any]:
    """How closely the ONNX graphs reproduce PyTorch on real recordings, one file at a time.

    Each input (a ``.jsonl`` manifest, a folder or files, as ``codec eval`` takes them; the first ``max_files``)
    is read as mono at the model's rate and encoded by ``model.encode`` and by the encoder graph with all the
    levels the graph gives (PyTorch in the precision of the export's encoder graph: a float64 export is compared
    with ``model.encode(..., precision="float64")``; ``precision`` chooses it for a temporary export); the
    PyTorch codes cut to ``nq`` levels are then decoded by ``model.decode`` and by the decoder graph.  Returns
    ``{"files", "frames", "levels", "nq", "threads", "precision", "frames_identical_at_nq",
    "frames_identical_all_levels", "codes_identical", "codes_identical_per_level" [levels],
    "decode_max_abs_error", "onnxruntime"}`` (fractions in [0, 1]; a frame is identical when every level is)."""
    try:
        import onnxruntime
    except ImportError:
        raise CodecError("the ONNX parity check needs onnxruntime (pip install codec[deploy]).") from None
    from codec.audio import load_audio, resample, to_mono
    from codec.eval.harness import list_inputs

    files = list_inputs(inputs, max_files=max_files)
    same_levels, same_nq, same_all, frames, err = 0, 0, 0, 0, 0.0
    with _graphs(model, onnx_dir, nq, threads, precision) as (oc, _):
        levels, prec = int(oc.manifest["nq"]), _precision(oc)
        if nq > levels:
            raise CodecError(f"nq {nq} is more than the {levels} levels this ONNX export's encoder gives.")
        for path in files:
            wav, sr = load_audio(path)
            x = resample(to_mono(wav), sr, model.sample_rate)[None]  # [1, 1, T]
            with torch.no_grad():
                ref = model.encode(torch.from_numpy(x), nq=levels, precision=prec).cpu().numpy()
            got = oc.encode(x)
            same = got == ref                                   # [1, levels, F]
            same_levels = same_levels + same.sum((0, 2))
            same_nq += int(same[:, :nq].all(1).sum())
            same_all += int(same.all(1).sum())
            frames += ref.shape[-1]
            cut = ref[:, :nq]
            with torch.no_grad():
                want = model.decode(torch.from_numpy(cut)).cpu().numpy()
            err = max(err, float(np.abs(oc.decode(cut) - want).max()))
    return {"files": len(files), "frames": frames, "levels": levels, "nq": int(nq), "threads": int(threads),
            "precision": prec, "frames_identical_at_nq": same_nq / frames,
            "frames_identical_all_levels": same_all / frames,
            "codes_identical": float(same_levels.sum()) / (frames * levels),
            "codes_identical_per_level": [float(v) / frames for v in same_levels],
            "decode_max_abs_error": err, "onnxruntime": onnxruntime.__version__}
