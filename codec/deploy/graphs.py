"""The four exportable graphs of a codec model, as plain ``nn.Module`` wrappers (torch.export and ONNX).

Built on :func:`codec.deploy.fold.exportable_copy` of the model (weight norm folded, no caches) and on the
model's differentiable layer paths, which need no data-dependent Python control flow:

* :class:`EncoderGraph` — ``audio [B, 1, T] -> codes [B, nq, F]``, ``F = ceil(T / hop)`` (zero-padded to whole
  frames, as :meth:`codec.CodecModel.encode`).
* :class:`DecoderGraph` — ``codes [B, n, F] -> audio [B, 1, F * hop]`` for any ``n`` up to the model's levels;
  ``-1`` levels add nothing and all ``-1`` frames decode to silence (as :meth:`codec.CodecModel.decode`).
* :class:`EncoderStepGraph` — one frame ``audio [B, 1, hop]`` and the encoder state -> ``codes [B, nq, 1]`` and
  the next state (as :meth:`codec.CodecModel.encode_step`).
* :class:`DecoderStepGraph` — one frame ``codes [B, n, 1]`` and the decoder state -> the stream's ``audio
  [B, 1, hop]`` (lagging by ``decoder_delay`` samples, as :meth:`codec.CodecModel.decode_step`), the
  ``tail [B, 1, decoder_delay]`` that ends the stream after this frame (the decoder's ``flush()``; absent when
  the delay is 0) and the next state.

The residual quantizer is written with tensor ops only: the encoder unrolls its ``nq`` levels (nearest code by
``|e|^2 - 2 z.e``, as the model's inference tables), the decoder gathers every level at once from a stacked
``[levels * K, D]`` table, so that a code value never decides a branch.

Precision: the encoder graphs compute in float32 (default) or float64 (``precision="float64"``: weights, tables
and the step graph's states in double; audio still comes in as float32).  float64 graphs give, in ONNX Runtime,
the codes of :meth:`codec.CodecModel.encode` with ``precision="float64"`` bit for bit.  Only the Fourier encoder
exports in float64 (ONNX Runtime has no float64 convolution).  The decoder graphs are float32.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CodecError
from ..model import code_levels, encode_dtype
from ..nn import streaming as st
from .fold import exportable_copy
from .state import flat_states, install_states

__all__ = ["EncoderGraph", "DecoderGraph", "EncoderStepGraph", "DecoderStepGraph", "GRAPHS", "build_graph",
           "graph_dtype"]


class _Quantize(nn.Module):
    """Latent ``[B, D, F]`` -> codes ``[B, nq, F]`` (eval-mode residual quantisation)."""

    def __init__(self, quantizer: nn.Module, nq: int) -> None:
        super().__init__()
        self.input_proj = quantizer.input_proj
        self.l2 = bool(quantizer.l2_normalize)
        self.nq = int(nq)
        self.has_proj = []
        for lvl, (embT, c2, w, b, out_t, _) in enumerate(quantizer._inference_tables()[:nq]):
            self.register_buffer(f"embT{lvl}", embT.clone())
            self.register_buffer(f"c2_{lvl}", c2.clone())
            self.register_buffer(f"out{lvl}", out_t.clone())
            self.has_proj.append(w is not None)
            if w is not None:
                self.register_buffer(f"w{lvl}", w.clone())
                self.register_buffer(f"b{lvl}", b.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B, _, Fr = z.shape
        r = self.input_proj(z.transpose(1, 2).to(self.c2_0.dtype))  # the graph's precision
        r = r.reshape(B * Fr, r.shape[-1])
        codes = []
        for lvl in range(self.nq):
            h = F.linear(r, getattr(self, f"w{lvl}"), getattr(self, f"b{lvl}")) if self.has_proj[lvl] else r
            if self.l2:
                h = F.normalize(h, dim=-1)
            idx = torch.addmm(getattr(self, f"c2_{lvl}"), h, getattr(self, f"embT{lvl}"), alpha=-2.0).argmin(dim=1)
            codes.append(idx)
            r = r - F.embedding(idx, getattr(self, f"out{lvl}"))
        return torch.stack(codes, 1).reshape(B, Fr, self.nq).transpose(1, 2)


class _Dequantize(nn.Module):
    """Codes ``[B, n, F]`` (``-1`` = unused) -> (latent ``[B, D, F]``, valid frames bool ``[B, F]``)."""

    def __init__(self, quantizer: nn.Module) -> None:
        super().__init__()
        tabs = quantizer._inference_tables()
        self.K = int(quantizer.codebook_size)
        self.register_buffer("table", torch.cat([t[4] for t in tabs], 0).clone())  # [levels * K, rvq_dim]
        self.output_proj = quantizer.output_proj

    def forward(self, codes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n = codes.shape[1]
        ok = codes >= 0
        offset = (torch.arange(n, device=codes.device) * self.K)[None, :, None]
        v = F.embedding(codes.clamp(min=0) + offset, self.table)  # [B, n, F, D]
        acc = (v * ok[..., None].to(v.dtype)).sum(1)
        valid = ok.any(1)
        out = self.output_proj(acc)
        out = torch.where(valid[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out.transpose(1, 2), valid


class _Graph(nn.Module):
    """Common parts: the exportable copy's encoder or decoder, the model facts."""

    def __init__(self, model: nn.Module, part: str) -> None:
        super().__init__()
        copy = exportable_copy(model)
        self.core = getattr(copy, part)
        self.hop = int(model.hop_length)
        self.num_quantizers = int(model.num_quantizers)
        self.__dict__["_quantizer"] = copy.quantizer  # read by the subclasses, not part of the graph


def graph_dtype(model: nn.Module, precision: Optional[str]) -> torch.dtype:
    """The encoder graphs' dtype for ``precision`` (see the module docstring); refuses an unknown name, and
    float64 for a model whose encoder has convolutions."""
    dtype = encode_dtype(precision)
    if dtype != torch.float32 and getattr(model.config, "encoder_type", "seanet") != "fourier":
        raise CodecError(f"precision {precision} export needs the Fourier encoder: ONNX Runtime has no "
                         f"{precision} convolution.")
    return dtype


def _encoder_precision(graph: _Graph, model: nn.Module, precision: Optional[str]) -> None:
    """Cast an encoder graph's core and quantizer to ``precision``."""
    dtype = graph_dtype(model, precision)
    if dtype != torch.float32:
        graph.to(dtype)


class EncoderGraph(_Graph):
    """``audio [B, 1, T] -> codes int64 [B, nq, ceil(T / hop)]``."""

    def __init__(self, model: nn.Module, nq: Optional[int] = None, precision: Optional[str] = None) -> None:
        super().__init__(model, "encoder")
        self.nq = int(nq or model.num_quantizers)
        self.quantize = _Quantize(self._quantizer, self.nq)
        _encoder_precision(self, model, precision)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        pad = (-audio.shape[-1]) % self.hop
        return self.quantize(self.core(F.pad(audio.to(self.quantize.c2_0.dtype), (0, pad))))


class DecoderGraph(_Graph):
    """``codes int64 [B, n, F] -> audio [B, 1, F * hop]`` (silence at frames whose codes are all ``-1``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "decoder")
        self.dequantize = _Dequantize(self._quantizer)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        z, valid = self.dequantize(codes)
        y = self.core(z, valid, code_levels(codes))
        B, Fr = valid.shape
        keep = valid[:, :, None].expand(B, Fr, self.hop).reshape(B, 1, Fr * self.hop)
        return torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device)).float()


class _StepGraph(_Graph):
    """Streaming step: the layers' states come in as tensors and go out as tensors (named by
    :func:`codec.deploy.state.flat_states`).  Only the leaves that a step reads and replaces are inputs; the
    others (e.g. the exact path's contexts, empty contexts) start from zeros inside the graph."""

    state_names: List[str]

    def _probe(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Run one step in eager mode from random states and return ``{name: [1, ...] zero state}`` for the
        leaves the step changes (the graph's state)."""
        g = torch.Generator().manual_seed(0)
        install_states(self.core, x.shape[0])
        before = {k: torch.randn(v.shape, generator=g).to(v) for k, v in flat_states(self.core)}
        install_states(self.core, x.shape[0], before)
        kept = {k: v.clone() for k, v in before.items()}
        try:
            with torch.no_grad():
                self.step(x)
            after = dict(flat_states(self.core))
        finally:
            st.stop_streaming(self.core)
        return {k: torch.zeros_like(kept[k][:1]) for k in kept
                if after[k] is not before[k] or not torch.equal(after[k], kept[k])}

    def _run(self, x: torch.Tensor, states: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        install_states(self.core, x.shape[0], dict(zip(self.state_names, states)))
        try:
            outs = self.step(x)
            new = dict(flat_states(self.core))
            new_states = tuple(new[k] for k in self.state_names)
            outs = outs + self.after_step()
        finally:
            st.stop_streaming(self.core)
        return outs + new_states

    def after_step(self) -> Tuple[torch.Tensor, ...]:
        return ()

    def initial_states(self, batch_size: int = 1) -> List[torch.Tensor]:
        """Zero states for ``batch_size`` streams, in :attr:`state_names` order."""
        return [self.state_shapes[k].expand(batch_size, *self.state_shapes[k].shape[1:]).clone()
                for k in self.state_names]


class EncoderStepGraph(_StepGraph):
    """``(audio [B, 1, hop], *state) -> (codes int64 [B, nq, 1], *next_state)``."""

    def __init__(self, model: nn.Module, nq: Optional[int] = None, precision: Optional[str] = None) -> None:
        super().__init__(model, "encoder")
        self.nq = int(nq or model.num_quantizers)
        self.quantize = _Quantize(self._quantizer, self.nq)
        _encoder_precision(self, model, precision)
        self.state_shapes = self._probe(torch.zeros(2, 1, self.hop))
        self.state_names = list(self.state_shapes)

    def step(self, audio: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return (self.quantize(self.core(audio.to(self.quantize.c2_0.dtype))),)

    def forward(self, audio: torch.Tensor, *states: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self._run(audio, states)


class DecoderStepGraph(_StepGraph):
    """``(codes int64 [B, n, 1], *state) -> (audio [B, 1, hop], [tail [B, 1, delay]], *next_state)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "decoder")
        self.dequantize = _Dequantize(self._quantizer)
        self.delay = int(model.decoder_delay)
        self.state_shapes = self._probe(torch.zeros(2, self.num_quantizers, 1, dtype=torch.long))
        self.state_names = list(self.state_shapes)

    def step(self, codes: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        z, valid = self.dequantize(codes)
        return (self.core(z, valid, code_levels(codes)).float(),)

    def after_step(self) -> Tuple[torch.Tensor, ...]:
        tail = self.core.flush() if self.delay else None
        return () if tail is None else (tail.float(),)

    def forward(self, codes: torch.Tensor, *states: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self._run(codes, states)


GRAPHS = {"encoder": EncoderGraph, "decoder": DecoderGraph, "encoder_step": EncoderStepGraph,
          "decoder_step": DecoderStepGraph}


def build_graph(model: nn.Module, name: str, nq: Optional[int] = None, precision: Optional[str] = None
                ) -> nn.Module:
    """The wrapper module ``name`` (one of :data:`GRAPHS`) for ``model``; ``nq`` and ``precision`` (float32 or
    float64) set the encoders' levels and arithmetic."""
    cls = GRAPHS[name]
    return (cls(model, nq, precision) if name.startswith("encoder") else cls(model)).eval()
