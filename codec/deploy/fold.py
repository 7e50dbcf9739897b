"""An export-ready copy of a model: weight norm folded into plain weights, no caches on the exported path.

The model itself is never modified.  On the copy:

* every weight-normalised layer gets its effective weight ``g * v / ||v||`` as a plain buffer (the layers'
  ``weight()`` returns it; the ``weight_v`` / ``weight_g`` parameters are removed), and layers that use
  ``torch.nn.utils.parametrize`` (e.g. ``parametrizations.weight_norm``) get their parametrizations removed with
  the current value kept;
* activations run their plain kernels (``F.elu`` instead of the ``expm1`` form, which ONNX lacks; same function).
"""
from __future__ import annotations

import copy
import types

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["exportable_copy", "fold_weight_norm"]


def _folded(self) -> torch.Tensor:
    return self.folded_weight


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """Fold weight normalisation of every layer of ``model`` in place (use on a copy); returns ``model``."""
    with torch.no_grad():
        for m in model.modules():
            if parametrize.is_parametrized(m):
                for name in list(m.parametrizations.keys()):
                    parametrize.remove_parametrizations(m, name, leave_parametrized=True)
            elif isinstance(getattr(m, "weight_v", None), nn.Parameter) and callable(getattr(m, "weight", None)):
                w = m.weight().detach().clone()
                del m.weight_v, m.weight_g
                m.register_buffer("folded_weight", w)
                m.weight = types.MethodType(_folded, m)
    return model


def exportable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, weight norm folded, plain activation kernels."""
    m = copy.deepcopy(model).eval()
    fold_weight_norm(m)
    for mod in m.modules():
        if hasattr(mod, "exact") and type(mod).__name__ == "ELU":
            mod.exact = False
    for p in m.parameters():
        p.requires_grad_(False)
    return m
