"""Streaming state for causal layers (one state per layer, per batch slot).

Every :class:`StreamingModule` keeps its own state in ``self._stream`` (``None`` when not streaming):
a small dict of tensors whose first dimension is the batch slot.  ``start_streaming(batch_size)`` /
``stop_streaming()`` on any module (usually the whole model) set up / tear down the state of all
streaming submodules; ``reset_streaming(slot)`` zeroes one slot (or all) without touching the others.

Stream objects (``CodecModel.stream_encoder`` / ``stream_decoder``) own their states and swap them into
the modules for each call (:func:`get_states` / :func:`set_states`), so several streams can share a model.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn


class StreamingModule(nn.Module):
    """Base class of layers with streaming state (left context, pending overlap samples)."""

    def __init__(self) -> None:
        super().__init__()
        self._stream: Optional[Dict[str, torch.Tensor]] = None

    @property
    def is_streaming(self) -> bool:
        """True while a streaming state is installed."""
        return self._stream is not None

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        """Fresh (all-zero) state for ``batch_size`` slots; subclasses override."""
        return {}


def streaming_modules(module: nn.Module) -> List[StreamingModule]:
    """All StreamingModule submodules of ``module`` (including itself), in registration order."""
    return [m for m in module.modules() if isinstance(m, StreamingModule)]


def _device_dtype(module: nn.Module):
    for p in module.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def start_streaming(module: nn.Module, batch_size: int) -> None:
    """Install fresh zero states on every streaming submodule of ``module``."""
    dev, dt = _device_dtype(module)
    for m in streaming_modules(module):
        m._stream = m.init_state(int(batch_size), dev, dt)


def stop_streaming(module: nn.Module) -> None:
    """Remove the streaming states of every submodule."""
    for m in streaming_modules(module):
        m._stream = None


def reset_streaming(module: nn.Module, slot: Optional[int] = None) -> None:
    """Zero the state of batch slot ``slot`` (all slots if None) in every streaming submodule."""
    for m in streaming_modules(module):
        if m._stream is None:
            continue
        for v in m._stream.values():
            if slot is None:
                v.zero_()
            else:
                v[slot].zero_()


def get_states(module: nn.Module) -> List[Optional[Dict[str, torch.Tensor]]]:
    """Current states (list aligned with :func:`streaming_modules`)."""
    return [m._stream for m in streaming_modules(module)]


def set_states(module: nn.Module, states: List[Optional[Dict[str, torch.Tensor]]]) -> None:
    """Install states previously returned by :func:`get_states`."""
    for m, s in zip(streaming_modules(module), states):
        m._stream = s


@contextmanager
def streaming(module: nn.Module, batch_size: int) -> Iterator[nn.Module]:
    """Context manager: ``with streaming(model.encoder, 2): ...`` runs the module chunk by chunk."""
    old = get_states(module)
    start_streaming(module, batch_size)
    try:
        yield module
    finally:
        set_states(module, old)
