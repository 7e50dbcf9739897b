"""Losses and discriminators of codec.train: mask invariance, values, shapes."""
import numpy as np
import pytest
import torch

from codec.train.discriminators import Discriminators
from codec.train.losses import (MultiResolutionSTFTLoss, MultiScaleMelLoss, discriminator_adversarial_loss,
                                feature_matching_loss, generator_adversarial_loss, masked_l1, mel_filterbank)

SR = 16000


def _sig(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    return (0.3 * torch.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * torch.randn(n, generator=g))[None, None]


@pytest.mark.parametrize("loss_name", ["mel", "stft", "l1"])
def test_padding_and_other_items_do_not_change_real_item_loss(loss_name):
    loss = {"mel": MultiScaleMelLoss(SR), "stft": MultiResolutionSTFTLoss(), "l1": masked_l1}[loss_name]
    n = 7000
    x, y = _sig(n, 1), _sig(n, 2) * 0.8 + 0.01
    alone = loss(x, y, torch.tensor([n]))
    # same item padded with garbage (different in x and y) to 12000 samples, next to another item
    pad = 12000
    xb = torch.randn(2, 1, pad)
    yb = torch.randn(2, 1, pad)
    xb[0, :, :n], yb[0, :, :n] = x[0], y[0]
    xb[1], yb[1] = _sig(pad, 3), _sig(pad, 4)
    lengths = torch.tensor([n, pad])
    per_item = loss(xb, yb, lengths, reduction="none")
    assert per_item.shape == (2,)
    torch.testing.assert_close(per_item[0], alone, rtol=1e-5, atol=1e-6)
    # one padded item in a batch of one: the batch loss is the item loss
    torch.testing.assert_close(loss(xb[:1], yb[:1], lengths[:1]), alone, rtol=1e-5, atol=1e-6)
    # the padding region matters when it is declared valid
    assert not torch.allclose(loss(xb[:1], yb[:1], torch.tensor([pad])), alone)


def test_mel_loss_zero_for_identical_and_grows_with_distortion():
    mel = MultiScaleMelLoss(SR)
    x = _sig(8000, 0)
    assert float(mel(x, x)) == pytest.approx(0.0, abs=1e-6)
    small = float(mel(x, x + 0.001 * torch.randn_like(x)))
    large = float(mel(x, x + 0.1 * torch.randn_like(x)))
    assert 0 < small < large


def test_mel_loss_differentiable():
    mel = MultiScaleMelLoss(SR, windows=(64, 256), n_mels=(10, 40))
    x = _sig(4000, 0)
    y = torch.zeros_like(x, requires_grad=True)
    mel(x, y + 0.01).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_mel_filterbank_shape_and_coverage():
    fb = mel_filterbank(SR, 512, 40)
    assert fb.shape == (40, 257)
    assert (fb >= 0).all()
    assert (fb.sum(dim=1) > 0).all()  # no empty band


def test_adversarial_losses():
    real = [torch.ones(2, 1, 10)]
    fake = [torch.zeros(2, 1, 10)]
    assert float(discriminator_adversarial_loss(real, fake)) == 0.0   # perfect discriminator
    assert float(generator_adversarial_loss(fake)) == 1.0
    assert float(discriminator_adversarial_loss(real, [-f for f in real], "hinge")) == 0.0
    f = [[torch.ones(2, 3), torch.ones(2, 4)]]
    assert float(feature_matching_loss(f, f)) == 0.0
    assert float(feature_matching_loss(f, [[torch.zeros(2, 3), torch.zeros(2, 4)]])) > 0.9


def test_discriminators_shapes_and_grad():
    d = Discriminators(periods=(2, 3), mpd_channels=4, stft_windows=(256, 128), stft_channels=4)
    x = torch.randn(2, 1, 3001, requires_grad=True)
    logits, feats = d(x)
    assert len(logits) == 4 and len(feats) == 4
    assert all(lg.shape[0] == 2 for lg in logits)
    sum(lg.mean() for lg in logits).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_mpd_max_channels_caps_the_widest_layer():
    wide = Discriminators(periods=(2,), mpd_channels=4, stft_windows=())
    narrow = Discriminators(periods=(2,), mpd_channels=4, stft_windows=(), mpd_max_channels=16)
    widths = lambda d: [m.out_channels for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(widths(wide)) == 128 and max(widths(narrow)) == 16
    logits, _ = narrow(torch.randn(1, 1, 2000))
    assert logits[0].shape[0] == 1


def _direct_phase_losses(x, y, lengths, windows, compress=0.3):
    """The phase-aware losses written out term by term (APNet's formulas), for the equivalence test."""
    import math
    cplx, phase = 0.0, 0.0
    for w in windows:
        win = torch.hann_window(w)
        sx, sy = (torch.stft(s[:, 0], n_fft=w, hop_length=w // 4, window=win, center=False, return_complex=True)
                  for s in (x, y))
        ends = torch.arange(sx.shape[-1]) * (w // 4) + w
        mask = (ends[None, :] <= lengths[:, None]).float()[:, None, :]
        count = mask.sum() * sx.shape[1]
        mx, my = (sx.abs() + 1e-7) ** compress, (sy.abs() + 1e-7) ** compress
        cx, cy = mx * torch.exp(1j * torch.angle(sx)), my * torch.exp(1j * torch.angle(sy))
        cplx = cplx + ((cx - cy).abs() * mask).sum() / count
        wrap = lambda d: (d - 2 * math.pi * torch.round(d / (2 * math.pi))).abs()  # noqa: E731
        px, py = torch.angle(sx), torch.angle(sy)
        wgt = mx / mx.mean()
        gd = wrap(torch.diff(px, dim=1) - torch.diff(py, dim=1)) * wgt[:, 1:] * mask
        iaf = wrap(torch.diff(px, dim=2) - torch.diff(py, dim=2)) * wgt[..., 1:] * mask[..., 1:]
        phase = phase + (gd.sum() + iaf.sum()) / count
    return cplx / len(windows), phase / len(windows)


def _direct_mel_loss(x, y, lengths, windows, bands, eps=1e-5):
    total = 0.0
    for w, b in zip(windows, bands):
        fb = mel_filterbank(SR, w, b)
        mx, my = (fb @ torch.stft(s[:, 0], n_fft=w, hop_length=w // 4, window=torch.hann_window(w), center=False,
                                  return_complex=True).abs() for s in (x, y))
        mask = ((torch.arange(mx.shape[-1]) * (w // 4) + w)[None, :] <= lengths[:, None]).float()
        diff = (torch.log10(mx.clamp_min(eps)) - torch.log10(my.clamp_min(eps))).abs().mean(dim=1)
        total = total + (diff * mask).sum() / mask.sum()
    return total


def test_spectral_losses_equal_their_direct_formulas_in_value_and_gradient():
    """The losses skip the reference's graph and share intermediate terms; values and gradients must still be
    those of the formulas written out."""
    from codec.train.losses import PhaseAwareSTFTLoss
    x = torch.cat([_sig(6000, 1), _sig(6000, 2)])
    y0 = x * 0.7 + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([6000, 4500])
    windows, bands = (64, 256, 1024), (10, 40, 80)
    for fast, direct in ((lambda a, b: sum(PhaseAwareSTFTLoss((480, 960))(a, b, lengths)),
                          lambda a, b: sum(_direct_phase_losses(a, b, lengths, (480, 960)))),
                         (lambda a, b: MultiScaleMelLoss(SR, windows, bands)(a, b, lengths),
                          lambda a, b: _direct_mel_loss(a, b, lengths, windows, bands))):
        ya, yb = y0.clone().requires_grad_(), y0.clone().requires_grad_()
        la, lb = fast(x, ya), direct(x, yb)
        la.backward(), lb.backward()
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        # float32 rounding differs where |S| is near 0 (the eps): 1e-5 of the largest gradient there
        torch.testing.assert_close(ya.grad, yb.grad, rtol=1e-4, atol=1e-4 * float(yb.grad.abs().max()))
        assert ya.grad.abs().sum() > 0
