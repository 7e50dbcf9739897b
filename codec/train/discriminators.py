"""Discriminators for adversarial codec training.

* :class:`MultiPeriodDiscriminator` (HiFi-GAN): the waveform ``[B, 1, T]`` is folded into
  ``[B, 1, T/p, p]`` for each period ``p`` and judged by a 2-D conv stack with ``(k, 1)`` kernels.
* :class:`MultiScaleSTFTDiscriminator` (EnCodec-style): real+imaginary STFT at several window sizes,
  judged by a 2-D conv stack over (time, frequency).
* :class:`Discriminators` combines both; ``forward(x)`` returns ``(logits, features)`` lists with one
  entry per sub-discriminator.

All convolutions use weight normalisation.  Padded samples should be zeroed by the caller (the trainer
multiplies real and generated audio by the sample mask before the discriminators).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["PeriodDiscriminator", "MultiPeriodDiscriminator", "STFTDiscriminator",
           "MultiScaleSTFTDiscriminator", "Discriminators"]


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.1)


def _conv_stack(convs: nn.ModuleList, post: nn.Module, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
    """Run ``convs`` (each followed by leaky ReLU) then ``post``; return ``(logits, features)``.

    ``features`` holds every intermediate activation, ending with the logits themselves.
    """
    feats = []
    for conv in convs:
        x = _lrelu(conv(x))
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x, feats


class _DiscriminatorGroup(nn.Module):
    """A list ``self.discs`` of sub-discriminators all judging the same input.

    ``forward(x [B, 1, T]) -> (logits list, features list of lists)``, one entry per sub-discriminator.
    """

    discs: nn.ModuleList

    def forward(self, x: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        logits, feats = [], []
        for d in self.discs:
            lg, ft = d(x)
            logits.append(lg)
            feats.append(ft)
        return logits, feats


class PeriodDiscriminator(nn.Module):
    """One period of the MPD. ``forward(x [B, 1, T]) -> (logits [B, 1, T', p], features)``."""

    def __init__(self, period: int, channels: int = 32, max_channels: int = 0):
        super().__init__()
        self.period = int(period)
        max_channels = max_channels or min(1024, channels * 32)
        chs = [1] + [min(channels * (4 ** i), max_channels) for i in range(4)]
        self.convs = nn.ModuleList()
        for i in range(4):
            self.convs.append(weight_norm(nn.Conv2d(chs[i], chs[i + 1], (5, 1), (3, 1), padding=(2, 0))))
        self.convs.append(weight_norm(nn.Conv2d(chs[-1], chs[-1], (5, 1), 1, padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(chs[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period))
            t = x.shape[-1]
        x = x.view(b, c, t // self.period, self.period)
        return _conv_stack(self.convs, self.post, x)


class MultiPeriodDiscriminator(_DiscriminatorGroup):
    """HiFi-GAN multi-period discriminator over ``periods``."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: int = 32, max_channels: int = 0):
        super().__init__()
        self.discs = nn.ModuleList([PeriodDiscriminator(p, channels, max_channels) for p in periods])


class STFTDiscriminator(nn.Module):
    """One scale of the MS-STFT discriminator on the complex STFT ``[B, 2, frames, freq]``."""

    def __init__(self, n_fft: int, channels: int = 32, max_channels: int = 256):
        super().__init__()
        self.n_fft, self.hop = int(n_fft), int(n_fft) // 4
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        c = channels
        layers = [weight_norm(nn.Conv2d(2, c, (3, 9), padding=(1, 4)))]
        for i, dil in enumerate((1, 2, 4)):
            cin, cout = min(c * 2 ** i, max_channels), min(c * 2 ** (i + 1), max_channels)
            layers.append(weight_norm(nn.Conv2d(cin, cout, (3, 9), stride=(1, 2), dilation=(dil, 1),
                                                padding=(dil, 4))))
        cl = min(c * 8, max_channels)
        layers.append(weight_norm(nn.Conv2d(cl, cl, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(cl, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        sig = x[:, 0].float()
        if sig.shape[-1] < self.n_fft:
            sig = F.pad(sig, (0, self.n_fft - sig.shape[-1]))
        spec = torch.stft(sig, self.n_fft, self.hop, self.n_fft, window=self.window, center=True,
                          normalized=True, return_complex=True)          # [B, F, frames]
        z = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)   # [B, 2, frames, F]
        z = z.to(x.dtype)
        return _conv_stack(self.convs, self.post, z)


class MultiScaleSTFTDiscriminator(_DiscriminatorGroup):
    """EnCodec-style multi-scale STFT discriminator over window sizes ``n_ffts``."""

    def __init__(self, n_ffts: Sequence[int] = (2048, 1024, 512), channels: int = 32):
        super().__init__()
        self.discs = nn.ModuleList([STFTDiscriminator(n, channels) for n in n_ffts])


class Discriminators(nn.Module):
    """MPD + MS-STFT discriminators. ``forward(x [B, 1, T]) -> (logits list, features list of lists)``."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), mpd_channels: int = 32,
                 stft_windows: Sequence[int] = (2048, 1024, 512), stft_channels: int = 32,
                 mpd_max_channels: int = 0):
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(periods, mpd_channels, mpd_max_channels) if periods else None
        self.msstft = MultiScaleSTFTDiscriminator(stft_windows, stft_channels) if stft_windows else None

    def forward(self, x: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        logits: List[Tensor] = []
        feats: List[List[Tensor]] = []
        for d in (self.mpd, self.msstft):
            if d is not None:
                lg, ft = d(x)
                logits += lg
                feats += ft
        return logits, feats
