"""Frame-rate (Fourier) encoder and decoder: a causal STFT front end, causal ConvNeXt blocks, an inverse-STFT head.

Everything runs at the frame rate (75 Hz for hop 320 at 24 kHz), so far more capacity fits in a CPU second than in
a time-domain decoder that upsamples to 24 kHz (the Vocos / WavTokenizer family).

* :class:`CausalSTFT` — frame ``t`` analyses the ``n_fft`` samples that end where frame ``t`` ends (Hann window,
  a fixed DFT basis applied as a GEMM), so the encoder has no lookahead.  Streaming state: the last
  ``n_fft - hop`` samples.
* :class:`ConvNeXtBlock` — causal depthwise conv over frames, LayerNorm, pointwise MLP, layer scale, residual.
  Streaming state: the last ``kernel_size - 1`` frames.
* :class:`ISTFTHead` — predicts log-magnitude and phase per frame, inverse FFT, Hann synthesis window and
  overlap-add.  Frame ``t``'s segment is the window that ends where frame ``t`` ends, so a sample is final only
  when the ``n_fft / hop - 1`` following frames have been added: the head delays its output by
  ``delay = n_fft - hop`` samples (26.7 ms for n_fft 960 / hop 320 at 24 kHz), stated in
  :attr:`CodecModel.latency_ms`.  Streaming state: the ``delay`` samples still waiting for later frames.

Exactness: :meth:`FourierEncoder.forward_exact` uses only fixed-shape blocked GEMMs
(:func:`codec.nn.exact_linear`) and element-wise ops whose result does not depend on the tensor's size
(``sqrt``, ``log``, ``exp``, mul, add, div; LayerNorm written out with GEMM reductions), so codes are
bit-identical across chunkings and masked batches, as for the time-domain encoder.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .conv import exact_linear
from .streaming import ContextState, PendingState, StreamingModule

EXACT_BLOCK_ROWS = 16  # frames per GEMM block in the exact path (16: one streamed frame wastes 15 rows, not 63)


def _exact_silu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)`` from ``exp`` and a division (position-independent results)."""
    return x / (1.0 + torch.exp(-x))


class ExactLinear(nn.Linear):
    """``nn.Linear`` with a bit-exact channels-last path for rows ``[..., in]`` (fixed-shape GEMM blocks)."""

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        y = exact_linear(rows, self.weight.t().to(x.dtype), EXACT_BLOCK_ROWS)  # a view: no copy per call
        if self.bias is not None:
            y.add_(self.bias.to(x.dtype))
        return y.reshape(*shape[:-1], self.out_features)


class ExactLayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim; the exact path computes mean and variance with fixed-shape GEMMs."""

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        c = shape[-1]
        rows = x.reshape(-1, c)
        avg = torch.full((c, 1), 1.0 / c, dtype=x.dtype, device=x.device)
        mean = exact_linear(rows, avg, EXACT_BLOCK_ROWS)
        d = rows - mean
        var = exact_linear(d * d, avg, EXACT_BLOCK_ROWS)
        y = d / torch.sqrt(var + self.eps)
        y = y * self.weight.to(x.dtype) + self.bias.to(x.dtype)
        return y.reshape(shape)


class CausalSTFT(StreamingModule):
    """Causal STFT features ``[B, T] -> [B, F, 3 * (n_fft // 2 + 1)]`` (T a multiple of ``hop``).

    Per frame: log-magnitude, and the real / imaginary parts scaled by ``|S|^-0.75`` (a power-compressed
    complex spectrum, so phase is seen where there is energy)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        if n_fft < hop:
            raise ValueError("n_fft must be >= hop_length")
        self.n_fft, self.hop = int(n_fft), int(hop)
        self.bins = self.n_fft // 2 + 1
        self.context = self.n_fft - self.hop
        n = torch.arange(self.n_fft, dtype=torch.float64)
        k = torch.arange(self.bins, dtype=torch.float64)
        ang = 2 * math.pi * n[:, None] * k[None, :] / self.n_fft
        win = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)[:, None]
        basis = torch.cat([win * torch.cos(ang), -win * torch.sin(ang)], dim=1)  # [n_fft, 2 * bins]
        self.register_buffer("basis", basis.float(), persistent=False)

    @property
    def features(self) -> int:
        return 3 * self.bins

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> ContextState:
        return ContextState(torch.zeros(batch_size, self.context, device=device, dtype=dtype))

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        if self._stream is not None:
            xp = torch.cat([self._stream.ctx.to(x.dtype), x], dim=-1)
            self._stream.ctx = xp[:, xp.shape[-1] - self.context:].clone()
        else:
            xp = F.pad(x, (self.context, 0))
        return xp.unfold(-1, self.n_fft, self.hop)  # [B, F, n_fft]

    def _features(self, spec: torch.Tensor) -> torch.Tensor:
        re, im = spec[..., : self.bins], spec[..., self.bins:]
        mag = torch.sqrt(re * re + im * im + 1e-10)
        scale = 1.0 / (torch.sqrt(mag) * torch.sqrt(torch.sqrt(mag)))  # |S|^-0.75
        return torch.cat([torch.log(mag + 1e-5), re * scale, im * scale], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T] -> features [B, F, 3 * bins] (differentiable)."""
        return self._features(torch.matmul(self._frames(x), self.basis.to(x.dtype)))

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Bit-exact path: x [B, T] -> features [B, F, 3 * bins]."""
        fr = self._frames(x)
        B, Fr, W = fr.shape
        spec = exact_linear(fr.reshape(B * Fr, W), self.basis.to(x.dtype), EXACT_BLOCK_ROWS)
        return self._features(spec.reshape(B, Fr, -1))



class ConvNeXtBlock(StreamingModule):
    """Causal ConvNeXt block on channels-last frames ``[B, F, C] -> [B, F, C]``.

    ``x + gamma * W2(silu(W1(LN(dwconv_k(x)))))`` with the depthwise conv looking back ``kernel_size - 1`` frames.
    """

    def __init__(self, dim: int, hidden: int, kernel_size: int = 7, layer_scale: float = 1e-2) -> None:
        super().__init__()
        self.dim, self.kernel_size = int(dim), int(kernel_size)
        self.dw_weight = nn.Parameter(torch.randn(self.kernel_size, dim) / math.sqrt(self.kernel_size))
        self.dw_bias = nn.Parameter(torch.zeros(dim))
        self.norm = ExactLayerNorm(dim, eps=1e-6)
        self.pw1 = ExactLinear(dim, hidden)
        self.pw2 = ExactLinear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> ContextState:
        return ContextState(torch.zeros(batch_size, self.kernel_size - 1, self.dim, device=device, dtype=dtype))

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size - 1
        if self._stream is not None:
            xp = torch.cat([self._stream.ctx.to(x.dtype), x], dim=1)
            if k:
                self._stream.ctx = xp[:, xp.shape[1] - k:].clone()
            return xp
        return F.pad(x, (0, 0, k, 0))

    def _dwconv(self, x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv: per frame, the kernel's products summed in kernel order, then the bias (the same
        op order for every frame, so a frame's result does not depend on the chunking).  With autograd, and in
        graph export (torch.export cannot give unfold a dynamic frame count), it runs as ``kernel_size`` shifted
        multiply-adds (their backward is ~2x faster than unfold's); otherwise as one unfold, multiply and sum over
        the kernel: the same values bit for bit, with ~15 small ops fewer per block, which is most of a streamed
        frame's cost in this layer (10 us instead of 160 us per block and frame)."""
        xp = self._padded(x)
        T = x.shape[1]
        w = self.dw_weight.to(x.dtype)
        if (torch.is_grad_enabled() and (xp.requires_grad or w.requires_grad)) or torch.compiler.is_compiling():
            y = xp[:, 0:T] * w[0]
            for i in range(1, self.kernel_size):
                y = y + xp[:, i:i + T] * w[i]
        else:
            y = (xp.unfold(1, self.kernel_size, 1) * w.t()).sum(-1)  # [B, T, C, k] -> [B, T, C]
        return y + self.dw_bias.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pw2(F.silu(self.pw1(self.norm(self._dwconv(x)))))
        return x + self.gamma * h

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pw2.forward_exact(_exact_silu(self.pw1.forward_exact(self.norm.forward_exact(self._dwconv(x)))))
        return x + self.gamma.to(x.dtype) * h



class ISTFTHead(StreamingModule):
    """Frames ``[B, F, C]`` -> audio by inverse STFT with overlap-add (see module docstring).

    Offline (no stream state): returns ``[B, F * hop]`` aligned with the encoder input (output sample ``n`` is
    overlap-add sample ``n + delay``; the last ``delay`` samples lack the frames after the end and fade out).
    Streaming: returns the ``F * hop`` overlap-add samples that became final (not delay-compensated; the
    caller drops the first ``delay`` samples of a stream) and keeps the rest as ``pending [B, delay]``.
    ``frame_mask [B, F]`` (optional): frames with False contribute nothing (``-1`` codes).
    """

    def __init__(self, dim: int, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = int(n_fft), int(hop)
        self.bins = self.n_fft // 2 + 1
        self.delay = self.n_fft - self.hop
        self.proj = nn.Linear(dim, 2 * self.bins)
        win = torch.hann_window(self.n_fft, periodic=True)
        # steady-state sum of the squared Hann window over the overlapping frames (constant for hop <= n_fft / 3;
        # the config requires n_fft to be a multiple of hop)
        env = (win ** 2).reshape(-1, self.hop).sum(0).mean()
        self.register_buffer("window", win / env, persistent=False)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> PendingState:
        return PendingState(torch.zeros(batch_size, self.delay, device=device, dtype=dtype))

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, F, C] -> complex spectrum [B, F, bins]."""
        h = self.proj(x)
        logmag, phase = h[..., : self.bins], h[..., self.bins:]
        mag = torch.exp(logmag.clamp(max=6.0))
        return torch.polar(mag.float(), phase.float())

    def forward(self, x: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, Fr, _ = x.shape
        if Fr == 0:
            return x.new_zeros(B, 0)
        seg = torch.fft.irfft(self.spectrum(x), n=self.n_fft, dim=-1) * self.window  # [B, F, n_fft]
        if frame_mask is not None:
            seg = seg * frame_mask[..., None].to(seg.dtype)
        n = Fr * self.hop
        y = F.fold(seg.transpose(1, 2), output_size=(1, n + self.delay), kernel_size=(1, self.n_fft),
                   stride=(1, self.hop)).reshape(B, n + self.delay)
        if self._stream is None:
            return y[:, self.delay:]
        if self.delay:
            y[:, : self.delay] += self._stream.pending.to(y.dtype)
            self._stream.pending = y[:, n:].clone()
        return y[:, :n]

    def flush(self) -> torch.Tensor:
        """Streaming: the pending ``[B, delay]`` samples (the stream's faded tail); clears them."""
        if self._stream is None:
            raise RuntimeError("flush() needs a streaming state")
        tail = self._stream.pending
        self._stream.pending = torch.zeros_like(tail)
        return tail



class FourierEncoder(nn.Module):
    """``[B, 1, T] -> [B, latent_dim, T / hop]``: causal STFT, linear, ConvNeXt blocks, LayerNorm, linear."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.stft = CausalSTFT(cfg.n_fft, cfg.hop_length)
        d = cfg.fourier_dim
        self.proj_in = ExactLinear(self.stft.features, d)
        self.blocks = nn.ModuleList(ConvNeXtBlock(d, d * cfg.fourier_mlp, cfg.fourier_kernel)
                                    for _ in range(cfg.encoder_layers))
        self.norm = ExactLayerNorm(d, eps=1e-6)
        self.proj_out = ExactLinear(d, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable path: x [B, 1, T] -> [B, latent_dim, T / hop]."""
        h = self.proj_in(self.stft(x[:, 0]))
        for b in self.blocks:
            h = b(h)
        return self.proj_out(self.norm(h)).transpose(1, 2)

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Bit-exact path: x [B, T, 1] -> [B, T / hop, latent_dim] (channels-last)."""
        h = self.proj_in.forward_exact(self.stft.forward_exact(x[..., 0]))
        for b in self.blocks:
            h = b.forward_exact(h)
        return self.proj_out.forward_exact(self.norm.forward_exact(h))



class FourierDecoder(nn.Module):
    """``[B, latent_dim, F] -> [B, 1, F * hop]``: linear, ConvNeXt blocks, LayerNorm, inverse-STFT head.

    :attr:`delay` samples of added latency (the head's overlap-add).  With ``cfg.level_embedding`` the decoder
    is told how many quantizer levels made its input: :attr:`level_embedding` ``[num_quantizers + 1, layers, dim]``
    holds one vector per level count and block, added to the block's input (zeros at first, so the output starts
    as without it).  Row 0 serves unquantised latents (training's quantizer skip)."""

    def __init__(self, cfg) -> None:
        super().__init__()
        d = cfg.fourier_dim
        self.proj_in = nn.Linear(cfg.latent_dim, d)
        self.blocks = nn.ModuleList(ConvNeXtBlock(d, d * cfg.fourier_mlp, cfg.fourier_kernel)
                                    for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = ISTFTHead(d, cfg.n_fft, cfg.hop_length)
        self.delay = self.head.delay
        self.num_quantizers = int(cfg.num_quantizers)
        self.level_embedding = (nn.Parameter(torch.zeros(cfg.num_quantizers + 1, cfg.decoder_layers, d))
                                if cfg.level_embedding else None)

    def forward(self, z: torch.Tensor, frame_mask: Optional[torch.Tensor] = None,
                levels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z ``[B, latent_dim, F]``, frame_mask bool ``[B, F]``, levels ``[B]`` (long: how many quantizer levels
        decoded z; default all; read only with a level embedding) -> audio ``[B, 1, F * hop]``."""
        h = self.proj_in(z.transpose(1, 2))
        emb = None
        if self.level_embedding is not None:
            rows = self.num_quantizers if levels is None else levels.to(z.device).long()
            emb = self.level_embedding[rows].to(h.dtype).expand(z.shape[0], -1, -1)  # [B, layers, dim]
        for i, b in enumerate(self.blocks):
            h = b(h if emb is None else h + emb[:, i, None, :])
        return self.head(self.norm(h), frame_mask)[:, None]

    def flush(self) -> torch.Tensor:
        """Streaming: the pending tail ``[B, 1, delay]``."""
        return self.head.flush()[:, None]

