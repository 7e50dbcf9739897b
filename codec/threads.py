"""How many CPU threads codec's commands give torch (``--threads``; one job: choosing and applying that number).

Why a default below the core count: torch's intra-op pool spins at every parallel region.  When the pool has as
many threads as there are cores and any other process is busy, one thread is descheduled, the others spin waiting
for it, and a 3 s encode that takes 1.6 s with one thread took 12.5 s (2 cores, one busy competitor).  Encoding and
decoding stream one chunk at a time through small layers, so extra threads gain little even on an idle machine.

:func:`default_threads`: ``$OMP_NUM_THREADS`` when set (the user's choice), else half the cores this process may
run on, at least 1 and at most :data:`MAX_DEFAULT_THREADS`; so at most half the cores are taken and as many busy
processes as there are threads can share the machine without the collapse.
"""
from __future__ import annotations

import os
from typing import Optional

from .errors import CodecError, OptionError

__all__ = ["MAX_DEFAULT_THREADS", "usable_cores", "default_threads", "set_threads", "THREADS_HELP"]

#: Upper bound of the default (more threads gain nothing on these per-chunk layers).
MAX_DEFAULT_THREADS = 4

THREADS_HELP = ("CPU threads for torch (default: $OMP_NUM_THREADS if set, else half the usable cores, 1 to "
                f"{MAX_DEFAULT_THREADS}: a thread per core collapses when another process is busy)")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """``$OMP_NUM_THREADS`` when it is a positive integer, else ``clamp(usable_cores() // 2, 1, 4)``."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(MAX_DEFAULT_THREADS, usable_cores() // 2))


def set_threads(threads: Optional[int] = None) -> int:
    """Give torch ``threads`` intra-op threads (``None``: :func:`default_threads`) and return the number set."""
    import torch

    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise OptionError("threads", f"must be at least 1, got {n}.")
    torch.set_num_threads(n)
    return n
