"""``codec bench``: encode/decode speed (x real time), streaming per-chunk cost, quantizer throughput and
peak memory on this machine, printed as a table and optionally written as JSON (``--json FILE``).

The measurements themselves live with their owners: ``codec.bench.model.benchmark_model`` /
``benchmark_streaming`` / ``peak_memory_streaming`` (model) and ``codec.bench.rvq.bench_rvq``
(quantizer).  This module picks the model, calls them with the arguments they accept, and formats results.
``codec bench rvq`` runs the quantizer part only; ``codec bench encodec`` times the model beside EnCodec 24 kHz
(``benchmark_encodec``: random weights built by the ``encodec`` package, nothing downloaded); ``codec bench onnx``
times the exported ONNX graphs in ONNX Runtime beside PyTorch (``codec.bench.onnx.benchmark_onnx``) and, with
``--parity INPUT``, compares their codes and audio with PyTorch's on real recordings (``onnx_parity``).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import time
from typing import Any, Callable, Dict, List, Optional

from codec.errors import CodecError

__all__ = ["add_arguments", "run", "collect", "format_tables", "call_with_accepted"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``codec bench``."""
    parser.add_argument("what", nargs="?", choices=("all", "model", "rvq", "encodec", "onnx"), default="all",
                        help="all (default), model (codec speed, streaming, memory), rvq (quantizer only), "
                             "encodec (offline speed beside EnCodec 24 kHz's, timed the same way; needs the "
                             "'encodec' package) or onnx (offline speed in ONNX Runtime beside PyTorch's; needs "
                             "the 'deploy' extra)")
    parser.add_argument("--onnx-dir", default=None, metavar="DIR",
                        help="time this 'codec export' directory in ONNX Runtime (default for 'onnx': export the "
                             "model's encoder and decoder to a temporary directory first); with 'model' or "
                             "'all' it adds the ONNX Runtime section")
    parser.add_argument("--parity", default=None, metavar="INPUT",
                        help="with 'onnx': also compare the graphs' codes and decoded audio with PyTorch's on these "
                             "recordings (a .jsonl manifest, a folder or a file, as 'codec eval' takes them)")
    parser.add_argument("--parity-files", type=int, default=8, metavar="N",
                        help="recordings used by --parity: the first N (default 8)")
    parser.add_argument("--precision", choices=("float32", "float64"), default=None,
                        help="with 'onnx' and no --onnx-dir: the temporary export's encoder precision (default "
                             "float32; float64 codes equal PyTorch's encode(precision='float64'))")
    parser.add_argument("--model", default=None,
                        help="model directory or name (default: shipped speech-24k, else random weights of --preset)")
    parser.add_argument("--preset", default=None,
                        help="benchmark random weights of this config preset (24khz, 16khz, tiny) instead of a "
                             "trained model; also the fallback (24khz) when no model is shipped")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length for speed runs (default 10)")
    parser.add_argument("--memory-seconds", default="10,60", metavar="A,B",
                        help="stream lengths (s) for the peak-memory check in a subprocess (default 10,60)")
    parser.add_argument("--nq", type=int, default=None, help="levels used (default: 8 or the model's maximum)")
    parser.add_argument("--chunk-frames", type=int, default=1, metavar="N",
                        help="frames fed per chunk in the streaming benchmark (default 1: the lowest latency)")
    parser.add_argument("--rvq-frames", type=int, default=100_000, help="frames for the quantizer benchmark")
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (use with --json)")


def call_with_accepted(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``fn`` with only the keyword arguments its signature accepts (None values are dropped)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return fn(**{k: v for k, v in kwargs.items() if v is not None})
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**{k: v for k, v in kwargs.items() if v is not None})
    return fn(**{k: v for k, v in kwargs.items() if k in params and v is not None})


def _plain(obj: Any) -> Any:
    """Make benchmark results JSON-friendly (dataclasses, tensors, numpy scalars)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _get_model(args: argparse.Namespace):
    from codec.pipeline import resolve_model

    if args.model is not None:
        return resolve_model(args.model, args.device)
    preset = args.preset
    if preset is None:
        try:
            return resolve_model(None, args.device)
        except CodecError:
            preset = "24khz"
    from codec import CodecConfig, CodecModel

    try:
        cfg = CodecConfig.preset(preset)
    except (KeyError, ValueError):
        raise CodecError(f"unknown --preset '{preset}' (use 24khz, 16khz or tiny).") from None
    model = CodecModel(cfg).eval()
    if args.device:
        model = model.to(args.device)
    return model, f"random weights, preset '{preset}'"


def collect(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the selected benchmarks and return a JSON-friendly dict of sections."""
    import torch

    out: Dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": args.device or "cpu"},
    }
    if args.what in ("all", "model", "encodec", "onnx"):
        try:
            from codec.bench import model as mb
        except ImportError as exc:
            raise CodecError(f"the model benchmarks are not available yet ({exc}).") from None
        model, name = _get_model(args)
        nq = args.nq or min(8, int(model.num_quantizers))
        out["model"] = {"name": name, "sample_rate": int(model.sample_rate), "nq": nq,
                        "kbps": float(model.bitrate(nq)) / 1000.0}
    if args.what in ("all", "model"):
        try:
            mem_list = tuple(float(v) for v in str(args.memory_seconds).split(",") if v.strip())
        except ValueError:
            raise CodecError(f"--memory-seconds must be comma-separated numbers, got '{args.memory_seconds}'.") from None
        model_path = args.model if args.model and __import__("os").path.isdir(args.model) else None
        chunk_frames = getattr(args, "chunk_frames", 1)
        if chunk_frames < 1:
            raise CodecError(f"--chunk-frames must be at least 1, got {chunk_frames}.")
        common = dict(model=model, seconds=args.seconds, nq=nq, device=args.device,
                      threads=getattr(args, "threads", None))
        for key, fname in (("offline", "benchmark_model"), ("streaming", "benchmark_streaming"),
                           ("memory", "peak_memory_streaming")):
            fn = getattr(mb, fname, None)
            if fn is None:
                out[key] = {"error": f"codec.bench.model.{fname} is missing"}
                continue
            t0 = time.perf_counter()
            extra = ({"seconds_list": mem_list, "model_path": model_path} if key == "memory"
                     else {"chunk_frames": chunk_frames} if key == "streaming" else {})
            out[key] = _plain(call_with_accepted(fn, **common, **extra))
            if not isinstance(out[key], dict):
                out[key] = {"result": out[key]}
            out[key].setdefault("wall_seconds", round(time.perf_counter() - t0, 3))
    if args.what == "encodec":
        threads = getattr(args, "threads", None)
        ref = _plain(mb.benchmark_encodec(seconds=args.seconds, nq=nq, threads=threads))
        ours = _plain(mb.benchmark_model(model, seconds=args.seconds, nq=nq, device=args.device, threads=threads))
        _beside(out, "encodec", ours, ref, "speedup_vs_encodec")
    onnx_section = args.what == "onnx" or (args.onnx_dir and args.what in ("all", "model"))
    if getattr(args, "parity", None) and not onnx_section:
        raise CodecError("--parity compares ONNX graphs with PyTorch: use it with 'codec bench onnx'.")
    if onnx_section:
        from codec.bench.onnx import benchmark_onnx

        threads = getattr(args, "threads", None)
        ours = out.get("offline") or _plain(mb.benchmark_model(model, seconds=args.seconds, nq=nq, threads=threads))
        ort = _plain(benchmark_onnx(model, seconds=args.seconds, nq=nq, onnx_dir=args.onnx_dir,
                                    threads=threads or 2, precision=args.precision))
        _beside(out, "onnx", ours, ort, "onnxruntime_speedup_vs_pytorch", invert=True)
        if getattr(args, "parity", None):
            from codec.bench.onnx import onnx_parity

            out["onnx_parity"] = _plain(onnx_parity(model, args.parity, nq=nq, max_files=args.parity_files,
                                                    threads=threads or 1, onnx_dir=args.onnx_dir,
                                                    precision=args.precision))
    if args.what in ("all", "rvq"):
        try:
            from codec.bench.rvq import bench_rvq
        except ImportError as exc:
            raise CodecError(f"the quantizer benchmark is not available yet ({exc}).") from None
        res = _plain(call_with_accepted(bench_rvq, device=args.device, n_frames=args.rvq_frames))
        out["rvq"] = res if isinstance(res, dict) else {"results": res}
    return out


def _beside(out: Dict[str, Any], key: str, ours: Dict[str, Any], other: Dict[str, Any], ratio: str,
            invert: bool = False) -> None:
    """Store PyTorch's offline figures and ``other``'s under ``key``, with speed ratios ``ours / other`` (or
    ``other / ours`` when ``invert``) under ``ratio``."""
    out["offline"], out[key] = ours, other
    a, b = (other, ours) if invert else (ours, other)
    out[ratio] = {k: a[f"{k}_x_realtime"] / b[f"{k}_x_realtime"] for k in ("encode", "decode")}


def _flatten(prefix: str, obj: Any, rows: List[List[str]]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        for i, v in enumerate(obj):
            _flatten(f"{prefix}[{i}]", v, rows)
    else:
        if isinstance(obj, float):
            val = f"{obj:.4g}"
        else:
            val = str(obj)
        rows.append([prefix, val])


def format_tables(results: Dict[str, Any]) -> str:
    """Two-column text table per section (nested keys are dotted)."""
    parts = []
    for section, body in results.items():
        rows: List[List[str]] = []
        _flatten("", body, rows)
        if not rows:
            continue
        w = max(len(r[0]) for r in rows)
        parts.append(f"[{section}]\n" + "\n".join(f"  {k.ljust(w)}  {v}" for k, v in rows))
    return "\n\n".join(parts)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``codec bench``; returns 0."""
    results = collect(args)
    if not args.quiet:
        print(format_tables(results))
    if args.json:
        from pathlib import Path

        from codec.audio import atomic_output

        with atomic_output(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
        if not args.quiet:
            print(f"\nwrote {args.json}")
    return 0
