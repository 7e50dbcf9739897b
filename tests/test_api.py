"""Python API (issue 14): explicit input layout, list batches with per-item rates (batched == solo, bit for bit),
stream resampling (== offline), stream decoding of -1 frames (== offline), save_codes / load_codes (== CLI bytes,
no local paths), and the threads default of the CLI."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

import codec
from codec.audio import load_audio, resample
from codec.cli import main
from codec.codes_format import read_header
from codec.config import CodecConfig
from codec.errors import CodecError
from codec.model import CodecModel
from codec.validation import InputError
from test_cli_common import make_tiny_model_dir, speechlike, write_wav

SMALL = {"seanet": dict(base_channels=8, max_channels=64, latent_dim=32),
         "fourier": dict(encoder_type="fourier", decoder_type="fourier", latent_dim=32, fourier_dim=32,
                         encoder_layers=2, decoder_layers=2)}


def make_model(kind: str, seed: int = 0) -> CodecModel:
    """A narrow 24 kHz model whose codebooks are k-means initialised on audio (close competitors: codes that
    differ for any numerical difference of the input)."""
    torch.manual_seed(seed)
    m = CodecModel(CodecConfig.preset("24khz", **SMALL[kind]))
    m.train()
    with torch.no_grad():
        m(0.3 * torch.randn(2, 1, 12000, generator=torch.Generator().manual_seed(seed)))
    return m.eval()


@pytest.fixture(scope="module", params=["seanet", "fourier"])
def model(request):
    return make_model(request.param)


@pytest.fixture(scope="module")
def fourier():
    return make_model("fourier")


def clips(sr: int, seconds, seed: int = 0):
    return [torch.from_numpy(speechlike(sr, s, seed=seed + i)[:, 0]) for i, s in enumerate(seconds)]


# ---- 1. layout ------------------------------------------------------------------------------------------------

def test_ambiguous_2d_input_is_refused(fourier):
    for shape in ((4, 24000), (3, 1000), (24000, 2)):
        with pytest.raises(InputError) as ei:
            fourier.encode(torch.zeros(shape))
        n = shape[0]
        assert str(ei.value) == (f"wav of shape {shape} is ambiguous: pass one item as [T] or [C, T] with C <= 2, "
                                 f"a batch as [B, C, T] (e.g. wav[:, None] for {n} mono items) or a list of items.")
    with pytest.raises(CodecError) as ei:
        fourier.encode(np.zeros((1, 1, 1, 100), np.float32))
    assert str(ei.value) == "wav must be [T], [C, T] with C <= 2 or [B, C, T], got shape (1, 1, 1, 100)."


def test_documented_layouts_agree(fourier):
    x = clips(24000, [0.3])[0]
    ref = fourier.encode(x[None, None])
    assert ref.shape == (1, 32, 23)
    assert torch.equal(fourier.encode(x), ref)                 # [T]
    assert torch.equal(fourier.encode(x[None]), ref)           # [C=1, T]
    assert torch.equal(fourier.encode(x.numpy()), ref)         # numpy [T]
    assert torch.equal(fourier.encode([x]), ref)               # list of one item
    assert torch.equal(fourier.encode(x.tolist()), ref)        # a list of numbers is one [T] item
    stereo = torch.stack([x, 0.5 * x])                          # [2, T]: one stereo item, averaged
    assert torch.equal(fourier.encode(stereo), fourier.encode(stereo.mean(0)))
    batch = torch.stack([x, -x])[:, None]                       # [B=2, 1, T]: two items
    codes = fourier.encode(batch)
    assert codes.shape[0] == 2 and torch.equal(codes[:1], ref) and torch.equal(codes[1:], fourier.encode(-x))


def test_pipeline_and_trainer_pass_the_layout_they_mean(tiny, tmp_path):
    """`codec encode --channels keep` of a stereo file gives each channel's solo codes (its chunks are [B, 1, t]),
    and the trainer's validation items ([1, T], passed as wav[None]) encode as one mono item."""
    from codec.train.data import ValidDataset

    m = codec.load(str(tiny))
    write_wav(tmp_path / "s.wav", 16000, 0.4, channels=2)
    assert main([str(v) for v in ("encode", tmp_path / "s.wav", tmp_path / "s.codes", "--nq", 4, "--model", tiny,
                                  "--channels", "keep", "-q")]) == 0
    codes, header = codec.load_codes(tmp_path / "s.codes")
    wav, _ = load_audio(tmp_path / "s.wav")
    assert header.channels == 2 and torch.equal(codes, m.encode(wav[:, None], nq=4))
    x, n = ValidDataset([{"path": str(tmp_path / "s.wav")}], 16000, rms_db=None)[0]
    assert x.shape == (1, n)
    wav = torch.from_numpy(x)[None]  # what Trainer's validation passes to model.encode
    assert torch.equal(m.encode(wav, nq=4), m.encode(torch.from_numpy(x[0]), nq=4))


# ---- 2. batches -------------------------------------------------------------------------------------------------

def test_batched_resampled_encode_equals_solo(model):
    """5 clips of different lengths at 16 kHz: a list batch and a padded batch with lengths both give every item
    exactly its solo codes (resampled on its own before padding), -1 after its frames."""
    xs = clips(16000, [0.31, 0.5, 0.123, 0.77, 0.4])
    codes, frames = model.encode(xs, sample_rate=16000, return_lengths=True)
    padded = torch.zeros(5, 1, max(len(x) for x in xs))
    for i, x in enumerate(xs):
        padded[i, 0, : len(x)] = x
    codes2, frames2 = model.encode(padded, sample_rate=16000, lengths=[len(x) for x in xs], return_lengths=True)
    assert torch.equal(codes, codes2) and torch.equal(frames, frames2)
    for i, x in enumerate(xs):
        solo = model.encode(x, sample_rate=16000)
        n = solo.shape[-1]
        assert int(frames[i]) == n == -(-len(resample(x.numpy(), 16000, 24000)) // 320)
        assert torch.equal(codes[i, :, :n], solo[0]), i
        assert bool((codes[i, :, n:] == -1).all())


def test_per_item_rates_and_decode_back(fourier):
    rates = [16000, 44100, 24000, 8000, 22050]
    xs = clips(48000, [0.2, 0.35, 0.1, 0.5, 0.27])
    xs = [torch.from_numpy(resample(x.numpy(), 48000, r)) for x, r in zip(xs, rates)]
    xs[1] = torch.stack([xs[1], 0.5 * xs[1]])  # one stereo item [2, T] in the list
    codes, frames = fourier.encode(xs, sample_rate=rates, return_lengths=True)
    for i, (x, r) in enumerate(zip(xs, rates)):
        solo = fourier.encode(x, sample_rate=r)
        assert torch.equal(codes[i, :, : solo.shape[-1]], solo[0]) and int(frames[i]) == solo.shape[-1]
    lengths = [x.shape[-1] for x in xs]
    back, n = fourier.decode(codes, sample_rate=rates, lengths=lengths, return_lengths=True)
    assert [tuple(b.shape) for b in back] == [(1, k) for k in lengths] and n.tolist() == lengths
    for i, r in enumerate(rates):
        solo = fourier.decode(fourier.encode(xs[i], sample_rate=r))[0, 0]
        want = resample(solo.numpy(), 24000, r)[: lengths[i]]
        assert np.abs(back[i][0, : len(want)].numpy() - want).max() < 1e-6
    # one rate for all, no lengths: each item's valid samples at that rate
    same = fourier.decode(codes, sample_rate=16000)
    assert [b.shape[-1] for b in same] == [round(int(f) * 320 * 16000 / 24000) for f in frames]


def test_batch_argument_errors(fourier):
    xs = clips(16000, [0.1, 0.2])
    with pytest.raises(InputError) as ei:
        fourier.encode(xs, sample_rate=[16000])
    assert str(ei.value) == "sample_rate has 1 entries for 2 items; give one rate per item or a single rate."
    with pytest.raises(InputError) as ei:
        fourier.encode(xs, lengths=[10, 10])
    assert str(ei.value) == "lengths is only for a padded [B, C, T] tensor; a list gives each item's length."
    with pytest.raises(InputError) as ei:
        fourier.encode([xs[0], torch.zeros(1, 1, 5)])
    assert str(ei.value) == "wav[1] must be [T] or [C, T], got shape (1, 1, 5)."
    with pytest.raises(InputError) as ei:
        fourier.encode([xs[0], torch.full((5,), float("nan"))])
    assert str(ei.value) == "wav[1] contains NaN or infinite samples (first at sample 0)."
    with pytest.raises(InputError) as ei:
        fourier.encode(xs, sample_rate=[16000, 0])
    assert str(ei.value) == "sample_rate must be a positive number of Hz, got 0."
    with pytest.raises(InputError) as ei:
        fourier.decode(fourier.encode(xs), lengths=[1])
    assert str(ei.value) == "lengths has 1 entries for 2 items; give one per item."


# ---- 3. streams -------------------------------------------------------------------------------------------------

def _feed_random(enc, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    rnd, out, i = random.Random(seed), [], 0
    while i < x.shape[-1]:
        n = rnd.choice([1, 7, 160, 333, 1000, 2048])
        out.append(enc.feed(x[..., i: i + n]))
        i += n
    out.append(enc.flush())
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("sr", [16000, 44100])
def test_stream_encoder_resamples_live_input(model, sr):
    x = clips(sr, [0.9], seed=3)[0]
    streamed = _feed_random(model.stream_encoder(nq=8, sample_rate=sr), x[None, None])
    # the guarantee: == offline encoding of what soxr.ResampleStream made of the input ...
    rs = soxr.ResampleStream(sr, 24000, 1, dtype="float32", quality="HQ")
    y = np.concatenate([rs.resample_chunk(x.numpy(), last=False), rs.resample_chunk(np.zeros(0, np.float32),
                                                                                  last=True)])
    assert torch.equal(streamed, model.encode(torch.from_numpy(y), nq=8))
    # ... which (soxr's stream output equals its one-shot output) is encode(x, sample_rate=sr) of the whole input
    assert torch.equal(streamed, model.encode(x, sample_rate=sr, nq=8))


def test_stream_encoder_resampling_slots_and_reset(fourier):
    xs = clips(16000, [0.5, 0.5], seed=5)
    enc = fourier.stream_encoder(batch_size=2, nq=4, sample_rate=16000)
    enc.feed(torch.stack(xs)[:, None, :3000])
    enc.reset(1)  # slot 1 starts a new utterance: its resampler starts over too
    rest = torch.stack([xs[0][3000:], xs[1][:5000]])[:, None]
    codes = torch.cat([enc.feed(rest[..., :2500]), enc.feed(rest[..., 2500:]), enc.flush()], dim=-1)
    solo1 = fourier.encode(xs[1][:5000], sample_rate=16000, nq=4)
    assert torch.equal(codes[1, :, : solo1.shape[-1]], solo1[0])
    with pytest.raises(InputError) as ei:
        fourier.stream_encoder(sample_rate=-5)
    assert str(ei.value) == "sample_rate must be a positive number of Hz, got -5."


def test_stream_decoder_gives_zeros_for_padded_frames(model):
    """-1 frames (inside and at the end, per slot) decode to zeros in the stream exactly as offline."""
    xs = clips(24000, [0.6, 0.25], seed=7)
    codes = model.encode(xs, nq=8)  # item 1 is padded with -1 frames at its end
    codes[0, :, 10:14] = -1          # and item 0 has a gap inside
    off = model.decode(codes)
    dec = model.stream_decoder(batch_size=2)
    rnd, out, i = random.Random(1), [], 0
    while i < codes.shape[-1]:
        n = rnd.choice([1, 2, 5])
        out.append(dec.feed(codes[..., i: i + n]))
        i += n
    out.append(dec.flush())
    y = torch.cat(out, dim=-1)
    assert y.shape == off.shape
    assert float((y - off).abs().max()) < 1e-5
    zero = off == 0
    assert bool(zero[0, 0, 10 * 320: 14 * 320].all()) and bool((y[zero] == 0).all())
    assert float(y[1, 0, 19 * 320:].abs().max()) == 0.0 and float(y[1, 0, : 18 * 320].abs().max()) > 0


# ---- 4. .codes from Python -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-api")


def test_save_codes_is_byte_identical_to_the_cli(tiny, tmp_path):
    m = codec.load(str(tiny))
    # at the model rate: model.encode gives the CLI's codes
    write_wav(tmp_path / "a.wav", 16000, 0.77)
    assert main([str(v) for v in ("encode", tmp_path / "a.wav", tmp_path / "cli.codes", "--nq", 3, "--model",
                                  tiny.resolve(), "-q")]) == 0
    wav, sr = load_audio(tmp_path / "a.wav")
    h = codec.save_codes(tmp_path / "py.codes", m.encode(wav, sample_rate=sr, nq=3), m,
                         orig_length=wav.shape[-1], orig_sample_rate=sr)
    assert (tmp_path / "py.codes").read_bytes() == (tmp_path / "cli.codes").read_bytes()
    assert h == read_header(tmp_path / "cli.codes")
    # at another rate: the stream encoder resamples exactly as the CLI does
    write_wav(tmp_path / "b.wav", 44100, 0.61, seed=2)
    assert main([str(v) for v in ("encode", tmp_path / "b.wav", tmp_path / "cli_b.codes", "--nq", 8, "--model",
                                  tiny, "-q")]) == 0
    wav, sr = load_audio(tmp_path / "b.wav")
    codes = _feed_random(m.stream_encoder(sample_rate=sr), torch.from_numpy(wav)[None])
    codec.save_codes(tmp_path / "py_b.codes", codes, m, orig_length=wav.shape[-1], orig_sample_rate=sr)
    assert (tmp_path / "py_b.codes").read_bytes() == (tmp_path / "cli_b.codes").read_bytes()


def test_codes_record_a_name_never_a_path(tiny, tmp_path, capsys):
    write_wav(tmp_path / "a.wav", 16000, 0.3)
    assert main([str(v) for v in ("encode", tmp_path / "a.wav", tmp_path / "a.codes", "--nq", 2, "--model",
                                  tiny.resolve(), "-q")]) == 0
    assert read_header(tmp_path / "a.codes").model_name == "tiny-api"
    assert str(tiny.resolve()).encode() not in (tmp_path / "a.codes").read_bytes()
    m = codec.load(str(tiny))
    codes = m.encode(torch.zeros(1600), nq=2)
    assert codec.save_codes(tmp_path / "b.codes", codes, m, model_name=str(tmp_path / "x" / "mine")).model_name \
        == "mine"
    bare = CodecModel(CodecConfig.preset("tiny")).eval()  # not loaded from a directory: no name at all
    assert codec.save_codes(tmp_path / "c.codes", bare.encode(torch.zeros(1600), nq=2), bare).model_name == ""
    assert main(["decode", str(tmp_path / "c.codes"), str(tmp_path / "c.wav")]) == 2
    assert capsys.readouterr().err == (f"codec: error: '{tmp_path / 'c.codes'}' does not record which model made "
                                       "it; pass --model DIR.\n")


def test_load_codes_round_trip_and_errors(fourier, tmp_path):
    xs = clips(24000, [0.5, 0.2])
    codes, frames = fourier.encode(xs, nq=6, return_lengths=True)
    h = codec.save_codes(tmp_path / "one.codes", codes[1], fourier, orig_length=xs[1].shape[-1])
    assert h.num_frames == int(frames[1]) and h.model_name == ""  # trailing -1 frames (batch padding) dropped
    back, header = codec.load_codes(tmp_path / "one.codes")
    assert back.dtype == torch.long and back.shape == (1, 6, int(frames[1]))
    assert torch.equal(back[0], codes[1, :, : int(frames[1])]) and header == h
    assert header.orig_length == xs[1].shape[-1] and header.orig_sample_rate == 24000
    audio = fourier.decode(back, sample_rate=header.orig_sample_rate, lengths=[header.orig_length])[0]
    assert audio.shape == (1, xs[1].shape[-1])
    gap = codes[0].clone()
    gap[:, 3] = -1
    with pytest.raises(CodecError) as ei:
        codec.save_codes(tmp_path / "gap.codes", gap, fourier)
    assert str(ei.value) == ("codes hold -1 (padded) frames inside the signal: a .codes file stores one item, so "
                             "save each batch item's valid frames, e.g. codes[i, :, :frames[i]].")
    with pytest.raises(CodecError) as ei:
        codec.save_codes(tmp_path / "f.codes", codes[0].float(), fourier)
    assert str(ei.value) == "codes must be integers, got dtype float32."
    with pytest.raises(CodecError) as ei:
        codec.load_codes(tmp_path / "missing.codes")
    assert str(ei.value) == f"input file '{tmp_path / 'missing.codes'}' does not exist."
    assert not (tmp_path / "gap.codes").exists() and not (tmp_path / "f.codes").exists()


# ---- 5. threads -------------------------------------------------------------------------------------------------

def test_default_threads_policy(monkeypatch):
    from codec import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for cores, want in ((1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)):
        monkeypatch.setattr(threads, "usable_cores", lambda c=cores: c)
        assert threads.default_threads() == want
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3


@pytest.fixture
def keep_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_cli_threads_option(tiny, tmp_path, capsys, keep_threads, monkeypatch):
    from codec import threads

    write_wav(tmp_path / "a.wav", 16000, 0.2)
    argv = ["encode", str(tmp_path / "a.wav"), str(tmp_path / "a.codes"), "--model", str(tiny), "-q"]
    assert main(argv + ["--threads", "2"]) == 0 and torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    assert main(argv) == 0 and torch.get_num_threads() == 1
    assert main(["decode", str(tmp_path / "a.codes"), str(tmp_path / "b.wav"), "--model", str(tiny), "-q",
                 "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2 and (tmp_path / "b.wav").is_file()
    capsys.readouterr()
    assert main(argv + ["--threads", "0"]) == 2
    assert "argument --threads: must be at least 1, got 0" in capsys.readouterr().err
    for cmd in ("encode", "decode", "demo", "eval", "bench"):
        assert main([cmd, "-h"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "--threads N CPU threads for torch (default: $OMP_NUM_THREADS if set, else half the usable " \
               "cores, 1 to 4: a thread per core collapses when another process is busy)" in text, cmd
    assert main(["trim", "-h"]) == 0 and "--threads" not in capsys.readouterr().out
