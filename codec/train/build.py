"""The model a training run starts from: a preset with CodecConfig overrides, or a pretrained model
(``model.init_from``, resolved by :func:`codec.pretrained.resolve`) fine-tuned with optional overrides."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict

from codec.config import CodecConfig
from codec.errors import CodecError
from codec.model import CodecModel

from .config import DEFAULTS

__all__ = ["build_model", "replace_config"]


def replace_config(ccfg: CodecConfig, overrides: Dict[str, Any]) -> CodecConfig:
    """``ccfg`` with CodecConfig fields replaced (YAML lists become tuples); unknown fields are refused."""
    fields = {f.name for f in dataclasses.fields(ccfg)}
    clean = {}
    for k, v in overrides.items():
        if k not in fields:
            raise CodecError(f"unknown model override '{k}' (not a CodecConfig field).")
        clean[k] = tuple(v) if isinstance(getattr(ccfg, k), tuple) and isinstance(v, list) else v
    return dataclasses.replace(ccfg, **clean)


def _from_pretrained(init_from: str, overrides: Dict[str, Any]) -> CodecModel:
    from codec import pretrained

    base = pretrained.load(init_from, device="cpu")
    if not overrides:
        return base
    model = CodecModel(replace_config(base.config, overrides))
    res = model.load_state_dict(base.state_dict(), strict=False)
    if res.missing_keys or res.unexpected_keys:
        warnings.warn(f"init_from: {len(res.missing_keys)} missing / {len(res.unexpected_keys)} unexpected "
                      "weights after overrides")
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
