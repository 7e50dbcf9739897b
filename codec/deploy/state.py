"""Streaming state as a flat list of named tensors, for graphs that take state in and give state out.

The model keeps one state per streaming layer (:func:`codec.nn.streaming.get_states`); a state is a dict of
tensors or a dataclass whose fields are tensors (both are accepted, and the same type is rebuilt).  A leaf is
named ``<module path>.<field>`` (e.g. ``blocks.0.ctx``) and its first dimension is the batch slot.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..nn import streaming as st

__all__ = ["state_items", "rebuild_state", "flat_states", "fresh_states", "install_states"]


def state_items(state: Any) -> List[Tuple[str, torch.Tensor]]:
    """``(field, tensor)`` pairs of one layer's state: a dict of tensors, a dataclass of tensors, or None."""
    if state is None:
        return []
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return [(f.name, getattr(state, f.name)) for f in dataclasses.fields(state)
                if torch.is_tensor(getattr(state, f.name))]
    if isinstance(state, dict):
        return [(str(k), v) for k, v in state.items() if torch.is_tensor(v)]
    raise TypeError(f"streaming state must be a dict or a dataclass of tensors, got {type(state).__name__}")


def rebuild_state(template: Any, values: Dict[str, torch.Tensor]) -> Any:
    """A copy of ``template`` (dict or dataclass) with the fields named in ``values`` replaced."""
    if not values:
        return template
    if dataclasses.is_dataclass(template) and not isinstance(template, type):
        return dataclasses.replace(template, **values)
    out = dict(template)
    out.update(values)
    return out


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
