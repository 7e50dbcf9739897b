"""CLI round trips with a tiny random-weight model: encode/decode lengths and rates, trim == fewer levels,
files read back as written, directories, batching, info, help, demo, delegation."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.cli import main
from codec.config import CodecConfig
from codec.codes_format import read_codes, read_header
from test_cli_common import listing, make_tiny_model_dir, models_by_name, speechlike, write_wav


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    with models_by_name(tmp_path_factory.mktemp("models")) as d:  # .codes files name their model
        yield make_tiny_model_dir(d / "tiny")


@pytest.fixture(scope="module")
def model(tiny):
    import codec

    return codec.load(str(tiny))


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize("sr,channels", [(None, 1), (44100, 1), (16000, 2), (8000, 1)])
def test_encode_decode_restores_rate_and_length(tmp_path, tiny, model, capsys, sr, channels):
    sr = sr or model.sample_rate
    wav = write_wav(tmp_path / "in.wav", sr, 1.37, channels)
    assert run("encode", wav, tmp_path / "x.codes", "--nq", 3, "--model", tiny) == 0
    h = read_header(tmp_path / "x.codes")
    assert (h.num_levels, h.channels, h.orig_channels, h.orig_sample_rate) == (3, 1, channels, sr)
    assert h.orig_length == sf.info(str(wav)).frames
    assert h.num_frames == -(-int(round(h.orig_length * model.sample_rate / sr)) // model.hop_length)
    assert h.sample_rate == model.sample_rate and h.hop_length == model.hop_length
    assert run("decode", tmp_path / "x.codes", tmp_path / "y.wav") == 0  # model taken from the file
    info = sf.info(str(tmp_path / "y.wav"))
    assert (info.samplerate, info.frames, info.channels) == (sr, h.orig_length, 1)
    out = capsys.readouterr().out
    assert "x.codes" in out and "y.wav" in out
    assert listing(tmp_path) == ["in.wav", "x.codes", "y.wav"]


def test_keep_channels_and_sample_rate_override(tmp_path, tiny):
    wav = write_wav(tmp_path / "st.flac", 22050, 0.8, 2)
    assert run("encode", wav, tmp_path / "st.codes", "--nq", 2, "--model", tiny, "--channels", "keep", "-q") == 0
    cf = read_codes(tmp_path / "st.codes")
    assert cf.codes.shape[:2] == (2, 2) and cf.header.channels == 2
    assert run("decode", tmp_path / "st.codes", tmp_path / "st.wav", "--sample-rate", 16000, "-q") == 0
    info = sf.info(str(tmp_path / "st.wav"))
    assert (info.channels, info.samplerate) == (2, 16000)
    assert info.frames == round(cf.header.orig_length * 16000 / 22050)


def test_trim_equals_encoding_with_fewer_levels(tmp_path, tiny, model):
    wav = write_wav(tmp_path / "a.wav", 24000, 1.1)
    nmax = min(8, model.num_quantizers)
    assert run("encode", wav, tmp_path / "full.codes", "--nq", nmax, "--model", tiny, "-q") == 0
    for k in sorted({1, max(1, nmax // 2)}):
        assert run("encode", wav, tmp_path / f"direct{k}.codes", "--nq", k, "--model", tiny, "-q") == 0
        assert run("trim", tmp_path / "full.codes", tmp_path / f"trim{k}.codes", "--nq", k, "-q") == 0
        assert (tmp_path / f"trim{k}.codes").read_bytes() == (tmp_path / f"direct{k}.codes").read_bytes()
    # decoding fewer levels from a full file equals decoding the trimmed file
    assert run("decode", tmp_path / "full.codes", tmp_path / "d1.wav", "--nq", 1, "-q") == 0
    assert run("decode", tmp_path / "trim1.codes", tmp_path / "t1.wav", "-q") == 0
    assert np.array_equal(sf.read(str(tmp_path / "d1.wav"))[0], sf.read(str(tmp_path / "t1.wav"))[0])


def test_file_holds_the_model_codes(tmp_path, tiny, model):
    """What is written is what the model produces offline (streaming encoder == offline encode)."""
    import torch

    sr = model.sample_rate
    x = speechlike(sr, 1.5)[:, 0]
    sf.write(str(tmp_path / "a.wav"), x, sr, subtype="FLOAT")
    nq = min(4, model.num_quantizers)
    assert run("encode", tmp_path / "a.wav", tmp_path / "a.codes", "--nq", nq, "--model", tiny, "-q") == 0
    cf = read_codes(tmp_path / "a.codes")
    with torch.inference_mode():
        ref = model.encode(torch.from_numpy(x)[None, None], nq=nq)[0].numpy()
    assert cf.codes.shape == (1,) + ref.shape
    agree = (cf.codes[0] == ref).mean()
    assert agree > 0.98, agree
    assert np.array_equal(cf.codes[0, 0], ref[0]) or agree > 0.99


def test_size_per_second_matches_bitrate(tmp_path, tiny, model):
    seconds = 6.0
    wav = write_wav(tmp_path / "a.wav", model.sample_rate, seconds)
    nq = min(4, model.num_quantizers)
    assert run("encode", wav, tmp_path / "a.codes", "--nq", nq, "--model", tiny, "-q") == 0
    h = read_header(tmp_path / "a.codes")
    size = (tmp_path / "a.codes").stat().st_size
    assert h.bitrate == pytest.approx(model.bitrate(nq))
    frame_bytes = nq * h.bits_per_code / 8
    overhead = size - h.bitrate * seconds / 8
    assert 0 <= overhead <= h.header_size + 4 + nq + frame_bytes


def test_short_input_is_padded_and_restored(tmp_path, tiny):
    sf.write(str(tmp_path / "s.wav"), np.array([0.1, -0.2, 0.3, 0.0, 0.1], np.float32), 16000)
    assert run("encode", tmp_path / "s.wav", tmp_path / "s.codes", "--nq", 1, "--model", tiny, "-q") == 0
    assert read_header(tmp_path / "s.codes").num_frames == 1
    assert run("decode", tmp_path / "s.codes", tmp_path / "o.wav", "-q") == 0
    assert sf.info(str(tmp_path / "o.wav")).frames == 5


@pytest.mark.parametrize("ext,fmt", [("mp3", "MP3"), ("ogg", "OGG"), ("flac", "FLAC")])
def test_compressed_inputs(tmp_path, tiny, ext, fmt):
    p = tmp_path / f"a.{ext}"
    sf.write(str(p), speechlike(44100, 1.0), 44100, format=fmt)
    assert run("encode", p, tmp_path / "a.codes", "--nq", 2, "--model", tiny, "-q") == 0
    assert run("decode", tmp_path / "a.codes", tmp_path / "a.wav", "-q") == 0
    assert sf.info(str(tmp_path / "a.wav")).frames == read_header(tmp_path / "a.codes").orig_length


def test_ffmpeg_only_input(tmp_path, tiny):
    write_wav(tmp_path / "a.wav", 16000, 1.0)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(tmp_path / "a.wav"), "-c:a", "g722",
                    str(tmp_path / "a.g722")], check=True)
    assert run("encode", tmp_path / "a.g722", tmp_path / "g.codes", "--nq", 2, "--model", tiny, "-q") == 0
    assert read_header(tmp_path / "g.codes").orig_sample_rate == 16000


def test_directories_keep_names(tmp_path, tiny):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_wav(src / "a.wav", 16000, 0.5)
    write_wav(src / "sub" / "b.flac", 24000, 0.7, 2)
    (src / "notes.txt").write_text("ignored")
    assert run("encode", src, tmp_path / "codes", "--nq", 2, "--model", tiny, "-q") == 0
    assert listing(tmp_path / "codes") == ["a.codes", "sub", "sub/b.codes"]
    assert run("decode", tmp_path / "codes", tmp_path / "out", "-q") == 0
    assert listing(tmp_path / "out") == ["a.wav", "sub", "sub/b.wav"]
    assert sf.info(str(tmp_path / "out" / "sub" / "b.wav")).frames == sf.info(str(src / "sub" / "b.flac")).frames


def test_several_files_and_batching_give_same_codes(tmp_path, tiny):
    files = [write_wav(tmp_path / f"f{i}.wav", sr, sec, seed=i)
             for i, (sr, sec) in enumerate([(16000, 0.3), (24000, 1.2), (44100, 0.05), (8000, 2.0)])]
    assert run("encode", *files, tmp_path / "b1", "--nq", 2, "--model", tiny, "-q") == 0
    assert run("encode", *files, tmp_path / "b3", "--nq", 2, "--model", tiny, "-q", "--batch-size", 3) == 0
    for f in files:
        a = read_codes(tmp_path / "b1" / (f.stem + ".codes")).codes
        b = read_codes(tmp_path / "b3" / (f.stem + ".codes")).codes
        assert a.shape == b.shape and (a == b).mean() > 0.98
    assert run("decode", tmp_path / "b1", tmp_path / "d1", "-q") == 0
    assert run("decode", tmp_path / "b1", tmp_path / "d3", "-q", "--batch-size", 3) == 0
    for f in files:
        y1, sr1 = sf.read(str(tmp_path / "d1" / (f.stem + ".wav")))
        y3, sr3 = sf.read(str(tmp_path / "d3" / (f.stem + ".wav")))
        assert sr1 == sr3 == sf.info(str(f)).samplerate and len(y1) == len(y3) == sf.info(str(f)).frames
        assert np.abs(y1 - y3).max() < 2e-3


def test_fourier_model_files_decode_as_the_model_does(tmp_path, monkeypatch):
    """A Fourier-decoder model (overlap-add delay): batched file decoding gives every file its own
    ``model.decode`` audio, the faded tail included, whatever the other files in the batch."""
    import codec

    d = make_tiny_model_dir(tmp_path / "fourier", encoder_type="fourier", decoder_type="fourier", fourier_dim=16,
                            encoder_layers=1, decoder_layers=1, n_fft=960)
    monkeypatch.setenv("CODEC_PRETRAINED_DIR", str(tmp_path))  # decode finds the model the files name
    m = codec.load(str(d))
    assert m.decoder_delay == 640
    files = [write_wav(tmp_path / f"f{i}.wav", 16000, sec, seed=i) for i, sec in enumerate([0.3, 1.2, 0.02, 0.9])]
    assert run("encode", *files, tmp_path / "c", "--nq", 4, "--model", d, "-q") == 0
    for bs in (1, 3):
        assert run("decode", tmp_path / "c", tmp_path / f"d{bs}", "-q", "--batch-size", bs) == 0
    for f in files:
        cf = read_codes(tmp_path / "c" / (f.stem + ".codes"))
        with torch.inference_mode():
            ref = m.decode(torch.from_numpy(cf.codes))[0, 0].numpy()[: cf.header.orig_length]
        for bs in (1, 3):
            y, sr = sf.read(str(tmp_path / f"d{bs}" / (f.stem + ".wav")), dtype="float32")
            assert sr == 16000 and len(y) == cf.header.orig_length
            assert np.abs(y - np.clip(ref, -1, 1)).max() < 2e-4  # 16-bit wav


def test_info_text_and_json(tmp_path, tiny, model, capsys):
    write_wav(tmp_path / "a.wav", 44100, 2.0, 2)
    assert run("encode", tmp_path / "a.wav", tmp_path / "a.codes", "--nq", 2, "--model", tiny, "-q") == 0
    capsys.readouterr()
    assert run("info", tmp_path / "a.codes") == 0
    out = capsys.readouterr().out
    assert "format:       .codes version 1" in out
    assert "model:        tiny (weights sha256 " in out  # the name, never a local path
    assert "levels:       2" in out and "channels:     1 (downmixed from 2)" in out
    assert "duration:     2.000 s (88200 samples)" in out
    assert f"{model.bitrate(2) / 1000:.3f} kbps nominal" in out
    assert run("info", tmp_path / "a.codes", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["num_levels"] == 2 and d["orig_sample_rate"] == 44100 and d["bitrate"] == pytest.approx(model.bitrate(2))


@pytest.mark.parametrize("cmd", ["encode", "decode", "info", "trim", "demo", "export", "bench", "eval"])
def test_help_has_examples(cmd, capsys):
    assert run(cmd, "-h") == 0
    out = capsys.readouterr().out
    assert f"usage: codec {cmd}" in out
    if cmd != "eval":
        assert "examples:" in out


def test_top_level_help(capsys):
    assert run("-h") == 0
    out = capsys.readouterr().out
    for cmd in ("encode", "decode", "info", "trim", "bench", "demo", "train", "eval"):
        assert cmd in out


def test_default_model_missing_message(tmp_path, monkeypatch, capsys):
    import codec.pretrained as pre

    monkeypatch.delenv("CODEC_PRETRAINED_DIR", raising=False)
    monkeypatch.setattr(pre, "repo_pretrained_dir", lambda: tmp_path / "pretrained")
    write_wav(tmp_path / "a.wav", 16000, 0.2)
    assert run("encode", tmp_path / "a.wav", tmp_path / "a.codes") == 2
    assert capsys.readouterr().err == (
        "codec: error: the default model 'speech-24k' is not installed in pretrained/ yet; "
        "pass --model DIR (a directory written by save_pretrained).\n")
    assert not (tmp_path / "a.codes").exists()


def test_missing_delegate_module_message(monkeypatch, capsys):
    import codec.cli as cli

    monkeypatch.setitem(cli._LAZY, "train", ("codec.no_such_module", "train"))
    assert run("train", "--help") == 2
    assert capsys.readouterr().err == (
        "codec: error: 'codec train' is not available yet: the module codec.no_such_module is missing.\n")


def test_demo(tmp_path, tiny, capsys):
    sample = Path(__file__).resolve().parent.parent / "pretrained" / "samples" / "speech_it.wav"
    assert sample.exists()
    assert run("demo", "--model", tiny, "--nq", "1,2", "--out-dir", tmp_path / "demo", "--samples", sample, "-q") == 0
    out = capsys.readouterr().out
    assert "SI-SDR dB" in out and "mel dist" in out and "kbps" in out
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())["rows"]
    assert [r["nq"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(r["si_sdr"]) and r["mel_distance"] > 0
        assert sf.info(r["decoded"]).frames == sf.info(str(sample)).frames


def test_bench_rvq_json(tmp_path, capsys):
    assert run("bench", "rvq", "--rvq-frames", 2000, "--json", tmp_path / "b.json") == 0
    out = capsys.readouterr().out
    assert "[rvq]" in out and "ours_fps" in out
    d = json.loads((tmp_path / "b.json").read_text())
    assert d["rvq"]["ours_fps"] > 0 and "machine" in d


def test_bench_model_preset_random_weights(tmp_path, capsys):
    """--preset benchmarks random weights of that preset even when a trained model is shipped."""
    assert run("bench", "model", "--preset", "tiny", "--seconds", 1, "--memory-seconds", "1,2",
               "--json", tmp_path / "b.json") == 0
    d = json.loads((tmp_path / "b.json").read_text())
    assert "random weights, preset 'tiny'" in json.dumps(d)
    assert run("bench", "model", "--preset", "nope") == 2
    assert capsys.readouterr().err.strip() == "codec: error: unknown --preset 'nope' (use 24khz, 16khz or tiny)."


def test_bench_streaming_chunk_frames(tmp_path, capsys):
    """--chunk-frames sets the streaming benchmark's chunk (the memory benchmark keeps its own); below 1 is refused."""
    assert run("bench", "model", "--preset", "tiny", "--seconds", 1, "--memory-seconds", "1,2",
               "--chunk-frames", 3, "--json", tmp_path / "b.json") == 0
    d = json.loads((tmp_path / "b.json").read_text())
    hop = CodecConfig.preset("tiny").hop_length
    assert d["streaming"]["chunk_samples"] == 3 * hop
    assert d["memory"]["chunk_frames"] == 75
    capsys.readouterr()
    assert run("bench", "model", "--preset", "tiny", "--chunk-frames", 0) == 2
    assert capsys.readouterr().err.strip() == "codec: error: --chunk-frames must be at least 1, got 0."


class _FakeEncodec(torch.nn.Module):
    """Stands in for ``encodec.model.EncodecModel`` (same encode/decode/encoder/decoder surface)."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 7, padding=3), torch.nn.Conv1d(4, 8, 320, 320))
        self.decoder = torch.nn.ConvTranspose1d(8, 1, 320, 320)
        self.bandwidth = None

    @classmethod
    def _get_model(cls, target_bandwidths, sample_rate, channels, **kw):
        assert sample_rate == 24000 and channels == 1 and kw["causal"]
        return cls()

    def set_target_bandwidth(self, kbps):
        self.bandwidth = kbps

    def encode(self, x):
        z = self.encoder(x)
        return [(torch.zeros(1, round(self.bandwidth / 0.75), z.shape[-1], dtype=torch.long), None)]

    def decode(self, frames):
        return self.decoder(torch.zeros(1, 8, frames[0][0].shape[-1]))


def test_bench_encodec_times_both_and_counts_macs(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("encodec.model")
    fake.EncodecModel = _FakeEncodec
    monkeypatch.setitem(sys.modules, "encodec", types.ModuleType("encodec"))
    monkeypatch.setitem(sys.modules, "encodec.model", fake)
    assert run("bench", "encodec", "--preset", "tiny", "--nq", 4, "--seconds", 1, "-q",
               "--json", tmp_path / "b.json") == 0
    d = json.loads((tmp_path / "b.json").read_text())
    assert d["encodec"]["nq"] == 4 and d["encodec"]["params"] == sum(p.numel() for p in _FakeEncodec().parameters())
    # per 320-sample frame: conv 1->4 k7 at 320 positions + conv 4->8 k320 once; transposed conv 8->1 k320 once
    assert d["encodec"]["macs_per_frame"] == {"encoder": 320 * 4 * 7 + 8 * 4 * 320, "decoder": 8 * 320}
    assert set(d["speedup_vs_encodec"]) == {"encode", "decode"}  # both directions timed side by side


def test_bench_encodec_without_the_package(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "encodec", None)
    monkeypatch.setitem(sys.modules, "encodec.model", None)
    assert run("bench", "encodec", "--preset", "tiny", "--seconds", 1) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codec: error: codec bench encodec needs the 'encodec' package and torchaudio "
                          "(pip install encodec torchaudio==2.11.0)")


def test_each_input_is_opened_once_without_a_progress_bar(tmp_path, tiny, monkeypatch):
    """Not on a terminal (no bar), encode reads no header ahead: every input file is opened exactly once."""
    import codec.audio as audio
    import codec.pipeline as pipeline

    opened = []
    real = pipeline.AudioReader

    def counting(path, *a, **kw):
        opened.append(Path(path).name)
        return real(path, *a, **kw)

    monkeypatch.setattr(pipeline, "AudioReader", counting)
    monkeypatch.setattr(audio, "audio_info", lambda *a, **kw: pytest.fail("read ahead for a hidden bar"))
    d = tmp_path / "in"
    d.mkdir()
    for n in ("a", "b", "c"):
        write_wav(d / f"{n}.wav", 16000, 0.3)
    assert run("encode", d, tmp_path / "out", "--model", tiny, "--batch-size", 2) == 0
    assert sorted(opened) == ["a.wav", "b.wav", "c.wav"]
