"""Saving and loading models: ``config.json`` + ``model.safetensors`` (weights only, never pickle).

Layout of a model directory::

    config.json         CodecConfig fields (plus "format": "codec-model-1")
    model.safetensors   state_dict tensors (weight norm stored as parameters weight_v / weight_g)
    README.md           model card (written by others; save_pretrained never overwrites it)

``load(path_or_name)`` accepts a directory or a name resolved to ``$CODEC_PRETRAINED_DIR/<name>`` (if the
variable is set) and then ``<repo>/pretrained/<name>``.  Any problem raises :class:`codec.errors.CodecError`
with one sentence.  ``model.weights_hash`` = first 16 hex digits of the sha256 of ``model.safetensors``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch

from .errors import CodecError

FORMAT = "codec-model-1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PathLike = Union[str, os.PathLike]


def pretrained_dir() -> Path:
    """Directory holding named models: ``$CODEC_PRETRAINED_DIR`` or ``<repo>/pretrained``."""
    env = os.environ.get("CODEC_PRETRAINED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "pretrained"


def resolve(path_or_name: PathLike) -> Path:
    """Directory of a model given a path or a name (see module docstring); CodecError if not found."""
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        return p
    name = str(path_or_name)
    if "/" not in name and os.sep not in name:
        cands = []
        env = os.environ.get("CODEC_PRETRAINED_DIR")
        if env:
            cands.append(Path(env) / name)
        cands.append(Path(__file__).resolve().parent.parent / "pretrained" / name)
        for c in cands:
            if c.is_dir():
                return c
        raise CodecError(f"model '{name}' is neither a directory nor a pretrained model name.")
    raise CodecError(f"model directory '{name}' does not exist.")


def file_hash(path: PathLike) -> str:
    """First 16 hex digits of the sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()[:16]


def save_pretrained(model, directory: PathLike) -> str:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created); keeps an existing README.md.

    Returns the weights hash (also set on ``model.weights_hash``)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.config.to_dict())
    cfg["format"] = FORMAT
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp_w = d / (WEIGHTS_NAME + ".tmp")
    save_file(sd, str(tmp_w), metadata={"format": FORMAT})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_w, 0o666 & ~umask)  # the safetensors writer creates files readable by the owner only
    os.replace(tmp_w, d / WEIGHTS_NAME)
    tmp_c = d / (CONFIG_NAME + ".tmp")
    tmp_c.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp_c, d / CONFIG_NAME)
    h = file_hash(d / WEIGHTS_NAME)
    model.weights_hash = h
    return h


def load_config(directory: PathLike):
    """CodecConfig from ``directory/config.json`` (CodecError on any problem)."""
    from .config import CodecConfig

    d = Path(directory)
    f = d / CONFIG_NAME
    if not f.is_file():
        raise CodecError(f"model directory '{d}' has no {CONFIG_NAME}.")
    try:
        raw = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"'{f}' is not valid JSON ({str(exc).splitlines()[0]}).") from None
    if not isinstance(raw, dict):
        raise CodecError(f"'{f}' must contain a JSON object.")
    fmt = raw.pop("format", FORMAT)
    if fmt != FORMAT:
        raise CodecError(f"'{f}' has unsupported format '{fmt}' (expected '{FORMAT}').")
    try:
        return CodecConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise CodecError(f"'{f}' is not a valid model config: {str(exc).rstrip('.')}.") from None


def load(path_or_name: PathLike, device: Optional[Union[str, torch.device]] = None):
    """Load a model directory or pretrained name -> CodecModel in eval mode on ``device`` (default CPU).

    Refuses (CodecError, one sentence) a missing directory, missing files, bad JSON, unknown config fields,
    unreadable weights and missing / unexpected / mis-shaped tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import CodecModel

    d = resolve(path_or_name)
    cfg = load_config(d)
    wf = d / WEIGHTS_NAME
    if not wf.is_file():
        raise CodecError(f"model directory '{d}' has no {WEIGHTS_NAME}.")
    try:
        sd = load_file(str(wf), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CodecError(f"cannot read weights '{wf}' ({str(exc).splitlines()[0] if str(exc) else 'corrupt'}).") \
            from None
    model = CodecModel(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing:
        raise CodecError(f"weights '{wf}' do not match config.json: {len(missing)} tensor(s) missing "
                         f"(e.g. '{missing[0]}').")
    if unexpected:
        raise CodecError(f"weights '{wf}' do not match config.json: {len(unexpected)} unexpected tensor(s) "
                         f"(e.g. '{unexpected[0]}').")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CodecError(f"weights '{wf}' do not match config.json: tensor '{k}' has shape "
                             f"{tuple(sd[k].shape)}, expected {tuple(v.shape)}.")
    model.load_state_dict(sd, strict=True)
    model.eval()
    if device is not None:
        model = model.to(device)
    model.weights_hash = file_hash(wf)
    return model
