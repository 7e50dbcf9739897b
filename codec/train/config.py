"""Training configuration: YAML file + dotted ``key=value`` command-line overrides.

A config has the sections ``model``, ``data``, ``loss``, ``discriminator``, ``adversarial``,
``optim`` and ``train`` (see :data:`DEFAULTS` for every key and its default).  Unknown keys are
refused with a :class:`codec.errors.CodecError` naming the key, so typos never pass silently.

Example::

    cfg = load_config("recipes/tiny-cpu.yaml", ["train.steps=200", "data.batch_size=4"])
    cfg["train"]["steps"]  # -> 200
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import yaml

from codec.errors import CodecError

__all__ = ["DEFAULTS", "load_config", "apply_overrides", "merge_config", "default_config", "dump_config", "expand_path"]

#: Every known key with its default value.  ``model.overrides`` is a free-form mapping of CodecConfig fields.
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": {
        "preset": "tiny",            # CodecConfig preset name ("24khz", "16khz", "tiny")
        "overrides": {},             # CodecConfig field -> value
        "init_from": None,           # pretrained name (e.g. speech-24k) or directory to fine-tune from
        "init_discriminators": True,  # also load discriminator.safetensors from init_from when present
        "refit_quantizer": 0,        # on a fresh start, re-fit every quantizer level to its residuals (k-means
                                     # codebooks, least-squares output projections) on this many training crops
    },
    "data": {
        "train": None,               # manifest .jsonl (or list of them) or folder of audio
        "valid": None,               # manifest .jsonl / folder for validation (whole utterances)
        "crop_seconds": 1.0,         # training crop length
        "min_seconds": 0.0,          # drop training items shorter than this (from manifest durations)
        "batch_size": 8,             # per process
        "num_workers": 2,
        "prefetch_factor": 4,
        "rms_db": -20.0,             # RMS level of each crop in dBFS: a number, [low, high] (each crop's level
                                     # drawn uniformly in dB: a model that works at any input level), or null
        "speed": None,               # [low, high]: each crop played faster by a factor drawn from this range
                                     # (tempo and pitch together; e.g. [0.9, 1.1]), or null (as recorded)
        "max_gain_db": 20.0,         # never amplify a crop by more than this (silence stays silence)
        "valid_items": 16,           # number of validation utterances used
        "valid_max_seconds": 10.0,   # validation utterances are cut to this length
        "valid_rms_db": -20.0,       # RMS level of validation utterances (null: as recorded, as codec eval scores)
    },
    "loss": {
        "mel": 15.0,
        "mel_windows": [32, 64, 128, 256, 512, 1024, 2048],
        "mel_bands": [5, 10, 20, 40, 80, 160, 320],
        "stft": 0.0,                 # multi-resolution STFT loss (spectral convergence + log magnitude)
        "stft_windows": [512, 1024, 2048],
        "l1": 0.0,                   # time-domain L1
        "complex": 0.0,              # compressed complex-STFT L1 (PhaseAwareSTFTLoss)
        "phase": 0.0,                # magnitude-weighted group-delay + instantaneous-frequency loss
        "phase_windows": [480, 960, 1920],
        "commitment": 1.0,           # multiplies RVQOutput.commit_loss (already weighted inside the quantizer)
        "codebook": 1.0,             # multiplies RVQOutput.codebook_loss (0 with EMA codebooks)
        "adversarial": 1.0,
        "feature_matching": 2.0,
    },
    "discriminator": {
        "periods": [2, 3, 5, 7, 11],  # multi-period discriminator (empty = off)
        "mpd_channels": 32,
        "mpd_max_channels": 0,       # widest MPD layer (0 = min(1024, 32 * mpd_channels))
        "stft_windows": [2048, 1024, 512],  # multi-scale STFT discriminator (empty = off)
        "stft_channels": 32,
    },
    "adversarial": {
        "enabled": True,
        "start_step": 0,             # generator-only warm-up before the GAN losses switch on
        "loss": "lsgan",             # "lsgan" or "hinge"
    },
    "optim": {
        "lr": 3e-4,
        "betas": [0.8, 0.99],
        "weight_decay": 0.0,
        "disc_lr": None,             # defaults to lr
        "warmup_steps": 100,
        "decay": "cosine",           # "cosine", "exponential", "none"
        "min_lr_ratio": 0.05,        # cosine floor as a fraction of lr
        "gamma": 0.999996,           # exponential decay per step
        "decay_steps": None,         # length of the cosine schedule (default train.steps)
        "grad_clip": 1000.0,         # max grad norm (0 = off)
        "ema": 0.0,                  # EMA decay of generator weights (0 = off, e.g. 0.999)
    },
    "train": {
        "steps": 1000,
        "log_interval": 10,
        "valid_interval": 500,
        "ckpt_interval": 500,
        "keep_last": 3,
        "amp": "auto",               # "auto" (bf16 on CUDA), "bf16", "none"
        "seed": 0,
        "out_dir": "runs/default",
        "resume": None,              # null | "auto" (latest in out_dir) | checkpoint path
        "max_nonfinite": 20,         # stop after this many non-finite losses in a row
        "valid_nq": None,            # list of nq values for validation metrics (default 1,2,4,..,all)
        "best_metric": "valid_loss",  # best.pt: lowest valid_loss (mel at the largest nq) / mel|si_sdr/nqN, or
                                     # highest pesq|stoi|si_sdr/nqN (e.g. pesq/nq8: the bitrate you ship)
        "audio_samples": 2,          # validation items written to TensorBoard as audio
        "device": "auto",            # "auto", "cpu", "cuda"
        "threads": 0,                # torch.set_num_threads (0 = leave default)
        "progress": True,            # tqdm progress bar
        "tensorboard": True,
        "max_hours": 0.0,            # stop (with a checkpoint) after this much wall time (0 = no limit)
        "freeze_generator": False,   # train only the discriminators against the frozen generator (warm-up)
    },
}


def default_config() -> Dict[str, Dict[str, Any]]:
    """A deep copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


#: keys renamed since older configs (checkpoints and training.json files keep the old name): old -> new
RENAMED = {("data", "loudness_db"): "rms_db"}


def merge_config(user: Dict[str, Any], base: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Merge a user mapping (e.g. parsed YAML) into ``base`` (defaults), refusing unknown sections/keys
    (keys in :data:`RENAMED` are read under their new name)."""
    cfg = default_config() if base is None else copy.deepcopy(base)
    if user is None:
        return cfg
    if not isinstance(user, dict):
        raise CodecError("the training config must be a YAML mapping with sections such as 'model', 'data', 'train'.")
    for section, values in user.items():
        if section not in cfg:
            raise CodecError(f"unknown config section '{section}' (known: {', '.join(cfg)}).")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise CodecError(f"config section '{section}' must be a mapping.")
        for key, value in values.items():
            key = RENAMED.get((section, key), key)
            if key not in cfg[section]:
                raise CodecError(f"unknown config key '{section}.{key}'.")
            if key == "overrides" and section == "model":
                cfg[section][key] = dict(value or {})
            else:
                cfg[section][key] = value
    return cfg


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _coerce(value: Any) -> Any:
    """Fix PyYAML's YAML-1.1 reading of ``1e-4`` (a string) into a float, recursively."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    if isinstance(value, dict):
        return {k: _coerce(v) for k, v in value.items()}
    return value


def _parse_value(text: str) -> Any:
    try:
        return _coerce(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Dict[str, Dict[str, Any]], overrides: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """Apply dotted ``section.key=value`` overrides (values parsed as YAML: ``4``, ``1e-4``, ``[1,2]``, ``null``).

    ``model.overrides.<field>=value`` sets a CodecConfig field.  Returns a new dict.
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise CodecError(f"override '{item}' must look like section.key=value.")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        val = _parse_value(value)
        if len(parts) == 3 and parts[0] == "model" and parts[1] == "overrides":
            cfg["model"]["overrides"][parts[2]] = val
            continue
        if len(parts) != 2:
            raise CodecError(f"override key '{key}' must be section.key (e.g. train.steps=200).")
        section, name = parts
        name = RENAMED.get((section, name), name)
        if section not in cfg:
            raise CodecError(f"unknown config section '{section}' in override '{item}'.")
        if name not in cfg[section]:
            raise CodecError(f"unknown config key '{section}.{name}' in override '{item}'.")
        cfg[section][name] = val
    return cfg


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_path(value: Any, key: str = "path") -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` and ``~`` in a path (or in each path of a list).

    Raises:
        CodecError: ``${VAR}`` without a default and ``VAR`` unset or empty (``key`` names the setting).
    """
    if isinstance(value, (list, tuple)):
        return [expand_path(v, key) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: "re.Match[str]") -> str:
        got = os.environ.get(m.group(1)) or m.group(2)
        if got is None:
            raise CodecError(f"{key} is '{value}' but {m.group(1)} is not set: run e.g. "
                             f"'{m.group(1)}=/path/to/corpus codec train ...' or give {key}=PATH.")
        return got
    return os.path.expanduser(_ENV.sub(sub, value))


def load_config(path: Optional[Union[str, Path]], overrides: Iterable[str] = ()) -> Dict[str, Dict[str, Any]]:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply ``overrides``."""
    user: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise CodecError(f"config file '{p}' does not exist.")
        try:
            user = _coerce(yaml.safe_load(p.read_text()) or {})
        except yaml.YAMLError as exc:
            raise CodecError(f"config file '{p}' is not valid YAML ({str(exc).splitlines()[0]}).") from None
    cfg = merge_config(user)
    cfg = apply_overrides(cfg, list(overrides))
    for key in ("train", "valid"):
        cfg["data"][key] = expand_path(cfg["data"][key], f"data.{key}")
    cfg["train"]["out_dir"] = expand_path(cfg["train"]["out_dir"], "train.out_dir")
    _validate(cfg)
    return cfg


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_range(value: Any) -> bool:
    """``value`` is a ``[low, high]`` pair of numbers with low <= high."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
            and value[0] <= value[1])


def _check_level(value: Any, key: str, allow_range: bool) -> None:
    """A level setting is null, a number of dBFS or (``allow_range``) a ``[low, high]`` pair with low <= high."""
    if value is None or _is_number(value):
        return
    if not (allow_range and _is_range(value)):
        shape = "a number of dBFS, [low, high] with low <= high, or null" if allow_range else \
            "a number of dBFS or null"
        raise CodecError(f"{key} must be {shape}; got {value!r}.")


def _validate(cfg: Dict[str, Dict[str, Any]]) -> None:
    d, t, lo = cfg["data"], cfg["train"], cfg["loss"]
    if float(d["crop_seconds"]) <= 0:
        raise CodecError("data.crop_seconds must be positive.")
    if int(d["batch_size"]) < 1:
        raise CodecError("data.batch_size must be at least 1.")
    if int(t["steps"]) < 0:
        raise CodecError("train.steps must be non-negative.")
    _check_level(d["rms_db"], "data.rms_db", allow_range=True)
    _check_level(d["valid_rms_db"], "data.valid_rms_db", allow_range=False)
    sp = d["speed"]
    if sp is not None and not (_is_range(sp) and 0.5 <= sp[0] and sp[1] <= 2.0):
        raise CodecError(f"data.speed must be [low, high] with 0.5 <= low <= high <= 2.0, or null; got {sp!r}.")
    if len(lo["mel_windows"]) != len(lo["mel_bands"]):
        raise CodecError("loss.mel_windows and loss.mel_bands must have the same length.")
    if cfg["adversarial"]["loss"] not in ("lsgan", "hinge"):
        raise CodecError("adversarial.loss must be 'lsgan' or 'hinge'.")
    if cfg["optim"]["decay"] not in ("cosine", "exponential", "none"):
        raise CodecError("optim.decay must be 'cosine', 'exponential' or 'none'.")
    if str(t["amp"]) not in ("auto", "bf16", "none", "False", "false"):
        raise CodecError("train.amp must be 'auto', 'bf16' or 'none'.")


def dump_config(cfg: Dict[str, Any]) -> str:
    """YAML text of a config (stable key order)."""
    return yaml.safe_dump(json.loads(json.dumps(cfg)), sort_keys=False)
