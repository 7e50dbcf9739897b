"""CodecModel: config, shapes, masked batches (bit-exact), input forms, training forward."""
import dataclasses
import json

import numpy as np
import pytest
import torch

import codec
from codec.config import CodecConfig
from codec.bench.model import codec_macs_per_frame
from codec.model import CodecModel


def small_model(seed=0, **kw):
    """24 kHz strides / 32 x 1024 x 8 quantizer, narrow convs; codebooks k-means initialised on audio."""
    torch.manual_seed(seed)
    cfg = CodecConfig.preset("24khz", base_channels=8, max_channels=64, latent_dim=32, **kw)
    m = CodecModel(cfg)
    m.train()
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(2, 1, 12000, generator=g)
    with torch.no_grad():
        m(x)  # k-means init of the codebooks on real latents -> codes with close competitors
    return m.eval()


FOURIER_SMALL = dict(encoder_type="fourier", decoder_type="fourier", fourier_dim=32, encoder_layers=2,
                     decoder_layers=2)


@pytest.fixture(scope="module", params=["seanet", "fourier"])
def model(request):
    """The time-domain conv model and the frame-rate Fourier model, both with the 32 x 1024 x 8 quantizer."""
    return small_model(**(FOURIER_SMALL if request.param == "fourier" else {}))


def test_presets_and_json_round_trip():
    c = CodecConfig.preset("24khz")
    assert c.hop_length == 320 and c.frame_rate == 75.0
    assert c.bitrate(8) == 6000.0 and c.bitrate(32) == 24000.0
    c16 = CodecConfig.preset("16khz")
    assert c16.hop_length == 320 and c16.frame_rate == 50.0
    t = CodecConfig.preset("tiny")
    assert t.base_channels == 8 and t.num_quantizers == 8 and t.codebook_size == 256
    for cfg in (c, c16, t, CodecConfig.preset("tiny", sample_rate=24000)):
        assert CodecConfig.from_json(cfg.to_json()) == cfg
        assert CodecConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        CodecConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError):
        CodecConfig(activation="relu6")
    with pytest.raises(KeyError):
        CodecConfig.preset("nope")
    assert dataclasses.replace(c, strides=(4, 4)).hop_length == 16


def test_facts_and_sizes():
    m = CodecModel(CodecConfig.preset("24khz"))
    assert m.sample_rate == 24000 and m.frame_rate == 75.0 and m.num_quantizers == 32
    assert m.bitrate(8) == 6000.0
    assert abs(m.latency_ms - 13.333) < 0.01
    n = m.num_parameters()
    assert 3e6 < n["total"] < 20e6
    # MACs counted by hooks on a real forward equal the closed form from the conv shapes of the config
    c = m.config
    ch = [min(c.base_channels * 2 ** i, c.max_channels) for i in range(len(c.strides) + 1)]
    hid = [x // c.compress for x in ch]  # residual unit: conv k (ch -> hid) then conv 1 (hid -> ch)
    res = [len(c.dilations) * (ch[i] * hid[i] * c.residual_kernel_size + hid[i] * ch[i]) for i in range(len(ch))]
    rate, enc = c.hop_length, c.kernel_size * ch[0] * c.hop_length
    rate_d, dec = 1, c.latent_dim * ch[-1] * c.kernel_size
    for i, s in enumerate(c.strides):
        enc += res[i] * rate
        rate //= s
        enc += ch[i] * ch[i + 1] * 2 * s * rate
    enc += ch[-1] * c.latent_dim * c.last_kernel_size * rate
    for i in reversed(range(len(c.strides))):
        dec += ch[i + 1] * ch[i] * 2 * c.strides[i] * rate_d
        rate_d *= c.strides[i]
        dec += res[i] * rate_d
    dec += ch[0] * c.last_kernel_size * rate_d
    assert codec_macs_per_frame(m) == {"encoder": enc, "decoder": dec,
                                       "rvq_all_levels": 32 * (c.latent_dim * 8 + 8 * 1024)}


def test_encode_decode_shapes(model):
    x = 0.2 * torch.randn(2, 1, 5000)
    codes = model.encode(x, nq=8)
    assert codes.shape == (2, 8, 16) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 1024
    y, n = model.decode(codes, return_lengths=True)
    assert y.shape == (2, 1, 16 * 320) and n.tolist() == [5120, 5120]
    # any nq works with the decoder
    for q in (1, 3, 32):
        assert model.decode(model.encode(x, nq=q)).shape == (2, 1, 5120)
    # nq prefixes: fewer levels = prefix of more levels
    assert torch.equal(model.encode(x, nq=32)[:, :8], codes)
    with pytest.raises(ValueError):
        model.encode(x, nq=33)


def test_masked_batch_bit_exact(model):
    g = torch.Generator().manual_seed(1)
    lengths = [24000, 7001, 320, 12345, 1]
    x = 0.3 * torch.randn(len(lengths), 1, 24000, generator=g)
    codes, nfr = model.encode(x, lengths=torch.tensor(lengths), return_lengths=True)
    assert nfr.tolist() == [-(-n // 320) for n in lengths]
    for i, n in enumerate(lengths):
        alone = model.encode(x[i:i + 1, :, :n])[0]
        f = -(-n // 320)
        assert torch.equal(codes[i, :, :f], alone), f"item {i} differs from encoding alone"
        assert (codes[i, :, f:] == -1).all()
    y, ylen = model.decode(codes, return_lengths=True)
    assert ylen.tolist() == [f * 320 for f in nfr.tolist()]
    assert (y[2, :, 320:] == 0).all()
    # garbage past the length does not matter
    x2 = x.clone()
    x2[1, :, 7001:] = 5.0
    assert torch.equal(model.encode(x2, lengths=torch.tensor(lengths)), codes)


def test_batch_equals_single(model):
    x = 0.3 * torch.randn(3, 1, 9600)
    c = model.encode(x)
    for i in range(3):
        assert torch.equal(c[i:i + 1], model.encode(x[i:i + 1]))


def test_input_forms_and_resampling(model):
    x = (0.2 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    a = model.encode(x)
    assert a.shape == (1, 32, 25)
    assert torch.equal(model.encode(torch.from_numpy(x)), a)
    assert torch.equal(model.encode(x[None]), a)
    assert torch.equal(model.encode(x[None, None]), a)
    st = np.stack([x, x])  # identical channels -> downmix equals the mono signal
    assert torch.equal(model.encode(st), a)
    assert torch.equal(model.encode(torch.from_numpy(st)[None]), a)
    c16 = model.encode(x, sample_rate=16000, nq=4)  # 8000 samples at 16 kHz -> 12000 at 24 kHz
    assert c16.shape == (1, 4, 38)
    with torch.inference_mode():
        assert torch.equal(model.encode(x), a)
        assert model.decode(a).shape == (1, 1, 8000)


def test_training_forward_and_backward():
    torch.manual_seed(0)
    m = CodecModel(CodecConfig.preset("tiny"))
    m.train()
    x = 0.2 * torch.randn(3, 1, 4000)
    lengths = torch.tensor([4000, 2500, 100])
    out = m(x, lengths)
    assert out.audio.shape == (3, 1, 4000)
    assert out.mask.shape == (3, 13) and out.mask.sum(1).tolist() == [13, 8, 1]
    assert (out.audio[2, :, 100:] == 0).all()
    loss = (out.audio - x).abs().mean() + out.rvq.commit_loss
    loss.backward()
    assert m.encoder.conv_in.weight_v.grad is not None
    assert m.decoder.conv_out.weight_g.grad is not None
    out = m(x, n_q=2)
    assert out.rvq.codes.shape[1] == 2


def test_masked_batch_decodes_each_item_as_alone(model):
    """-1 frames add nothing: a shorter item's decoded audio (its faded tail included) equals decoding it alone."""
    g = torch.Generator().manual_seed(2)
    lengths = [9600, 4000, 700]
    x = 0.3 * torch.randn(3, 1, 9600, generator=g)
    codes, nfr = model.encode(x, nq=8, lengths=torch.tensor(lengths), return_lengths=True)
    y = model.decode(codes)
    for i, f in enumerate(nfr.tolist()):
        alone = model.decode(codes[i:i + 1, :, :f])
        assert (y[i:i + 1, :, : f * 320] - alone).abs().max() < 1e-5
        assert (y[i, :, f * 320:] == 0).all()


def test_eval_is_deterministic_and_weight_norm_cache_tracks_updates(model):
    x = 0.3 * torch.randn(1, 1, 3200)
    a = model.encode(x)
    assert torch.equal(a, model.encode(x))
    m = small_model(seed=3)
    c0 = m.encode(x)
    y0 = m.decode(c0)
    with torch.no_grad():
        m.decoder.conv_out.bias.add_(1.0)
    assert torch.allclose(m.decode(c0), y0 + 1.0, atol=1e-5)
    conv = m.decoder.conv_out
    with torch.no_grad():  # eval mode without grad: the cached path
        w0 = conv.weight().clone()
        assert conv.weight() is conv.weight()  # cached
        conv.weight_g.mul_(2.0)  # an in-place update of a weight-norm parameter: the folded weight follows
        assert torch.allclose(conv.weight(), 2 * w0)
        m.load_state_dict(small_model(seed=3).state_dict())  # loading new values: the cache is dropped
        assert torch.allclose(conv.weight(), w0)
        m.double()  # a cast: the cached weight follows the parameters' dtype
        assert conv.weight().dtype == torch.float64 and torch.allclose(conv.weight(), w0.double())
    m.float()
    assert torch.allclose(m.decode(c0), y0, atol=1e-5)  # the reloaded weights decode as before the edits


def test_package_exports(tmp_path):
    assert codec.CodecModel is CodecModel and codec.CodecConfig is CodecConfig
    assert sorted(codec.__all__) == sorted(n for n in codec.__all__ if hasattr(codec, n))
    m = small_model(seed=5)
    codec.save_pretrained(m, str(tmp_path / "m"))
    back = codec.load(str(tmp_path / "m"))  # the package-level entry points round-trip a model
    assert isinstance(back, CodecModel)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values()))
