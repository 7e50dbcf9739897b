"""Model configuration: one small dataclass with a JSON round trip and named presets.

>>> cfg = CodecConfig.preset("24khz")      # 24 kHz, strides (2,4,5,8): hop 320, 75 frames/s
>>> cfg.hop_length, cfg.frame_rate, cfg.bitrate(8)
(320, 75.0, 6000.0)
>>> CodecConfig.from_json(cfg.to_json()) == cfg
True

Presets: ``"24khz"`` (default; 32 levels x 1024 codes: nq=8 is 6 kbps, nq=32 is 24 kbps), ``"16khz"``
(hop 320, 50 frames/s: nq=8 is 4 kbps) and ``"tiny"`` (16 kHz, 8 base channels, 8 levels x 256 codes, for CPU
training tests).  Any field can be overridden: ``CodecConfig.preset("tiny", sample_rate=24000)``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

from .quantization.rvq import focus_levels


@dataclass(frozen=True)
class CodecConfig:
    """All hyper-parameters of a :class:`codec.model.CodecModel`.

    Signal: ``sample_rate``, ``channels`` (1; the model is mono), ``strides`` (encoder downsampling per stage;
    ``hop_length = prod(strides)``).
    Encoder / decoder: ``base_channels`` (channels of the first stage, doubled after each stride, capped at
    ``max_channels``), ``latent_dim``, ``dilations`` (one residual unit per dilation in every stage; the 24/16 kHz
    presets use a single unit per stage — measured 2x faster on CPU than (1, 3, 9) — and "tiny" uses (1, 3, 9)),
    ``residual_kernel_size``, ``compress`` (residual bottleneck factor), ``kernel_size`` (first conv),
    ``last_kernel_size`` (last conv), ``activation`` (``"elu"`` or ``"snake"``).  Down/upsampling convs use kernel
    ``2 * stride``.  Everything is causal.
    Quantizer (``codec.quantization.ResidualVQ``): ``num_quantizers``, ``codebook_size``, ``codebook_dim``,
    ``rvq_dim`` (0 = latent_dim), ``quantizer_dropout`` (fraction of training items using a random number of
    levels), ``quantizer_dropout_exponent`` (that number n drawn with probability ~ n ** -exponent; 0 = uniform),
    ``use_ema``, ``decay``, ``kmeans_init``, ``threshold_ema_dead_code``, ``commitment_weight``,
    ``codebook_weight``, ``residual_weight`` (the residual loss that keeps every level's decoded vectors on the
    residual it sees; 0 = off, the models before 2026-12-07), ``quantizer_focus`` / ``quantizer_focus_levels``
    (the fraction of training items that decode with exactly one of those level counts, drawn uniformly from the
    list, so a count listed twice gets twice the share: the bitrates to favour; 0 = off; a single integer, as older
    ``config.json`` files hold it, is a list of one, and 0 an empty list).
    Frame-rate (Fourier) layers, :mod:`codec.nn.fourier`: ``encoder_type`` / ``decoder_type`` (``"seanet"``, the
    time-domain conv stack, or ``"fourier"``: causal STFT front end / inverse-STFT head around causal ConvNeXt
    blocks at the frame rate), ``n_fft`` (STFT window; the Fourier decoder adds ``n_fft - hop`` samples of
    latency), ``fourier_dim`` (block width), ``fourier_mlp`` (hidden = ``fourier_mlp * fourier_dim``),
    ``fourier_kernel`` (depthwise kernel, frames), ``encoder_layers`` / ``decoder_layers`` (blocks),
    ``level_embedding`` (Fourier decoder only: tell the decoder how many levels made its input, through a
    learned vector per level count added before every block; it starts at zero, so turning it on for a trained
    model does not change its output; off for the models before 2026-12-07).
    """

    sample_rate: int = 24000
    channels: int = 1
    strides: Tuple[int, ...] = (2, 4, 5, 8)
    base_channels: int = 32
    max_channels: int = 512
    latent_dim: int = 128
    dilations: Tuple[int, ...] = (1,)
    residual_kernel_size: int = 3
    compress: int = 2
    kernel_size: int = 7
    last_kernel_size: int = 7
    activation: str = "elu"
    num_quantizers: int = 32
    codebook_size: int = 1024
    codebook_dim: int = 8
    rvq_dim: int = 0
    quantizer_dropout: float = 0.5
    quantizer_dropout_exponent: float = 0.0
    use_ema: bool = True
    decay: float = 0.99
    kmeans_init: bool = True
    threshold_ema_dead_code: float = 2.0
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    residual_weight: float = 0.0
    quantizer_focus: float = 0.0
    quantizer_focus_levels: Tuple[int, ...] = ()
    encoder_type: str = "seanet"
    decoder_type: str = "seanet"
    n_fft: int = 960
    fourier_dim: int = 256
    fourier_mlp: int = 3
    fourier_kernel: int = 7
    encoder_layers: int = 6
    decoder_layers: int = 8
    level_embedding: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        object.__setattr__(self, "quantizer_focus_levels", focus_levels(self.quantizer_focus_levels))
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def hop_length(self) -> int:
        """Samples per frame (product of the strides)."""
        return int(math.prod(self.strides))

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    def bitrate(self, nq: int = None) -> float:  # type: ignore[assignment]
        """Bits per second with ``nq`` levels (default all)."""
        nq = self.num_quantizers if nq is None else int(nq)
        return self.frame_rate * nq * math.log2(self.codebook_size)

    @property
    def decoder_delay(self) -> int:
        """Samples of latency the decoder adds (``n_fft - hop`` for the Fourier decoder's overlap-add, else 0)."""
        return self.n_fft - self.hop_length if self.decoder_type == "fourier" else 0

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency in milliseconds: one frame, plus the Fourier decoder's overlap-add delay."""
        return 1000.0 * (self.hop_length + self.decoder_delay) / self.sample_rate

    def validate(self) -> None:
        """Raise ValueError with one sentence if a value has the wrong type or is out of range.

        Every size is bounded (see :data:`LIMITS`) so that no config can make the model allocate without limit
        (``codec.load`` also bounds the total parameter count before building the model)."""
        def req(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name, (lo, hi) in LIMITS.items():
            v = getattr(self, name)
            req(is_int(v), f"{name} must be an integer, got {v!r}")
            req(lo <= v <= hi, f"{name} must be in {lo}..{hi}, got {v}")
        for name, (lo, hi, max_len) in LIST_LIMITS.items():
            v = getattr(self, name)
            req(isinstance(v, tuple) and len(v) <= max_len and all(is_int(x) for x in v),
                f"{name} must be a list of at most {max_len} integers")
            req(all(lo <= x <= hi for x in v), f"every entry of {name} must be in {lo}..{hi}")
        for name in ("quantizer_dropout", "quantizer_dropout_exponent", "decay", "threshold_ema_dead_code",
                     "commitment_weight", "codebook_weight", "residual_weight", "quantizer_focus"):
            req(is_num(getattr(self, name)) and getattr(self, name) >= 0, f"{name} must be a finite number >= 0")
        for name in ("use_ema", "kmeans_init", "level_embedding"):
            req(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        req(self.channels == 1, "channels must be 1 (the model is mono; multi-channel input is downmixed)")
        req(len(self.strides) >= 1, "strides must be positive integers")
        req(self.hop_length <= min(MAX_HOP, self.sample_rate),
            f"the hop length (product of strides) must be at most {MAX_HOP} and at most sample_rate")
        req(self.max_channels >= self.base_channels, "bad base_channels/max_channels")
        req(self.activation in ("elu", "snake"), "activation must be 'elu' or 'snake'")
        req(0.0 <= self.quantizer_dropout <= 1.0, "quantizer_dropout must be in [0, 1]")
        req(self.quantizer_focus <= 1.0, "quantizer_focus must be in [0, 1]")
        req(all(n <= self.num_quantizers for n in self.quantizer_focus_levels)
            and (self.quantizer_focus == 0 or len(self.quantizer_focus_levels) >= 1),
            "quantizer_focus_levels must be in 1..num_quantizers when quantizer_focus is on")
        req(not self.level_embedding or self.decoder_type == "fourier",
            "level_embedding needs decoder_type 'fourier'")
        req(self.decay <= 1.0, "decay must be in [0, 1]")
        req(self.encoder_type in ("seanet", "fourier") and self.decoder_type in ("seanet", "fourier"),
            "encoder_type and decoder_type must be 'seanet' or 'fourier'")
        req(self.n_fft >= self.hop_length and self.n_fft % self.hop_length == 0
            and (self.decoder_type != "fourier" or self.n_fft >= 3 * self.hop_length),
            "n_fft must be a multiple of the hop length (at least 3 hops for the Fourier decoder)")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        """JSON text (indented, sorted by field order)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CodecConfig":
        """Build from a dict; unknown keys raise ValueError (one sentence)."""
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ValueError(f"bad config value ({exc})") from None

    @classmethod
    def from_json(cls, text: str) -> "CodecConfig":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def preset(cls, name: str = "24khz", **overrides: Any) -> "CodecConfig":
        """Named preset (``"24khz"``, ``"16khz"``, ``"tiny"``) with optional field overrides."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
        d = dict(PRESETS[name])
        d.update(overrides)
        return cls.from_dict(d)


#: Inclusive bounds of the integer fields checked by :meth:`CodecConfig.validate` (sizes a model allocates from).
LIMITS: Dict[str, Tuple[int, int]] = {
    "sample_rate": (1000, 384000),
    "channels": (1, 1),
    "base_channels": (1, 4096),
    "max_channels": (1, 4096),
    "latent_dim": (1, 4096),
    "residual_kernel_size": (1, 255),
    "compress": (1, 64),
    "kernel_size": (1, 255),
    "last_kernel_size": (1, 255),
    "num_quantizers": (1, 64),
    "codebook_size": (2, 65536),
    "codebook_dim": (1, 4096),
    "rvq_dim": (0, 4096),
    "n_fft": (1, 8192),
    "fourier_dim": (1, 4096),
    "fourier_mlp": (1, 16),
    "fourier_kernel": (1, 255),
    "encoder_layers": (0, 64),
    "decoder_layers": (0, 64),
}
#: ``(min entry, max entry, max length)`` of the list fields.
LIST_LIMITS: Dict[str, Tuple[int, int, int]] = {"strides": (1, 64, 8), "dilations": (1, 1024, 8),
                                                "quantizer_focus_levels": (1, 64, 64)}
#: List fields that ``config.json`` files written before lists were allowed hold as one integer (read as a list
#: of one; 0 as an empty list).
SINGLE_INT_LISTS: Tuple[str, ...] = ("quantizer_focus_levels",)
#: Largest hop length (product of the strides).
MAX_HOP = 8192

PRESETS: Dict[str, Dict[str, Any]] = {
    "24khz": {},
    "16khz": {"sample_rate": 16000},
    "24khz-fourier": {"encoder_type": "fourier", "decoder_type": "fourier", "latent_dim": 128, "rvq_dim": 0},
    "tiny": {"sample_rate": 16000, "base_channels": 8, "max_channels": 128, "latent_dim": 32, "dilations": [1, 3, 9],
             "num_quantizers": 8, "codebook_size": 256, "codebook_dim": 8},
}
