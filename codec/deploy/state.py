"""Streaming state as a flat list of named tensors, for graphs that take state in and give state out.

The model keeps one state per streaming layer (:func:`codec.nn.streaming.get_states`), a typed
:class:`codec.nn.streaming.StreamState` dataclass whose fields are tensors.  A leaf is named
``<module path>.<field>`` (e.g. ``blocks.0.ctx``) and its first dimension is the batch slot.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..nn import streaming as st

__all__ = ["state_items", "rebuild_state", "flat_states", "fresh_states", "install_states"]


def state_items(state: Optional[st.StreamState]) -> List[Tuple[str, torch.Tensor]]:
    """``(field, tensor)`` pairs of one layer's state (none for ``None``)."""
    return [] if state is None else state.items()


def rebuild_state(template: st.StreamState, values: Dict[str, torch.Tensor]) -> st.StreamState:
    """A copy of ``template`` with the fields named in ``values`` replaced."""
    return dataclasses.replace(template, **values) if values else template


def _paths(module: nn.Module) -> List[str]:
    names = {id(m): n for n, m in module.named_modules()}
    return [names[id(m)] for m in st.streaming_modules(module)]


def flat_states(module: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """The installed states of ``module``'s streaming layers as ``(name, tensor)`` pairs, in layer order."""
    out = []
    for path, state in zip(_paths(module), st.get_states(module)):
        out += [(f"{path}.{k}" if path else k, v) for k, v in state_items(state)]
    return out


def fresh_states(module: nn.Module, batch_size, device: torch.device, dtype: torch.dtype) -> List[Any]:
    """Fresh (zero) states of every streaming layer; ``batch_size`` may be symbolic (export)."""
    return [m.init_state(batch_size, device, dtype) for m in st.streaming_modules(module)]


def install_states(module: nn.Module, batch_size, values: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Install fresh states for ``batch_size`` slots with the leaves named in ``values`` replaced."""
    p = next(module.parameters())
    values = values or {}
    states = []
    for path, state in zip(_paths(module), fresh_states(module, batch_size, p.device, p.dtype)):
        pre = f"{path}." if path else ""
        states.append(rebuild_state(state, {k: values[pre + k] for k, _ in state_items(state) if pre + k in values}))
    st.set_states(module, states)
