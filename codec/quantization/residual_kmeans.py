"""Residual k-means without a network (RQ-KMeans), with optional balanced / size-constrained assignment.

Level ``l`` runs k-means (``kmeans``, k-means++ seeding) on the residuals left by levels ``< l``; the codebooks
``[L, K, D]`` drop into a ``ResidualVQ`` with identity projections (``input_dim = codebook_dim = D``) through
``ResidualVQ.load_codebooks``, and with plain (unbalanced) fitting ``ResidualVQ.encode`` reproduces the fitted
codes exactly.

Balancing (for semantic IDs, where many items on one code tuple are *collisions*):

- ``balance="size"``: Lloyd iterations whose assignment step is size-constrained (every code takes at most
  ``ceil(capacity_slack * N / K)`` rows; greedy, nearest proposals first, see :func:`constrained_assign`);
- ``balance="sinkhorn"``: the assignment step is Sinkhorn-balanced (``vq.sinkhorn_assign``), approximately
  equal mass per code;
- ``unique_last=True``: the last level is assigned so that rows sharing the same prefix (codes of levels
  ``< L-1``) take *distinct* last codes where possible (capacity one per ``(prefix, code)``), the "uniform
  semantic mapping" idea of LC-Rec, which removes collisions whenever no prefix bucket holds more than K rows.

With balancing the fitted codes of the catalogue are not always the nearest codes: ``ResidualVQ.encode`` of a
*new* row gives the nearest code per level.  ``refine_iters`` re-fits every level's codebook jointly with the
codes fixed (each code = mean of what the other levels leave), which lowers the reconstruction error.

Memory: balanced assignment works on the full ``[N, K]`` distance matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .kmeans import kmeans, nearest_centroid
from .vq import code_stats, sinkhorn_assign

__all__ = ["ResidualKMeansFit", "residual_kmeans", "assign_residual", "constrained_assign",
           "squared_distances", "refine_codebooks", "decode_codebooks"]

BALANCE_MODES = (None, "size", "sinkhorn")


@dataclass
class ResidualKMeansFit:
    """Result of :func:`residual_kmeans`.

    codebooks: [L, K, D] float32 (level ``l`` quantises the residual of levels ``< l``).
    codes: LongTensor [N, L], the fitted codes of the rows.
    perplexity / usage: [L] code perplexity and fraction of codes used per level.
    """
    codebooks: torch.Tensor
    codes: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor

    def decode(self, codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sum of the code vectors, codes [N, L] (default the fitted codes) -> [N, D]."""
        return decode_codebooks(self.codebooks, self.codes if codes is None else codes)


def decode_codebooks(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """codebooks [L, K, D], codes [N, n <= L] -> [N, D] sum over the levels of ``codebooks[l, codes[:, l]]``."""
    out = torch.zeros(codes.shape[0], codebooks.shape[2], device=codebooks.device)
    for l in range(codes.shape[1]):
        out += codebooks[l].index_select(0, codes[:, l].to(codebooks.device))
    return out


def squared_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Exact squared Euclidean distances x [N, D], c [K, D] -> [N, K] float32 (clamped at 0)."""
    x, c = x.float(), c.float()
    d = torch.addmm(c.pow(2).sum(1)[None, :], x, c.t(), alpha=-2.0) + x.pow(2).sum(1, keepdim=True)
    return d.clamp_(min=0.0)


def constrained_assign(dist: torch.Tensor, capacity: Union[int, torch.Tensor],
                       groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Size-constrained assignment of N rows to K codes (greedy, vectorised rounds).

    Every round, each unassigned row proposes to its nearest code that still has room (in its group); a code
    accepts its proposers nearest first up to its remaining capacity.  Rows whose group has no room left
    anywhere fall back to their nearest code (they exceed ``capacity`` there).

    Args:
        dist: [N, K] distances (smaller = better).
        capacity: rows per code (int, or LongTensor [K]); with ``groups`` it is per ``(group, code)``.
        groups: optional LongTensor [N] of group ids (e.g. the prefix bucket of each row): capacities are
            counted separately inside each group.
    Returns:
        LongTensor [N] codes.
    """
    N, K = dist.shape
    dev = dist.device
    g = torch.zeros(N, dtype=torch.long, device=dev) if groups is None else groups.to(dev).long()
    if N and groups is not None:
        _, g = torch.unique(g, return_inverse=True)
    G = int(g.max()) + 1 if N else 1
    cap = torch.as_tensor(capacity, dtype=torch.long, device=dev)
    cap = (cap.expand(K) if cap.dim() == 0 else cap).expand(G, K).clone().reshape(-1)
    out = torch.full((N,), -1, dtype=torch.long, device=dev)
    todo = torch.arange(N, device=dev)
    inf = torch.tensor(float("inf"), device=dev)
    while todo.numel():
        sub = dist[todo]
        rowbins = g[todo, None] * K + torch.arange(K, device=dev)[None, :]
        sub = torch.where(cap[rowbins] > 0, sub, inf)
        best_d, best = sub.min(dim=1)
        stuck = torch.isinf(best_d)
        if bool(stuck.any()):  # no room left in the group: nearest code, over capacity
            out[todo[stuck]] = dist[todo[stuck]].argmin(dim=1)
            keep = ~stuck
            todo, best, best_d = todo[keep], best[keep], best_d[keep]
            if not todo.numel():
                break
        bins = g[todo] * K + best
        o1 = torch.argsort(best_d, stable=True)
        o2 = torch.argsort(bins[o1], stable=True)
        order = o1[o2]
        sb = bins[order]
        _, counts = torch.unique_consecutive(sb, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(sb.numel(), device=dev) - torch.repeat_interleave(starts, counts)
        ok = rank < cap[sb]
        acc = order[ok]
        out[todo[acc]] = best[acc]
        cap -= torch.bincount(sb[ok], minlength=cap.numel())
        left = torch.ones(todo.numel(), dtype=torch.bool, device=dev)
        left[acc] = False
        todo = todo[left]
    return out


def _prefix_groups(codes: torch.Tensor, K: int) -> torch.Tensor:
    """Bucket id of each row's code prefix codes [N, l] -> [N] (0 when l == 0)."""
    g = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
    for l in range(codes.shape[1]):
        g = g * K + codes[:, l]
        _, g = torch.unique(g, return_inverse=True)  # keep ids small
    return g


def _assign_level(r: torch.Tensor, c: torch.Tensor, balance: Optional[str], capacity: int,
                  groups: Optional[torch.Tensor], sinkhorn_iters: int, sinkhorn_temperature: float) -> torch.Tensor:
    if groups is not None:
        return constrained_assign(squared_distances(r, c), 1, groups)
    if balance == "size":
        return constrained_assign(squared_distances(r, c), capacity)
    if balance == "sinkhorn":
        return sinkhorn_assign(squared_distances(r, c), sinkhorn_iters, sinkhorn_temperature)
    return nearest_centroid(r, c)


def _means(r: torch.Tensor, a: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    K = prev.shape[0]
    cnt = torch.bincount(a, minlength=K).float()
    sums = torch.zeros_like(prev).index_add_(0, a, r)
    return torch.where(cnt[:, None] > 0, sums / cnt.clamp(min=1.0)[:, None], prev)


def _check_balance(balance: Optional[str]) -> None:
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of None, 'size', 'sinkhorn', got {balance!r}")


def _balanced_levels(levels: int, balance: Optional[str], balance_levels: Optional[Sequence[int]]) -> set:
    if balance is None:
        return set()
    return set(range(levels)) if balance_levels is None else {int(l) % levels for l in balance_levels}


@torch.no_grad()
def assign_residual(x: torch.Tensor, codebooks: torch.Tensor, balance: Optional[str] = None,
                    balance_levels: Optional[Sequence[int]] = None, capacity_slack: float = 1.0,
                    unique_last: bool = False, sinkhorn_iters: int = 50,
                    sinkhorn_temperature: float = 0.05) -> torch.Tensor:
    """Residual assignment of rows x [N, D] to fixed codebooks [L, K, D] -> codes [N, L].

    Plain (``balance=None``, ``unique_last=False``): nearest code per level, what ``ResidualVQ.encode`` gives.
    Otherwise balanced levels use the constrained / Sinkhorn assignment and ``unique_last`` spreads rows of one
    prefix over distinct last codes (see the module docstring); codebooks are not changed."""
    _check_balance(balance)
    x = x.detach().float()
    L, K, _ = codebooks.shape
    bal = _balanced_levels(L, balance, balance_levels)
    cap = max(1, math.ceil(capacity_slack * x.shape[0] / K))
    r = x
    codes = torch.empty(x.shape[0], L, dtype=torch.long, device=x.device)
    for l in range(L):
        c = codebooks[l].float().to(x.device)
        groups = _prefix_groups(codes[:, :l], K) if (unique_last and l == L - 1) else None
        a = _assign_level(r, c, balance if l in bal else None, cap, groups, sinkhorn_iters, sinkhorn_temperature)
        codes[:, l] = a
        r = r - c.index_select(0, a)
    return codes


@torch.no_grad()
def refine_codebooks(x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, iters: int = 5) -> torch.Tensor:
    """Joint codebook refinement with the codes fixed (block coordinate descent on the squared error).

    For each level in turn, every used code becomes the mean of ``x`` minus the other levels' vectors over its
    rows; unused codes are kept.  Never increases the reconstruction error.  x [N, D], codes [N, L],
    codebooks [L, K, D] -> new codebooks [L, K, D]."""
    x = x.detach().float()
    cb = codebooks.detach().float().clone()
    L = cb.shape[0]
    recon = decode_codebooks(cb, codes)
    for _ in range(int(iters)):
        for l in range(L):
            own = cb[l].index_select(0, codes[:, l])
            target = x - (recon - own)
            cb[l] = _means(target, codes[:, l], cb[l])
            recon = recon - own + cb[l].index_select(0, codes[:, l])
    return cb


@torch.no_grad()
def residual_kmeans(x: torch.Tensor, levels: int = 3, codebook_size: int = 64, iters: int = 50,
                    balance: Optional[str] = None, balance_levels: Optional[Sequence[int]] = None,
                    balance_iters: int = 10, capacity_slack: float = 1.0, unique_last: bool = False,
                    sinkhorn_iters: int = 50, sinkhorn_temperature: float = 0.05, refine_iters: int = 0,
                    seed: int = 0) -> ResidualKMeansFit:
    """Fit residual k-means codebooks on rows x [N, D] (RQ-KMeans).

    Args:
        x: [N, D] float rows (N >= codebook_size).
        levels: L; codebook_size: K codes per level.
        iters: Lloyd iterations of the plain k-means that starts every level.
        balance: None (nearest codes), ``"size"`` (size-constrained) or ``"sinkhorn"`` (Sinkhorn-balanced):
            the assignment step of ``balance_iters`` further Lloyd iterations on the balanced levels.
        balance_levels: levels that are balanced (default all; negative indices count from the end).
        capacity_slack: ``"size"`` capacity per code is ``ceil(capacity_slack * N / K)``.
        unique_last: last level: distinct codes for rows sharing a prefix (capacity one per (prefix, code)),
            with ``balance_iters`` Lloyd iterations under that constraint.
        sinkhorn_iters, sinkhorn_temperature: Sinkhorn settings (``vq.sinkhorn_assign``).
        refine_iters: rounds of :func:`refine_codebooks` after fitting (codes fixed).
        seed: seed of the k-means RNG (one CPU generator; the global RNG is not touched).
    Returns:
        :class:`ResidualKMeansFit` (codebooks [L, K, D], codes [N, L]).
    """
    _check_balance(balance)
    x = x.detach().float()
    N, D = x.shape
    L, K = int(levels), int(codebook_size)
    if N < K:
        raise ValueError(f"residual_kmeans needs at least codebook_size={K} rows, got {N}")
    gen = torch.Generator().manual_seed(int(seed))
    bal = _balanced_levels(L, balance, balance_levels)
    cap = max(1, math.ceil(capacity_slack * N / K))
    r = x
    codes = torch.empty(N, L, dtype=torch.long, device=x.device)
    books = torch.empty(L, K, D, device=x.device)
    for l in range(L):
        c, _ = kmeans(r, K, iters, generator=gen)
        groups = _prefix_groups(codes[:, :l], K) if (unique_last and l == L - 1) else None
        mode = balance if l in bal else None
        if groups is None and mode is None:
            a = nearest_centroid(r, c)
        else:
            for _ in range(max(1, int(balance_iters))):
                a = _assign_level(r, c, mode, cap, groups, sinkhorn_iters, sinkhorn_temperature)
                c = _means(r, a, c)
        books[l], codes[:, l] = c, a
        r = r - c.index_select(0, a)
    if refine_iters > 0:
        books = refine_codebooks(x, codes, books, refine_iters)
    stats = [code_stats(codes[:, l], K) for l in range(L)]
    return ResidualKMeansFit(codebooks=books, codes=codes, perplexity=torch.stack([s[0] for s in stats]),
                             usage=torch.stack([s[1] for s in stats]))
