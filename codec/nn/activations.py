"""Activations for audio: Snake (periodic, learned per-channel frequency) and ELU.

Both are written with elementwise torch ops whose result for an element does not depend on the tensor's
size or on the element's position (``torch.exp`` / ``torch.sin`` / mul / add), so inference is bit-identical
between whole-file, masked-batch and streamed runs (``F.elu`` is not, its vector and scalar paths differ).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Snake(nn.Module):
    """Snake: ``x + 1/alpha * sin(alpha * x)^2`` with a learned ``alpha`` per channel.

    Works on ``[B, C, T]`` (``channels_last=False``) or ``[B, T, C]`` (``channels_last=True``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        a = self.alpha
        if channels_last:
            a = a.transpose(1, 2)
        inv = 1.0 / (a + 1e-9)
        s = torch.sin(a * x)
        return x + inv * (s * s)


class ELU(nn.Module):
    """ELU (alpha = 1).  Training (and ``exact=False``, used in the decoder) uses ``F.elu``; exact inference uses
    ``clamp(x, min=0) + expm1(clamp(x, max=0))`` (position-independent results, the same bits as
    ``where(x > 0, x, expm1(x))`` at half its cost).  Layout-agnostic."""

    def __init__(self, channels: int = 0, exact: bool = True) -> None:
        super().__init__()
        self.exact = exact

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if not self.exact or (self.training and torch.is_grad_enabled()):
            return F.elu(x)
        neg = torch.clamp(x, max=0.0).expm1_()
        return torch.clamp(x, min=0.0).add_(neg)


def make_activation(name: str, channels: int, exact: bool = True) -> nn.Module:
    """``"snake"`` or ``"elu"`` -> module (``exact=False``: fastest kernels, results may depend on tensor size)."""
    if name == "snake":
        return Snake(channels)
    if name == "elu":
        return ELU(channels, exact=exact)
    raise ValueError(f"unknown activation '{name}' (use 'snake' or 'elu')")
