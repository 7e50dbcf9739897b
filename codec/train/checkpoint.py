"""Training checkpoints: ``ckpt_<step>.pt`` files (atomic writes, pruning), reading them back, RNG states.

A checkpoint is a plain dict of tensors and containers (read with ``weights_only=True``); the trainer builds it
(:meth:`codec.train.trainer.Trainer.checkpoint_state`) and this module stores, finds and loads it.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from codec.audio import atomic_output
from codec.errors import CodecError

__all__ = ["CKPT_PATTERN", "checkpoint_path", "find_latest_checkpoint", "load_checkpoint", "write_checkpoint",
           "rng_state", "set_rng_state"]

CKPT_PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    """``out_dir / ckpt_<step:08d>.pt``."""
    return Path(out_dir) / f"ckpt_{int(step):08d}.pt"


def find_latest_checkpoint(out_dir: Path) -> Optional[Path]:
    """Newest ``ckpt_XXXXXXXX.pt`` in ``out_dir`` (by step), or None."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    best = None
    for f in out_dir.iterdir():
        m = CKPT_PATTERN.match(f.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), f)
    return best[1] if best else None


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load a training checkpoint (``weights_only=True``: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"checkpoint '{path}' does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CodecError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}).") from None


def write_checkpoint(state: Dict[str, Any], out_dir: Path, step: int, keep_last: int, best: bool = False) -> Path:
    """Write ``state`` as ``ckpt_<step>.pt`` (and ``best.pt`` when ``best``) atomically, then delete all but the
    ``keep_last`` newest step checkpoints (0 keeps all).  Returns the step checkpoint's path."""
    out_dir = Path(out_dir)
    path = checkpoint_path(out_dir, step)
    for dest in [path] + ([out_dir / "best.pt"] if best else []):
        with atomic_output(dest) as tmp:
            torch.save(state, tmp)
    ckpts = sorted(f for f in out_dir.iterdir() if CKPT_PATTERN.match(f.name))
    for f in ckpts[:-keep_last] if keep_last > 0 else []:
        try:
            f.unlink()
        except OSError:
            pass
    return path


def rng_state() -> Dict[str, Any]:
    """The torch, numpy, python (and CUDA) RNG states as tensors and plain values (``weights_only``-loadable)."""
    np_state = np.random.get_state(legacy=False)
    st = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    """Restore the RNG states returned by :func:`rng_state`."""
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
