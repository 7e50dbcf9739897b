"""The codec model: causal encoder -> ResidualVQ -> causal decoder.

The model composes three parts (EnCodec-style: ready-built parts may be handed in): an encoder, a
:class:`codec.quantization.ResidualVQ` and a decoder.  Two layer families, chosen by ``CodecConfig.encoder_type``
/ ``decoder_type``: ``"seanet"`` (the time-domain conv stack, :mod:`codec.nn.seanet`) and ``"fourier"`` (frame-rate STFT front end / ConvNeXt / inverse-STFT head,
:mod:`codec.nn.fourier`; the shipped model).

Shapes: audio ``[B, 1, T]`` at ``model.sample_rate``; latent ``[B, latent_dim, F]`` with ``F = ceil(T / hop)``;
codes ``LongTensor [B, nq, F]`` (``-1`` marks padded frames of shorter items in a batch).

Algorithmic latency (:attr:`CodecModel.latency_ms`): one frame (``hop_length / sample_rate``; 13.3 ms at 24 kHz,
hop 320) plus the decoder's delay (:attr:`CodecModel.decoder_delay`: 0 for the conv decoder, ``n_fft - hop``
samples of overlap-add for the Fourier decoder, 26.7 ms for n_fft 960).  Every layer is causal (no lookahead), so
a frame's codes depend only on audio up to the end of that frame.

Exactness: :meth:`CodecModel.encode` and the stream encoder use the encoders' bit-exact paths (fixed-shape GEMM
blocks) and the quantizer's :meth:`~codec.quantization.ResidualVQ.encode_exact` (fixed blocks of 64 frames), so a frame's codes are bit-identical whether the
audio is encoded whole, in a masked batch or streamed in any chunking.  The decoder uses the fast path; streamed
decoding equals offline decoding within float rounding (~1e-6).

Precision (``encode(..., precision=...)``, :data:`PRECISIONS`): ``"float32"`` (default, fastest) or ``"float64"``,
where the encoder and the quantizer compute in double precision.  float64 codes do not depend on the runtime's
kernels: they equal the float64 ONNX encoder graphs' codes in ONNX Runtime (``codec export --precision float64``),
where float32 codes differ in the odd near-tie frame (different GEMM summation orders).  The decoder always runs in
float32.

Saving and loading live in :mod:`codec.pretrained` (``save_pretrained(model, dir)``, ``load``); MAC counts in
:func:`codec.bench.model.macs_per_frame`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .config import CodecConfig
from .nn import streaming as st
from .nn.fourier import FourierDecoder, FourierEncoder
from .nn.seanet import SeanetDecoder, SeanetEncoder
from .quantization import ResidualVQ
from .quantization.rvq import EXACT_BLOCK_FRAMES
from .errors import OptionError
from .validation import InputError, check_audio, check_codes

#: encoder arithmetic: name -> dtype (see the module docstring)
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def encode_dtype(precision: Optional[str]) -> torch.dtype:
    """``"float32"`` (or ``None``) / ``"float64"`` -> the encoder's compute dtype; anything else is refused with
    one sentence (:class:`codec.errors.OptionError`)."""
    if precision is None:
        return torch.float32
    if precision not in PRECISIONS:
        raise OptionError("precision", f"'{precision}' is not known: use {' or '.join(PRECISIONS)}.")
    return PRECISIONS[precision]


def code_levels(codes: torch.Tensor) -> torch.Tensor:
    """The level count of every item of codes ``[B, nq, F]``: long ``[B]`` filled with ``nq`` (what a decoder
    with a level embedding is told)."""
    return torch.full_like(codes[:, 0, 0], codes.shape[1], dtype=torch.long)


def build_encoder(cfg: CodecConfig) -> nn.Module:
    """The encoder ``cfg.encoder_type`` names: ``[B, 1, T] -> [B, latent_dim, T / hop]``."""
    return FourierEncoder(cfg) if cfg.encoder_type == "fourier" else SeanetEncoder(cfg)


def build_decoder(cfg: CodecConfig) -> nn.Module:
    """The decoder ``cfg.decoder_type`` names: ``[B, latent_dim, F] -> [B, 1, F * hop]``."""
    return FourierDecoder(cfg) if cfg.decoder_type == "fourier" else SeanetDecoder(cfg)


def build_quantizer(cfg: CodecConfig) -> ResidualVQ:
    """The residual quantizer of ``cfg``: ``[B, latent_dim, F] -> codes [B, num_quantizers, F]``."""
    return ResidualVQ(input_dim=cfg.latent_dim, rvq_dim=cfg.rvq_dim or None, output_dim=cfg.latent_dim,
                      num_quantizers=cfg.num_quantizers, codebook_size=cfg.codebook_size,
                      codebook_dim=cfg.codebook_dim, use_ema=cfg.use_ema, decay=cfg.decay,
                      kmeans_init=cfg.kmeans_init, threshold_ema_dead_code=cfg.threshold_ema_dead_code,
                      commitment_weight=cfg.commitment_weight, codebook_weight=cfg.codebook_weight,
                      residual_weight=cfg.residual_weight,
                      quantizer_dropout=cfg.quantizer_dropout,
                      quantizer_dropout_exponent=cfg.quantizer_dropout_exponent,
                      quantizer_focus=cfg.quantizer_focus, quantizer_focus_levels=cfg.quantizer_focus_levels)


@dataclass
class ModelOutput:
    """Training forward output: ``audio [B, 1, T]`` (trimmed to the input length, zero past each item's length),
    ``rvq`` (:class:`codec.quantization.RVQOutput`), ``mask`` bool ``[B, frames]`` (True = valid frame)."""

    audio: torch.Tensor
    rvq: object
    mask: torch.Tensor


def _to_tensor(wav) -> torch.Tensor:
    if isinstance(wav, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    if not torch.is_tensor(wav):
        raise TypeError("wav must be a torch.Tensor or numpy.ndarray")
    return wav


class CodecModel(nn.Module):
    """Neural audio codec (see module docstring).

    >>> model = CodecModel(CodecConfig.preset("tiny")).eval()
    >>> codes = model.encode(torch.randn(16000), nq=4)     # [1, 4, 50]
    >>> wav = model.decode(codes)                          # [1, 1, 16000]
    """

    def __init__(self, config: Optional[CodecConfig] = None, encoder: Optional[nn.Module] = None,
                 quantizer: Optional[ResidualVQ] = None, decoder: Optional[nn.Module] = None) -> None:
        """Compose ``encoder``, ``quantizer`` and ``decoder`` (each built from ``config`` when not given; a
        ready-built part must match the config's latent size, hop and sample rate)."""
        super().__init__()
        self.config = config or CodecConfig()
        self.encoder = encoder if encoder is not None else build_encoder(self.config)
        self.quantizer = quantizer if quantizer is not None else build_quantizer(self.config)
        self.decoder = decoder if decoder is not None else build_decoder(self.config)
        self.weights_hash: Optional[str] = None
        #: offline encode / decode run in blocks of this many frames through the streaming states (the same codes,
        #: audio within float rounding; cache-friendly; not weights or config fields).  The encoder's block is a
        #: multiple of the quantizer's fixed block (:data:`~codec.quantization.rvq.EXACT_BLOCK_FRAMES`, 64) so
        #: that only the last block is zero-padded (75-frame blocks padded to 128 rows: 2026-12-06, a 10 s
        #: encode took 0.39 s at 75, 0.26 s at 128, 0.22 s at 256 frames, one thread beside a training run).
        self.encode_block_frames = 4 * EXACT_BLOCK_FRAMES
        self.decode_block_frames = 75

    # ------------------------------------------------------------------ facts
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def num_quantizers(self) -> int:
        return self.config.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency in ms: one frame (13.3 ms at 24 kHz / hop 320) plus :attr:`decoder_delay`."""
        return self.config.latency_ms

    @property
    def decoder_delay(self) -> int:
        """Samples of latency the decoder adds (the Fourier decoder's overlap-add; 0 for the conv decoder)."""
        return int(self.decoder.delay)

    def bitrate(self, nq: Optional[int] = None) -> float:
        """Bits per second with ``nq`` levels (default all)."""
        return self.config.bitrate(nq)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> dict:
        """Parameter counts: encoder, quantizer (incl. codebook buffers), decoder, total (trainable)."""
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.decoder.parameters())
        q = sum(p.numel() for p in self.quantizer.parameters()) + sum(b.numel() for b in self.quantizer.buffers())
        return {"encoder": enc, "decoder": dec, "quantizer": q, "total": enc + dec + q,
                "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}

    # ------------------------------------------------------------------ input handling
    def _prepare(self, wav, sample_rate, lengths) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Input in a documented layout (:mod:`codec.inputs`) -> float32 ``[B, 1, T']`` on the model device at the
        model rate (channels averaged; each item resampled on its own) and valid lengths ``[B]`` or ``None``."""
        from .inputs import prepare_batch

        x, lengths = prepare_batch(wav, sample_rate, lengths, self.sample_rate)
        return x.to(self.device), lengths

    # ------------------------------------------------------------------ exact encoding
    def _encode_frames_exact(self, x: torch.Tensor, nq: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x [B, 1, n*hop] -> codes [B, nq, n], computed in ``dtype`` (uses installed streaming states if any)."""
        latent = self.encoder.forward_exact(x.to(dtype).transpose(1, 2))
        return self.quantizer.encode_exact(latent, nq)

    def _encode_blocks(self, x: torch.Tensor, nq: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x [B, 1, F*hop] -> codes [B, nq, F], processed in blocks of ``encode_block_frames`` frames with
        streaming states (bit-identical to one pass)."""
        hop, bf = self.hop_length, max(1, int(self.encode_block_frames))
        frames = x.shape[-1] // hop
        if frames <= bf:
            return self._encode_frames_exact(x, nq, dtype)
        with st.streaming(self.encoder, x.shape[0]):
            out = [self._encode_frames_exact(x[..., i * hop:(i + bf) * hop], nq, dtype) for i in range(0, frames, bf)]
        return torch.cat(out, dim=-1)

    def _decode_blocks(self, z: torch.Tensor, frame_mask: Optional[torch.Tensor] = None,
                       levels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """latent [B, D, F] (decoded from ``levels`` [B] quantizer levels) -> audio [B, 1, F*hop] in blocks of
        ``decode_block_frames`` frames (streaming states; the decoder's delay is compensated: output sample n is
        the stream's sample n + delay)."""
        bf = max(1, int(self.decode_block_frames))
        frames = z.shape[-1]
        if frames <= bf:
            return self.decoder(z, frame_mask, levels)
        with st.streaming(self.decoder, z.shape[0]):
            out = [self.decoder(z[..., i:i + bf], None if frame_mask is None else frame_mask[:, i:i + bf], levels)
                   for i in range(0, frames, bf)]
            tail = self.decoder.flush()
        if tail is not None:
            out.append(tail)
        return torch.cat(out, dim=-1)[..., self.decoder_delay: self.decoder_delay + frames * self.hop_length]

    def _check_nq(self, nq: Optional[int]) -> int:
        n = self.num_quantizers if nq is None else int(nq)
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"nq must be in 1..{self.num_quantizers}, got {n}")
        return n

    def encode(self, wav, sample_rate: Optional[int] = None, nq: Optional[int] = None, lengths=None,
               return_lengths: bool = False, precision: Optional[str] = None):
        """Audio -> codes ``LongTensor [B, nq, F]``, ``F = ceil(T / hop)``.

        Args:
            wav: a batch ``[B, C, T]``; one item ``[T]`` or ``[C, T]`` with ``C <= 2``; or a list of ``[T]`` /
                ``[C, T]`` items of any lengths (tensors or numpy arrays; see :mod:`codec.inputs`).  Channels are
                averaged (downmix).  Other 2-D shapes such as ``[4, 24000]`` are ambiguous and refused.
            sample_rate: rate of ``wav`` (default: the model's), or a list with one rate per item; other rates
                are resampled with soxr on CPU, each item on its own before padding.
            nq: levels (1..num_quantizers, default all).
            lengths: valid samples per item ``[B]`` of a ``[B, C, T]`` batch (a list gives its own lengths).
                Samples past an item's length are zeroed before the encoder and its frames past
                ``ceil(length / hop)`` get code ``-1``; every item gets exactly (bit for bit) the codes it gets
                when encoded alone, with or without resampling.
            return_lengths: also return the frame counts ``[B]``.
            precision: ``"float32"`` (default) or ``"float64"``: the encoder's arithmetic; float64 codes equal
                those of a float64 ONNX export in ONNX Runtime (see the module docstring).

        >>> codes, frames = model.encode([a16k, b44k], sample_rate=[16000, 44100], return_lengths=True)
        """
        nq = self._check_nq(nq)
        dtype = encode_dtype(precision)
        x, lengths = self._prepare(wav, sample_rate, lengths)
        B, _, T = x.shape
        hop = self.hop_length
        frames = -(-T // hop)
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        lengths = lengths.clamp(0, T)
        with torch.no_grad():
            pad = frames * hop - T
            keep = (torch.arange(T)[None] < lengths[:, None]).to(x.device)
            x = torch.where(keep[:, None], x, torch.zeros((), device=x.device))
            if pad:
                x = torch.nn.functional.pad(x, (0, pad))
            codes = self._encode_blocks(x, nq, dtype)
            nfr = -(-lengths // hop)
            fmask = (torch.arange(frames)[None] < nfr[:, None]).to(codes.device)
            codes = torch.where(fmask[:, None], codes, torch.full((), -1, dtype=codes.dtype, device=codes.device))
        return (codes, nfr) if return_lengths else codes

    def decode(self, codes, return_lengths: bool = False, sample_rate=None, lengths=None):
        """Codes ``[B, nq, F]`` (or ``[nq, F]``; ``-1`` = padded frame; any ``nq <= num_quantizers``) ->
        audio float32 ``[B, 1, F * hop]`` (zero past each item's valid frames) and optionally the valid sample
        counts ``[B]``.

        With ``sample_rate`` (one rate, or one per item) or ``lengths`` (samples per item at that rate, e.g. each
        input's original length) it returns instead a list with one float32 CPU tensor ``[1, n_i]`` per item:
        its valid samples resampled to its rate (soxr) and cut or zero-padded to ``lengths[i]``, so a batch
        encoded from a list comes back as that list (``return_lengths`` then gives the ``n_i``)::

            codes = model.encode(wavs, sample_rate=rates)
            back = model.decode(codes, sample_rate=rates, lengths=[w.shape[-1] for w in wavs])
        """
        c = check_codes(_to_tensor(codes), self.codebook_size, self.num_quantizers).to(self.device)
        if c.dim() == 2:
            c = c[None]
        with torch.no_grad():
            z = self.quantizer.decode(c)
            valid = (c >= 0).any(1)  # [B, F]
            y = self._decode_blocks(z.to(self._dtype()), valid, code_levels(c))
            nfr = valid.sum(-1)
            hop = self.hop_length
            keep = torch.repeat_interleave(valid, hop, dim=1)
            y = torch.where(keep[:, None], y, torch.zeros((), device=y.device, dtype=y.dtype)).float()
        if sample_rate is not None or lengths is not None:
            from .inputs import per_item_audio

            items = per_item_audio(y, nfr * hop, self.sample_rate, sample_rate, lengths)
            return (items, torch.tensor([v.shape[-1] for v in items])) if return_lengths else items
        return (y, (nfr * hop).cpu()) if return_lengths else y

    def _dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    # ------------------------------------------------------------------ training
    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None, n_q: Optional[int] = None
                ) -> ModelOutput:
        """Training path: wav [B, 1, T] (lengths [B] optional) -> :class:`ModelOutput` with the decoded audio
        [B, 1, T].  In train mode the quantizer applies quantizer dropout (random level counts per item)."""
        if wav.dim() == 2:
            wav = wav[:, None]
        B, _, T = wav.shape
        hop = self.hop_length
        frames = -(-T // hop)
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=wav.device)
        lengths = torch.as_tensor(lengths, device=wav.device).long().clamp(0, T)
        keep = torch.arange(T, device=wav.device)[None] < lengths[:, None]
        x = wav * keep[:, None].to(wav.dtype)
        if frames * hop != T:
            x = torch.nn.functional.pad(x, (0, frames * hop - T))
        z = self.encoder(x)
        nfr = -(-lengths // hop)
        mask = torch.arange(frames, device=wav.device)[None] < nfr[:, None]
        rvq = self.quantizer(z, mask, n_q=n_q)
        y = self.decoder(rvq.quantized.to(z.dtype), mask, rvq.n_levels)[..., :T]
        y = y * keep[:, None].to(y.dtype)
        return ModelOutput(audio=y, rvq=rvq, mask=mask)

    # ------------------------------------------------------------------ streaming
    def streaming(self, batch_size: int):
        """Context manager: every streaming layer (encoder and decoder) gets a fresh state for ``batch_size``
        slots; inside, :meth:`encode_step` / :meth:`decode_step` process consecutive whole frames."""
        return st.streaming(self, batch_size)

    def encode_step(self, x: torch.Tensor, nq: Optional[int] = None, precision: Optional[str] = None
                    ) -> torch.Tensor:
        """Inside :meth:`streaming`: x [B, 1, n*hop] (whole frames) -> codes [B, nq, n] (``precision`` as
        :meth:`encode`'s; keep one precision per stream)."""
        with torch.no_grad():
            return self._encode_frames_exact(x, self._check_nq(nq), encode_dtype(precision))

    def decode_step(self, codes: torch.Tensor) -> torch.Tensor:
        """Inside :meth:`streaming`: codes [B, nq, f] -> audio [B, 1, f*hop], the decoder's stream output: it lags
        by :attr:`decoder_delay` samples (0 for the conv decoder; :meth:`stream_decoder` compensates it)."""
        with torch.no_grad():
            c = codes.long().to(self.device)
            z = self.quantizer.decode(c)
            return self.decoder(z.to(self._dtype()), (c >= 0).any(1), code_levels(c)).float()

    def stream_encoder(self, batch_size: int = 1, nq: Optional[int] = None,
                       sample_rate: Optional[int] = None, precision: Optional[str] = None) -> "StreamEncoder":
        """Streaming encoder for ``batch_size`` independent streams (latency: one frame, plus the resampler's
        when ``sample_rate`` differs from the model's: live input is then resampled chunk by chunk);
        ``precision`` as :meth:`encode`'s."""
        return StreamEncoder(self, batch_size, nq, sample_rate, precision)

    def stream_decoder(self, batch_size: int = 1) -> "StreamDecoder":
        """Streaming decoder for ``batch_size`` independent streams (no added latency)."""
        return StreamDecoder(self, batch_size)


class _Stream:
    def __init__(self, model: CodecModel, module: nn.Module, batch_size: int) -> None:
        self.model, self.module, self.batch_size = model, module, int(batch_size)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._fresh()

    def _fresh(self) -> None:
        old = st.get_states(self.module)
        st.start_streaming(self.module, self.batch_size)
        self.states = st.get_states(self.module)
        st.set_states(self.module, old)

    def _run(self, fn, *args):
        old = st.get_states(self.module)
        st.set_states(self.module, self.states)
        try:
            with torch.no_grad():
                return fn(*args)
        finally:
            self.states = st.get_states(self.module)
            st.set_states(self.module, old)

    def _reset_states(self, slot: Optional[int]) -> None:
        if slot is None:
            self._fresh()
            return
        if not 0 <= int(slot) < self.batch_size:
            raise IndexError(f"slot {slot} out of range 0..{self.batch_size - 1}")
        for s in self.states:
            if s is not None:
                s.reset(int(slot))


class StreamEncoder(_Stream):
    """Streaming encoder: ``feed(chunk [B, 1, t]) -> codes [B, nq, n]`` for every frame completed so far.

    Chunks may have any length (even 1 sample).  Each slot buffers its samples until a whole frame (hop samples)
    is available, so the algorithmic latency is one frame (13.3 ms at 24 kHz / hop 320).  Codes are bit-identical
    to :meth:`CodecModel.encode` of the concatenated input.  ``flush()`` zero-pads the last partial frame of each
    slot, returns its codes (``-1`` for slots with fewer frames) and starts over.  ``reset(slot)`` starts a new
    utterance in one slot (its buffered samples and layer states are cleared; other slots are untouched).
    Memory is constant in the stream length.

    ``sample_rate`` (default: the model's): the rate of the chunks.  At another rate each slot runs a
    ``soxr.ResampleStream`` (HQ, as ``codec encode`` does) and ``flush()`` drains it.  Guarantee: the codes are
    bit-identical to :meth:`CodecModel.encode` of the concatenated ``ResampleStream`` output (the model-rate
    audio this stream saw), for any chunking.  soxr's stream output does not depend on the chunking and (soxr
    1.1, tested) equals its one-shot ``soxr.resample``, so the codes also equal ``encode(x, sample_rate=...)``
    of the whole input; a frame's codes are emitted once the resampler's delay has passed.
    """

    def __init__(self, model: CodecModel, batch_size: int = 1, nq: Optional[int] = None,
                 sample_rate: Optional[int] = None, precision: Optional[str] = None) -> None:
        self.nq = model._check_nq(nq)
        self.dtype = encode_dtype(precision)
        self.sample_rate = model.sample_rate if sample_rate is None else int(sample_rate)
        if self.sample_rate <= 0:
            raise InputError(f"sample_rate must be a positive number of Hz, got {self.sample_rate}.")
        super().__init__(model, model.encoder, batch_size)
        self._buf: List[torch.Tensor] = [torch.zeros(0, device=model.device) for _ in range(self.batch_size)]
        self._resamplers: list = [self._resampler() for _ in range(self.batch_size)]

    def _resampler(self):
        if self.sample_rate == self.model.sample_rate:
            return None
        import soxr

        return soxr.ResampleStream(self.sample_rate, self.model.sample_rate, 1, dtype="float32", quality="HQ")

    def _resample(self, x: torch.Tensor, last: bool = False) -> List[torch.Tensor]:
        """Chunk ``[B, t]`` at :attr:`sample_rate` -> one model-rate tensor per slot (its resampler's output)."""
        if self._resamplers[0] is None:
            return list(x)
        a = x.detach().cpu().numpy()
        return [torch.from_numpy(np.asarray(r.resample_chunk(a[i], last=last), np.float32)).to(x.device)
                for i, r in enumerate(self._resamplers)]

    def _empty(self) -> torch.Tensor:
        return torch.zeros(self.batch_size, self.nq, 0, dtype=torch.long, device=self.model.device)

    def feed(self, chunk) -> torch.Tensor:
        """chunk [B, 1, t] or [B, t] (tensor/numpy, at :attr:`sample_rate`) -> codes LongTensor [B, nq, n_new_frames]."""
        x = check_audio(_to_tensor(chunk), name="chunk", allow_empty=True).to(self.model.device).float()
        if x.dim() == 3:
            if x.shape[1] != 1:
                x = x.mean(1, keepdim=True)
            x = x[:, 0]
        if x.dim() == 1 and self.batch_size == 1:
            x = x[None]
        if x.dim() != 2 or x.shape[0] != self.batch_size:
            raise ValueError(f"chunk must be [{self.batch_size}, 1, t], got {tuple(x.shape)}")
        hop = self.model.hop_length
        self._buf = [torch.cat([b, y]) for b, y in zip(self._buf, self._resample(x))]
        n = min(b.shape[0] for b in self._buf) // hop
        if n == 0:
            return self._empty()
        take = torch.stack([b[: n * hop] for b in self._buf])[:, None]
        self._buf = [b[n * hop:].clone() for b in self._buf]
        return self._run(self.model._encode_frames_exact, take, self.nq, self.dtype)

    def flush(self) -> torch.Tensor:
        """Codes of the remaining (zero-padded) frames [B, nq, n]; then the stream starts over."""
        hop = self.model.hop_length
        if self._resamplers[0] is not None:
            empty = torch.zeros(self.batch_size, 0, device=self.model.device)
            self._buf = [torch.cat([b, y]) for b, y in zip(self._buf, self._resample(empty, last=True))]
        nfr = [-(-b.shape[0] // hop) for b in self._buf]
        n = max(nfr)
        if n == 0:
            self.reset()
            return self._empty()
        x = torch.zeros(self.batch_size, 1, n * hop, device=self.model.device)
        for i, b in enumerate(self._buf):
            x[i, 0, : b.shape[0]] = b
        codes = self._run(self.model._encode_frames_exact, x, self.nq, self.dtype)
        for i, f in enumerate(nfr):
            codes[i, :, f:] = -1
        self.reset()
        return codes

    def reset(self, slot: Optional[int] = None) -> None:
        """Start over (all slots) or start a new utterance in ``slot`` only."""
        self._reset_states(slot)
        if slot is None:
            self._buf = [torch.zeros(0, device=self.model.device) for _ in range(self.batch_size)]
            self._resamplers = [self._resampler() for _ in range(self.batch_size)]
        else:
            self._buf[int(slot)] = torch.zeros(0, device=self.model.device)
            self._resamplers[int(slot)] = self._resampler()


class StreamDecoder(_Stream):
    """Streaming decoder: ``feed(codes [B, nq, f]) -> audio [B, 1, n]``, the samples that are final.

    With the conv decoder ``n = f * hop`` (no added latency).  The Fourier decoder's overlap-add delays its
    output by ``model.decoder_delay`` samples: the first feeds return that many samples fewer and ``flush()``
    returns the last ``decoder_delay`` samples.  Feeds plus flush always give ``F * hop`` samples that equal
    offline :meth:`CodecModel.decode` within ~1e-6.  Frames coded ``-1`` (padding) give zeros, as offline
    :meth:`CodecModel.decode` does: their samples are zeroed when they are emitted.  ``reset(slot)`` starts a new utterance in one slot (with the Fourier decoder
    the slot's previous utterance loses its last ``decoder_delay`` samples: flush before when they matter).
    """

    def __init__(self, model: CodecModel, batch_size: int = 1) -> None:
        super().__init__(model, model.decoder, batch_size)
        self._skip = model.decoder_delay  # stream samples still to drop (they precede time 0)
        self._fresh_validity()

    def _fresh_validity(self) -> None:
        #: validity [B, k] of the frames fed but not yet wholly emitted; the first is frame ``_base``
        self._valid = torch.zeros(self.batch_size, 0, dtype=torch.bool, device=self.model.device)
        self._base = 0
        self._emitted = 0  # output samples returned so far (the same for every slot)

    def _zero_padding(self, y: torch.Tensor) -> torch.Tensor:
        """Zero the samples of ``y [B, 1, n]`` (the next ``n`` output samples) that belong to ``-1`` frames."""
        hop, n = self.model.hop_length, y.shape[-1]
        if n and self._valid.shape[1]:
            frame = (torch.arange(self._emitted, self._emitted + n, device=y.device) // hop) - self._base
            keep = self._valid[:, frame.clamp(max=self._valid.shape[1] - 1)]
            y = torch.where(keep[:, None], y, torch.zeros((), dtype=y.dtype, device=y.device))
            self._emitted += n
            done = self._emitted // hop - self._base
            self._valid, self._base = self._valid[:, done:], self._base + done
        return y

    def feed(self, codes) -> torch.Tensor:
        c = check_codes(_to_tensor(codes), self.model.codebook_size, self.model.num_quantizers).to(self.model.device)
        if c.dim() == 2 and self.batch_size == 1:
            c = c[None]
        if c.dim() != 3 or c.shape[0] != self.batch_size:
            raise ValueError(f"codes must be [{self.batch_size}, nq, f], got {tuple(c.shape)}")
        if c.shape[-1] == 0:
            return torch.zeros(self.batch_size, 1, 0, device=self.model.device)

        self._valid = torch.cat([self._valid, (c >= 0).any(1)], dim=1)
        return self._zero_padding(self._drop_preroll(self._run(self.model.decode_step, c)))

    def _drop_preroll(self, y: torch.Tensor) -> torch.Tensor:
        if self._skip:
            k = min(self._skip, y.shape[-1])
            self._skip -= k
            y = y[..., k:]
        return y

    def flush(self) -> torch.Tensor:
        """End all streams: the samples still pending ``[B, 1, decoder_delay]`` (``[B, 1, 0]`` for the conv
        decoder; the overlap tails past the last frame are trimmed, as offline); then resets."""
        tail = self._run(self.model.decoder.flush)
        out = torch.zeros(self.batch_size, 1, 0, device=self.model.device) if tail is None else \
            self._zero_padding(self._drop_preroll(tail.float()))
        self.reset()
        return out

    def reset(self, slot: Optional[int] = None) -> None:
        """Start over (all slots) or only ``slot``."""
        self._reset_states(slot)
        if slot is None:
            self._skip = self.model.decoder_delay
            self._fresh_validity()
