"""recipes/bakeoff/latent_residual.py: how much of a latent the residual quantizer reproduces per level count."""
from __future__ import annotations

import numpy as np
import torch

from codec.config import CodecConfig
from codec.model import CodecModel
from codec.quantization.rvq import ResidualVQ
from recipe_modules import load_recipe


def _module():
    return load_recipe("bakeoff/latent_residual.py", "bakeoff_latent_residual")


def test_a_kmeans_fitted_residual_quantizer_shrinks_the_residual_level_by_level():
    mod = _module()
    torch.manual_seed(0)
    lat = torch.randn(1, 8, 4000) * torch.linspace(0.5, 3.0, 8)[None, :, None] + 1.0
    rvq = ResidualVQ(input_dim=8, num_quantizers=4, codebook_size=64, codebook_dim=8).eval()
    rvq.init_codebooks_from_data(lat)
    table = mod.residual_table(rvq, lat, [1, 2, 4])
    fracs = [table[n][0] for n in (1, 2, 4)]
    assert 0.0 < fracs[2] < fracs[1] < fracs[0] < 1.0
    q = rvq.decode(rvq.encode(lat, n_q=2))
    assert abs(table[2][0] - float((lat - q).pow(2).sum() / lat.pow(2).sum())) < 1e-6
    assert table[4][1] > table[1][1] > 0.5                      # the reproduction grows more alike


def test_latents_of_clips_are_concatenated_whole_frames():
    mod = _module()
    model = CodecModel(CodecConfig.preset("tiny")).eval()
    hop = model.hop_length
    wavs = [np.zeros(3 * hop + 7, dtype=np.float32), 0.1 * np.ones(2 * hop, dtype=np.float32), np.zeros(5)]
    lat = mod.latents(model, wavs)
    assert lat.shape[0] == 1 and lat.shape[-1] == 5            # 3 + 2 frames; the 5-sample clip has none
