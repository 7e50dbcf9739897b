"""One vector-quantisation level: a codebook (nearest code, EMA, k-means init, dead codes, Sinkhorn) and
``VectorQuantize`` (codebook + optional low-dimensional projections, DAC-style factorised codes).

Distances are squared Euclidean ``|x|^2 - 2 x.c + |c|^2`` computed in float32 (the ``|x|^2`` term is constant per
row and dropped for the argmin).  Everything works on flattened valid frames ``[N, D]``, so the code of a frame
never depends on other frames of the batch (no batch statistics at inference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum_, broadcast_, get_rank
from .kmeans import kmeans


_FP_WEIGHTS: Dict[Tuple, torch.Tensor] = {}


def _versions(*ts: torch.Tensor) -> Tuple:
    """Cache key for tables derived from ``ts``: storage, version counter and a cheap content fingerprint
    (a fixed random projection of all the tensors' values, concatenated; it catches writes through ``.data``,
    e.g. ``dist.broadcast(p.data)``, which skip the version counter).  One concatenation, one dot product and
    one host sync per call, whatever the number of tensors: a streamed frame of the 32-level quantizer checks
    160 tensors, and a dot product per tensor cost ~0.9 ms of small-op overhead per call (now ~0.4 ms)."""
    fp: Tuple = ()
    if ts:
        with torch.no_grad():
            flat = torch.cat([t.reshape(-1) for t in ts])  # no_grad: no graph, and mixed dtypes are promoted
            wk = (flat.numel(), flat.device, flat.dtype)
            w = _FP_WEIGHTS.get(wk)
            if w is None:
                w = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(0)).to(flat.device, flat.dtype)
                _FP_WEIGHTS[wk] = w
            fp = (float(torch.dot(flat, w)),)
    return tuple((t.data_ptr(), t._version) for t in ts) + fp + (torch.is_inference_mode_enabled(),)


def sinkhorn_assign(dist: torch.Tensor, iters: int = 3, temperature: float = 0.05) -> torch.Tensor:
    """Balanced assignment (Sinkhorn-Knopp on ``exp(-dist / tau)``), returns codes [N].

    Args:
        dist: [N, K] distances (float32).
        iters: Sinkhorn iterations (alternate code / row normalisation).
        temperature: ``tau`` relative to the mean distance spread of the block.
    """
    d = dist - dist.min(dim=1, keepdim=True).values
    scale = d.mean().clamp(min=1e-12)
    logits = -d / (temperature * scale)
    for _ in range(iters):
        logits = logits - torch.logsumexp(logits, dim=0, keepdim=True)  # equal mass per code
        logits = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # each row sums to one
    return logits.argmax(dim=1)


class Codebook(nn.Module):
    """A codebook of ``codebook_size`` vectors of size ``dim`` with EMA / gradient training.

    Buffers: ``embed`` [K, D] (an ``nn.Parameter`` when ``use_ema=False``), ``cluster_size`` [K] (EMA count, also
    used for dead-code detection in the gradient variant), ``embed_avg`` [K, D] (EMA sum), ``initted`` (bool).
    """

    def __init__(self, codebook_size: int = 1024, dim: int = 8, use_ema: bool = True, decay: float = 0.99,
                 epsilon: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 10,
                 threshold_ema_dead_code: float = 2.0, l2_normalize: bool = False, sinkhorn: bool = False,
                 sinkhorn_iters: int = 3, sinkhorn_temperature: float = 0.05) -> None:
        super().__init__()
        self.codebook_size, self.dim = int(codebook_size), int(dim)
        self.use_ema, self.decay, self.epsilon = bool(use_ema), float(decay), float(epsilon)
        self.kmeans_init, self.kmeans_iters = bool(kmeans_init), int(kmeans_iters)
        self.threshold_ema_dead_code = float(threshold_ema_dead_code)
        self.l2_normalize, self.sinkhorn = bool(l2_normalize), bool(sinkhorn)
        self.sinkhorn_iters, self.sinkhorn_temperature = int(sinkhorn_iters), float(sinkhorn_temperature)
        embed = torch.randn(self.codebook_size, self.dim)
        if self.use_ema:
            self.register_buffer("embed", embed)
        else:
            self.embed = nn.Parameter(embed)
        self.register_buffer("cluster_size", torch.zeros(self.codebook_size))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("initted", torch.tensor(not self.kmeans_init))
        self._cache: Dict[str, object] = {}

    # ------------------------------------------------------------------ lookup
    def search_tables(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(``embT`` [D, K] float32, ``c2`` [K] float32) for ``addmm(c2, z, embT, alpha=-2)``; cached until the
        codebook changes.  With ``l2_normalize`` both are for the normalised codebook (``c2`` = 0)."""
        key = _versions(self.embed)
        hit = self._cache.get("search")
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            e = self.embed.detach().float()
            if self.l2_normalize:
                e = F.normalize(e, dim=-1)
                c2 = torch.zeros(self.codebook_size, device=e.device)
            else:
                c2 = e.pow(2).sum(1)
            tables = (e.t().contiguous(), c2)
        self._cache["search"] = (key, tables)
        return tables

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances up to a per-row constant, [N, K] float32, for z [N, D]."""
        embT, c2 = self.search_tables()
        z = z.detach().float()
        if self.l2_normalize:
            z = F.normalize(z, dim=-1)
        return torch.addmm(c2, z, embT, alpha=-2.0)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code (argmin distance) for each row of z [N, D] -> LongTensor [N]."""
        return self.distances(z).argmin(dim=1)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Training assignment: Sinkhorn-balanced when enabled (and N > 1), else nearest code. [N, D] -> [N]."""
        if self.sinkhorn and self.training and z.shape[0] > 1:
            return sinkhorn_assign(self.distances(z), self.sinkhorn_iters, self.sinkhorn_temperature)
        return self.nearest(z)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Code vectors for idx [N] -> [N, D] (differentiable w.r.t. the codebook in the gradient variant)."""
        return F.embedding(idx, self.embed)

    # ---------------------------------------------------------------- training
    @torch.no_grad()
    def init_from_data(self, z: torch.Tensor, iters: Optional[int] = None) -> bool:
        """k-means initialisation from z [M, D] (rank 0's data, broadcast to all ranks).

        Every rank must call this together.  Returns False (and leaves the codebook alone) when rank 0 has
        no rows."""
        z = z.detach().float()
        n0 = broadcast_(torch.tensor([float(z.shape[0])], device=self.embed.device))
        if n0.item() < 1:
            return False
        K, D = self.codebook_size, self.dim
        if get_rank() == 0:
            cent, counts = kmeans(z, K, self.kmeans_iters if iters is None else iters, normalize=self.l2_normalize)
        else:
            cent = torch.empty(K, D, device=self.embed.device)
            counts = torch.empty(K, device=self.embed.device)
        if get_rank() == 0 and self.l2_normalize:
            # cosine lookup, but decoded vectors are raw codes: use the raw mean of each spherical cluster
            assign = torch.addmm(torch.zeros(K, device=z.device), F.normalize(z, dim=-1), cent.t(), alpha=-2.0).argmin(1)
            sums = torch.zeros(K, D, device=z.device).index_add_(0, assign, z)
            cnt = torch.bincount(assign, minlength=K).float()
            cent = torch.where(cnt[:, None] > 0, sums / cnt.clamp(min=1)[:, None], cent)
        packed = broadcast_(torch.cat([cent, counts[:, None]], dim=1).to(self.embed.device))
        cent, counts = packed[:, :D].contiguous(), packed[:, D].contiguous()
        self.embed.copy_(cent)
        self.cluster_size.copy_(counts)
        self.embed_avg.copy_(cent * counts[:, None])
        self.initted.fill_(True)
        return True

    @torch.no_grad()
    def set_codes(self, embed: torch.Tensor, count: Optional[float] = None) -> None:
        """Replace the whole codebook (e.g. loaded from a file); EMA statistics restart from ``count`` uses per
        code (default: twice the dead-code threshold, at least 1)."""
        if embed.shape != (self.codebook_size, self.dim):
            raise ValueError(f"codebook shape {tuple(embed.shape)} != {(self.codebook_size, self.dim)}")
        c = max(2.0 * self.threshold_ema_dead_code, 1.0) if count is None else float(count)
        e = embed.detach().to(self.embed.device, torch.float32)
        self.embed.copy_(e)
        self.cluster_size.fill_(c)
        self.embed_avg.copy_(e * c)
        self.initted.fill_(True)

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """One training-step update from the (valid, active) rows z [M, D] assigned to idx [M].

        EMA of counts and sums (all-reduced over ranks), Laplace-smoothed codebook (EMA variant), then dead-code
        re-seeding from rank 0's rows.  Every rank must call this together (M may be 0)."""
        K, D = self.codebook_size, self.dim
        dev = self.embed.device
        z = z.detach().float().to(dev)
        stats = torch.zeros(K, D + 1, device=dev)
        if z.shape[0]:
            stats[:, :D].index_add_(0, idx, z)
            stats[:, D] = torch.bincount(idx, minlength=K).float()
        all_reduce_sum_(stats)
        sums, counts = stats[:, :D], stats[:, D]
        if counts.sum().item() == 0:
            return
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        if self.use_ema:
            self.embed_avg.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.epsilon) / (n + K * self.epsilon) * n
            self.embed.copy_(self.embed_avg / smoothed[:, None])
        if self.threshold_ema_dead_code > 0:
            self.replace_dead_codes(z)

    @torch.no_grad()
    def replace_dead_codes(self, z: torch.Tensor) -> int:
        """Re-seed codes whose EMA count is below the threshold with random rows of z [M, D] (rank 0's rows,
        broadcast).  Returns the number of re-seeded codes."""
        dead = self.cluster_size < self.threshold_ema_dead_code
        nd = int(dead.sum())
        if nd == 0:
            return 0
        dev = self.embed.device
        m0 = broadcast_(torch.tensor([float(z.shape[0])], device=dev))
        if m0.item() < 1:
            return 0
        if get_rank() == 0:
            m = z.shape[0]
            pick = torch.randperm(m)[:nd] if m >= nd else torch.randint(0, m, (nd,))
            samples = z[pick.to(dev)].float()
        else:
            samples = torch.empty(nd, self.dim, device=dev)
        samples = broadcast_(samples.contiguous())
        self.embed[dead] = samples
        self.cluster_size[dead] = self.threshold_ema_dead_code
        self.embed_avg[dead] = samples * self.threshold_ema_dead_code
        return nd


@dataclass
class VQOutput:
    """Result of a single ``VectorQuantize`` level on flattened rows.

    quantized: [N, dim] straight-through output; codes: [N]; commit_loss / codebook_loss: unweighted MSE scalars;
    perplexity / usage: scalars over the rows."""
    quantized: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    codebook_loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def code_stats(idx: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, usage fraction) of codes idx [M] over a codebook of size k; (0, 0) when M == 0."""
    if idx.numel() == 0:
        z = torch.zeros((), device=idx.device)
        return z, z.clone()
    counts = torch.bincount(idx, minlength=k).float()
    p = counts / counts.sum()
    ent = -(p * torch.log(p.clamp(min=1e-12))).sum()
    return ent.exp(), (counts > 0).float().mean()


class VectorQuantize(nn.Module):
    """One quantisation level: ``dim -> codebook_dim`` projection, codebook lookup, ``codebook_dim -> dim``.

    Projections are identity when ``dim == codebook_dim``.  ``codebook`` may be passed to share one codebook
    between several levels (it is then *not* registered as a submodule here; the owner registers it).

    ``forward(x, mask)`` accepts x [B, dim, T] (mask bool [B, T]) or [N, dim] and quantises each valid frame;
    ``ResidualVQ`` uses the row-level methods directly.
    """

    def __init__(self, dim: int = 8, codebook_size: int = 1024, codebook_dim: Optional[int] = None,
                 codebook: Optional[Codebook] = None, **codebook_kwargs) -> None:
        super().__init__()
        self.dim = int(dim)
        self.codebook_dim = int(codebook_dim or dim)
        self.codebook_size = int(codebook_size)
        proj = self.codebook_dim != self.dim
        self.in_proj = nn.Linear(self.dim, self.codebook_dim) if proj else nn.Identity()
        self.out_proj = nn.Linear(self.codebook_dim, self.dim) if proj else nn.Identity()
        if codebook is None:
            self.codebook = Codebook(self.codebook_size, self.codebook_dim, **codebook_kwargs)
        else:
            object.__setattr__(self, "_shared_codebook", codebook)
        self._cache: Dict[str, object] = {}

    @property
    def cb(self) -> Codebook:
        """The codebook used by this level (own or shared)."""
        return self._modules["codebook"] if "codebook" in self._modules else self._shared_codebook  # type: ignore

    @property
    def has_proj(self) -> bool:
        return self.codebook_dim != self.dim

    def out_table(self) -> torch.Tensor:
        """Decoded vector of every code in ``dim`` space, [K, dim] float32 (cached until weights change).
        Gathering rows of this table is what makes ``decode(encode(x))`` bit-identical to eval ``forward``."""
        cb = self.cb
        ts = [cb.embed] + ([self.out_proj.weight, self.out_proj.bias] if self.has_proj else [])
        key = _versions(*ts)
        hit = self._cache.get("out")
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            e = cb.embed.detach().float()
            t = F.linear(e, self.out_proj.weight.float(), self.out_proj.bias.float()) if self.has_proj else e
            t = t.contiguous()
        self._cache["out"] = (key, t)
        return t

    def project_in(self, r: torch.Tensor) -> torch.Tensor:
        """[N, dim] -> [N, codebook_dim]."""
        return self.in_proj(r) if self.has_proj else r

    def project_out(self, q: torch.Tensor) -> torch.Tensor:
        """[N, codebook_dim] -> [N, dim]."""
        return self.out_proj(q) if self.has_proj else q

    def quantize_rows(self, r: torch.Tensor, init: bool = True) -> VQOutput:
        """Quantise rows r [N, dim] (all valid).  Training: k-means init on first call, straight-through output,
        losses; the codebook statistics are *not* updated here (call ``self.cb.update(z, codes)``)."""
        cb = self.cb
        z = self.project_in(r.float())
        if self.training and init and cb.kmeans_init and not bool(cb.initted):
            cb.init_from_data(z.detach())
        with torch.no_grad():
            idx = cb.assign(z) if self.training else cb.nearest(z)
        q = cb.lookup(idx)
        if z.shape[0]:
            commit = F.mse_loss(z, q.detach())
            cbl = F.mse_loss(z.detach(), q) if not cb.use_ema else torch.zeros((), device=z.device)
        else:
            commit = z.sum() * 0.0
            cbl = torch.zeros((), device=z.device)
        zq = z + (q - z).detach()
        ppl, usage = code_stats(idx, cb.codebook_size)
        return VQOutput(self.project_out(zq), idx, commit, cbl, ppl, usage)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> VQOutput:
        """Quantise x [B, dim, T] (mask bool [B, T], True = valid) or x [N, dim].

        Returns a ``VQOutput`` with quantized shaped like x (zero at padded frames) and codes [B, T] / [N]
        (-1 at padded frames).  In training mode the codebook is updated (EMA / dead codes)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dim() == 2:
                rows = x.float() if mask is None else x.float()[mask]
            else:
                xt = x.float().transpose(1, 2)
                m = mask if mask is not None else torch.ones(x.shape[0], x.shape[2], dtype=torch.bool,
                                                             device=x.device)
                rows = xt[m]
            out = self.quantize_rows(rows)
            if self.training:
                self.cb.update(self.project_in(rows).detach(), out.codes)
            if x.dim() == 2 and mask is None:
                return out
            if x.dim() == 2:
                q = x.new_zeros(x.shape[0], self.dim, dtype=torch.float32)
                codes = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
                q = q.index_put((mask,), out.quantized)
                codes[mask] = out.codes
            else:
                q = torch.zeros(x.shape[0], x.shape[2], self.dim, device=x.device).index_put((m,), out.quantized)
                q = q.transpose(1, 2)
                codes = torch.full((x.shape[0], x.shape[2]), -1, dtype=torch.long, device=x.device)
                codes[m] = out.codes
            return VQOutput(q, codes, out.commit_loss, out.codebook_loss, out.perplexity, out.usage)
