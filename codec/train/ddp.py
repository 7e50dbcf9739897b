"""Distributed-data-parallel helpers (torchrun): process group setup, parameter broadcast, gradient all-reduce
and agreement on flags.  Every function is a no-op (or returns its input) for a single process."""
from __future__ import annotations

import os
from typing import Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from codec.errors import CodecError

__all__ = ["setup_distributed", "broadcast_parameters", "allreduce_grads", "all_true", "any_true"]


def setup_distributed(device_pref: str = "auto") -> Tuple[int, int, int, torch.device]:
    """Initialise torch.distributed from torchrun env vars (RANK, WORLD_SIZE, LOCAL_RANK) when WORLD_SIZE > 1.

    Returns ``(rank, world_size, local_rank, device)``; backend nccl on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise CodecError("train.device is 'cuda' but no CUDA device is available.")
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world, local, device


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def broadcast_parameters(modules: Iterable[Optional[nn.Module]]) -> None:
    """Copy rank 0's parameters and buffers of every module (None entries skipped) to all ranks."""
    if _world() <= 1:
        return
    for mod in modules:
        if mod is None:
            continue
        for t in list(mod.parameters()) + list(mod.buffers()):
            dist.broadcast(t.data, 0)


def allreduce_grads(params: List[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks (one flat all-reduce; missing grads count as zero)."""
    world = _world()
    if world <= 1:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off:off + n].view_as(g))
        off += n


def _reduce_flag(flag: bool, op, device: torch.device) -> bool:
    if _world() <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=op)
    return bool(t.item() > 0.5)


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on every rank."""
    return _reduce_flag(flag, dist.ReduceOp.MIN, device)


def any_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on some rank."""
    return _reduce_flag(flag, dist.ReduceOp.MAX, device)
