"""Tests for codec.eval.baselines: Opus / AMR-WB / Codec2 round trips through the system tools, settings, errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from codec.eval import baselines as BL
from codec.eval import metrics as M
from codec.audio import load_audio
from codec.errors import CodecError

SAMPLE = Path(__file__).resolve().parents[1] / "pretrained" / "samples" / "speech_it.wav"


@pytest.fixture(scope="module")
def speech() -> tuple:
    """2.5 s of real speech at 24 kHz, mono ``[T]``."""
    wav, sr = load_audio(SAMPLE)
    return wav[0, : int(2.5 * sr)].astype(np.float32), sr


# codec, setting, kbps tolerance (Opus is VBR), min PESQ-WB, min STOI (measured on this clip: opus@12 3.62/0.972,
# amr-wb@12.65 2.80/0.981, codec2@3200 1.19/0.878)
ROUND_TRIPS = [
    ("opus", "12", 2.5, 3.2, 0.95),
    ("amr-wb", "12.65", 0.01, 2.5, 0.96),
    ("codec2", "3200", 0.01, 1.1, 0.85),
]


@pytest.mark.parametrize("codec,setting,tol,min_pesq,min_stoi", ROUND_TRIPS)
def test_round_trip_length_bitrate_quality(speech, codec, setting, tol, min_pesq, min_stoi):
    x, sr = speech
    r = BL.run_baseline(codec, setting, x, sr)
    assert r.audio.shape == x.shape and r.audio.dtype == np.float32
    assert r.sample_rate == sr and r.name == f"{codec}@{setting}"
    assert r.kbps == pytest.approx(r.nominal_kbps, abs=tol)
    assert r.file_kbps >= r.kbps
    assert M.pesq_wb(x, r.audio, sr) > min_pesq
    assert M.stoi(x, r.audio, sr) > min_stoi
    # the level scaling is undone: output level matches the input within 1.5 dB
    assert 20 * math.log10(np.std(r.audio) / np.std(x)) == pytest.approx(0.0, abs=1.5)


def test_codec2_uses_its_fixed_delay_and_exact_bitrate(speech):
    x, sr = speech
    r = BL.codec2(x[: sr], sr, "700c")
    assert r.setting == "700C" and r.delay == int(0.030 * sr)
    assert r.kbps == pytest.approx(0.7) and r.file_kbps == pytest.approx(0.8)  # 28 bits packed in 4 bytes
    assert len(r.audio) == sr


def test_amr_wb_counts_speech_bits_not_storage_bytes(speech):
    x, sr = speech
    r = BL.amr_wb(x[: sr], sr, 6.6)
    assert r.kbps == pytest.approx(6.6)
    assert r.file_kbps > 7.0  # ToC byte, octet padding and the "#!AMR-WB" magic


def test_opus_at_other_input_rates(speech):
    x, sr = speech
    from codec.audio import resample

    y = resample(x[: sr], sr, 16000)
    r = BL.opus(y, 16000, 6)
    assert r.audio.shape == y.shape and r.extra["encoder_rate"] == 16000
    assert 4.0 < r.kbps < 8.0


def test_level_gain():
    x = np.full(1000, 0.5, np.float32) * np.sign(np.sin(np.arange(1000)))
    g = BL.level_gain(x)
    assert 20 * math.log10(np.sqrt(np.mean((x * g) ** 2))) == pytest.approx(-26.0, abs=0.01)
    loud_peak = np.zeros(1000, np.float32)
    loud_peak[::100] = 0.01
    loud_peak[500] = 1.0  # peaky: -26 dB RMS would clip, so the gain is limited by the peak
    assert np.max(np.abs(loud_peak * BL.level_gain(loud_peak))) == pytest.approx(0.99)
    assert BL.level_gain(np.zeros(100)) == 1.0 and BL.level_gain(x, None) == 1.0


def test_align_recovers_known_shift():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(4000).astype(np.float32)
    late = np.concatenate([np.zeros(37, np.float32), ref])
    out, lag = BL.align(ref, late, max_lag=100)
    assert lag == 37 and np.array_equal(out, ref)
    early = ref[23:]
    out, lag = BL.align(ref, early, max_lag=100)
    assert lag == -23 and len(out) == len(ref)
    np.testing.assert_array_equal(out[23:], ref[23:])


def test_parse_baselines():
    assert BL.parse_baselines("opus,amr-wb,codec2") == [
        ("opus", "6"), ("opus", "12"), ("opus", "24"), ("amr-wb", "6.6"), ("amr-wb", "12.65"),
        ("amr-wb", "23.85"), ("codec2", "3200"), ("codec2", "1600"), ("codec2", "700C")]
    # ours at 1.5 / 6 / 9 kbps: Opus adds 9 (6 is already there, 1.5 is below Opus's range)
    assert BL.parse_baselines("opus", match_kbps=[1.5, 6.0, 9.0]) == [
        ("opus", "6"), ("opus", "9"), ("opus", "12"), ("opus", "24")]
    assert BL.parse_baselines("opus@6+8, AMR_WB@23.85 ,codec2@700c,opus@6") == [
        ("opus", "6"), ("opus", "8"), ("amr-wb", "23.85"), ("codec2", "700C")]


@pytest.mark.parametrize("spec,msg", [
    ("mp3", "unknown baseline codec 'mp3' (choose from opus, amr-wb, codec2)."),
    ("opus@4", "Opus supports 6..510 kbps, not 4."),
    ("opus@fast", "baseline setting 'opus@fast' is not a number of kbps."),
    ("amr-wb@7", "AMR-WB has no 7 kbps mode (modes: 6.6, 8.85, 12.65, 14.25, 15.85, 18.25, 19.85, 23.05, 23.85)."),
    ("codec2@999", "unknown Codec2 mode '999' (modes: 3200, 2400, 1600, 1400, 1300, 1200, 700C, 450)."),
])
def test_parse_baselines_errors(spec, msg):
    with pytest.raises(CodecError) as ei:
        BL.parse_baselines(spec)
    assert str(ei.value) == msg


@pytest.mark.parametrize("codec,msg", [
    ("opus", "the Opus baseline needs opusenc and opusdec (or ffmpeg with libopus) on PATH: "
             "apt-get install opus-tools."),
    ("amr-wb", "the AMR-WB baseline needs ffmpeg (with its amrwb decoder) on PATH: apt-get install ffmpeg."),
    ("codec2", "the Codec2 baseline needs c2enc and c2dec on PATH: apt-get install codec2."),
])
def test_missing_tool_message(monkeypatch, tmp_path, speech, codec, msg):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no tool is found
    with pytest.raises(CodecError) as ei:
        BL.check_available(codec)
    assert str(ei.value) == msg
    x, sr = speech
    with pytest.raises(CodecError) as ei:
        BL.run_baseline(codec, BL.DEFAULT_SETTINGS[codec][0], x, sr)
    assert str(ei.value) == msg


def test_missing_amr_wb_encoder_message(monkeypatch):
    monkeypatch.setattr(BL, "_ffmpeg_has", lambda kind, name: kind == "decoders")
    monkeypatch.setattr(BL, "_vo_amrwbenc", lambda: None)
    with pytest.raises(CodecError) as ei:
        BL.check_available("amr-wb")
    assert str(ei.value) == ("the AMR-WB baseline needs an AMR-WB encoder (ffmpeg's libvo_amrwbenc or the library "
                             "libvo-amrwbenc.so.0): apt-get install libvo-amrwbenc0.")


def test_failing_tool_is_one_sentence(monkeypatch, tmp_path, speech):
    fake = tmp_path / "c2enc"
    fake.write_text("#!/bin/sh\necho 'c2enc: cannot open input' >&2\nexit 3\n")
    fake.chmod(0o755)
    (tmp_path / "c2dec").symlink_to(fake)
    monkeypatch.setenv("PATH", str(tmp_path))
    x, sr = speech
    with pytest.raises(CodecError) as ei:
        BL.codec2(x, sr, "3200")
    assert str(ei.value) == "c2enc failed (c2enc: c2enc: cannot open input)."


def test_bad_ogg_stream():
    with pytest.raises(CodecError, match="^the encoded Opus file is not a valid Ogg stream.$"):
        BL._ogg_payload_bytes(b"RIFF" + bytes(40))
