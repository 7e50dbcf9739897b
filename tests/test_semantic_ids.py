"""Tests for codec.semantic_ids and the residual k-means / RQ-VAE / RQ-KMeans+ pieces of codec.quantization."""
import json
import os

import numpy as np
import pytest
import torch

from codec import semantic_ids
from codec.errors import CodecError
from codec.quantization import RQVAE, ResidualMLP, ResidualVQ, constrained_assign, residual_kmeans


def _clustered(n=512, d=16, k=32, seed=0, spread=1.0, skew=False):
    """Clustered rows [n, d] scaled to unit mean norm (the scale of typical item embeddings); with ``skew`` half of
    them fall in one cluster."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 2
    lab = torch.randint(0, k, (n,), generator=g)
    if skew:
        lab[: n // 2] = 0
    x = centers[lab] + spread * torch.randn(n, d, generator=g)
    return x / x.norm(dim=1).mean()


X = _clustered()


def test_kmeans_init_beats_random_init_on_collisions():
    # random N(0, 1) codebooks far from the latents: a few codes take everything (collapse)
    opts = dict(latent_dim=8, hidden=(32,), epochs=10, batch_size=128, lr=1e-2)
    rand = semantic_ids.fit(X, 3, 16, method="rqvae", kmeans_init_epoch=None, **opts).report()
    km = semantic_ids.fit(X, 3, 16, method="rqvae", kmeans_init_epoch=1, beta_warmup_epochs=5, **opts).report()
    assert rand["collision_rate"] > 0.9
    assert km["collision_rate"] < rand["collision_rate"] - 0.3
    assert km["unique"] > 10 * rand["unique"]
    assert km["mean_usage"] > rand["mean_usage"]
    assert km["relative_mse"] < rand["relative_mse"]


def test_zero_init_residual_encoder_is_identity_at_step_0():
    x = torch.randn(64, 12)
    assert torch.equal(ResidualMLP(12, (32,))(x), x)
    m = RQVAE(12, hidden=(32, 16), levels=2, codebook_size=8, residual=True)
    assert m.latent_dim == 12
    assert torch.equal(m.latent(x), x)
    assert torch.equal(m.decoder(x), x)


def test_warm_start_reproduces_rqkmeans_codes_before_training():
    fit = residual_kmeans(X, levels=3, codebook_size=16, seed=3)
    rvq = ResidualVQ(input_dim=16, num_quantizers=3, codebook_size=16, codebook_dim=16)
    rvq.load_codebooks(fit.codebooks)
    assert torch.equal(rvq.eval().encode(X), fit.codes)
    m = RQVAE(16, hidden=(32,), levels=3, codebook_size=16, residual=True)
    m.warm_start(fit)
    m.eval()
    assert torch.equal(m.encode(X), fit.codes)
    assert torch.allclose(m.decode(fit.codes), fit.decode(), atol=1e-5)
    # through the entry point: no training = exactly the RQ-KMeans IDs and reconstruction
    a = semantic_ids.fit(X, 3, 16, method="rqkmeans", seed=3)
    b = semantic_ids.fit(X, 3, 16, method="rqkmeans+", seed=3, epochs=0)
    assert torch.equal(a.codes, fit.codes) and torch.equal(b.codes, fit.codes)
    assert b.report()["relative_mse"] == pytest.approx(a.report()["relative_mse"], rel=1e-5)
    # training from the warm start keeps the IDs good and lowers the reconstruction error on the fitted items
    c = semantic_ids.fit(X, 3, 16, method="rqkmeans+", seed=3, epochs=10, hidden=(32,), batch_size=128)
    assert c.report()["relative_mse"] < a.report()["relative_mse"]


@pytest.mark.parametrize("method", semantic_ids.METHODS)
def test_save_load_reproduces_codes(tmp_path, method):
    extra = {} if method == "rqkmeans" else dict(epochs=3, hidden=(16,), batch_size=128)
    sid = semantic_ids.fit(X, 3, 16, method=method, normalize="standard", dedup=True, **extra)
    sid.save(tmp_path / "ids")
    assert sorted(os.listdir(tmp_path / "ids")) == ["semantic_ids.json", "semantic_ids.safetensors"]
    meta = json.loads((tmp_path / "ids" / "semantic_ids.json").read_text())
    assert meta["method"] == method and meta["report"]["n_items"] == X.shape[0]
    back = semantic_ids.load(tmp_path / "ids")
    assert torch.equal(back.codes, sid.codes)
    new = _clustered(n=100, seed=5)
    assert torch.equal(back.encode(new), sid.encode(new))
    assert torch.allclose(back.decode(sid.codes), sid.decode(sid.codes))
    assert back.report() == sid.report()


def test_dedup_level_makes_ids_unique():
    x = torch.cat([X[:200], X[:100], X[:50]])  # exact duplicates must collide on the semantic levels
    sid = semantic_ids.fit(x, 2, 16, dedup=True)
    rep = sid.report()
    assert sid.codes.shape == (350, 3) and sid.codes.dtype == torch.int64
    assert rep["collision_rate"] > 0.4 and rep["unique_ids"] == 350
    assert len({tuple(r) for r in sid.codes.tolist()}) == 350
    first = {}
    for i, row in enumerate(sid.codes.tolist()):  # TIGER order: 0, 1, 2, ... within a tuple, in item order
        first.setdefault(tuple(row[:2]), []).append(row[2])
    assert all(v == list(range(len(v))) for v in first.values())
    assert sid.encode(x[:5]).shape == (5, 2)
    assert torch.equal(semantic_ids.dedup_column(torch.tensor([[1, 2], [1, 2], [0, 0], [1, 2]])),
                       torch.tensor([0, 1, 0, 2]))


def test_balanced_assignment_lowers_max_bucket():
    x = _clustered(n=600, skew=True, seed=2)
    plain = semantic_ids.fit(x, 2, 16).report()
    size = semantic_ids.fit(x, 2, 16, balance="size").report()
    sink = semantic_ids.fit(x, 2, 16, balance="sinkhorn").report()
    assert size["max_bucket"] < plain["max_bucket"] and sink["max_bucket"] < plain["max_bucket"]
    assert size["collision_rate"] < plain["collision_rate"]
    # exact balance: size-constrained codes respect the capacity ceil(N / K) at every level
    fit = residual_kmeans(x, 2, 16, balance="size")
    for l in range(2):
        assert int(torch.bincount(fit.codes[:, l], minlength=16).max()) <= int(np.ceil(600 / 16))
    # unique_last: distinct last codes inside every prefix bucket, so only buckets larger than K collide
    for data in (x, X):
        fit = residual_kmeans(data, 3, 16, unique_last=True)
        _, prefix = torch.unique(fit.codes[:, :2], dim=0, return_counts=True)
        rep = semantic_ids.fit(data, 3, 16, unique_last=True).report()
        assert rep["unique"] == int(prefix.clamp(max=16).sum())
        assert rep["collision_rate"] < semantic_ids.fit(data, 3, 16).report()["collision_rate"]
    fit = residual_kmeans(X, 3, 32, unique_last=True)
    _, prefix = torch.unique(fit.codes[:, :2], dim=0, return_counts=True)
    rep = semantic_ids.fit(X, 3, 32, unique_last=True).report()
    assert int(prefix.max()) <= 32 and rep["collision_rate"] == 0.0 and rep["max_bucket"] == 1


def test_constrained_assign_capacity_and_groups():
    d = torch.rand(50, 5, generator=torch.Generator().manual_seed(0))
    a = constrained_assign(d, 10)
    assert torch.bincount(a, minlength=5).tolist() == [10] * 5
    groups = torch.arange(50) % 10
    b = constrained_assign(d, 1, groups)
    pairs = {(int(g), int(c)) for g, c in zip(groups, b)}
    assert len(pairs) == 50
    assert torch.equal(constrained_assign(d, 50), d.argmin(1))  # no binding capacity: nearest code


def test_report_fields_and_relative_mse():
    sid = semantic_ids.fit(X, 3, 16)
    rep = sid.report()
    for key in ("collision_rate", "unique", "max_bucket", "relative_mse", "usage", "perplexity", "mean_usage"):
        assert key in rep
    assert len(rep["usage"]) == len(rep["perplexity"]) == 3
    codes = sid.codes
    recon = sid.decode(codes)
    manual = float((X - recon).pow(2).sum() / (X - X.mean(0)).pow(2).sum())
    assert rep["relative_mse"] == pytest.approx(manual, rel=1e-5)
    assert rep["collision_rate"] == pytest.approx(1 - len({tuple(r) for r in codes.tolist()}) / X.shape[0])
    held = sid.report(_clustered(n=100, seed=9))
    assert held["n_items"] == 100 and 0 < held["relative_mse"] < 1


def test_fit_leaves_global_rng_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    semantic_ids.fit(X, 2, 16, method="rqvae", epochs=2, hidden=(16,), latent_dim=4)
    assert torch.equal(torch.rand(3), want)


def test_errors_are_one_sentence_codec_errors(tmp_path):
    bad = X.clone()
    bad[3, 2] = float("nan")
    cases = [
        (lambda: semantic_ids.fit(bad), "embeddings contain NaN or infinite values."),
        (lambda: semantic_ids.fit(torch.randn(100)),
         "embeddings must be a 2-D array of shape [N, D] with N, D >= 1, got shape (100,)."),
        (lambda: semantic_ids.fit(X[:10], 3, 64), "fitting 64 codes per level needs at least 64 items, got 10."),
        (lambda: semantic_ids.fit(X, method="pq"), "unknown method 'pq': use 'rqkmeans', 'rqvae' or 'rqkmeans+'."),
        (lambda: semantic_ids.fit(X, 3, 16, epochs=3), "unknown option(s) for method 'rqkmeans': epochs."),
        (lambda: semantic_ids.fit(X, 0, 16), "levels must be an integer >= 1, got 0."),
        (lambda: semantic_ids.fit(X, 3, 16, balance="greedy"),
         "balance must be None, 'size' or 'sinkhorn', got 'greedy'."),
        (lambda: semantic_ids.fit([["a", "b"]]), "embeddings must be a numeric 2-D array of shape [N, D]."),
        (lambda: semantic_ids.fit(X, 3, 16).encode(torch.randn(4, 7)),
         "embeddings must have 16 columns like the fitted ones, got 7."),
        (lambda: semantic_ids.load(tmp_path / "nothing"),
         f"'{tmp_path / 'nothing'}' is not a saved SemanticIds directory "
         "(no semantic_ids.json or semantic_ids.safetensors)."),
    ]
    for fn, msg in cases:
        with pytest.raises(CodecError) as exc:
            fn()
        assert str(exc.value) == msg
