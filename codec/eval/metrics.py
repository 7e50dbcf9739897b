"""Objective audio quality metrics: SI-SDR, multi-scale log-mel distance, PESQ-WB, STOI, DNSMOS, DistillMOS,
speaker similarity, mean + 95 % CI.

All metric functions take mono signals as 1-D arrays ``[T]`` (numpy arrays or torch tensors; extra
leading singleton dimensions such as ``[1, T]`` / ``[1, 1, T]`` are squeezed). The reference comes first.
When the two signals differ in length they are cut to the shorter one.

PESQ, STOI and DNSMOS need the optional packages ``pesq``, ``pystoi`` and ``speechmos`` (``pip install
'codec[eval]'``); speaker similarity needs ``resemblyzer`` (see :data:`INSTALL`: its ``webrtcvad`` dependency has
no wheels, so it is installed with ``--no-deps`` beside ``webrtcvad-wheels``), DistillMOS needs ``distillmos`` and
ViSQOL ``visqol-python[lattice]`` (neither is part of any extra); the other metrics only need numpy, scipy and
torch. :data:`METRIC_RATES` says at which rate each fixed-rate metric scores. The mel filterbank is implemented
here (no librosa).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import math
import types
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.stats
import torch

from codec.audio import resample
from codec.errors import CodecError

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]

__all__ = [
    "si_sdr",
    "snr",
    "mel_filterbank",
    "hz_to_mel",
    "mel_to_hz",
    "log_mel_spectrogram",
    "multiscale_mel_distance",
    "pesq_wb",
    "stoi",
    "visqol_speech",
    "dnsmos",
    "distill_mos",
    "speaker_similarity",
    "require",
    "OPTIONAL_PACKAGES",
    "INSTALL",
    "METRIC_RATES",
    "mean_ci",
    "summarize",
    "DEFAULT_MEL_WINDOWS",
    "DEFAULT_MEL_BANDS",
]

#: DAC-style multi-scale mel settings: window lengths (samples) and mel bands per scale.
DEFAULT_MEL_WINDOWS: Tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_MEL_BANDS: Tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)


def _as_1d(x: ArrayLike) -> np.ndarray:
    """Convert to a float64 numpy vector ``[T]`` (squeezes singleton dims)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    a = np.squeeze(a)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise CodecError(f"metrics expect a mono signal [T], got shape {tuple(np.shape(x))}")
    return a


def _pair(ref: ArrayLike, est: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    r, e = _as_1d(ref), _as_1d(est)
    n = min(len(r), len(e))
    if n == 0:
        raise CodecError("metrics need non-empty signals")
    return r[:n], e[:n]


def si_sdr(ref: ArrayLike, est: ArrayLike, eps: float = 1e-12) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019).

    Both signals are made zero-mean; the reference is scaled by the least-squares gain
    ``alpha = <est, ref> / <ref, ref>`` and ``10 log10(|alpha ref|^2 / |alpha ref - est|^2)`` is returned.
    Identical signals give a very large value (> 100 dB); independent noise gives a large negative one.

    Args:
        ref: reference ``[T]``.
        est: estimate ``[T]``.
    """
    r, e = _pair(ref, est)
    r = r - r.mean()
    e = e - e.mean()
    alpha = float(np.dot(e, r) / (np.dot(r, r) + eps))
    target = alpha * r
    noise = target - e
    return float(10.0 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


def snr(ref: ArrayLike, est: ArrayLike, eps: float = 1e-12) -> float:
    """Plain signal-to-noise ratio ``10 log10(|ref|^2 / |ref - est|^2)`` in dB (no scaling, no mean removal)."""
    r, e = _pair(ref, est)
    return float(10.0 * np.log10((np.dot(r, r) + eps) / (np.dot(r - e, r - e) + eps)))


# ---------------------------------------------------------------------------------------------
# Mel spectrograms
# ---------------------------------------------------------------------------------------------


def hz_to_mel(f: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as used by most codec losses (librosa's)."""
    import librosa

    return librosa.hz_to_mel(np.asarray(f, dtype=np.float64), htk=False)


def mel_to_hz(m: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
    """Inverse of :func:`hz_to_mel`."""
    import librosa

    return librosa.mel_to_hz(np.asarray(m, dtype=np.float64), htk=False)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
    """Triangular mel filterbank on the Slaney scale with Slaney area normalisation (``librosa.filters.mel``):
    the one filterbank of codec, used by the evaluation metrics and the training losses.

    Args:
        sample_rate: sample rate in Hz.
        n_fft: FFT size; the filterbank covers the ``n_fft // 2 + 1`` rFFT bins.
        n_mels: number of mel bands.
        fmin / fmax: band edges in Hz (``fmax`` defaults to Nyquist).
    Returns:
        ``[n_mels, n_fft // 2 + 1]`` float32 weights.
    """
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False,
                               norm="slaney", dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _mel_fb_tensor(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    return torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels))


def log_mel_spectrogram(x: ArrayLike, sample_rate: int, win_length: int = 1024, n_mels: int = 80,
                        hop_length: Optional[int] = None, eps: float = 1e-5) -> torch.Tensor:
    """log10 mel magnitude spectrogram of a mono signal ``[T]`` or a batch of them ``[B, T]``.

    Args:
        x: signal ``[T]`` (or ``[B, T]`` torch/numpy).
        win_length: Hann window = FFT size; ``hop_length`` defaults to ``win_length // 4``.
    Returns:
        ``[n_mels, frames]`` (``[B, n_mels, frames]`` for a batch) float32 tensor ``log10(max(mel, eps))``.
    """
    sig = x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
    if sig.dim() != 2:  # anything but a batch [B, T]: squeeze to one signal [T]
        sig = torch.from_numpy(_as_1d(x).astype(np.float32))
    hop = hop_length or max(1, win_length // 4)
    if sig.shape[-1] < win_length:
        sig = torch.nn.functional.pad(sig, (0, win_length - sig.shape[-1]))
    spec = torch.stft(sig, n_fft=win_length, hop_length=hop, win_length=win_length,
                      window=torch.hann_window(win_length), center=True, return_complex=True).abs()
    mel = torch.matmul(_mel_fb_tensor(int(sample_rate), win_length, n_mels), spec)
    return torch.log10(mel.clamp_min(eps))


def multiscale_mel_distance(ref: ArrayLike, est: ArrayLike, sample_rate: int,
                            window_lengths: Sequence[int] = DEFAULT_MEL_WINDOWS,
                            n_mels: Sequence[int] = DEFAULT_MEL_BANDS, eps: float = 1e-5) -> float:
    """Multi-scale log-mel distance (as DAC's mel loss): for each scale, the mean absolute
    difference of ``log10(max(mel, eps))`` between reference and estimate; the scales are **summed**.

    Windows 32..2048 samples with 5..320 mel bands, hop = window / 4. 0 for identical signals,
    larger is worse (typically ~0.5-1.5 for good neural codecs at 24 kHz, several for noise).

    Args:
        ref, est: mono signals ``[T]`` at ``sample_rate``.
    """
    if len(window_lengths) != len(n_mels):
        raise CodecError("window_lengths and n_mels must have the same number of entries.")
    r, e = _pair(ref, est)
    both = torch.from_numpy(np.stack([r, e]).astype(np.float32))
    total = 0.0
    with torch.inference_mode():
        for w, m in zip(window_lengths, n_mels):
            a, b = log_mel_spectrogram(both, sample_rate, w, m, eps=eps)
            total += float((a - b).abs().mean())
    return total


# ---------------------------------------------------------------------------------------------
# PESQ / STOI (optional packages)
# ---------------------------------------------------------------------------------------------


#: metric -> (module to import, package to install): the optional packages behind the metrics that need one.
OPTIONAL_PACKAGES = {"pesq": ("pesq", "pesq"), "stoi": ("pystoi", "pystoi"), "visqol": ("visqol", "visqol-python"),
                     "dnsmos": ("speechmos", "speechmos"), "distillmos": ("distillmos", "distillmos"),
                     "spk_sim": ("resemblyzer", "resemblyzer")}
#: metric -> the command that installs its package
INSTALL = {"pesq": "pip install 'codec[eval]'", "stoi": "pip install 'codec[eval]'",
           "visqol": "pip install 'visqol-python[lattice]'", "dnsmos": "pip install 'codec[eval]'",
           "distillmos": "pip install distillmos",
           "spk_sim": "pip install webrtcvad-wheels && pip install --no-deps resemblyzer"}
_TITLE = {"pesq": "PESQ", "stoi": "STOI", "visqol": "ViSQOL", "dnsmos": "DNSMOS", "distillmos": "DistillMOS",
          "spk_sim": "speaker-similarity"}
#: metric -> the sample rate (Hz) it scores at; both signals are resampled to it (the mel distance and SI-SDR,
#: not listed, score at the rate they are given, the model's rate in ``codec eval``)
METRIC_RATES = {"pesq": 16000, "stoi": 10000, "visqol": 16000, "dnsmos": 16000, "distillmos": 16000,
                "spk_sim": 16000}


def require(metric: str) -> types.ModuleType:
    """Import and return the optional package behind ``metric`` (a key of :data:`OPTIONAL_PACKAGES`).

    Raises:
        CodecError: the package (or one it imports) is not installed; the message says what to install.
    """
    module, package = OPTIONAL_PACKAGES[metric]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CodecError(f"the {_TITLE[metric]} metric needs the '{package}' package: {INSTALL[metric]}.") from None


def _pair_at(ref: ArrayLike, est: ArrayLike, sample_rate: int, target_rate: int,
             min_seconds: float, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reference and estimate as float64 ``[T]`` resampled to ``target_rate``, cut to a common length.

    Raises:
        CodecError: the common length is below ``min_seconds``.
    """
    r, e = _pair(ref, est)
    r, e = _mono_at(r, sample_rate, target_rate), _mono_at(e, sample_rate, target_rate)
    n = min(len(r), len(e))
    if n < min_seconds * target_rate:
        raise CodecError(f"{metric} needs at least {min_seconds:g} s of audio.")
    return r[:n], e[:n]


def _mono_at(x: ArrayLike, sample_rate: int, target_rate: int) -> np.ndarray:
    """``x`` as float64 ``[T]`` resampled (soxr) from ``sample_rate`` to ``target_rate``."""
    a = _as_1d(x)
    return a if sample_rate == target_rate else resample(a, sample_rate, target_rate).astype(np.float64)


def pesq_wb(ref: ArrayLike, est: ArrayLike, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO 1.04..4.64) on signals resampled to 16 kHz
    (:data:`METRIC_RATES`).

    Args:
        ref, est: mono signals ``[T]`` at ``sample_rate``.
    Returns:
        MOS-LQO, or ``nan`` when PESQ finds no speech in the reference (silent input).
    Raises:
        CodecError: the ``pesq`` package is missing or the signals are shorter than 0.25 s.
    """
    pesq_mod = require("pesq")
    r, d = _pair_at(ref, est, sample_rate, METRIC_RATES["pesq"], 0.25, "PESQ")
    if not np.any(r):
        return float("nan")
    try:
        return float(pesq_mod.pesq(16000, r.astype(np.float32), d.astype(np.float32), "wb"))
    except Exception as e:  # pesq.NoUtterancesError / PesqError
        if "utterance" in str(e).lower() or type(e).__name__.lower().startswith("nouttera"):
            return float("nan")
        raise


def stoi(ref: ArrayLike, est: ArrayLike, sample_rate: int, extended: bool = False) -> float:
    """Short-time objective intelligibility (Taal et al. 2011; ``extended`` = ESTOI), 0..1, via ``pystoi``.

    The signals are resampled to 10 kHz (STOI's internal rate) here, with soxr.

    Args:
        ref, est: mono signals ``[T]`` at ``sample_rate``.
    Raises:
        CodecError: the ``pystoi`` package is missing or the signals are shorter than 0.25 s.
    """
    pystoi_mod = require("stoi")
    r, d = _pair_at(ref, est, sample_rate, METRIC_RATES["stoi"], 0.25, "STOI")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(pystoi_mod.stoi(r, d, 10000, extended=extended))


_VISQOL_API = None


def visqol_speech(ref: ArrayLike, est: ArrayLike, sample_rate: int) -> float:
    """ViSQOL v3 speech-mode MOS-LQO (1..5) on signals resampled to 16 kHz, via ``visqol-python``
    with its deep-lattice mapping (as Google's C++ default; the polynomial fallback, which over-predicts
    by 1-2 MOS, is never used).

    Args:
        ref, est: mono signals ``[T]`` at ``sample_rate``.
    Raises:
        CodecError: ``visqol-python`` or its lattice runtime (``ai-edge-litert``) is missing, or the
            signals are shorter than 0.5 s.
    """
    global _VISQOL_API
    vq = require("visqol")
    r, d = _pair_at(ref, est, sample_rate, METRIC_RATES["visqol"], 0.5, "ViSQOL")
    if _VISQOL_API is None:
        api = vq.VisqolApi()
        try:
            api.create(mode="speech", use_lattice_model=True)
        except ImportError:
            raise CodecError("the ViSQOL metric needs the lattice runtime: "
                             "pip install 'visqol-python[lattice]'.") from None
        _VISQOL_API = api
    return float(_VISQOL_API.measure_from_arrays(r, d, 16000).moslqo)


# ---------------------------------------------------------------------------------------------
# Non-intrusive MOS predictors and speaker similarity (optional packages)
# ---------------------------------------------------------------------------------------------


def _at_16k(x: ArrayLike, sample_rate: int, metric: str) -> np.ndarray:
    """One signal as float32 ``[T]`` at 16 kHz clipped to [-1, 1]; CodecError below 0.25 s."""
    a = _mono_at(x, sample_rate, 16000)
    if len(a) < 4000:
        raise CodecError(f"{metric} needs at least 0.25 s of audio.")
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def dnsmos(est: ArrayLike, sample_rate: int) -> Dict[str, float]:
    """DNSMOS P.835 (Reddy et al. 2022) of one signal, non-intrusive, via ``speechmos`` (its ONNX models).

    The signal is resampled to 16 kHz (the models' rate) and clipped to [-1, 1]; ``speechmos`` scores 9 s windows
    with a 1 s hop (a shorter clip is repeated up to 9 s).

    Args:
        est: mono signal ``[T]`` at ``sample_rate``.
    Returns:
        ``{"sig", "bak", "ovrl", "p808"}``: speech quality, background quality, overall quality (P.835 MOS 1..5,
        after DNSMOS's polynomial mapping) and the P.808 overall MOS.
    Raises:
        CodecError: ``speechmos`` (or ``onnxruntime`` / ``librosa``, which it imports) is missing, or the
            signal is shorter than 0.25 s.
    """
    mod = require("dnsmos")
    x = _at_16k(est, sample_rate, "DNSMOS")
    r = importlib.import_module(f"{mod.__name__}.dnsmos").run(x, 16000)
    return {"sig": float(r["sig_mos"]), "bak": float(r["bak_mos"]), "ovrl": float(r["ovrl_mos"]),
            "p808": float(r["p808_mos"])}


_DISTILLMOS_MODEL = None


def distill_mos(est: ArrayLike, sample_rate: int) -> float:
    """DistillMOS (Stahl and Gamper 2025) of one signal: non-intrusive MOS, 16 kHz, via ``distillmos``
    (its shipped weights, CPU).

    Args:
        est: mono signal ``[T]`` at ``sample_rate``.
    Raises:
        CodecError: ``distillmos`` is missing or the signal is shorter than 0.25 s.
    """
    global _DISTILLMOS_MODEL
    mod = require("distillmos")
    x = _at_16k(est, sample_rate, "DistillMOS")
    if _DISTILLMOS_MODEL is None:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints where it loaded its weights from
            _DISTILLMOS_MODEL = mod.ConvTransformerSQAModel().eval()
    with torch.inference_mode():
        return float(_DISTILLMOS_MODEL(torch.from_numpy(x)[None]).reshape(-1)[0])


_SPEAKER_ENCODER = None


def speaker_similarity(ref: ArrayLike, est: ArrayLike, sample_rate: int) -> float:
    """Cosine similarity (-1..1, 1 = same voice) of Resemblyzer speaker embeddings (GE2E speaker encoder, 256-d)
    of reference and estimate, both resampled to 16 kHz (the encoder's rate); no silence trimming.

    Args:
        ref, est: mono signals ``[T]`` at ``sample_rate``.
    Raises:
        CodecError: ``resemblyzer`` is missing or a signal is shorter than 0.25 s.
    """
    global _SPEAKER_ENCODER
    mod = require("spk_sim")
    r, e = _at_16k(ref, sample_rate, "speaker similarity"), _at_16k(est, sample_rate, "speaker similarity")
    if _SPEAKER_ENCODER is None:
        _SPEAKER_ENCODER = mod.VoiceEncoder("cpu", verbose=False)
    a, b = (np.asarray(_SPEAKER_ENCODER.embed_utterance(s), dtype=np.float64) for s in (r, e))
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Tuple[float, float, int]:
    """Mean and half-width of the two-sided Student-t confidence interval.

    NaNs are ignored. Returns ``(mean, half_width, n)``; the half-width is ``nan`` for fewer than 2 values
    (and the mean is ``nan`` for none).
    """
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(len(v))
    if n == 0:
        return float("nan"), float("nan"), 0
    m = float(v.mean())
    if n < 2:
        return m, float("nan"), n
    sd = float(v.std(ddof=1))
    h = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return m, float(h), n


def summarize(values: List[float], confidence: float = 0.95) -> dict:
    """``{"mean", "ci95", "n"}`` dict for a list of per-file values (NaNs ignored)."""
    m, h, n = mean_ci(values, confidence)
    return {"mean": m, "ci95": h, "n": n}
