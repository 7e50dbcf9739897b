"""Thin ``torch.distributed`` helpers that are no-ops in a single process.

All collectives used by the quantizer go through these helpers so that the library works unchanged with and
without an initialised process group.  Every rank must call them in the same order (the quantizer only takes
decisions on state that is already synchronised across ranks).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum of ``t`` over all ranks (no-op when not distributed). Returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast of ``t`` from rank ``src`` (no-op when not distributed). Returns ``t``."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t
