"""Causal, streamable, weight-normalised 1-D convolutions.

* :class:`StreamingConv1d` — causal conv (all padding on the left, ``(k-1)*d + 1 - stride`` samples) with
  weight normalisation (parameters ``weight_v``, ``weight_g``, ``bias``; ``weight = g * v / ||v||`` per output
  channel).  In eval mode the folded weight is cached (recomputed when a parameter changes).  Streaming keeps the
  last ``(k-1)*d + 1 - stride`` input samples as state.  Inputs must have a length that is a multiple of the
  stride (the model feeds whole frames).
* :class:`StreamingConvTranspose1d` — causal transposed conv (kernel ``k``, stride ``s``): the ``k - s`` samples
  that overlap into the future are trimmed offline and kept as pending state in streaming (added to the next
  chunk).  Bias is added once, to emitted samples only, so streaming equals offline decoding.

Bit-exact inference path (``forward_exact``): torch's conv1d / GEMM kernels do not give the same float result for
an output position when the input length or batch size changes (measured: most random slices differ in the last
bits), which would let chunked and whole-file encodings disagree on an argmin.  ``forward_exact`` takes a
channels-last input ``[B, T, C]``, builds the im2col rows ``[B*T_out, C*k]`` and multiplies them in blocks of a
fixed number of rows (``block_rows``, a multiple of 64; the last block is zero-padded).  Every GEMM call then
has the same shape, and within a fixed-shape GEMM each row's result depends only on that row (verified for the
shapes used here with 1 and 2 threads by the tests) — so each output position is bit-identical whatever the
chunking, length or batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .streaming import ContextState, PendingState, StreamingModule


@dataclass
class ConvState(ContextState):
    """State of :class:`StreamingConv1d`: the left context in both layouts, ``ctx [B, C_in, P]`` (channels-first
    path) and ``ctx_cl [B, P, C_in]`` (the exact channels-last path); a stream uses one of them."""

    ctx_cl: torch.Tensor


def exact_linear(rows: torch.Tensor, weight_t: torch.Tensor, block_rows: int) -> torch.Tensor:
    """``rows [N, K] @ weight_t [K, M] -> [N, M]`` computed in fixed-shape blocks of ``block_rows`` rows.

    The result of a row does not depend on N or on the row's position (see module docstring)."""
    n, kd = rows.shape
    m = weight_t.shape[1]
    out = rows.new_empty(n, m)
    if n == 0:
        return out
    rows = rows.contiguous()
    full = n - n % block_rows
    for s in range(0, full, block_rows):
        torch.mm(rows[s:s + block_rows], weight_t, out=out[s:s + block_rows])
    if full < n:  # last partial block: zero-padded to the fixed shape in a small buffer
        tail = rows.new_zeros(block_rows, kd)
        tail[: n - full] = rows[full:]
        out[full:] = torch.mm(tail, weight_t)[: n - full]
    return out


def _norm_weight(v: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [d for d in range(v.dim()) if d != dim]
    return v * (g / v.norm(dim=dims, keepdim=True).clamp(min=1e-12))


class _WeightNorm(StreamingModule):
    """Shared weight-norm parameters + eval-time folding cache."""

    _norm_dim = 0

    def _init_wn(self, shape: Tuple[int, ...], out_channels: int, fan_in: int) -> None:
        w = torch.empty(shape)
        nn.init.kaiming_uniform_(w, a=5 ** 0.5)
        self.weight_v = nn.Parameter(w)
        dims = [d for d in range(w.dim()) if d != self._norm_dim]
        self.weight_g = nn.Parameter(w.norm(dim=dims, keepdim=True).clone())
        bound = 1.0 / max(1, fan_in) ** 0.5
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        self._cache: Dict[str, object] = {}

    def _key(self):
        """What the folded weight depends on: in-place updates (optimizer steps, ``copy_``, ``load_state_dict``)
        bump the version counters; moves and casts (``.to``, ``.half``) go through :meth:`_apply`, which clears the
        cache.  No storage pointers, so the module traces under ``torch.export`` / dynamo."""
        return (self.weight_v._version, self.weight_g._version, self.weight_v.dtype, self.weight_v.device)

    def weight(self) -> torch.Tensor:
        """Folded weight ``g * v / ||v||`` (cached in eval mode without grad)."""
        if self.training or torch.is_grad_enabled():
            return _norm_weight(self.weight_v, self.weight_g, self._norm_dim)
        key = self._key()
        if self._cache.get("key") != key:
            with torch.no_grad():
                w = _norm_weight(self.weight_v, self.weight_g, self._norm_dim)
            self._cache = {"key": key, "w": w}
        return self._cache["w"]  # type: ignore[return-value]

    def train(self, mode: bool = True):
        self._cache = {}
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = {}
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)


class StreamingConv1d(_WeightNorm):
    """Causal weight-normalised conv1d ``[B, C_in, T] -> [B, C_out, T / stride]`` (T a multiple of stride).

    Args:
        in_channels, out_channels, kernel_size, stride, dilation: as in ``nn.Conv1d``.
        block_rows: rows per GEMM block of the bit-exact path (multiple of 64).
    Streaming state: ``ctx [B, C_in, P]`` (channels-first path) / ``ctx_cl [B, P, C_in]`` (exact path), with
    ``P = (kernel_size - 1) * dilation + 1 - stride`` the left context.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 block_rows: int = 256) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = int(kernel_size), int(stride), int(dilation)
        self.span = (self.kernel_size - 1) * self.dilation + 1
        if self.span < self.stride:
            raise ValueError("kernel span must be >= stride")
        self.context = self.span - self.stride
        self.block_rows = int(block_rows)
        self._init_wn((out_channels, in_channels, kernel_size), out_channels, in_channels * kernel_size)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> "ConvState":
        return ConvState(torch.zeros(batch_size, self.in_channels, self.context, device=device, dtype=dtype),
                         torch.zeros(batch_size, self.context, self.in_channels, device=device, dtype=dtype))


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, T] -> [B, C_out, T // stride] (channels-first, differentiable)."""
        if self._stream is not None:
            xp = torch.cat([self._stream.ctx.to(x.dtype), x], dim=-1)
            if self.context:
                self._stream.ctx = xp[..., xp.shape[-1] - self.context:].clone()
        else:
            xp = F.pad(x, (self.context, 0))
        w = self.weight()
        return F.conv1d(xp, w.to(x.dtype), self.bias.to(x.dtype), stride=self.stride, dilation=self.dilation)

    def exact_weight(self) -> torch.Tensor:
        """Folded weight as ``[C_in * k, C_out]`` for the exact path (cached in eval)."""
        if self.training or torch.is_grad_enabled():
            return self.weight().reshape(self.out_channels, -1).t().contiguous()
        key = self._key()
        if self._cache.get("key") != key or "wt" not in self._cache:
            w = self.weight()
            self._cache["wt"] = w.reshape(self.out_channels, -1).t().contiguous()
        return self._cache["wt"]  # type: ignore[return-value]

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Bit-exact path: x [B, T, C_in] (channels-last) -> [B, T // stride, C_out]."""
        B, T, C = x.shape
        if self._stream is not None:
            xp = torch.cat([self._stream.ctx_cl.to(x.dtype), x], dim=1)
            if self.context:
                self._stream.ctx_cl = xp[:, xp.shape[1] - self.context:].clone()
        elif self.context:
            xp = torch.cat([x.new_zeros(B, self.context, C), x], dim=1)
        else:
            xp = x
        t_out = (xp.shape[1] - self.span) // self.stride + 1
        if t_out <= 0:
            return x.new_zeros(B, 0, self.out_channels)
        if self.stride > 1 and self.dilation == 1 and self.span % self.stride == 0:
            return self._exact_frames(xp, t_out)
        if self.kernel_size == 1 and self.stride == 1:
            rows = xp.reshape(B * t_out, C)
        else:
            win = xp.unfold(1, self.span, self.stride)  # [B, t_out, C, span]
            if self.dilation > 1:
                win = win[..., :: self.dilation]
            rows = win.reshape(B * t_out, C * self.kernel_size)
        wt = self.exact_weight().to(x.dtype)
        y = exact_linear(rows, wt, self.block_rows)
        y.add_(self.bias.to(x.dtype))
        return y.reshape(B, t_out, self.out_channels)

    def _group_weights(self) -> List[torch.Tensor]:
        """Strided conv weights split into ``span // stride`` groups of ``stride`` taps, each ``[stride * C_in,
        C_out]`` with rows ordered (tap, channel) like a channels-last frame (cached in eval)."""
        def build() -> List[torch.Tensor]:
            w = self.weight()  # [C_out, C_in, k]
            s = self.stride
            return [w[:, :, g * s:(g + 1) * s].permute(2, 1, 0).reshape(s * self.in_channels, self.out_channels)
                    .contiguous() for g in range(self.span // s)]
        if self.training or torch.is_grad_enabled():
            return build()
        key = self._key()
        if self._cache.get("key") != key or "wg" not in self._cache:
            wg = build()  # refreshes the cache (and its key) through self.weight()
            self._cache["wg"] = wg
        return self._cache["wg"]  # type: ignore[return-value]

    def _exact_frames(self, xp: torch.Tensor, t_out: int) -> torch.Tensor:
        """Strided conv without im2col: a channels-last input ``[B, (t_out + G - 1) * stride, C_in]`` viewed as
        frames ``[B, t_out + G - 1, stride * C_in]``; output frame f = sum over groups g of frame ``f + g`` times
        weight group g, each a fixed-shape blocked GEMM on a contiguous slice."""
        B = xp.shape[0]
        s, groups = self.stride, self.span // self.stride
        frames = xp[:, : (t_out + groups - 1) * s].reshape(B, t_out + groups - 1, s * self.in_channels)
        wg = [w.to(xp.dtype) for w in self._group_weights()]
        bias = self.bias.to(xp.dtype)
        out = []
        for b in range(B):
            y = exact_linear(frames[b, :t_out], wg[0], self.block_rows)
            for g in range(1, groups):
                y.add_(exact_linear(frames[b, g:g + t_out], wg[g], self.block_rows))
            out.append(y.add_(bias))
        return torch.stack(out, 0)


class StreamingConvTranspose1d(_WeightNorm):
    """Causal weight-normalised transposed conv ``[B, C_in, T] -> [B, C_out, T * stride]``.

    The last ``kernel_size - stride`` samples of each call spill into the future: trimmed offline, kept as
    pending state (``pending [B, C_out, kernel_size - stride]``) in streaming.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        if self.kernel_size < self.stride:
            raise ValueError("kernel_size must be >= stride")
        self.overlap = self.kernel_size - self.stride
        self._init_wn((in_channels, out_channels, kernel_size), out_channels, in_channels * kernel_size // stride)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> PendingState:
        return PendingState(torch.zeros(batch_size, self.out_channels, self.overlap, device=device, dtype=dtype))


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, T] -> [B, C_out, T * stride]."""
        T = x.shape[-1]
        n = T * self.stride
        if T == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        y = F.conv_transpose1d(x, self.weight().to(x.dtype), None, stride=self.stride)
        if self._stream is not None and self.overlap:
            y[..., : self.overlap] += self._stream.pending.to(y.dtype)
            self._stream.pending = y[..., n:].clone()
        return y[..., :n] + self.bias.to(x.dtype)[:, None]
