"""Saving and loading models: ``config.json`` + ``model.safetensors`` (weights only, never pickle).

Layout of a model directory::

    config.json         CodecConfig fields (plus "format": "codec-model-1")
    model.safetensors   state_dict tensors (weight norm stored as parameters weight_v / weight_g)
    README.md           model card (written by others; save_pretrained never overwrites it)

**Names and paths.**  This module holds the one resolver every part of codec uses (``codec.load``, the
CLI's ``--model`` and the model named in a ``.codes`` file, ``codec eval``, ``codec bench``, ``codec demo``
and the trainer's ``model.init_from``): a *name* is a string without a path separator (``speech-24k``) and is
looked up only in ``$CODEC_PRETRAINED_DIR/<name>`` (if the variable is set) and then in
``<repo>/pretrained/<name>`` -- never in the current directory; a *path* (anything with a ``/``, ``~``,
``.``/``..``, or an ``os.PathLike``) is used as given.  A folder named like a pretrained model in the current
directory is therefore loaded only as ``./speech-24k``.

``load(path_or_name)`` refuses (:class:`codec.errors.CodecError`, one sentence) every bad model directory:
missing files, bad JSON, unknown, mistyped or out-of-bounds config fields, a model larger than
:data:`MAX_PARAMETERS`, unreadable weights, missing / unexpected / mis-shaped tensors and tensors of another
dtype than the model's (float16 / bfloat16 weights are accepted and upcast to float32, and so are int8 weights
stored with a float scale per row, ``<name>.int8_scale``, as :func:`save_pretrained` writes them with
``int8``).  The model size is bounded from the config before the model is built, and shapes and dtypes are
checked against the safetensors header before the weights are read.
``model.weights_hash`` = first 16 hex digits of the sha256 of ``model.safetensors``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from .errors import CodecError, OptionError
from .model import CodecModel

FORMAT = "codec-model-1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_MODEL = "speech-24k"
#: Largest model ``load`` builds (elements of the state_dict: 2**28 float32 = 1 GiB).
MAX_PARAMETERS = 1 << 28
#: Largest config.json read (bytes).
MAX_CONFIG_BYTES = 1 << 20
PathLike = Union[str, os.PathLike]

__all__ = ["FORMAT", "DEFAULT_MODEL", "MAX_PARAMETERS", "pretrained_dir", "search_dirs", "is_model_name",
           "resolve", "locate", "estimated_elements", "file_hash", "save_pretrained", "load_config", "load"]


def repo_pretrained_dir() -> Path:
    """``<repo>/pretrained`` (the models and samples shipped with codec)."""
    return Path(__file__).resolve().parent.parent / "pretrained"


def search_dirs() -> List[Path]:
    """Where names are looked up, in order: ``$CODEC_PRETRAINED_DIR`` (when set) then ``<repo>/pretrained``."""
    dirs: List[Path] = []
    env = os.environ.get("CODEC_PRETRAINED_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    repo = repo_pretrained_dir()
    if all(d != repo for d in dirs):
        dirs.append(repo)
    return dirs


def pretrained_dir() -> Path:
    """The first directory names are looked up in (``$CODEC_PRETRAINED_DIR`` or ``<repo>/pretrained``)."""
    return search_dirs()[0]


def is_model_name(spec: Optional[PathLike]) -> bool:
    """True if ``spec`` is a pretrained model *name* (a ``str`` without a path separator), not a path."""
    if not isinstance(spec, str) or not spec:
        return False
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return not any(sep in spec for sep in seps) and spec not in (".", "..") and not spec.startswith("~")


def _looked_in() -> str:
    return " and ".join(f"'{d}'" for d in search_dirs())


def resolve(path_or_name: Optional[PathLike] = None) -> Path:
    """Directory of a model given a path or a name (see the module docstring; ``None`` = :data:`DEFAULT_MODEL`).

    Raises :class:`CodecError` (one sentence) if there is no such model."""
    if path_or_name is None:
        for d in search_dirs():
            if (d / DEFAULT_MODEL).is_dir():
                return d / DEFAULT_MODEL
        raise OptionError("model", "DIR (a directory written by save_pretrained).",
                          lead=f"the default model '{DEFAULT_MODEL}' is not installed in pretrained/ yet; pass ")
    if isinstance(path_or_name, str) and not path_or_name.strip():
        raise CodecError("the model name is empty.")
    if is_model_name(path_or_name):
        name = str(path_or_name)
        for d in search_dirs():
            if (d / name).is_dir():
                return d / name
        hint = f" (a directory is given as a path, e.g. './{name}')" if Path(name).is_dir() else ""
        raise CodecError(f"model '{name}' is neither a directory path nor a pretrained model name "
                         f"in {_looked_in()}{hint}.")
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CodecError(f"model path '{path_or_name}' is not a directory.")
    raise CodecError(f"model directory '{path_or_name}' does not exist.")


def locate(path_or_name: Optional[PathLike] = None) -> Tuple[Path, str]:
    """``(directory, label)`` of a model: the label is the name for pretrained names (``None``: the default
    model) and the absolute directory for paths (for messages; ``.codes`` files store ``model.model_name``, the
    directory's name, never a path)."""
    d = resolve(path_or_name)
    if path_or_name is None:
        return d, DEFAULT_MODEL
    if is_model_name(path_or_name):
        return d, str(path_or_name)
    return d, str(d.resolve())


def file_hash(path: PathLike, digits: int = 16) -> str:
    """First ``digits`` hex digits of the sha256 of a file (64: all of it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()[:digits]


#: suffix of the float32 scale ``[rows]`` stored beside every int8 weight ``<name>``
INT8_SCALE = ".int8_scale"
#: ``save_pretrained(int8=True)`` stores as int8 the floating tensors outside the quantizer with at least 2
#: dimensions and this many elements: the encoder's and decoder's weight matrices, ~97 % of the speech model
INT8_MIN_ELEMENTS = 4096


def int8_rows(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of ``w [R, ...]`` with one scale per row (first dimension).

    Returns ``(q, scale)``: ``q`` int8 shaped like ``w`` in [-127, 127] and ``scale [R]`` float32 with
    ``w ~ q * scale`` (``scale = max |row| / 127``; an all-zero row gets scale 0 and zeros)."""
    rows = w.detach().float().reshape(w.shape[0], -1)
    scale = rows.abs().amax(dim=1) / 127.0
    q = torch.round(rows / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).clamp_(-127, 127)
    return q.to(torch.int8).reshape(w.shape), scale


def _int8_eligible(name: str, t: torch.Tensor) -> bool:
    return (t.is_floating_point() and t.dim() >= 2 and t.numel() >= INT8_MIN_ELEMENTS
            and not name.startswith("quantizer."))


def save_pretrained(model: CodecModel, directory: PathLike, half: bool = False, int8: bool = False) -> str:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created); keeps an existing README.md.

    ``half`` stores the floating-point tensors as float16 (half the file; :func:`load` upcasts them to float32,
    so outputs differ from the float32 model's by float16 rounding of the weights). ``int8`` also stores the
    encoder's and decoder's weight matrices as int8 with a float32 scale per row (:func:`int8_rows`; about a
    quarter of the float32 file) and everything else as float16; the quantizer (codebooks and projections) is
    never stored as int8. Returns the weights hash (also set on ``model.weights_hash``)."""
    from safetensors.torch import save_file

    from .audio import atomic_output

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.config.to_dict())
    cfg["format"] = FORMAT
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    if half or int8:
        packed: Dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            if int8 and _int8_eligible(k, v):
                packed[k], packed[k + INT8_SCALE] = int8_rows(v)
            else:
                packed[k] = v.half() if v.is_floating_point() else v
        sd = packed
    with atomic_output(d / WEIGHTS_NAME) as tmp:  # the usual file mode (safetensors alone writes 0600)
        save_file(sd, str(tmp), metadata={"format": FORMAT})
    with atomic_output(d / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    h = file_hash(d / WEIGHTS_NAME)
    model.weights_hash = h
    return h


def _check_config_types(raw: Dict, f: Path) -> None:
    """Refuse JSON values of the wrong type before ``CodecConfig`` converts anything (``1024.5``, ``true``, ...)."""
    import dataclasses

    from .config import SINGLE_INT_LISTS, CodecConfig

    def bad(name: str, what: str, value) -> CodecError:
        text = json.dumps(value, allow_nan=True)
        text = text if len(text) <= 40 else text[:37] + "..."
        return CodecError(f"'{f}' is not a valid model config: {name} must be {what}, got {text}.")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for fld in dataclasses.fields(CodecConfig):
        if fld.name not in raw:
            continue
        v, default = raw[fld.name], fld.default
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise bad(fld.name, "true or false", v)
        elif isinstance(default, int):
            if not is_int(v):
                raise bad(fld.name, "an integer", v)
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(fld.name, "a finite number", v)
        elif isinstance(default, str):
            if not isinstance(v, str):
                raise bad(fld.name, "a string", v)
        elif isinstance(default, tuple) or fld.name in ("strides", "dilations"):
            if fld.name in SINGLE_INT_LISTS and is_int(v):
                continue  # the older one-integer form, which CodecConfig reads as a list of one
            if not isinstance(v, list) or len(v) > 64 or not all(is_int(x) for x in v):
                raise bad(fld.name, "a list of integers", v)


def load_config(directory: PathLike):
    """CodecConfig from ``directory/config.json`` (CodecError on any problem: bad JSON, unknown or mistyped
    fields, values out of the bounds of ``CodecConfig.validate``)."""
    from .config import CodecConfig

    d = Path(directory)
    f = d / CONFIG_NAME
    if not f.is_file():
        raise CodecError(f"model directory '{d}' has no {CONFIG_NAME}.")
    try:
        size = f.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise CodecError(f"'{f}' is too large for a model config ({size} bytes, at most {MAX_CONFIG_BYTES}).")
        text = f.read_bytes().decode("utf-8")

        def no_constants(name: str):
            raise ValueError(f"{name} is not a JSON number")

        raw = json.loads(text, parse_constant=no_constants)
    except CodecError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CodecError(f"'{f}' is not valid JSON ({first.rstrip('.')}).") from None
    if not isinstance(raw, dict):
        raise CodecError(f"'{f}' must contain a JSON object.")
    fmt = raw.pop("format", FORMAT)
    if fmt != FORMAT:
        shown = fmt if isinstance(fmt, str) and len(fmt) <= 40 and fmt.isprintable() else "?"
        raise CodecError(f"'{f}' has unsupported format '{shown}' (expected '{FORMAT}').")
    unknown = sorted(set(raw) - set(CodecConfig.field_names()))
    if unknown:
        names = ", ".join(repr(u)[1:-1][:40] for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise CodecError(f"'{f}' is not a valid model config: unknown config field(s): {names}.")
    _check_config_types(raw, f)
    try:
        return CodecConfig.from_dict(raw)
    except (ValueError, TypeError, OverflowError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CodecError(f"'{f}' is not a valid model config: {msg.rstrip('.')}.") from None


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _stored_tensors(wf: Path) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """``{name: (dtype name, shape)}`` from the safetensors header (nothing is loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(wf), framework="pt", device="cpu") as fh:
            out = {}
            for k in fh.keys():
                sl = fh.get_slice(k)
                dt = str(sl.get_dtype())
                out[k] = (_ST_DTYPES.get(dt, dt.lower()), tuple(int(n) for n in sl.get_shape()))
            return out
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "corrupt"
        raise CodecError(f"cannot read weights '{wf}' ({first.rstrip('.')}).") from None


def estimated_elements(cfg) -> int:
    """Tensor elements (parameters and buffers, persistent or not) of the model ``cfg`` describes, computed from
    the config alone (nothing is built): what :func:`load` bounds by :data:`MAX_PARAMETERS` before allocating.

    An estimate of the structure in :mod:`codec.model`, :mod:`codec.nn.fourier` and :mod:`codec.quantization`
    (weight-normed convs count weight + gain + bias; snake activations one parameter per channel);
    ``tests/test_hostile_inputs.py`` keeps it within a small factor of the real count."""
    ch = [min(cfg.base_channels * 2 ** i, cfg.max_channels) for i in range(len(cfg.strides) + 1)]
    act = 1 if cfg.activation == "snake" else 0

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k + 2 * cout

    def res_units(c: int) -> int:
        h = max(1, c // cfg.compress)
        return len(cfg.dilations) * (conv(c, h, cfg.residual_kernel_size) + conv(h, c, 1) + act * (c + h))

    def blocks(layers: int) -> int:
        d, hid = cfg.fourier_dim, cfg.fourier_dim * cfg.fourier_mlp
        return layers * (cfg.fourier_kernel * d + 5 * d + 2 * d * hid + hid)

    bins = cfg.n_fft // 2 + 1
    n = 0
    if cfg.encoder_type == "seanet":
        n += conv(cfg.channels, ch[0], cfg.kernel_size) + conv(ch[-1], cfg.latent_dim, cfg.last_kernel_size)
        n += sum(res_units(ch[i]) + conv(ch[i], ch[i + 1], 2 * s) + act * ch[i] for i, s in enumerate(cfg.strides))
    else:
        n += 2 * cfg.n_fft * bins + 3 * bins * cfg.fourier_dim + blocks(cfg.encoder_layers)
        n += cfg.fourier_dim * (cfg.latent_dim + 3)
    if cfg.decoder_type == "seanet":
        n += conv(cfg.latent_dim, ch[-1], cfg.kernel_size) + conv(ch[0], cfg.channels, cfg.last_kernel_size)
        n += sum(res_units(ch[i]) + conv(ch[i + 1], ch[i], 2 * s) + act * ch[i + 1] for i, s in enumerate(cfg.strides))
    else:
        n += cfg.latent_dim * cfg.fourier_dim + blocks(cfg.decoder_layers) + 2 * cfg.fourier_dim
        n += (cfg.fourier_dim + 1) * 2 * bins + cfg.n_fft
        if cfg.level_embedding:
            n += (cfg.num_quantizers + 1) * cfg.decoder_layers * cfg.fourier_dim
    rvq = cfg.rvq_dim or cfg.latent_dim
    n += 2 * cfg.latent_dim * rvq if rvq != cfg.latent_dim else 0
    per_level = cfg.codebook_size * (2 * cfg.codebook_dim + 1) + 1
    per_level += 2 * rvq * cfg.codebook_dim + rvq + cfg.codebook_dim if cfg.codebook_dim != rvq else 0
    return int(n + cfg.num_quantizers * per_level)


def _check_size(cfg, f: Path) -> None:
    total = estimated_elements(cfg)
    if total > MAX_PARAMETERS:
        raise CodecError(f"'{f}' describes a model of about {total:,} parameters, above the limit of "
                         f"{MAX_PARAMETERS:,}.")


#: stored dtypes accepted for each model dtype (half precision is upcast on load)
_ACCEPTED = {"float32": ("float32", "float16", "bfloat16")}


def _int8_scaled(wf: Path, stored: Dict[str, Tuple[str, Tuple[int, ...]]]) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """``stored`` with every int8 weight and its ``INT8_SCALE`` tensor folded into one float32 entry; refuses a
    scale without its int8 weight, or of the wrong shape or dtype."""
    out = dict(stored)
    for k, (sdt, sshape) in stored.items():
        if not k.endswith(INT8_SCALE):
            continue
        base = k[:-len(INT8_SCALE)]
        if base not in stored or stored[base][0] != "int8":
            raise CodecError(f"weights '{wf}' are corrupted: scale '{k}' has no int8 tensor '{base}' beside it.")
        bshape = stored[base][1]
        if sdt not in _ACCEPTED["float32"] or sshape != bshape[:1] or not bshape:
            raise CodecError(f"weights '{wf}' are corrupted: scale '{k}' must be a float vector of {bshape[:1]} "
                             f"values, got {sdt} {sshape}.")
        del out[k]
        out[base] = ("float32", bshape)
    return out


def _dequantize_int8(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``sd`` with every int8 weight multiplied by its row scales (float32) and the scales removed."""
    for k in [k for k in sd if k.endswith(INT8_SCALE)]:
        base, scale = k[:-len(INT8_SCALE)], sd.pop(k).float()
        q = sd[base]
        sd[base] = q.float() * scale.reshape((-1,) + (1,) * (q.dim() - 1))
    return sd


def _compare(wf: Path, own: Dict[str, Tuple[str, Tuple[int, ...]]], stored: Dict[str, Tuple[str, Tuple[int, ...]]]):
    stored = _int8_scaled(wf, stored)
    missing = sorted(set(own) - set(stored))
    unexpected = sorted(set(stored) - set(own))
    if missing:
        raise CodecError(f"weights '{wf}' do not match config.json: {len(missing)} tensor(s) missing "
                         f"(e.g. '{missing[0]}').")
    if unexpected:
        shown = repr(unexpected[0])[1:-1][:80]
        raise CodecError(f"weights '{wf}' do not match config.json: {len(unexpected)} unexpected tensor(s) "
                         f"(e.g. '{shown}').")
    for k, (dt, shape) in own.items():
        sdt, sshape = stored[k]
        if sshape != shape:
            raise CodecError(f"weights '{wf}' do not match config.json: tensor '{k}' has shape "
                             f"{sshape}, expected {shape}.")
        if sdt not in _ACCEPTED.get(dt, (dt,)):
            raise CodecError(f"weights '{wf}' do not match config.json: tensor '{k}' is stored as {sdt}, "
                             f"expected {dt}.")


def load(path_or_name: Optional[PathLike], device: Optional[Union[str, torch.device]] = None):
    """Load a model directory or pretrained name -> CodecModel in eval mode on ``device`` (default CPU).

    Refuses (CodecError, one sentence) every bad model directory (see the module docstring); names and paths
    are resolved by :func:`resolve`.  Sets ``model.weights_hash``, ``model.model_dir`` (absolute) and
    ``model.model_name`` (the directory's name: the name for pretrained names; what ``.codes`` files record, never
    a path)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = resolve(path_or_name)
    cfg = load_config(d)
    wf = d / WEIGHTS_NAME
    if not wf.is_file():
        raise CodecError(f"model directory '{d}' has no {WEIGHTS_NAME}.")
    stored = _stored_tensors(wf)  # header only: names, dtypes, shapes
    _check_size(cfg, d / CONFIG_NAME)  # before anything is allocated
    try:
        model = CodecModel(cfg)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError, MemoryError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CodecError(f"cannot build the model described by '{d / CONFIG_NAME}' ({first.rstrip('.')}).") from None
    own = {k: (str(v.dtype).replace("torch.", ""), tuple(v.shape)) for k, v in model.state_dict().items()}
    _compare(wf, own, stored)  # before the weights are read
    try:
        sd = load_file(str(wf), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CodecError(f"cannot read weights '{wf}' ({str(exc).splitlines()[0] if str(exc) else 'corrupt'}).") \
            from None
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CodecError(f"weights '{wf}' are corrupted: tensor '{k}' contains NaN or infinite values.")
    sd = _dequantize_int8(sd)
    try:
        model.load_state_dict(sd, strict=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CodecError(f"weights '{wf}' do not match config.json ({first.rstrip('.:')}).") from None
    model.eval()
    if device is not None:
        try:
            model = model.to(device)
        except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CodecError(f"cannot move the model to device '{device}' ({first.rstrip('.')}).") from None
    model.weights_hash = file_hash(wf)
    model.model_dir = str(d.resolve())
    model.model_name = d.name or d.resolve().name
    return model
