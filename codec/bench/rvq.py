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
from typing import Any, Callable, Dict, Optional

import torch

from codec.quantization.rvq import ResidualVQ


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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

        embT = [cb.t().contiguous().to(dev) for cb in cbs]
        c2 = [cb.pow(2).sum(1).to(dev) for cb in cbs]

        def floor_full() -> None:
            with torch.inference_mode():
                for l in range(L):
                    torch.addmm(c2[l], x, embT[l], alpha=-2.0).argmin(1)

        cs = rvq.chunk_size

        def floor_chunked() -> None:
            with torch.inference_mode():
                for s in range(0, n_frames, cs):
                    xs = x[s:s + cs]
                    for l in range(L):
                        torch.addmm(c2[l], xs, embT[l], alpha=-2.0).argmin(1)

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
            try:
                from vector_quantize_pytorch import ResidualVQ as VQPResidualVQ  # optional, comparison only
            except Exception as exc:  # not a dependency
                res["vqp_status"] = f"not installed ({type(exc).__name__})"
            else:
                try:
                    ref = VQPResidualVQ(dim=D, num_quantizers=L, codebook_size=K, kmeans_init=False).to(dev).eval()
                    nv = min(n_frames, vqp_frames)  # it is slow: time a slice (fps is per frame)
                    xb = x[:nv].unsqueeze(0)  # [1, N, D]

                    def vqp() -> Any:
                        with torch.inference_mode():
                            return ref(xb)

                    vqp()
                    t_vqp = _best_time(vqp, max(1, repeats - 1)) * (n_frames / nv)
                    res["vqp_frames"] = nv
                    res["vqp_fps"] = n_frames / t_vqp
                    res["vqp_status"] = "ok"
                    res["speedup_vs_vqp"] = t_vqp / t_ours
                except Exception as exc:  # pragma: no cover - depends on the installed version
                    res["vqp_status"] = f"failed: {type(exc).__name__}: {exc}"
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
