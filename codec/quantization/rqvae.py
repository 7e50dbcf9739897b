"""RQ-VAE and RQ-KMeans+ on item embeddings: an MLP encoder / decoder around ``ResidualVQ``.

- RQ-VAE (TIGER-style): ``x [N, D] -> encoder MLP -> z [N, latent_dim] -> ResidualVQ -> decoder MLP -> x_hat``.
  Codebooks start random (``kmeans_init_epoch=None``, prone to collapse) or are k-means initialised on the
  latents of all rows at the start of epoch ``kmeans_init_epoch`` (epochs before it train the plain
  autoencoder, without quantisation: the "k-means after a warm-up epoch" recipe).  The commitment weight
  (beta) ramps linearly from 0 over ``beta_warmup_epochs`` quantised epochs.
- RQ-KMeans+ (``residual=True``): encoder ``z = x + MLP(x)`` and decoder ``x_hat = q + MLP(q)`` whose last
  layers are zero-initialised, so both start as the identity; with the codebooks of an RQ-KMeans fit loaded
  (:meth:`RQVAE.warm_start`) the model reproduces the RQ-KMeans codes and reconstruction before training.

The quantiser is the library's ``ResidualVQ`` with identity projections (``codebook_dim = latent_dim``), so
``codebooks()`` is ``[L, K, latent_dim]`` in latent space.  Loss per step::

    recon_weight * mse(x_hat, x) + beta_t * sum_l mse(z_l, sg(q_l)) + codebook_weight * sum_l mse(sg(z_l), q_l)

(the codebook term is 0 with ``use_ema=True``: EMA codebooks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .residual_kmeans import ResidualKMeansFit
from .rvq import ResidualVQ, RVQOutput

__all__ = ["MLP", "ResidualMLP", "RQVAE", "RQVAEOutput", "train_rqvae"]


class MLP(nn.Sequential):
    """``dims[0] -> dims[1] -> ... -> dims[-1]`` linear layers with ReLU between; ``zero_last`` zero-initialises the
    last layer (weights and bias).  [N, dims[0]] -> [N, dims[-1]]."""

    def __init__(self, dims: Sequence[int], zero_last: bool = False) -> None:
        layers: List[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(int(dims[i]), int(dims[i + 1])))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)


class ResidualMLP(nn.Module):
    """``y = x + MLP(x)`` with the MLP's last layer zero-initialised (identity at step 0). [N, D] -> [N, D]."""

    def __init__(self, dim: int, hidden: Sequence[int] = (256,)) -> None:
        super().__init__()
        self.mlp = MLP([int(dim), *hidden, int(dim)], zero_last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


@dataclass
class RQVAEOutput:
    """Result of ``RQVAE.forward``: recon [N, D], latent z [N, latent_dim], rvq (``RVQOutput`` or None when the
    step is not quantised)."""
    recon: torch.Tensor
    latent: torch.Tensor
    rvq: Optional[RVQOutput]


class RQVAE(nn.Module):
    """Encoder / ``ResidualVQ`` / decoder for item embeddings (see module docstring).

    Args:
        input_dim: D of the embeddings x [N, D].
        latent_dim: quantised latent size (ignored with ``residual=True``: the latent is D).
        hidden: hidden layer sizes of the encoder (the decoder mirrors them).
        levels, codebook_size: ``ResidualVQ`` levels and codes per level.
        residual: RQ-KMeans+ residual encoder / decoder with zero-initialised last layers.
        use_ema, decay: EMA codebooks instead of the codebook loss.
        threshold_ema_dead_code: dead-code re-seeding threshold of ``ResidualVQ`` (0 = off, the paper setting).
        sinkhorn, sinkhorn_iters, sinkhorn_temperature: balanced assignment during training.
        kmeans_iters: Lloyd iterations of the k-means initialisation.
    """

    def __init__(self, input_dim: int, latent_dim: int = 32, hidden: Sequence[int] = (256, 128), levels: int = 3,
                 codebook_size: int = 64, residual: bool = False, use_ema: bool = False, decay: float = 0.99,
                 threshold_ema_dead_code: float = 0.0, sinkhorn: bool = False, sinkhorn_iters: int = 3,
                 sinkhorn_temperature: float = 0.05, kmeans_iters: int = 50) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.residual = bool(residual)
        self.latent_dim = self.input_dim if self.residual else int(latent_dim)
        self.hidden = [int(h) for h in hidden]
        self.levels, self.codebook_size = int(levels), int(codebook_size)
        self._config = dict(input_dim=self.input_dim, latent_dim=self.latent_dim, hidden=self.hidden,
                            levels=self.levels, codebook_size=self.codebook_size, residual=self.residual,
                            use_ema=bool(use_ema), decay=float(decay),
                            threshold_ema_dead_code=float(threshold_ema_dead_code), sinkhorn=bool(sinkhorn),
                            sinkhorn_iters=int(sinkhorn_iters), sinkhorn_temperature=float(sinkhorn_temperature),
                            kmeans_iters=int(kmeans_iters))
        if self.residual:
            self.encoder: nn.Module = ResidualMLP(self.input_dim, self.hidden)
            self.decoder: nn.Module = ResidualMLP(self.input_dim, self.hidden[::-1])
        else:
            self.encoder = MLP([self.input_dim, *self.hidden, self.latent_dim])
            self.decoder = MLP([self.latent_dim, *self.hidden[::-1], self.input_dim])
        self.rvq = ResidualVQ(input_dim=self.latent_dim, num_quantizers=self.levels,
                              codebook_size=self.codebook_size, codebook_dim=self.latent_dim, use_ema=use_ema,
                              decay=decay, kmeans_init=False, kmeans_iters=kmeans_iters,
                              threshold_ema_dead_code=threshold_ema_dead_code, sinkhorn=sinkhorn,
                              sinkhorn_iters=sinkhorn_iters, sinkhorn_temperature=sinkhorn_temperature)

    def config(self) -> Dict[str, Any]:
        """Constructor arguments (JSON-serialisable), ``RQVAE(**model.config())`` rebuilds the architecture."""
        return dict(self._config)

    def codebooks(self) -> torch.Tensor:
        """Codebooks [L, K, latent_dim] float32 (latent space)."""
        return self.rvq.codebook_array()

    @torch.no_grad()
    def warm_start(self, fit: Union[ResidualKMeansFit, torch.Tensor]) -> None:
        """Load codebooks [L, K, latent_dim] (or an RQ-KMeans fit's) into the quantiser; marks them initialised."""
        books = fit.codebooks if isinstance(fit, ResidualKMeansFit) else fit
        self.rvq.load_codebooks(books.detach().float().cpu())

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output z [N, latent_dim] for x [N, D]."""
        return self.encoder(x.float())

    def forward(self, x: torch.Tensor, quantize: bool = True) -> RQVAEOutput:
        """x [N, D] -> ``RQVAEOutput`` (recon [N, D]); ``quantize=False`` is the plain autoencoder."""
        z = self.latent(x)
        if not quantize:
            return RQVAEOutput(self.decoder(z), z, None)
        out = self.rvq(z)
        return RQVAEOutput(self.decoder(out.quantized), z, out)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest-code semantic IDs of x [N, D] -> LongTensor [N, L] (eval behaviour)."""
        return self.rvq.encode(self.latent(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [N, L] -> reconstruction [N, D]."""
        return self.decoder(self.rvq.decode(codes))


def train_rqvae(model: RQVAE, x: torch.Tensor, epochs: int = 200, batch_size: int = 256, lr: float = 1e-3,
                weight_decay: float = 0.0, beta: float = 0.25, beta_warmup_epochs: int = 0,
                codebook_weight: float = 1.0, recon_weight: float = 1.0, kmeans_init_epoch: Optional[int] = 1,
                seed: int = 0, log: Optional[Callable[[Dict[str, float]], None]] = None) -> List[Dict[str, float]]:
    """Train ``model`` on rows x [N, D] (full passes over shuffled mini-batches, Adam).

    Args:
        epochs: passes over x; batch_size: rows per step; lr, weight_decay: AdamW settings.
        beta: commitment weight after warm-up; beta_warmup_epochs: linear ramp over the first quantised epochs.
        codebook_weight, recon_weight: loss weights (codebook term only with gradient codebooks).
        kmeans_init_epoch: epochs before it train without quantisation, then the codebooks are k-means
            initialised on the latents of all rows; None = keep the codebooks as they are (random, or loaded by
            ``warm_start``) and quantise from the first epoch.
        seed: RNG seed of the shuffling and the k-means initialisation (the caller's global RNG state is restored).
        log: called with each epoch's mean losses.
    Returns:
        One dict per epoch: ``epoch``, ``loss``, ``recon``, ``commit``, ``beta``, ``quantized`` (0/1).
    """
    x = x.detach().float()
    N = x.shape[0]
    history: List[Dict[str, float]] = []
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    q_start = 0 if kmeans_init_epoch is None else int(kmeans_init_epoch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        g = torch.Generator().manual_seed(int(seed))
        model.train()
        for ep in range(int(epochs)):
            quantize = ep >= q_start
            if kmeans_init_epoch is not None and ep == q_start:
                with torch.no_grad():
                    model.rvq.init_codebooks_from_data(model.latent(x))
            k = ep - q_start + 1
            beta_t = beta * min(1.0, k / beta_warmup_epochs) if beta_warmup_epochs > 0 else beta
            model.rvq.commitment_weight = float(beta_t)
            model.rvq.codebook_weight = float(codebook_weight)
            perm = torch.randperm(N, generator=g)
            tot = {"loss": 0.0, "recon": 0.0, "commit": 0.0}
            for s in range(0, N, batch_size):
                xb = x[perm[s:s + batch_size]]
                out = model(xb, quantize=quantize)
                recon = F.mse_loss(out.recon, xb)
                loss = recon_weight * recon
                commit = torch.zeros(())
                if out.rvq is not None:
                    commit = out.rvq.per_level_commit.sum()
                    loss = loss + out.rvq.commit_loss + out.rvq.codebook_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                w = xb.shape[0] / N
                tot["loss"] += float(loss.detach()) * w
                tot["recon"] += float(recon.detach()) * w
                tot["commit"] += float(commit.detach()) * w
            rec = dict(epoch=float(ep), beta=float(beta_t) if quantize else 0.0, quantized=float(quantize), **tot)
            history.append(rec)
            if log is not None:
                log(rec)
    model.eval()
    return history
