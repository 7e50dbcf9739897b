"""Streaming state for causal layers (one state per layer, per batch slot).

Every :class:`StreamingModule` keeps its own state in ``self._stream`` (``None`` when not streaming): a typed
:class:`StreamState` dataclass whose fields are tensors with the batch slot first -- :class:`ContextState`
(``ctx``: the left context of a causal layer) or :class:`PendingState` (``pending``: overlap-add samples not yet
emitted), or a layer's own subclass.  ``start_streaming(batch_size)`` / ``stop_streaming()`` on any module
(usually the whole model) set up / tear down the state of all streaming submodules; ``state.reset(slot)``
zeroes one slot (or all) without touching the others.

Stream objects (``CodecModel.stream_encoder`` / ``stream_decoder``) own their states and swap them into
the modules for each call (:func:`get_states` / :func:`set_states`), so several streams can share a model.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
from torch import nn


@dataclass
class StreamState:
    """Base of the per-layer streaming states: every field is a tensor ``[B, ...]`` (batch slot first)."""

    def items(self) -> List[Tuple[str, torch.Tensor]]:
        """``(field name, tensor)`` pairs, in field order."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]

    def reset(self, slot: Optional[int] = None) -> None:
        """Zero batch slot ``slot`` of every field (all slots when ``None``)."""
        for _, v in self.items():
            (v if slot is None else v[slot]).zero_()


@dataclass
class ContextState(StreamState):
    """The left context a causal layer keeps between chunks: ``ctx [B, ..., P]`` (layout set by the layer)."""

    ctx: torch.Tensor


@dataclass
class PendingState(StreamState):
    """Overlap-add samples already computed but due in the next chunk: ``pending [B, ..., overlap]``."""

    pending: torch.Tensor


class StreamingModule(nn.Module):
    """Base class of layers with streaming state (left context, pending overlap samples)."""

    def __init__(self) -> None:
        super().__init__()
        self._stream: Optional[StreamState] = None

    @property
    def is_streaming(self) -> bool:
        """True while a streaming state is installed."""
        return self._stream is not None

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> StreamState:
        """Fresh (all-zero) state for ``batch_size`` slots; every subclass defines its own."""
        raise NotImplementedError


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


def get_states(module: nn.Module) -> List[Optional[StreamState]]:
    """Current states (list aligned with :func:`streaming_modules`)."""
    return [m._stream for m in streaming_modules(module)]


def set_states(module: nn.Module, states: List[Optional[StreamState]]) -> None:
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
