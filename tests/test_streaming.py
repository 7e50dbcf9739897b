"""Streaming: bit-exact codes for any chunking, decoded audio within 1e-5, batched slots with independent reset."""
import random

import pytest
import torch

from codec.config import CodecConfig
from codec.model import CodecModel

HOP = 320


SMALL = {"seanet": dict(base_channels=8, max_channels=64, latent_dim=32),
         "fourier": dict(encoder_type="fourier", decoder_type="fourier", latent_dim=32, fourier_dim=32,
                         encoder_layers=2, decoder_layers=2)}


def make_model(seed=0, kind="seanet"):
    torch.manual_seed(seed)
    m = CodecModel(CodecConfig.preset("24khz", **SMALL[kind]))
    m.train()
    with torch.no_grad():
        m(0.3 * torch.randn(2, 1, 12000, generator=torch.Generator().manual_seed(seed)))  # k-means init
    return m.eval()


@pytest.fixture(scope="module", params=["seanet", "fourier"])
def model(request):
    """The time-domain conv model and the frame-rate Fourier model (whose decoder adds a delay)."""
    return make_model(kind=request.param)


def signal(seconds, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 24000)) / 24000.0
    tone = 0.3 * torch.sin(2 * torch.pi * 220 * t * (1 + t))
    return (tone + 0.1 * torch.randn(batch, 1, t.numel(), generator=g)).float()


def stream_encode(model, x, sizes, nq=32):
    enc = model.stream_encoder(x.shape[0], nq=nq)
    out, i, k = [], 0, 0
    while i < x.shape[-1]:
        n = sizes(k)
        out.append(enc.feed(x[..., i:i + n]))
        i, k = i + n, k + 1
    out.append(enc.flush())
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("threads", [1, 2])
def test_stream_codes_bit_exact_random_chunkings(model, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = signal(2.0, seed=threads)
        with torch.inference_mode():
            ref = model.encode(x)
            assert ref.shape == (1, 32, 150)
            rng = random.Random(threads)
            chunkings = [lambda k: HOP, lambda k: 24000 * 3, lambda k: 7 * HOP + 13]
            for _ in range(10 if threads == 1 else 4):
                hi = rng.choice([40, 300, 2000, 9000])
                chunkings.append(lambda k, hi=hi, r=random.Random(rng.random()): r.randint(1, hi))
            for sizes in chunkings:
                assert torch.equal(stream_encode(model, x, sizes), ref)
    finally:
        torch.set_num_threads(old)


def test_stream_one_sample_at_a_time(model):
    x = signal(0.4, seed=5)[..., :9000]  # not a whole number of frames
    with torch.inference_mode():
        ref = model.encode(x)
        assert torch.equal(stream_encode(model, x, lambda k: 1), ref)


def test_stream_decoder_matches_offline(model):
    x = signal(1.0, seed=2)
    rng = random.Random(0)
    with torch.inference_mode():
        for nq in (1, 32):
            codes = model.encode(x, nq=nq)
            ref = model.decode(codes)
            for sizes in ([1], None):
                dec = model.stream_decoder(1)
                out, i = [], 0
                while i < codes.shape[-1]:
                    n = 1 if sizes else rng.randint(1, 40)
                    y = dec.feed(codes[..., i:i + n])
                    out.append(y)
                    i += n
                    # every sample is emitted as soon as it is final: `decoder_delay` samples behind the input
                    assert sum(o.shape[-1] for o in out) == max(0, min(i, codes.shape[-1]) * HOP - model.decoder_delay)
                tail = dec.flush()
                assert tail.shape[-1] == min(model.decoder_delay, codes.shape[-1] * HOP)
                y = torch.cat(out + [tail], -1)
                assert y.shape == ref.shape
                assert (y - ref).abs().max().item() < 1e-5


def test_batched_streams_and_slot_reset(model):
    a, b, c = signal(1.0, seed=10), signal(1.0, seed=11), signal(0.6, seed=12)
    with torch.inference_mode():
        ra, rb, rc = model.encode(a, nq=8), model.encode(b, nq=8), model.encode(c, nq=8)
        enc = model.stream_encoder(2, nq=8)
        rng = random.Random(3)
        got = {0: [], 1: []}
        # slot 0: utterance a; slot 1: first 5000 samples of b, then reset -> utterance c
        x = torch.zeros(2, 1, 24000)
        x[0] = a[0]
        x[1, :, :5000] = b[0, :, :5000]
        x[1, :, 5000:5000 + c.shape[-1]] = c[0]
        i = 0
        while i < 5000:
            n = min(rng.randint(1, 700), 5000 - i)
            out = enc.feed(x[..., i:i + n])
            got[0].append(out[0]); got[1].append(out[1])
            i += n
        b_codes = torch.cat(got[1], -1)
        assert torch.equal(b_codes, rb[0, :, :b_codes.shape[-1]])
        enc.reset(1)  # new utterance in slot 1 must not disturb slot 0
        got[1] = []
        end = 5000 + c.shape[-1]
        while i < end:
            n = min(rng.randint(1, 700), end - i)
            out = enc.feed(x[..., i:i + n])
            got[0].append(out[0]); got[1].append(out[1])
            i += n
        out = enc.feed(x[..., end:])
        got[0].append(out[0]); got[1].append(out[1])
        tail = enc.flush()
        got[0].append(tail[0]); got[1].append(tail[1])
        s0 = torch.cat(got[0], -1)
        s1 = torch.cat(got[1], -1)
        assert torch.equal(s0, ra[0])
        s1 = s1[:, : s1.shape[-1]]
        nc = rc.shape[-1]
        assert torch.equal(s1[:, :nc], rc[0])
        # decoder slots: reset slot 1 mid-stream
        dec = model.stream_decoder(2)
        ya = model.decode(ra)
        yc = model.decode(rc)
        first = dec.feed(torch.stack([ra[0, :, :10], rb[0, :, :10]]))
        dec.reset(1)
        rest0, rest1 = [], []
        for f in range(10, ra.shape[-1]):
            other = rc[0, :, f - 10:f - 9] if f - 10 < nc else torch.full((8, 1), -1, dtype=torch.long)
            y = dec.feed(torch.stack([ra[0, :, f:f + 1], other]))
            rest0.append(y[0]); rest1.append(y[1])
        tail = dec.flush()
        y0 = torch.cat([first[0]] + rest0 + [tail[0]], -1)
        assert y0.shape == ya[0].shape
        assert (y0 - ya[0]).abs().max() < 1e-5
        # after reset(slot) the slot's first `decoder_delay` samples precede the new utterance (pre-roll)
        d = model.decoder_delay
        y1 = torch.cat(rest1 + [tail[1]], -1)[..., d: d + yc.shape[-1]]
        assert (y1 - yc[0]).abs().max() < 1e-5


def test_model_streaming_context_manager(model):
    x = signal(1.0, seed=4)
    with torch.inference_mode():
        ref = model.encode(x, nq=4)
        with model.streaming(1):
            parts = [model.encode_step(x[..., i:i + 3 * HOP], nq=4) for i in range(0, 75 * HOP, 3 * HOP)]
            y = torch.cat([model.decode_step(p) for p in parts], -1)
        assert torch.equal(torch.cat(parts, -1), ref)
        d = model.decoder_delay  # decode_step output lags by the decoder's delay
        assert (y[..., d:] - model.decode(ref)[..., : y.shape[-1] - d]).abs().max() < 1e-5
        # states are torn down after the context
        assert all(m._stream is None for m in model.modules() if hasattr(m, "_stream"))


def test_stream_memory_is_bounded(model):
    """Internal buffers stay below one frame per slot, whatever the feeding pattern."""
    enc = model.stream_encoder(1, nq=2)
    with torch.inference_mode():
        for n in [1, 319, 5000, 12345, 1, 1]:
            enc.feed(torch.zeros(1, 1, n))
            assert enc._buf[0].numel() < HOP


def test_offline_block_sizes_give_the_same_codes_and_audio(model):
    """Offline encode / decode run in blocks through the streaming states: any block size, the same codes (bit
    for bit) and the same audio (within 1e-5), and the encoder's default block is whole quantizer blocks."""
    from codec.quantization.rvq import EXACT_BLOCK_FRAMES

    assert model.encode_block_frames % EXACT_BLOCK_FRAMES == 0
    x = signal(5.0, seed=7)  # 375 frames: several blocks of every size below
    enc0, dec0 = model.encode_block_frames, model.decode_block_frames
    try:
        with torch.inference_mode():
            ref = model.encode(x)
            ref_audio = model.decode(ref)
            for bf in (1, 64, 75, 200, 1000):
                model.encode_block_frames = model.decode_block_frames = bf
                assert torch.equal(model.encode(x), ref), bf
                assert (model.decode(ref) - ref_audio).abs().max().item() < 1e-5, bf
    finally:
        model.encode_block_frames, model.decode_block_frames = enc0, dec0
