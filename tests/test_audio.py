"""Tests for codec/audio.py: load/save (atomic), block reader, ffmpeg fallback, resample, to_mono, errors."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from codec.audio import AudioReader, atomic_output, audio_info, load_audio, resample, save_audio, to_mono
from codec.errors import CodecError


def sine(sr, seconds, freq=440.0, channels=1, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    x = np.stack([amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)])
    return x.astype(np.float32)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_save_load_roundtrip(tmp_path, ext):
    x = sine(16000, 0.5, channels=2)
    p = tmp_path / f"a.{ext}"
    save_audio(p, x, 16000)
    y, sr = load_audio(p)
    assert sr == 16000 and y.dtype == np.float32 and y.shape[0] == 2
    assert abs(y.shape[1] - x.shape[1]) <= (0 if ext != "ogg" else 2000)
    if ext != "ogg":
        assert np.abs(y - x).max() < 1e-3
    assert os.listdir(tmp_path) == [f"a.{ext}"]


def test_save_mono_1d_and_torch(tmp_path):
    import torch

    save_audio(tmp_path / "m.wav", sine(8000, 0.1)[0], 8000)
    y, _ = load_audio(tmp_path / "m.wav")
    assert y.shape == (1, 800)
    save_audio(tmp_path / "t.wav", torch.zeros(2, 10), 8000)
    assert load_audio(tmp_path / "t.wav")[0].shape == (2, 10)


def test_save_is_atomic_on_failure(tmp_path):
    dest = tmp_path / "out.wav"
    with pytest.raises(CodecError):
        save_audio(dest, np.zeros((1, 10)), 8000, subtype="NOT_A_SUBTYPE")
    assert os.listdir(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_save_errors(tmp_path):
    with pytest.raises(CodecError, match=r"directory '.*nodir' does not exist"):
        save_audio(tmp_path / "nodir" / "x.wav", np.zeros(4), 8000)
    with pytest.raises(CodecError, match=r"unsupported output extension '\.xyz'"):
        save_audio(tmp_path / "x.xyz", np.zeros(4), 8000)
    (tmp_path / "f").write_text("x")
    with pytest.raises(CodecError, match="is not a directory"):
        save_audio(tmp_path / "f" / "x.wav", np.zeros(4), 8000)


def test_load_errors(tmp_path):
    with pytest.raises(CodecError, match=r"^input file '.*missing.wav' does not exist\.$"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(CodecError, match="is a directory"):
        load_audio(tmp_path)
    (tmp_path / "text.wav").write_text("hello, I am not audio\n" * 20)
    with pytest.raises(CodecError, match=r"is not an audio file \(neither soundfile nor ffmpeg can read it\)\.$"):
        load_audio(tmp_path / "text.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(CodecError, match=r"is empty \(0 bytes\), not audio\.$"):
        load_audio(tmp_path / "empty.wav")


def test_zero_sample_wav_loads_empty(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros((0, 2), np.float32), 16000)
    y, sr = load_audio(tmp_path / "z.wav")
    assert y.shape == (2, 0) and sr == 16000


@pytest.mark.parametrize("fmt,args,sr", [("g722", ["-ar", "16000", "-c:a", "g722"], 16000),
                                         ("sln", ["-ar", "8000", "-f", "s16le"], 8000)])
def test_ffmpeg_fallback(tmp_path, fmt, args, sr):
    assert shutil.which("ffmpeg"), "ffmpeg is installed by recipes/setup.sh"
    src = tmp_path / "s.wav"
    sf.write(src, sine(16000, 1.0)[0], 16000)
    dst = tmp_path / f"s.{fmt}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-ac", "1", *args, str(dst)], check=True)
    with pytest.raises(Exception):
        sf.info(str(dst))  # libsndfile cannot read it
    y, got_sr = load_audio(dst)
    assert got_sr == sr and y.shape[0] == 1 and abs(y.shape[1] - sr) < sr * 0.01
    info = audio_info(dst)
    assert info.backend == "ffmpeg" and info.sample_rate == sr
    with AudioReader(dst) as r:
        n = 0
        while True:
            blk = r.read(1000)
            if blk.shape[1] == 0:
                break
            assert blk.shape[1] <= 1000
            n += blk.shape[1]
    assert n == y.shape[1]


def test_block_reader_matches_full_read(tmp_path):
    x = sine(22050, 1.3, channels=2)
    sf.write(tmp_path / "a.flac", x.T, 22050)
    with AudioReader(tmp_path / "a.flac") as r:
        assert (r.sample_rate, r.channels, r.frames) == (22050, 2, x.shape[1])
        blocks = []
        while (b := r.read(4096)).shape[1]:
            blocks.append(b)
    assert np.array_equal(np.concatenate(blocks, 1), load_audio(tmp_path / "a.flac")[0])


def test_resample_lengths_and_content():
    x = sine(44100, 1.0, freq=1000.0, channels=2)
    y = resample(x, 44100, 24000)
    assert y.shape == (2, 24000) and y.dtype == np.float32
    ref = sine(24000, 1.0, freq=1000.0, channels=2)
    assert np.abs(y[:, 200:-200] - ref[:, 200:-200]).max() < 1e-2
    assert resample(x, 44100, 44100) is not None and resample(x, 44100, 44100).shape == x.shape
    assert resample(x[0], 44100, 16000).shape == (16000,)
    assert resample(np.zeros((3, 0)), 8000, 16000).shape == (3, 0)


def test_to_mono():
    x = np.stack([np.ones(5), -np.ones(5) * 0.5]).astype(np.float32)
    m = to_mono(x)
    assert m.shape == (1, 5) and np.allclose(m, 0.25)
    assert to_mono(np.zeros(7)).shape == (1, 7)
    assert to_mono(x[:1]) is not None and to_mono(x[:1]).shape == (1, 5)


def test_every_model_file_writer_leaves_the_usual_mode(tmp_path):
    """save_pretrained, save_codebooks and semantic IDs go through the one atomic writer: no 0600 files
    (what safetensors alone creates), no temp files left."""
    import torch

    from codec import CodecConfig, CodecModel, save_pretrained
    from codec.audio import current_umask
    from codec.semantic_ids import fit

    torch.manual_seed(0)
    m = CodecModel(CodecConfig.preset("tiny"))
    save_pretrained(m, str(tmp_path / "model"))
    m.quantizer.save_codebooks(tmp_path / "cb.safetensors")
    m.quantizer.save_codebooks(tmp_path / "cb.npz")
    fit(torch.randn(64, 8), levels=2, codebook_size=8).save(tmp_path / "ids")
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert not [p.name for p in files if p.name.startswith(".")]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == \
        {p.name: oct(0o666 & ~current_umask()) for p in files}
