"""Quantizer throughput: frames/s of ``ResidualVQ.encode`` (eval) next to the floor and vector-quantize-pytorch.

The floor is the unavoidable work of exhaustive search, computed on the same data: per level one
``[N, D] x [D, K]`` matmul (plus the ``|c|^2`` bias) and an argmin, with no residual update, gather or projection.
It is timed both over the whole array and in the same row chunks as ``ResidualVQ``; the faster is reported.

Run: ``python -m codec.bench.rvq`` (or ``codec bench rvq``).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from codec.quantization.rvq import ResidualVQ


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _floor_runs(x: torch.Tensor, cbs: torch.Tensor, chunk: int) -> Tuple[Callable[[], None], Callable[[], None]]:
    """The matmul floor of nearest-code search for ``x [N, D]`` against codebooks ``cbs [L, K, D]``: one
    ``addmm`` + ``argmin`` per level, over all rows at once and in blocks of ``chunk`` rows."""
    n_frames = x.shape[0]
    embT = [cb.t().contiguous().to(x.device) for cb in cbs]
    c2 = [cb.pow(2).sum(1).to(x.device) for cb in cbs]

    def floor_full() -> None:
        with torch.inference_mode():
            for e, c in zip(embT, c2):
                torch.addmm(c, x, e, alpha=-2.0).argmin(1)

    def floor_chunked() -> None:
        with torch.inference_mode():
            for s in range(0, n_frames, chunk):
                xs = x[s:s + chunk]
                for e, c in zip(embT, c2):
                    torch.addmm(c, xs, e, alpha=-2.0).argmin(1)

    return floor_full, floor_chunked


def _time_vqp(x: torch.Tensor, D: int, L: int, K: int, repeats: int, vqp_frames: int, t_ours: float) -> Dict[str, Any]:
    """vector-quantize-pytorch's ResidualVQ timed on the first ``vqp_frames`` rows of ``x [N, D]`` (it is slow;
    fps is per frame) -> ``vqp_status`` and, when it ran, ``vqp_fps``, ``vqp_frames``, ``speedup_vs_vqp``."""
    try:
        from vector_quantize_pytorch import ResidualVQ as VQPResidualVQ  # optional, comparison only
    except Exception as exc:  # not a dependency
        return {"vqp_status": f"not installed ({type(exc).__name__})"}
    n_frames = x.shape[0]
    try:
        ref = VQPResidualVQ(dim=D, num_quantizers=L, codebook_size=K, kmeans_init=False).to(x.device).eval()
        nv = min(n_frames, vqp_frames)
        xb = x[:nv].unsqueeze(0)  # [1, N, D]

        def vqp() -> Any:
            with torch.inference_mode():
                return ref(xb)

        vqp()
        t_vqp = _best_time(vqp, max(1, repeats - 1)) * (n_frames / nv)
    except Exception as exc:  # pragma: no cover - depends on the installed version
        return {"vqp_status": f"failed: {type(exc).__name__}: {exc}"}
    return {"vqp_status": "ok", "vqp_frames": nv, "vqp_fps": n_frames / t_vqp, "speedup_vs_vqp": t_vqp / t_ours}


def bench_rvq(n_frames: int = 100_000, num_quantizers: int = 32, codebook_size: int = 1024, codebook_dim: int = 8,
              threads: Optional[int] = None, repeats: int = 3, device: Optional[str] = None,
              compare_vqp: bool = True, seed: int = 0, vqp_frames: int = 20_000) -> Dict[str, Any]:
    """Frames/s to quantise ``n_frames`` frames through ``num_quantizers`` levels of ``codebook_size x
    codebook_dim`` codebooks (eval mode, ``input_dim = rvq_dim = codebook_dim``).

    Args:
        n_frames: frames N; num_quantizers / codebook_size / codebook_dim: quantizer shape.
        threads: torch intra-op threads during the run (restored afterwards); None = unchanged.
        repeats: timed repetitions (best is kept) after one warm-up.
        device: torch device (default cpu).
        compare_vqp: also time vector-quantize-pytorch's ResidualVQ when it is importable.
        seed: RNG seed for data and codebooks.
        vqp_frames: vector-quantize-pytorch is timed on the first ``vqp_frames`` frames only (it is slow).
    Returns:
        dict with ``ours_fps``, ``floor_fps``, ``ratio_floor_over_ours`` (time ours / time floor; 1.0 = at the
        floor), ``vqp_fps`` (or None) and ``vqp_status``, plus the settings.
    """
    dev = torch.device(device or "cpu")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        g = torch.Generator().manual_seed(seed)
        D, K, L = codebook_dim, codebook_size, num_quantizers
        x = torch.randn(n_frames, D, generator=g).to(dev)
        rvq = ResidualVQ(input_dim=D, rvq_dim=D, output_dim=D, num_quantizers=L, codebook_size=K,
                         codebook_dim=D, kmeans_init=False).to(dev).eval()
        # realistic codebooks: per-level scale shrinking like residual magnitudes
        cbs = torch.randn(L, K, D, generator=g) * (0.8 ** torch.arange(L, dtype=torch.float32))[:, None, None]
        rvq.load_codebooks(cbs)
        x3 = x.t().unsqueeze(0)  # [1, D, N]

        def ours() -> torch.Tensor:
            with torch.inference_mode():
                return rvq.encode(x3)

        floor_full, floor_chunked = _floor_runs(x, cbs, rvq.chunk_size)

        ours()
        t_ours = _best_time(ours, repeats)
        floor_chunked()
        t_floor = min(_best_time(floor_full, max(1, repeats - 1)), _best_time(floor_chunked, repeats))
        res: Dict[str, Any] = {
            "n_frames": n_frames, "num_quantizers": L, "codebook_size": K, "codebook_dim": D,
            "threads": torch.get_num_threads(), "device": str(dev),
            "ours_fps": n_frames / t_ours, "floor_fps": n_frames / t_floor,
            "ratio_floor_over_ours": t_ours / t_floor,
            "vqp_fps": None, "vqp_status": "skipped",
        }
        if compare_vqp:
            res.update(_time_vqp(x, D, L, K, repeats, vqp_frames, t_ours))
        return res
    finally:
        torch.set_num_threads(old_threads)


def main(argv: Optional[list] = None) -> int:
    """CLI: print the benchmark as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--levels", type=int, default=32)
    p.add_argument("--codebook-size", type=int, default=1024)
    p.add_argument("--codebook-dim", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    res = bench_rvq(a.frames, a.levels, a.codebook_size, a.codebook_dim, a.threads, a.repeats)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
