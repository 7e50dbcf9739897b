"""General residual vector quantisation (RVQ) library.

Works on any frame-wise embeddings (audio latents, motion features, item embeddings for semantic IDs):
x is [B, D, T] with an optional boolean mask [B, T] (True = valid) or lengths [B], or simply [N, D] rows.

Example::

    import torch
    from codec.quantization import ResidualVQ

    rvq = ResidualVQ(input_dim=64, num_quantizers=8, codebook_size=256, codebook_dim=8)
    x = torch.randn(4, 64, 100)                    # [B, D, T]
    mask = torch.arange(100)[None] < torch.tensor([100, 80, 50, 10])[:, None]
    out = rvq(x, mask)                             # training step: k-means init, EMA, dead codes
    loss = out.commit_loss + out.codebook_loss     # add to your model's loss
    rvq.eval()
    codes = rvq.encode(x, mask, n_q=4)             # [4, 4, 100] LongTensor, -1 at padded frames
    y = rvq.decode(codes)                          # [4, 64, 100], zero at padded frames

    ids = rvq.encode(torch.randn(1000, 64))        # [N, D] rows -> [N, 8] codes (semantic IDs)

Public API: ``ResidualVQ``, ``VectorQuantize`` (one level), ``Codebook``, ``RVQOutput``, ``kmeans``;
benchmark: ``codec.bench.rvq.bench_rvq``.
"""
from .kmeans import kmeans
from .rvq import ResidualVQ, RVQOutput, draw_level_counts
from .vq import Codebook, VectorQuantize, VQOutput

__all__ = ["ResidualVQ", "RVQOutput", "draw_level_counts", "VectorQuantize", "VQOutput", "Codebook", "kmeans"]

# semantic IDs on item embeddings (see codec.semantic_ids)
from .residual_kmeans import ResidualKMeansFit, assign_residual, constrained_assign, residual_kmeans
from .rqvae import RQVAE, ResidualMLP, train_rqvae

__all__ += ["ResidualKMeansFit", "residual_kmeans", "assign_residual", "constrained_assign", "RQVAE",
            "ResidualMLP", "train_rqvae"]
