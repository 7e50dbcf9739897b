"""Plain Lloyd k-means on [N, D] float tensors (used to initialise codebooks)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) for each row.

    Args:
        x: [N, D] float32.
        centroids: [K, D] float32.
        chunk: rows per distance block (bounds memory to ``chunk * K`` floats).
    Returns:
        LongTensor [N].
    """
    c2 = centroids.pow(2).sum(1)
    ct = centroids.t().contiguous()
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk] = torch.addmm(c2, x[s:s + chunk], ct, alpha=-2.0).argmin(1)
    return out


def kmeans_plusplus(x: torch.Tensor, k: int, generator: Optional[torch.Generator] = None,
                    max_candidates: int = 16384) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling) on at most ``max_candidates`` random rows of x [N, D] -> [k, D]."""
    n = x.shape[0]
    if n > max_candidates:
        x = x[torch.randperm(n, generator=generator)[:max_candidates].to(x.device)]
        n = max_candidates
    cent = torch.empty(k, x.shape[1], device=x.device, dtype=x.dtype)
    first = int(torch.randint(0, n, (1,), generator=generator))
    cent[0] = x[first]
    d2 = (x - cent[0]).pow(2).sum(1)
    u = torch.rand(k, generator=generator, dtype=torch.float64)
    for i in range(1, k):
        cum = torch.cumsum(d2.double(), 0).cpu()
        tot = float(cum[-1])
        if tot <= 0:  # fewer distinct points than k: duplicate rows
            j = int(torch.randint(0, n, (1,), generator=generator))
        else:
            j = min(int(torch.searchsorted(cum, u[i] * tot)), n - 1)
        cent[i] = x[j]
        d2 = torch.minimum(d2, (x - cent[i]).pow(2).sum(1))
    return cent


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: Optional[torch.Generator] = None,
           normalize: bool = False, init: str = "kmeans++") -> Tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means.

    Centroids start from k-means++ seeding (``init="kmeans++"``, on at most 16384 rows) or from ``k`` random
    rows (``init="random"``; with replacement when ``N < k``); clusters that become empty are re-seeded from
    random rows.

    Args:
        x: [N, D] data (N >= 1); computed in float32.
        k: number of centroids.
        iters: Lloyd iterations.
        generator: optional RNG for reproducibility (CPU generator; defaults to the global RNG).
        normalize: spherical variant: rows and centroids are L2-normalised (for cosine lookup).
    Returns:
        (centroids [k, D] float32, counts [k] float32: rows assigned to each centroid by the final assignment).
    """
    x = x.detach().float()
    if normalize:
        x = torch.nn.functional.normalize(x, dim=-1)
    n, d = x.shape
    if n == 0:
        raise ValueError("kmeans needs at least one row")
    dev = x.device
    if init == "kmeans++" and n > 1:
        c = kmeans_plusplus(x, k, generator)
    else:
        idx = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(0, n, (k,), generator=generator)
        c = x[idx.to(dev)].clone()
    assign = nearest_centroid(x, c)
    for _ in range(iters):
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros(k, d, device=dev).index_add_(0, assign, x)
        new = sums / counts.clamp(min=1.0)[:, None]
        empty = counts == 0
        if empty.any():
            ne = int(empty.sum())
            new[empty] = x[torch.randint(0, n, (ne,), generator=generator).to(dev)]
        if normalize:
            new = torch.nn.functional.normalize(new, dim=-1)
        c = new
        assign = nearest_centroid(x, c)
    counts = torch.bincount(assign, minlength=k).float()
    return c, counts
