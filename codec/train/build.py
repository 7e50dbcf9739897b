"""The model a training run starts from: a preset with CodecConfig overrides, or a pretrained model
(``model.init_from``, resolved by :func:`codec.pretrained.resolve`) fine-tuned with optional overrides."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Tuple

from torch import Tensor

from codec.config import CodecConfig
from codec.errors import CodecError
from codec.model import CodecModel

from .config import DEFAULTS

__all__ = ["build_model", "grow_state_dict", "replace_config"]


def replace_config(ccfg: CodecConfig, overrides: Dict[str, Any]) -> CodecConfig:
    """``ccfg`` with CodecConfig fields replaced (YAML lists become tuples); unknown fields are refused."""
    fields = {f.name for f in dataclasses.fields(ccfg)}
    clean = {}
    for k, v in overrides.items():
        if k not in fields:
            raise CodecError(f"unknown model override '{k}' (not a CodecConfig field).")
        clean[k] = tuple(v) if isinstance(getattr(ccfg, k), tuple) and isinstance(v, list) else v
    return dataclasses.replace(ccfg, **clean)


def grow_state_dict(state: Dict[str, Tensor], target: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """``state`` fitted to the shapes of ``target`` (a freshly initialised model's state dict) -> (state, grown keys).

    Tensors of equal shape are taken as they are. A tensor that is larger in the target (a wider MLP:
    ``fourier_mlp`` 3 -> 4) keeps the trained values in its leading slice; along its first axis (new output
    rows, new biases) the new entries keep the target's fresh initialisation, along later axes (new input
    columns) they are zero. For a hidden layer ``W2 act(W1 x + b1)`` this adds units whose output weights are
    zero: the model computes exactly what it did, and the new units still get gradients (their activations
    are not zero). Keys missing from ``state`` keep the target's values (appended blocks), keys missing from
    ``target`` are passed on (for ``load_state_dict`` to report); tensors that would shrink, or that change rank,
    are refused.
    """
    out: Dict[str, Tensor] = {}
    grown: List[str] = []
    for key, fresh in target.items():
        if key not in state:
            continue
        old = state[key]
        if old.shape == fresh.shape:
            out[key] = old
            continue
        if old.dim() != fresh.dim() or any(o > n for o, n in zip(old.shape, fresh.shape)):
            raise CodecError(f"init_from: weight '{key}' has shape {tuple(old.shape)}, the overrides give "
                             f"{tuple(fresh.shape)}; a model can only be grown, not shrunk or reshaped.")
        new = fresh.detach().clone()
        if new.dim() > 1:
            new[:, old.shape[1]:] = 0      # new input columns (and beyond): no effect on the output
        new[tuple(slice(0, s) for s in old.shape)] = old.to(new.dtype)
        out[key] = new
        grown.append(key)
    out.update({k: v for k, v in state.items() if k not in target})  # load_state_dict reports them as unexpected
    return out, grown


def _from_pretrained(init_from: str, overrides: Dict[str, Any]) -> CodecModel:
    from codec import pretrained

    base = pretrained.load(init_from, device="cpu")
    if not overrides:
        return base
    model = CodecModel(replace_config(base.config, overrides))
    state, grown = grow_state_dict(base.state_dict(), model.state_dict())
    res = model.load_state_dict(state, strict=False)
    if res.missing_keys or res.unexpected_keys or grown:
        warnings.warn(f"init_from: {len(res.missing_keys)} missing / {len(res.unexpected_keys)} unexpected / "
                      f"{len(grown)} grown weights after overrides")
    return model


def build_model(model_cfg: Dict[str, Any]) -> CodecModel:
    """CodecModel (train mode) from a ``model`` config section; missing keys take their
    :data:`codec.train.config.DEFAULTS`."""
    model_cfg = {**DEFAULTS["model"], **model_cfg}
    overrides = dict(model_cfg["overrides"] or {})
    if model_cfg["init_from"]:
        model = _from_pretrained(model_cfg["init_from"], overrides)
    else:
        try:
            ccfg = CodecConfig.preset(model_cfg["preset"] or "tiny")
        except (KeyError, ValueError) as exc:
            raise CodecError(f"unknown model preset '{model_cfg['preset']}' ({exc}).") from None
        model = CodecModel(replace_config(ccfg, overrides) if overrides else ccfg)
    return model.train()
