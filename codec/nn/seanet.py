"""Time-domain (SEANet-style) causal encoder and decoder: strided convs with residual units.

* :class:`SeanetEncoder` ``[B, 1, T] -> [B, latent_dim, T / hop]``: a conv, one :class:`EncoderBlock` per stride
  (residual units, then a strided conv of kernel ``2 * stride``), an activation and a conv.
* :class:`SeanetDecoder` ``[B, latent_dim, F] -> [B, 1, F * hop]``: the mirror image with causal transposed convs
  (no added delay: a transposed conv emits final samples).

Every conv is causal and weight-normalised (:mod:`codec.nn.conv`).  The encoder has a bit-exact channels-last path
(``forward_exact``: fixed-shape GEMM blocks, see :func:`codec.nn.conv.exact_linear`), the decoder only the fast
path.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

from .activations import make_activation
from .conv import StreamingConv1d, StreamingConvTranspose1d

BLOCK_FRAMES_PER_GEMM = 4  # exact-path GEMM block = this many frames of rows (rounded up to 64 rows)


def block_rows(rows_per_frame: float) -> int:
    """Fixed GEMM block (multiple of 64 rows) for a layer producing ``rows_per_frame`` outputs per frame."""
    return int(64 * max(1, math.ceil(rows_per_frame * BLOCK_FRAMES_PER_GEMM / 64)))


def stage_channels(cfg) -> List[int]:
    """Channels before the first block and after each stride: ``base_channels * 2**i`` capped at max_channels."""
    return [min(cfg.base_channels * 2 ** i, cfg.max_channels) for i in range(len(cfg.strides) + 1)]


class ResidualUnit(nn.Module):
    """``x + conv1x1(act(conv_k,d(act(x))))`` with a ``compress`` bottleneck; all causal."""

    def __init__(self, channels: int, dilation: int, kernel_size: int, compress: int, activation: str,
                 rows_per_frame: float = 64, exact: bool = True) -> None:
        super().__init__()
        hidden = max(1, channels // compress)
        br = block_rows(rows_per_frame)
        self.act1 = make_activation(activation, channels, exact)
        self.conv1 = StreamingConv1d(channels, hidden, kernel_size, dilation=dilation, block_rows=br)
        self.act2 = make_activation(activation, hidden, exact)
        self.conv2 = StreamingConv1d(hidden, channels, 1, block_rows=br)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T] -> [B, C, T]."""
        return x + self.conv2(self.act2(self.conv1(self.act1(x))))

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Bit-exact path on channels-last x [B, T, C]."""
        h = self.conv1.forward_exact(self.act1(x, channels_last=True))
        return self.conv2.forward_exact(self.act2(h, channels_last=True)).add_(x)


class EncoderBlock(nn.Module):
    """Residual units at ``channels`` then a strided causal conv (kernel ``2*stride``) to ``out_channels``."""

    def __init__(self, channels: int, out_channels: int, stride: int, cfg, rows_per_frame: float):
        super().__init__()
        self.res = nn.ModuleList(ResidualUnit(channels, d, cfg.residual_kernel_size, cfg.compress, cfg.activation,
                                              rows_per_frame) for d in cfg.dilations)
        self.act = make_activation(cfg.activation, channels)
        self.down = StreamingConv1d(channels, out_channels, 2 * stride, stride=stride,
                                    block_rows=block_rows(rows_per_frame / stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T] -> [B, C_out, T / stride]."""
        for r in self.res:
            x = r(x)
        return self.down(self.act(x))

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Bit-exact path on channels-last x [B, T, C] -> [B, T / stride, C_out]."""
        for r in self.res:
            x = r.forward_exact(x)
        return self.down.forward_exact(self.act(x, channels_last=True))


class DecoderBlock(nn.Module):
    """Causal transposed conv (kernel ``2*stride``) from ``channels`` to ``out_channels``, then residual units."""

    def __init__(self, channels: int, out_channels: int, stride: int, cfg):
        super().__init__()
        self.act = make_activation(cfg.activation, channels, exact=False)
        self.up = StreamingConvTranspose1d(channels, out_channels, 2 * stride, stride)
        self.res = nn.ModuleList(ResidualUnit(out_channels, d, cfg.residual_kernel_size, cfg.compress,
                                              cfg.activation, exact=False) for d in cfg.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T] -> [B, C_out, T * stride]."""
        x = self.up(self.act(x))
        for r in self.res:
            x = r(x)
        return x


class SeanetEncoder(nn.Module):
    """Causal conv encoder ``[B, 1, T] -> [B, latent_dim, T / hop]`` (T a multiple of hop)."""

    def __init__(self, cfg) -> None:
        super().__init__()
        ch = stage_channels(cfg)
        rpf = float(cfg.hop_length)  # outputs per frame at the current stage
        self.conv_in = StreamingConv1d(cfg.channels, ch[0], cfg.kernel_size, block_rows=block_rows(rpf))
        blocks = []
        for i, s in enumerate(cfg.strides):
            blocks.append(EncoderBlock(ch[i], ch[i + 1], s, cfg, rpf))
            rpf /= s
        self.blocks = nn.ModuleList(blocks)
        self.act_out = make_activation(cfg.activation, ch[-1])
        self.conv_out = StreamingConv1d(ch[-1], cfg.latent_dim, cfg.last_kernel_size, block_rows=block_rows(rpf))
        self.hop = cfg.hop_length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable channels-first path: x [B, 1, T] -> [B, latent_dim, T / hop]."""
        x = self.conv_in(x)
        for b in self.blocks:
            x = b(x)
        return self.conv_out(self.act_out(x))

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Bit-exact channels-last path: x [B, T, 1] -> [B, T / hop, latent_dim]."""
        x = self.conv_in.forward_exact(x)
        for b in self.blocks:
            x = b.forward_exact(x)
        return self.conv_out.forward_exact(self.act_out(x, channels_last=True))


class SeanetDecoder(nn.Module):
    """Causal conv decoder ``[B, latent_dim, F] -> [B, 1, F * hop]``."""

    #: samples of latency added by the decoder (none: transposed convs emit final samples)
    delay = 0

    def __init__(self, cfg) -> None:
        super().__init__()
        ch = stage_channels(cfg)
        self.conv_in = StreamingConv1d(cfg.latent_dim, ch[-1], cfg.kernel_size)
        n = len(cfg.strides)
        self.blocks = nn.ModuleList(DecoderBlock(ch[i + 1], ch[i], cfg.strides[i], cfg) for i in reversed(range(n)))
        self.act_out = make_activation(cfg.activation, ch[0], exact=False)
        self.conv_out = StreamingConv1d(ch[0], cfg.channels, cfg.last_kernel_size)

    def forward(self, z: torch.Tensor, frame_mask: Optional[torch.Tensor] = None,
                levels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z [B, latent_dim, F] -> audio [B, 1, F * hop] (``frame_mask`` is not needed: the model zeroes the
        samples of masked frames; ``levels``, the level count per item, is not read by this decoder)."""
        x = self.conv_in(z)
        for b in self.blocks:
            x = b(x)
        return self.conv_out(self.act_out(x))

    def flush(self) -> Optional[torch.Tensor]:
        """Streaming: nothing is pending beyond the emitted samples."""
        return None
