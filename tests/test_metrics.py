"""Tests for codec.eval.metrics: SI-SDR, mel distance, PESQ-WB, STOI, DNSMOS, DistillMOS, speaker similarity,
ViSQOL wiring, confidence intervals."""
from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.eval import metrics as M
from codec.audio import load_audio
from codec.errors import CodecError

SAMPLE = Path(__file__).resolve().parents[1] / "pretrained" / "samples" / "speech_it.wav"


@pytest.fixture(scope="module")
def speech() -> tuple:
    """2.5 s of real speech at 24 kHz, mono ``[T]``."""
    wav, sr = load_audio(SAMPLE)
    return wav[0, : int(2.5 * sr)].astype(np.float32), sr


def _noise_like(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White noise scaled so that ``x`` over it is ``snr_db`` dB."""
    n = np.random.default_rng(seed).standard_normal(len(x))
    n *= math.sqrt(np.mean(np.square(x, dtype=np.float64)) / np.mean(n ** 2)) * 10 ** (-snr_db / 20)
    return n.astype(np.float32)


# ------------------------------------------------------------------------------------------ SI-SDR


def test_si_sdr_identical_is_large(speech):
    x, _ = speech
    assert M.si_sdr(x, x) > 100


def test_si_sdr_is_scale_invariant(speech):
    x, _ = speech
    y = x + _noise_like(x, 12)
    base = M.si_sdr(x, y)
    for g in (0.1, 3.0, -2.0):
        assert M.si_sdr(x, g * y) == pytest.approx(base, abs=1e-6)
    # a scaled copy of the reference itself is still a perfect estimate
    assert M.si_sdr(x, 0.25 * x) > 100


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_si_sdr_matches_snr_of_added_noise(speech, snr_db):
    x, _ = speech
    y = x + _noise_like(x, snr_db, seed=int(snr_db))
    assert M.si_sdr(x, y) == pytest.approx(snr_db, abs=0.3)
    assert M.snr(x, y) == pytest.approx(snr_db, abs=0.3)


def test_si_sdr_accepts_tensors_and_cuts_to_shorter(speech):
    x, _ = speech
    y = x + _noise_like(x, 10)
    ref = torch.from_numpy(x)[None, None]  # [1, 1, T]
    est = torch.from_numpy(np.concatenate([y, np.ones(100, np.float32)]))[None]  # [1, T + 100]
    assert M.si_sdr(ref, est) == pytest.approx(M.si_sdr(x, y), abs=1e-6)


def test_metrics_reject_multichannel_and_empty():
    with pytest.raises(CodecError, match=r"^metrics expect a mono signal \[T\], got shape \(2, 10\)$"):
        M.si_sdr(np.zeros((2, 10)), np.zeros((2, 10)))
    with pytest.raises(CodecError, match="^metrics need non-empty signals$"):
        M.si_sdr(np.zeros(0), np.zeros(5))


# ------------------------------------------------------------------------------------------ mel


def test_mel_scale_round_trip_and_filterbank_shape():
    f = np.array([0.0, 500.0, 1000.0, 4000.0, 11025.0])
    np.testing.assert_allclose(M.mel_to_hz(M.hz_to_mel(f)), f, rtol=1e-9, atol=1e-9)
    assert float(M.hz_to_mel(1000.0)) == pytest.approx(15.0)  # Slaney: 1 kHz -> 15 mel
    fb = M.mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and fb.dtype == np.float32
    assert (fb >= 0).all() and (fb.sum(axis=1) > 0).all()  # every band covers some bins


def test_mel_distance_zero_for_identical_and_grows_with_noise(speech):
    x, sr = speech
    assert M.multiscale_mel_distance(x, x, sr) == 0.0
    d = [M.multiscale_mel_distance(x, x + _noise_like(x, snr), sr) for snr in (30, 15, 0)]
    assert 0 < d[0] < d[1] < d[2]


def test_log_mel_spectrogram_batch_matches_single(speech):
    x, sr = speech
    single = M.log_mel_spectrogram(x, sr, 256, 40)
    batch = M.log_mel_spectrogram(np.stack([x, 0.5 * x]), sr, 256, 40)
    assert single.shape == (40, len(x) // 64 + 1)
    assert batch.shape == (2,) + tuple(single.shape)
    torch.testing.assert_close(batch[0], single)


def test_mel_distance_rejects_mismatched_scales(speech):
    x, sr = speech
    with pytest.raises(CodecError, match="^window_lengths and n_mels must have the same number of entries.$"):
        M.multiscale_mel_distance(x, x, sr, window_lengths=(256, 512), n_mels=(40,))


# ------------------------------------------------------------------------------------------ PESQ / STOI


def test_pesq_and_stoi_rank_mild_above_heavy_degradation(speech):
    x, sr = speech
    mild, heavy = x + _noise_like(x, 35), x + _noise_like(x, 0)
    p_clean, p_mild, p_heavy = (M.pesq_wb(x, y, sr) for y in (x, mild, heavy))
    assert p_clean > 4.4
    assert p_mild > p_heavy + 1.0
    assert 1.0 <= p_heavy < 1.5
    s_clean, s_mild, s_heavy = (M.stoi(x, y, sr) for y in (x, mild, heavy))
    assert s_clean > 0.99
    assert s_mild > 0.98 > 0.9 > s_heavy > 0.5
    assert M.stoi(x, heavy, sr, extended=True) < s_heavy  # ESTOI is stricter


def test_pesq_same_at_16k_and_24k_input(speech):
    x, sr = speech
    y = x + _noise_like(x, 20)
    from codec.audio import resample

    assert M.pesq_wb(x, y, sr) == pytest.approx(
        M.pesq_wb(resample(x, sr, 16000), resample(y, sr, 16000), 16000), abs=0.05)


def test_pesq_silent_reference_is_nan_and_short_input_is_an_error():
    assert math.isnan(M.pesq_wb(np.zeros(16000), np.zeros(16000), 16000))
    with pytest.raises(CodecError, match=r"^PESQ needs at least 0.25 s of audio.$"):
        M.pesq_wb(np.ones(3000), np.ones(3000), 16000)
    with pytest.raises(CodecError, match=r"^STOI needs at least 0.25 s of audio.$"):
        M.stoi(np.ones(3000), np.ones(3000), 16000)


@pytest.mark.parametrize("metric,module,msg", [
    ("pesq", "pesq", "the PESQ metric needs the 'pesq' package: pip install 'codec[eval]'."),
    ("stoi", "pystoi", "the STOI metric needs the 'pystoi' package: pip install 'codec[eval]'."),
    ("visqol", "visqol", "the ViSQOL metric needs the 'visqol-python' package: pip install 'visqol-python[lattice]'."),
    ("dnsmos", "speechmos", "the DNSMOS metric needs the 'speechmos' package: pip install 'codec[eval]'."),
    ("distillmos", "distillmos", "the DistillMOS metric needs the 'distillmos' package: pip install distillmos."),
    ("spk_sim", "resemblyzer", "the speaker-similarity metric needs the 'resemblyzer' package: "
                               "pip install webrtcvad-wheels && pip install --no-deps resemblyzer."),
])
def test_missing_metric_package_is_one_sentence(monkeypatch, metric, module, msg):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(CodecError) as ei:
        M.require(metric)
    assert str(ei.value) == msg


# ------------------------------------------------------------------------------------------ non-intrusive MOS, speakers


def _other_voice(x: np.ndarray, sr: int) -> np.ndarray:
    """The same utterance a fifth lower and slower (resampled as if played at 2/3 speed): another "voice"."""
    from codec.audio import resample

    return resample(x, sr, sr * 3 // 2).astype(np.float32)


def test_dnsmos_ranks_clean_speech_above_noisy(speech):
    x, sr = speech
    clean = M.dnsmos(x, sr)
    noisy = M.dnsmos(x + _noise_like(x, 0.0), sr)
    assert set(clean) == {"sig", "bak", "ovrl", "p808"}
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert clean["ovrl"] > noisy["ovrl"] + 0.5 and clean["bak"] > noisy["bak"] + 1.0
    assert M.dnsmos(x, sr) == clean  # deterministic
    # scored at 16 kHz: the same speech given at 16 kHz scores (almost) the same
    from codec.audio import resample

    at16 = M.dnsmos(resample(x, sr, 16000), 16000)
    assert abs(at16["ovrl"] - clean["ovrl"]) < 0.05
    with pytest.raises(CodecError, match="DNSMOS needs at least 0.25 s of audio"):
        M.dnsmos(x[: sr // 8], sr)


def test_distillmos_ranks_clean_speech_above_noisy(speech):
    x, sr = speech
    clean = M.distill_mos(x, sr)
    assert 1.0 <= clean <= 5.0
    assert clean > M.distill_mos(x + _noise_like(x, 0.0), sr) + 0.5


def test_speaker_similarity_same_voice_above_other_voice_and_noise(speech):
    x, sr = speech
    assert M.speaker_similarity(x, x, sr) == pytest.approx(1.0, abs=1e-6)
    coded = M.speaker_similarity(x, x + _noise_like(x, 20.0), sr)
    other = M.speaker_similarity(x, _other_voice(x, sr), sr)
    noise = M.speaker_similarity(x, _noise_like(x, 0.0), sr)
    assert coded > other > noise
    assert coded > 0.9


def test_metric_rates_are_the_documented_ones():
    assert M.METRIC_RATES == {"pesq": 16000, "stoi": 10000, "visqol": 16000, "dnsmos": 16000,
                              "distillmos": 16000, "spk_sim": 16000}


# ------------------------------------------------------------------------------------------ ViSQOL wiring


def _fake_visqol(monkeypatch, lattice: bool = True) -> list:
    """Install a stand-in ``visqol`` module; returns the list of recorded calls."""
    calls: list = []

    class Api:
        def create(self, mode, use_lattice_model=None):
            calls.append(("create", mode, use_lattice_model))
            if not lattice:
                raise ImportError("ai-edge-litert")

        def measure_from_arrays(self, ref, deg, sample_rate):
            calls.append(("measure", ref.dtype, len(ref), len(deg), sample_rate))
            return types.SimpleNamespace(moslqo=3.25)

    monkeypatch.setitem(sys.modules, "visqol", types.SimpleNamespace(VisqolApi=Api))
    monkeypatch.setattr(M, "_VISQOL_API", None)
    return calls


def test_visqol_uses_speech_mode_lattice_at_16k(monkeypatch):
    calls = _fake_visqol(monkeypatch)
    x = np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    assert M.visqol_speech(x, x, 24000) == 3.25
    assert M.visqol_speech(x, x, 24000) == 3.25
    assert calls == [("create", "speech", True), ("measure", np.dtype(np.float64), 16000, 16000, 16000),
                     ("measure", np.dtype(np.float64), 16000, 16000, 16000)]


def test_visqol_without_lattice_runtime_is_an_error(monkeypatch):
    _fake_visqol(monkeypatch, lattice=False)
    with pytest.raises(CodecError) as ei:
        M.visqol_speech(np.ones(16000), np.ones(16000), 16000)
    assert str(ei.value) == "the ViSQOL metric needs the lattice runtime: pip install 'visqol-python[lattice]'."


# ------------------------------------------------------------------------------------------ statistics


def test_mean_ci_known_values():
    m, h, n = M.mean_ci([1, 2, 3, 4, 5])
    assert (m, n) == (3.0, 5)
    assert h == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)  # t_{.975,4} * sd / sqrt(n)
    m, h, n = M.mean_ci([2.0, float("nan"), 4.0])
    assert (m, n) == (3.0, 2) and h == pytest.approx(12.7062047 * math.sqrt(2) / math.sqrt(2), rel=1e-6)
    m, h, n = M.mean_ci([7.0])
    assert m == 7.0 and math.isnan(h) and n == 1
    m, h, n = M.mean_ci([])
    assert math.isnan(m) and math.isnan(h) and n == 0
    assert M.summarize([1.0, 1.0, 1.0]) == {"mean": 1.0, "ci95": 0.0, "n": 3}
