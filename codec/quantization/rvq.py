"""Residual vector quantisation: a stack of ``VectorQuantize`` levels with input/output projections.

``input_dim -> rvq_dim`` (linear, identity when equal) -> residual stack (each level projects ``rvq_dim ->
codebook_dim`` for its lookup, DAC-style factorised codes) -> ``rvq_dim -> output_dim``.

Frames are processed independently (flattened valid frames ``[N, D]``): the codes of an item do not depend on the
rest of the batch or on padding; padded frames get code -1 and decode to zero.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .distributed import broadcast_, get_rank
from .vq import Codebook, VectorQuantize, _versions, code_stats

#: frames per quantizer call in :meth:`ResidualVQ.encode_exact` (one fixed shape, so codes never depend on the
#: batch or the chunking)
EXACT_BLOCK_FRAMES = 64


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Inference arithmetic: float64 input stays float64 (the runtime-independent encoding path), anything else
    runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@dataclass
class RVQOutput:
    """Result of ``ResidualVQ.forward``.

    quantized: [B, output_dim, T] straight-through output, zero at padded frames ([N, output_dim] for 2-D input).
    codes: LongTensor [B, n_q, T] (-1 at padded frames and at levels dropped for an item) ([N, n_q] for 2-D input).
    commit_loss: scalar, ``commitment_weight * sum(per_level_commit)``.
    codebook_loss: scalar, ``codebook_weight * sum(per_level_codebook)`` (0 with EMA codebooks).
    per_level_commit: [n_q] unweighted commitment MSE per level (0 for a level without frames).
    perplexity: [n_q] code perplexity per level over the batch's valid frames.
    usage: [n_q] fraction of the codebook used per level in the batch.
    per_level_codebook: [n_q] unweighted codebook MSE per level (zeros with EMA).
    n_levels: LongTensor [B] levels used per item (n_q unless quantizer dropout / skip in training; 0 = skipped).
    residual_loss: scalar, ``residual_weight * sum(per_level_residual)`` (training; 0 when the weight is 0).
    per_level_residual: [n_q] relative squared error of the decoded prefix after each level,
        ``|x - sum of decoded vectors of levels <= l|^2 / |x|^2`` over the rows still using level l (training
        with ``residual_weight > 0``; zeros otherwise).
    """
    quantized: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    codebook_loss: torch.Tensor
    per_level_commit: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor
    per_level_codebook: Optional[torch.Tensor] = None
    n_levels: Optional[torch.Tensor] = None
    residual_loss: Optional[torch.Tensor] = None
    per_level_residual: Optional[torch.Tensor] = None


def draw_level_counts(count: int, low: int, high: int, exponent: float = 0.0,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """``count`` random level counts in ``low..high`` (long ``[count]``), each ``n`` with probability proportional
    to ``n ** -exponent``: 0 draws uniformly (the same random stream as ``torch.randint``), larger values favour
    few levels (low bitrates)."""
    if exponent == 0.0:
        return torch.randint(low, high + 1, (count,), device=device)
    n = torch.arange(low, high + 1, device=device)
    weights = n.double().pow(-float(exponent))
    return n[torch.multinomial(weights, count, replacement=True)]


def focus_levels(levels: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    """``quantizer_focus_levels`` as a tuple of level counts; a single integer (the form of configs written before
    lists were allowed) is a list of one, and 0 an empty list."""
    if isinstance(levels, (int, np.integer)):
        return (int(levels),) if levels else ()
    return tuple(int(n) for n in levels)


def _lengths_to_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]


class ResidualVQ(nn.Module):
    """Residual vector quantiser (see module docstring).

    Args:
        input_dim: channels of the input x [B, input_dim, T].
        rvq_dim: residual space dimension (default input_dim).
        output_dim: channels of the output (default input_dim).
        num_quantizers: levels; codebook_size: codes per level; codebook_dim: lookup dimension per level.
        shared_codebook: one codebook for all levels (per-level projections stay separate).
        l2_normalize: nearest code by cosine (normalised lookup); decoded vectors are the raw codes.
        use_ema: EMA codebook updates (else a codebook loss, the codebook is an ``nn.Parameter``).
        decay, epsilon: EMA decay and Laplace smoothing.
        kmeans_init, kmeans_iters: k-means initialisation on the first training batch.
        threshold_ema_dead_code: EMA count below which a code is re-seeded from current residuals (0 = off).
        commitment_weight, codebook_weight: loss weights.
        residual_weight: weight of the residual loss (``RVQOutput.residual_loss``): every level's decoded vectors
            (through its output projection) are pulled towards the residual the level sees, and the input
            towards its decoded prefixes, so each level shrinks the residual.  Without it nothing but the
            downstream loss trains the output projections, and the decoded sum can drift from the input; later
            levels then quantise that drift (:meth:`init_codebooks_from_data` re-fits them).
        quantizer_dropout: fraction of batch items that use a random number of levels in training.
        quantizer_dropout_cutoff: levels below this index are always kept (n >= max(1, cutoff)).
        quantizer_dropout_exponent: a dropped item's level count n is drawn with probability proportional to
            n ** -exponent (0 = uniform, as in DAC; 1 puts about two thirds of the draws of 1..32 at n <= 8).
        quantizer_focus: fraction of batch items (training) that use exactly one of ``quantizer_focus_levels``
            level counts (drawn uniformly from that list, so a count listed twice gets twice the share), whatever
            quantizer dropout drew for them: the bitrates to favour when one decoder serves every level count.
        quantizer_focus_levels: those level counts, each in 1..num_quantizers (an int is a list of one).
        skip_rvq_ratio: probability (per item, training) of bypassing quantisation (output = projection round trip).
        sinkhorn: balanced (Sinkhorn) assignment during training; sinkhorn_iters / sinkhorn_temperature tune it.
        chunk_size: rows per distance block at inference.
    """

    def __init__(self, input_dim: int = 512, rvq_dim: Optional[int] = None, output_dim: Optional[int] = None,
                 num_quantizers: int = 32, codebook_size: int = 1024, codebook_dim: int = 8,
                 shared_codebook: bool = False, l2_normalize: bool = False, use_ema: bool = True,
                 decay: float = 0.99, epsilon: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 10,
                 threshold_ema_dead_code: float = 2.0, commitment_weight: float = 0.25,
                 codebook_weight: float = 1.0, residual_weight: float = 0.0, quantizer_dropout: float = 0.0,
                 quantizer_dropout_cutoff: int = 0,
                 quantizer_dropout_exponent: float = 0.0, quantizer_focus: float = 0.0,
                 quantizer_focus_levels: Union[int, Sequence[int]] = (), skip_rvq_ratio: float = 0.0,
                 sinkhorn: bool = False, sinkhorn_iters: int = 3,
                 sinkhorn_temperature: float = 0.05, chunk_size: int = 2048) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.rvq_dim = int(rvq_dim or input_dim)
        self.output_dim = int(output_dim or input_dim)
        self.num_quantizers = int(num_quantizers)
        self.codebook_size = int(codebook_size)
        self.codebook_dim = int(codebook_dim)
        self.shared_codebook = bool(shared_codebook)
        self.l2_normalize = bool(l2_normalize)
        self.use_ema = bool(use_ema)
        self.commitment_weight = float(commitment_weight)
        self.codebook_weight = float(codebook_weight)
        self.residual_weight = float(residual_weight)
        self.quantizer_dropout = float(quantizer_dropout)
        self.quantizer_dropout_cutoff = int(quantizer_dropout_cutoff)
        self.quantizer_dropout_exponent = float(quantizer_dropout_exponent)
        self.quantizer_focus = float(quantizer_focus)
        self.quantizer_focus_levels = focus_levels(quantizer_focus_levels)
        self.skip_rvq_ratio = float(skip_rvq_ratio)
        self.chunk_size = int(chunk_size)
        if self.num_quantizers < 1:
            raise ValueError("num_quantizers must be >= 1")
        if self.quantizer_focus > 0 and not (self.quantizer_focus_levels and all(
                1 <= n <= self.num_quantizers for n in self.quantizer_focus_levels)):
            raise ValueError("quantizer_focus_levels must be in 1..num_quantizers when quantizer_focus is on")
        cb_kwargs = dict(use_ema=use_ema, decay=decay, epsilon=epsilon, kmeans_init=kmeans_init,
                         kmeans_iters=kmeans_iters, threshold_ema_dead_code=threshold_ema_dead_code,
                         l2_normalize=l2_normalize, sinkhorn=sinkhorn, sinkhorn_iters=sinkhorn_iters,
                         sinkhorn_temperature=sinkhorn_temperature)
        self.input_proj = nn.Linear(self.input_dim, self.rvq_dim) if self.input_dim != self.rvq_dim else nn.Identity()
        self.output_proj = (nn.Linear(self.rvq_dim, self.output_dim) if self.output_dim != self.rvq_dim
                            else nn.Identity())
        if self.shared_codebook:
            self.codebook = Codebook(self.codebook_size, self.codebook_dim, **cb_kwargs)
            self.layers = nn.ModuleList(
                VectorQuantize(self.rvq_dim, self.codebook_size, self.codebook_dim, codebook=self.codebook)
                for _ in range(self.num_quantizers))
        else:
            self.layers = nn.ModuleList(
                VectorQuantize(self.rvq_dim, self.codebook_size, self.codebook_dim, **cb_kwargs)
                for _ in range(self.num_quantizers))

    # ------------------------------------------------------------------ helpers
    @property
    def codebooks(self) -> List[Codebook]:
        """Distinct codebooks (1 when shared, else one per level)."""
        return [self.codebook] if self.shared_codebook else [l.cb for l in self.layers]

    def _check_nq(self, n_q: Optional[int]) -> int:
        n = self.num_quantizers if n_q is None else int(n_q)
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"n_q must be in 1..{self.num_quantizers}, got {n}")
        return n

    def _prep(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, bool]:
        """-> (x [B, D, T], mask bool [B, T], was_2d)."""
        was_2d = x.dim() == 2
        if was_2d:  # [N, D] rows: one item with N frames
            x = x.t().unsqueeze(0)
            if mask is not None:
                mask = mask.reshape(1, -1)
        if x.dim() != 3 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected x [B, {self.input_dim}, T] or [N, {self.input_dim}], got {tuple(x.shape)}")
        B, _, T = x.shape
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        elif mask.dtype != torch.bool:
            if mask.dim() == 1 and not was_2d:  # lengths [B]
                mask = _lengths_to_mask(mask.to(x.device), T)
            else:
                mask = mask.to(torch.bool)
        if mask.shape != (B, T):
            raise ValueError(f"mask must be [B, T] = {(B, T)}, got {tuple(mask.shape)}")
        return x, mask.to(x.device), was_2d

    def _rows(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Valid frames projected into rvq space, [N, rvq_dim] in float32 (float64 input stays float64)."""
        rows = x.transpose(1, 2)[mask]
        dt = _compute_dtype(rows)
        rows = rows.to(dt)
        if isinstance(self.input_proj, nn.Linear):
            rows = F.linear(rows, self.input_proj.weight.to(dt), self.input_proj.bias.to(dt))
        return rows

    def _out_rows(self, acc: torch.Tensor) -> torch.Tensor:
        if isinstance(self.output_proj, nn.Linear):
            return F.linear(acc, self.output_proj.weight.float(), self.output_proj.bias.float())
        return acc

    @staticmethod
    def _scatter(rows: torch.Tensor, mask: torch.Tensor, fill: Union[int, float] = 0) -> torch.Tensor:
        """rows [N, C] -> [B, C, T] with ``fill`` at invalid frames."""
        B, T = mask.shape
        out = torch.full((B, T, rows.shape[1]), fill, dtype=rows.dtype, device=rows.device)
        out = out.index_put((mask,), rows)
        return out.transpose(1, 2)

    # --------------------------------------------------------------- inference
    def _inference_tables(self, dtype: torch.dtype = torch.float32) -> list:
        """Per level ``(embT [d, K], c2 [K], in_w, in_b, out_table [K, rvq_dim], embed [K, d])`` in ``dtype``
        (float32, or float64 for the float64 encoding path), cached per dtype for all levels under one key
        (versions + content fingerprint of every tensor involved), so a call on a few frames costs one small
        check instead of recomputing projections of every codebook."""
        ts = []
        for layer in self.layers:
            ts.append(layer.cb.embed)
            if layer.has_proj:
                ts += [layer.in_proj.weight, layer.in_proj.bias, layer.out_proj.weight, layer.out_proj.bias]
        key = _versions(*ts) + (self.l2_normalize,)
        cache = self.__dict__.setdefault("_tables_cache", {})
        hit = cache.get(dtype)
        if hit is not None and hit[0] == key:
            return hit[1]
        tabs = []
        with torch.no_grad():
            for layer in self.layers:
                e = layer.cb.embed.detach().to(dtype)
                if self.l2_normalize:
                    en = F.normalize(e, dim=-1)
                    embT, c2 = en.t().contiguous(), torch.zeros(e.shape[0], device=e.device, dtype=dtype)
                else:
                    embT, c2 = e.t().contiguous(), e.pow(2).sum(1)
                w = b = None
                out_t = e.contiguous()
                if layer.has_proj:
                    w, b = layer.in_proj.weight.detach().to(dtype), layer.in_proj.bias.detach().to(dtype)
                    out_t = F.linear(e, layer.out_proj.weight.detach().to(dtype),
                                     layer.out_proj.bias.detach().to(dtype)).contiguous()
                tabs.append((embT, c2, w, b, out_t, e))
        cache[dtype] = (key, tabs)
        return tabs

    def _encode_rows(self, h: torch.Tensor, n_q: int, stats: bool = False):
        """Eval-mode residual quantisation of rows h [N, rvq_dim].

        Returns (codes [N, n_q], acc [N, rvq_dim] sum of decoded level vectors, commit sums [n_q], counts [n_q, K]
        or None)."""
        N = h.shape[0]
        dev = h.device
        codes = torch.empty(N, n_q, dtype=torch.long, device=dev)
        acc = torch.zeros(N, self.rvq_dim, device=dev, dtype=h.dtype)
        K = self.codebook_size
        tabs = self._inference_tables(h.dtype)[:n_q]
        l2 = self.l2_normalize
        commit = torch.zeros(n_q, device=dev) if stats else None
        counts = torch.zeros(n_q, K, device=dev) if stats else None
        cs = max(1, self.chunk_size)
        for s in range(0, N, cs):
            r = h[s:s + cs]
            a = acc[s:s + cs]
            c = codes[s:s + cs]
            for l, (embT, c2, w, b, out_t, emb) in enumerate(tabs):
                z = F.linear(r, w, b) if w is not None else r
                zs = F.normalize(z, dim=-1) if l2 else z
                idx = torch.addmm(c2, zs, embT, alpha=-2.0).argmin(dim=1)
                c[:, l] = idx
                v = out_t.index_select(0, idx)
                r = r - v
                a += v
                if stats:
                    commit[l] += (z - emb.index_select(0, idx)).pow(2).sum()
                    counts[l] += torch.bincount(idx, minlength=K).float()
        return codes, acc, commit, counts

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, n_q: Optional[int] = None) -> torch.Tensor:
        """Codes of x [B, input_dim, T] (mask bool [B, T] or lengths [B]) -> LongTensor [B, n_q, T], -1 at padded
        frames.  x [N, input_dim] gives [N, n_q].  Always eval behaviour (nearest code, no updates)."""
        n_q = self._check_nq(n_q)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x3, mask, was_2d = self._prep(x, mask)
            codes, _, _, _ = self._encode_rows(self._rows(x3, mask), n_q)
            out = self._scatter(codes, mask, -1)
        return out[0].t().contiguous() if was_2d else out

    @torch.no_grad()
    def encode_exact(self, latent: torch.Tensor, n_q: int) -> torch.Tensor:
        """Codes of channels-last latents ``[B, F, input_dim]`` -> ``[B, n_q, F]``, bit-identical for a frame
        whatever the batch, length or chunking: the rows go through :meth:`encode` in fixed-shape blocks of
        :data:`EXACT_BLOCK_FRAMES` (the last one zero-padded)."""
        B, Fr, D = latent.shape
        rows = latent.reshape(B * Fr, D)
        rows = rows.to(_compute_dtype(rows))
        n = rows.shape[0]
        if n == 0:
            return torch.zeros(B, n_q, 0, dtype=torch.long, device=latent.device)
        nb = -(-n // EXACT_BLOCK_FRAMES)
        padded = rows.new_zeros(nb * EXACT_BLOCK_FRAMES, D)
        padded[:n] = rows
        blocks = padded.reshape(nb, EXACT_BLOCK_FRAMES, D)
        codes = torch.cat([self.encode(b.t().unsqueeze(0).contiguous(), None, n_q=n_q)[0] for b in blocks], 1)
        return codes[:, :n].reshape(n_q, B, Fr).permute(1, 0, 2).contiguous()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n_q, T] (or [N, n_q]) with -1 = unused -> [B, output_dim, T] (or [N, output_dim]) float32.

        Levels marked -1 contribute nothing; frames whose codes are all -1 decode to zero."""
        was_2d = codes.dim() == 2
        if was_2d:
            codes = codes.t().unsqueeze(0)
        if codes.dim() != 3:
            raise ValueError(f"codes must be [B, n_q, T] or [N, n_q], got {tuple(codes.shape)}")
        B, n, T = codes.shape
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"codes have {n} levels; this quantizer has 1..{self.num_quantizers}")
        codes = codes.to(self.layers[0].cb.embed.device).long()
        if codes.numel() and (codes.max() >= self.codebook_size or codes.min() < -1):
            raise ValueError(f"codes must be in -1..{self.codebook_size - 1}")
        rows_all = codes.permute(0, 2, 1)  # [B, T, n]
        frame_valid = (rows_all >= 0).any(-1)  # [B, T]
        rows = rows_all[frame_valid]  # [N, n]
        acc = torch.zeros(rows.shape[0], self.rvq_dim, device=codes.device)
        cs = max(1, self.chunk_size)
        tabs = self._inference_tables()
        for l in range(n):
            out_t = tabs[l][4]
            for s in range(0, rows.shape[0], cs):
                idx = rows[s:s + cs, l]
                ok = idx >= 0
                v = out_t.index_select(0, idx.clamp(min=0))
                if not bool(ok.all()):
                    v = torch.where(ok[:, None], v, torch.zeros((), device=v.device))
                acc[s:s + cs] += v
        out = self._scatter(self._out_rows(acc), frame_valid, 0.0)
        return out[0].t().contiguous() if was_2d else out

    # ---------------------------------------------------------------- training
    def _levels_per_item(self, B: int, n_q: int, device: torch.device) -> torch.Tensor:
        n = torch.full((B,), n_q, dtype=torch.long, device=device)
        if not self.training:
            return n
        if self.quantizer_dropout > 0:
            lo = min(max(1, self.quantizer_dropout_cutoff), n_q)
            drop = torch.rand(B, device=device) < self.quantizer_dropout
            rnd = draw_level_counts(B, lo, n_q, self.quantizer_dropout_exponent, device)
            n = torch.where(drop, rnd, n)
        if self.quantizer_focus > 0:
            focus = torch.rand(B, device=device) < self.quantizer_focus
            levels = torch.tensor(self.quantizer_focus_levels, device=device).clamp(max=n_q)
            if len(levels) > 1:  # one count draws nothing more, so single-count runs resume exactly
                levels = levels[torch.randint(len(levels), (B,), device=device)]
            n = torch.where(focus, levels.expand(B), n)
        if self.skip_rvq_ratio > 0:
            skip = torch.rand(B, device=device) < self.skip_rvq_ratio
            n = torch.where(skip, torch.zeros_like(n), n)
        return n

    def _forward_train(self, h: torch.Tensor, n_row: torch.Tensor, n_q: int):
        N = h.shape[0]
        dev = h.device
        codes = torch.full((N, n_q), -1, dtype=torch.long, device=dev)
        residual = h
        acc = torch.zeros_like(h)
        commit, cbl, ppl, usage, resid = [], [], [], [], []
        want_resid = self.residual_weight > 0
        plain = h  # h minus the decoded vectors without the straight-through path (residual loss only)
        pending: List[Tuple[Codebook, torch.Tensor, torch.Tensor]] = []
        zero = torch.zeros((), device=dev)
        for l in range(n_q):
            layer = self.layers[l]
            cb = layer.cb
            active = n_row > l
            all_active = bool(active.all())
            z = layer.project_in(residual)
            za = z if all_active else z[active]
            if cb.kmeans_init and not bool(cb.initted):
                cb.init_from_data(za.detach())
            with torch.no_grad():
                idx_a = cb.assign(za)
            q_a = cb.lookup(idx_a)
            if za.shape[0]:
                commit.append(F.mse_loss(za, q_a.detach()))
                cbl.append(F.mse_loss(za.detach(), q_a) if not cb.use_ema else zero)
            else:
                commit.append(z.sum() * 0.0)
                cbl.append(zero)
            p, u = code_stats(idx_a, cb.codebook_size)
            ppl.append(p)
            usage.append(u)
            pending.append((cb, za.detach(), idx_a))
            zq_a = za + (q_a - za).detach()
            if all_active:
                codes[:, l] = idx_a
                contrib = layer.project_out(zq_a)
            else:
                codes[active, l] = idx_a
                zq = torch.zeros_like(z).index_put((active,), zq_a)
                contrib = layer.project_out(zq) * active[:, None].to(z.dtype)
            residual = residual - contrib
            acc = acc + contrib
            if want_resid:
                dec_a = layer.project_out(q_a)
                if all_active:
                    plain = plain - dec_a
                    err, ref = plain, h
                else:
                    plain = plain - torch.zeros_like(plain).index_put((active,), dec_a)
                    err, ref = plain[active], h[active]
                den = ref.detach().float().pow(2).sum().clamp(min=1e-12)
                resid.append(err.float().pow(2).sum() / den if err.shape[0] else zero)
            else:
                resid.append(zero)
        # codebook statistics: one update per distinct codebook, same order on every rank
        if self.shared_codebook:
            self.codebook.update(torch.cat([p[1] for p in pending]), torch.cat([p[2] for p in pending]))
        else:
            for cb, z_a, idx_a in pending:
                cb.update(z_a, idx_a)
        skip = n_row == 0
        if bool(skip.any()):
            acc = torch.where(skip[:, None], h, acc)
        return (codes, acc, torch.stack(commit), torch.stack(cbl), torch.stack(ppl), torch.stack(usage),
                torch.stack(resid))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, n_q: Optional[int] = None) -> RVQOutput:
        """Quantise x [B, input_dim, T] with mask bool [B, T] (True = valid) or lengths [B]; x [N, input_dim] is
        also accepted (outputs [N, output_dim] / codes [N, n_q]).

        Training mode: k-means init on the first batch, EMA / dead-code updates from valid frames only,
        quantizer dropout and skip.  Eval mode: identical to ``decode(encode(x))`` (bit for bit) plus stats."""
        n_q = self._check_nq(n_q)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x3, mask, was_2d = self._prep(x, mask)
            B = x3.shape[0]
            h = self._rows(x3, mask)
            dev = h.device
            if self.training:
                n_item = self._levels_per_item(B, n_q, dev)
                item = torch.arange(B, device=dev)[:, None].expand(B, mask.shape[1])[mask]
                codes, acc, commit, cbl, ppl, usage, resid = self._forward_train(h, n_item[item], n_q)
            else:
                n_item = torch.full((B,), n_q, dtype=torch.long, device=dev)
                with torch.no_grad():
                    codes, acc, commit_sum, counts = self._encode_rows(h, n_q, stats=True)
                N = h.shape[0]
                commit = commit_sum / max(1, N * self.codebook_dim)
                cbl = torch.zeros(n_q, device=dev)
                resid = torch.zeros(n_q, device=dev)
                tot = counts.sum(1, keepdim=True)
                p = counts / tot.clamp(min=1)
                ppl = torch.where(tot[:, 0] > 0, (-(p * p.clamp(min=1e-12).log()).sum(1)).exp(),
                                  torch.zeros((), device=dev))
                usage = (counts > 0).float().mean(1)
                if torch.is_grad_enabled() and h.requires_grad:
                    # straight-through gradient with the exact decoded value (h - h.detach() is exactly 0)
                    acc = acc + (h - h.detach())
            q_rows = self._out_rows(acc)
            quantized = self._scatter(q_rows, mask, 0.0)
            codes_out = self._scatter(codes, mask, -1)
        if was_2d:
            quantized, codes_out = quantized[0].t(), codes_out[0].t()
        if x.dtype in (torch.float16, torch.bfloat16, torch.float64):
            quantized = quantized.to(x.dtype)
        return RVQOutput(quantized=quantized, codes=codes_out,
                         commit_loss=self.commitment_weight * commit.sum(),
                         codebook_loss=self.codebook_weight * cbl.sum(),
                         per_level_commit=commit.detach(), perplexity=ppl.detach(), usage=usage.detach(),
                         per_level_codebook=cbl.detach(), n_levels=n_item,
                         residual_loss=self.residual_weight * resid.sum(), per_level_residual=resid.detach())

    # -------------------------------------------------------------- codebooks
    @torch.no_grad()
    def init_codebooks_from_data(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                                 kmeans_iters: Optional[int] = None, ema_count: Optional[float] = None
                                 ) -> torch.Tensor:
        """Fit every level to a (large) sample x [B, input_dim, T] (mask [B, T] or lengths [B]) or [N, input_dim],
        level by level on the residuals of the levels before: the codebook by k-means on the projected residual
        (a shared codebook on the first level's), then, for a level with projections, its output projection
        (weight and bias) by least squares from the codes to the residual.  So each level's decoded vectors
        approximate the residual it sees and the next level quantises what is left; the input projections stay.
        Also a re-fit of a trained quantizer whose decoded sums drifted from its input.

        ``ema_count``: None keeps the sample's code counts as the EMA statistics; a number rescales them to that
        mean use per code (e.g. about a training batch's frames per code).  Under torch.distributed rank 0's
        sample decides (codebooks and projections broadcast); every rank must call this.

        Returns the relative squared error ``|x - decoded prefix|^2 / |x|^2`` after each level on this rank's
        sample, [num_quantizers] float64."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x3, mask, _ = self._prep(x, mask)
            h = self._rows(x3, mask).double()
            if h.shape[0] == 0:
                raise ValueError("init_codebooks_from_data needs at least one valid frame")
            r = h.clone()
            total = h.pow(2).sum().clamp(min=1e-30)
            errors = torch.zeros(self.num_quantizers, dtype=torch.float64)
            done = set()
            for l, layer in enumerate(self.layers):
                z = layer.project_in(r.float())
                cb = layer.cb
                if id(cb) not in done:
                    cb.init_from_data(z, kmeans_iters)
                    if ema_count is not None:
                        cb.cluster_size.mul_(float(ema_count) / cb.cluster_size.mean().clamp(min=1e-12))
                        cb.embed_avg.copy_(cb.embed * cb.cluster_size[:, None])
                    done.add(id(cb))
                idx = cb.nearest(z)
                if layer.has_proj:
                    q = cb.embed.double()[idx]
                    design = torch.cat([q, torch.ones(q.shape[0], 1, dtype=q.dtype, device=q.device)], 1)
                    if get_rank() == 0:
                        sol = torch.linalg.lstsq(design, r).solution  # [codebook_dim + 1, rvq_dim]
                    else:
                        sol = torch.empty(design.shape[1], r.shape[1], dtype=r.dtype, device=r.device)
                    sol = broadcast_(sol.contiguous())
                    layer.out_proj.weight.copy_(sol[:-1].t())
                    layer.out_proj.bias.copy_(sol[-1])
                    r = r - design @ sol
                else:
                    r = r - cb.embed.double()[idx]
                errors[l] = r.pow(2).sum() / total
        return errors

    def codebook_array(self) -> torch.Tensor:
        """All codebooks as [num_codebooks, codebook_size, codebook_dim] (num_codebooks = 1 if shared)."""
        return torch.stack([cb.embed.detach().float().cpu() for cb in self.codebooks])

    def save_codebooks(self, path: Union[str, os.PathLike]) -> None:
        """Write the codebooks [L, K, D] to ``.npy``, ``.npz`` (key ``codebooks``) or ``.safetensors``
        (key ``codebooks``)."""
        from codec.audio import atomic_output

        arr = self.codebook_array()
        p = str(path)
        if not p.endswith((".safetensors", ".npz", ".npy")):
            raise ValueError(f"unsupported codebook file extension: {p} (use .npy, .npz or .safetensors)")
        with atomic_output(p) as tmp:  # never half-written, the usual file mode
            if p.endswith(".safetensors"):
                from safetensors.torch import save_file
                save_file({"codebooks": arr.contiguous()}, str(tmp))
            elif p.endswith(".npz"):
                np.savez(str(tmp), codebooks=arr.numpy())
            else:
                np.save(str(tmp), arr.numpy())

    @torch.no_grad()
    def load_codebooks(self, path: Union[str, os.PathLike, np.ndarray, torch.Tensor]) -> None:
        """Set the codebooks from an array file (.npy, .npz, .safetensors: the single array, or key
        ``codebooks``) or an array, shaped [num_codebooks, codebook_size, codebook_dim] ([K, D] also accepted
        for one codebook).  Marks codebooks as initialised (no k-means on the first batch)."""
        if isinstance(path, (np.ndarray, torch.Tensor)):
            arr = torch.as_tensor(np.asarray(path) if isinstance(path, np.ndarray) else path)
        else:
            p = str(path)
            if p.endswith(".safetensors"):
                from safetensors.torch import load_file
                d = load_file(p)
                arr = d["codebooks"] if "codebooks" in d else (next(iter(d.values())) if len(d) == 1 else None)
            elif p.endswith(".npz"):
                with np.load(p, allow_pickle=False) as d:
                    keys = list(d.keys())
                    arr = d["codebooks"] if "codebooks" in keys else (d[keys[0]] if len(keys) == 1 else None)
                    arr = None if arr is None else torch.from_numpy(np.array(arr))
            elif p.endswith(".npy"):
                arr = torch.from_numpy(np.load(p, allow_pickle=False))
            else:
                raise ValueError(f"unsupported codebook file extension: {p} (use .npy, .npz or .safetensors)")
            if arr is None:
                raise ValueError(f"{p}: expected a single array or one named 'codebooks'")
        cbs = self.codebooks
        if arr.dim() == 2:
            arr = arr[None]
        want = (len(cbs), self.codebook_size, self.codebook_dim)
        if tuple(arr.shape) != want:
            raise ValueError(f"codebook array has shape {tuple(arr.shape)}, expected {want}")
        for cb, e in zip(cbs, arr.float()):
            cb.set_codes(e)
