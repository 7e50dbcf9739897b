"""Frame-rate Fourier layers: causal STFT analysis, inverse-STFT overlap-add, config, phase-aware losses."""
import math

import pytest
import torch

from codec.config import CodecConfig
from codec.bench.model import codec_macs_per_frame
from codec.model import CodecModel
from codec.pretrained import save_pretrained
from codec.nn.fourier import CausalSTFT, ConvNeXtBlock, FourierDecoder, ISTFTHead
from codec.train.losses import PhaseAwareSTFTLoss

HOP, NFFT = 320, 960


def test_causal_stft_is_the_window_ending_at_each_frame():
    x = torch.randn(2, 10 * HOP, dtype=torch.float32)
    st = CausalSTFT(NFFT, HOP)
    spec = torch.matmul(st._frames(x), st.basis)  # [B, F, 2 * bins]
    assert spec.shape == (2, 10, 2 * (NFFT // 2 + 1))
    padded = torch.nn.functional.pad(x, (NFFT - HOP, 0))
    ref = torch.stft(padded, NFFT, HOP, window=torch.hann_window(NFFT), center=False, return_complex=True)
    ref = ref.transpose(1, 2)  # [B, F, bins]
    assert torch.allclose(spec[..., : st.bins], ref.real, atol=1e-3)
    assert torch.allclose(spec[..., st.bins:], ref.imag, atol=1e-3)
    # causal: frame 3 does not change when samples after its end change
    y = x.clone()
    y[:, 4 * HOP:] = 0
    assert torch.equal(st.forward_exact(x)[:, :4], st.forward_exact(y)[:, :4])


def test_istft_head_reconstructs_the_analysed_signal_with_its_delay():
    """Given the exact STFT of a signal, overlap-add gives the signal back, ``delay`` samples late (offline:
    compensated), except the last ``delay`` samples, which miss the frames after the end."""
    torch.manual_seed(0)
    F_ = 12
    x = torch.randn(1, F_ * HOP)
    st = CausalSTFT(NFFT, HOP)
    spec = torch.matmul(st._frames(x), st.basis)
    S = torch.complex(spec[..., : st.bins], spec[..., st.bins:])
    head = ISTFTHead(4, NFFT, HOP)
    head.spectrum = lambda h: S  # bypass the learned projection
    y = head(torch.zeros(1, F_, 4))
    d = head.delay
    assert d == NFFT - HOP and y.shape == (1, F_ * HOP)
    assert (y[:, : F_ * HOP - d] - x[:, : F_ * HOP - d]).abs().max() < 1e-4
    assert (y[:, -d:] - x[:, -d:]).abs().max() > 1e-2  # the faded tail
    # frames masked out contribute nothing
    mask = torch.ones(1, F_, dtype=torch.bool)
    mask[:, 6:] = False
    ym = head(torch.zeros(1, F_, 4), mask)
    head6 = ISTFTHead(4, NFFT, HOP)
    head6.spectrum = lambda h: S[:, :6]
    y6 = head6(torch.zeros(1, 6, 4))
    assert torch.allclose(ym[:, : 6 * HOP], y6, atol=1e-6)


def test_convnext_block_is_causal_and_streams():
    torch.manual_seed(0)
    blk = ConvNeXtBlock(16, 48, kernel_size=7, layer_scale=1.0).eval()
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        ref = blk(x)
        x2 = x.clone()
        x2[:, 10:] += 1.0
        assert torch.equal(blk(x2)[:, :10], ref[:, :10])
        from codec.nn import streaming as st
        with st.streaming(blk, 2):
            parts = [blk(x[:, i:i + 3]) for i in range(0, 20, 3)]
        assert (torch.cat(parts, 1) - ref).abs().max() < 1e-5
        assert (blk.forward_exact(x) - ref).abs().max() < 1e-4


def test_depthwise_conv_without_autograd_equals_the_training_form_bit_for_bit_in_any_chunking():
    """The no-grad depthwise conv (one unfold) gives exactly the values of the autograd form (shifted products),
    for any batch and chunking: the exact encoder path depends on a frame's result not depending on either."""
    torch.manual_seed(1)
    blk = ConvNeXtBlock(32, 96, kernel_size=7)
    x = torch.randn(3, 200, 32)
    trained = blk._dwconv(x.requires_grad_())  # the autograd form
    assert trained.requires_grad
    from codec.nn import streaming as st
    with torch.no_grad():
        assert torch.equal(blk._dwconv(x), trained)
        assert torch.equal(blk._dwconv(x[1:2]), trained[1:2])
        for chunk in (1, 4, 75, 128):
            with st.streaming(blk, 3):
                parts = [blk._dwconv(x[:, i:i + chunk]) for i in range(0, 200, chunk)]
            assert torch.equal(torch.cat(parts, 1), trained), chunk


def test_fourier_config_latency_size_and_errors():
    c = CodecConfig.preset("24khz-fourier")
    assert c.decoder_delay == 640 and abs(c.latency_ms - 40.0) < 1e-9
    assert CodecConfig.preset("24khz").decoder_delay == 0
    assert CodecConfig.from_json(c.to_json()) == c
    m = CodecModel(CodecConfig.preset("24khz-fourier", fourier_dim=32, encoder_layers=1, decoder_layers=1,
                                      latent_dim=16))
    assert m.decoder_delay == 640 and abs(m.latency_ms - 40.0) < 1e-9
    bins = NFFT // 2 + 1
    blk = 7 * 32 + 2 * 32 * 96
    assert codec_macs_per_frame(m)["encoder"] == NFFT * 2 * bins + 3 * bins * 32 + 32 * 16 + blk
    assert codec_macs_per_frame(m)["decoder"] == 16 * 32 + blk + 32 * 2 * bins + NFFT * bins * 2
    with pytest.raises(ValueError, match="multiple of the hop length"):
        CodecConfig.preset("24khz-fourier", n_fft=640)
    with pytest.raises(ValueError, match="'seanet' or 'fourier'"):
        CodecConfig(decoder_type="vocos")


def test_fourier_decoder_stream_state_is_the_pending_tail():
    cfg = CodecConfig.preset("24khz-fourier", fourier_dim=16, decoder_layers=1, latent_dim=8)
    dec = FourierDecoder(cfg).eval()
    z = torch.randn(1, 8, 9)
    from codec.nn import streaming as st
    with torch.no_grad():
        ref = dec(z)
        with st.streaming(dec, 1):
            out = [dec(z[..., i:i + 2]) for i in range(0, 9, 2)] + [dec.flush()]
    y = torch.cat(out, -1)
    assert y.shape[-1] == 9 * HOP + dec.delay
    assert (y[..., dec.delay:] - ref).abs().max() < 1e-5


def test_phase_aware_loss_sees_phase_and_goes_down():
    torch.manual_seed(0)
    t = torch.arange(12000) / 24000.0
    x = (0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(12000))[None, None]
    loss = PhaseAwareSTFTLoss((480, 960))
    c0, p0 = loss(x, x)
    assert c0.item() < 1e-6 and p0.item() < 1e-6
    # the same magnitudes with another phase: the complex and phase terms see it
    shifted = (0.3 * torch.sin(2 * math.pi * 220 * t + 1.0) + 0.05 * torch.randn(12000))[None, None]
    c1, p1 = loss(x, shifted)
    assert c1.item() > 0.01 and p1.item() > 0.01
    y = torch.nn.Parameter(0.1 * torch.randn(1, 1, 12000))
    opt = torch.optim.Adam([y], lr=3e-3)
    first = None
    for _ in range(60):
        c, p = loss(x, y)
        total = c + 0.1 * p
        first = float(total.detach()) if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert float(total.detach()) < 0.6 * first


def test_previous_shipped_config_still_loads(tmp_path):
    """config.json of the conv model shipped until 2026-12 (no Fourier fields) builds the same conv model."""
    import json

    import codec

    old = {"sample_rate": 24000, "channels": 1, "strides": [2, 4, 5, 8], "base_channels": 16, "max_channels": 256,
           "latent_dim": 64, "dilations": [1], "residual_kernel_size": 3, "compress": 2, "kernel_size": 7,
           "last_kernel_size": 7, "activation": "elu", "num_quantizers": 32, "codebook_size": 1024,
           "codebook_dim": 8, "rvq_dim": 0, "quantizer_dropout": 0.5, "use_ema": True, "decay": 0.99,
           "kmeans_init": True, "threshold_ema_dead_code": 0.05, "commitment_weight": 0.25, "codebook_weight": 1.0}
    torch.manual_seed(0)
    m = CodecModel(CodecConfig.from_dict(old))
    assert m.config.encoder_type == m.config.decoder_type == "seanet" and m.decoder_delay == 0
    # the tensors of the old model.safetensors: 340 of them, 2,161,874 values
    assert len(m.state_dict()) == 340 and m.num_parameters()["total"] == 2_161_874
    save_pretrained(m, str(tmp_path / "old"))
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    for k in ("encoder_type", "decoder_type", "n_fft", "fourier_dim"):  # written as an old file would be
        cfg.pop(k)
    (tmp_path / "old" / "config.json").write_text(json.dumps({**cfg, "format": "codec-model-1"}))
    back = codec.load(str(tmp_path / "old"))
    x = 0.1 * torch.randn(1, 1, 3200)
    assert torch.equal(back.encode(x), m.eval().encode(x))


def _level_models():
    """A tiny Fourier model without a level embedding and the same weights with one (zeros)."""
    cfg = dict(fourier_dim=16, encoder_layers=1, decoder_layers=2, latent_dim=8, num_quantizers=6,
               codebook_size=32)
    torch.manual_seed(0)
    plain = CodecModel(CodecConfig.preset("24khz-fourier", **cfg)).eval()
    emb = CodecModel(CodecConfig.preset("24khz-fourier", level_embedding=True, **cfg)).eval()
    res = emb.load_state_dict(plain.state_dict(), strict=False)
    assert res.missing_keys == ["decoder.level_embedding"] and not res.unexpected_keys
    return plain, emb


def test_level_embedding_starts_as_no_embedding_and_then_sees_each_level_count():
    plain, emb = _level_models()
    x = 0.1 * torch.randn(2, 1, 24000)
    codes = plain.encode(x)
    assert emb.decoder.level_embedding.shape == (7, 2, 16)
    assert torch.equal(emb.decode(codes[:, :3]), plain.decode(codes[:, :3]))  # zeros: the same function
    with torch.no_grad():
        emb.decoder.level_embedding.normal_()
    dec = emb.decoder
    for n in (2, 6):
        c = codes[:, :n]
        z = emb.quantizer.decode(c)
        with torch.no_grad():
            told = dec(z, None, torch.full((2,), n))
            other = dec(z, None, torch.full((2,), 8 - n))
        y = emb.decode(c)
        assert (y - told).abs().max() < 1e-5
        assert (told - other).abs().max() > 1e-3  # the level count changes the output
        stream = emb.stream_decoder(2)
        parts = [stream.feed(c[..., i:i + 7]) for i in range(0, c.shape[-1], 7)] + [stream.flush()]
        assert (torch.cat(parts, -1) - y).abs().max() < 1e-5  # streamed == offline with the embedding too
    with torch.no_grad():
        assert torch.equal(dec(z), dec(z, None, torch.full((2,), 6)))  # default: every level


def test_level_embedding_trains_the_rows_of_the_level_counts_drawn():
    _, emb = _level_models()
    emb.quantizer.quantizer_focus, emb.quantizer.quantizer_focus_levels = 1.0, (4,)
    emb.train()
    out = emb(0.1 * torch.randn(3, 1, 4800))
    assert bool((out.rvq.n_levels == 4).all())
    out.audio.pow(2).sum().backward()
    g = emb.decoder.level_embedding.grad.abs().sum((1, 2))
    assert g[4] > 0 and float(g.sum() - g[4]) == 0.0
