"""Tests for codec.quantization (ResidualVQ, VectorQuantize, kmeans, codebook files, benchmark)."""
import copy
import math

import numpy as np
import pytest
import torch

from codec.quantization import Codebook, ResidualVQ, RVQOutput, VectorQuantize, draw_level_counts, kmeans
from codec.bench.rvq import bench_rvq


def _clustered(n, d, k=16, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    lab = torch.randint(0, k, (n,), generator=g)
    return centers[lab] + spread * torch.randn(n, d, generator=g)


def _small(**kw):
    args = dict(input_dim=16, num_quantizers=4, codebook_size=32, codebook_dim=4)
    args.update(kw)
    return ResidualVQ(**args)


def _lengths_mask(lengths, T):
    return torch.arange(T)[None] < torch.tensor(lengths)[:, None]


def test_output_shapes_and_types():
    torch.manual_seed(0)
    rvq = _small(rvq_dim=8, output_dim=12)
    x = torch.randn(3, 16, 20)
    out = rvq(x)
    assert isinstance(out, RVQOutput)
    assert out.quantized.shape == (3, 12, 20)
    assert out.codes.shape == (3, 4, 20) and out.codes.dtype == torch.long
    assert out.per_level_commit.shape == out.perplexity.shape == out.usage.shape == (4,)
    assert out.commit_loss.dim() == 0 and out.codebook_loss.dim() == 0
    assert float(out.codebook_loss) == 0.0  # EMA variant
    assert ((out.codes >= 0) & (out.codes < 32)).all()


def test_reconstruction_error_falls_with_nq():
    torch.manual_seed(0)
    rvq = ResidualVQ(input_dim=8, num_quantizers=8, codebook_size=64, codebook_dim=8)
    x = torch.randn(8, 8, 256)
    for _ in range(5):
        rvq(x)
    rvq.eval()
    errs = [float((rvq.decode(rvq.encode(x, n_q=n)) - x).pow(2).mean()) for n in range(1, 9)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.25 * errs[0]


@pytest.mark.parametrize("kw", [dict(), dict(rvq_dim=8, output_dim=10), dict(l2_normalize=True),
                                dict(shared_codebook=True), dict(use_ema=False)])
def test_encode_decode_round_trip_exact(kw):
    torch.manual_seed(1)
    rvq = _small(**kw)
    x = torch.randn(3, 16, 40)
    mask = _lengths_mask([40, 25, 7], 40)
    rvq(x, mask)  # one training step (kmeans init, EMA)
    rvq.eval()
    out = rvq(x, mask)  # grad enabled: straight-through path must keep the exact value
    codes = rvq.encode(x, mask)
    assert torch.equal(codes, out.codes)
    assert torch.equal(rvq.decode(codes), out.quantized.detach())
    with torch.no_grad():
        assert torch.equal(rvq(x, mask).quantized, out.quantized.detach())
    with torch.inference_mode():
        assert torch.equal(rvq.encode(x, mask), codes)
    assert (codes[1, :, 25:] == -1).all() and (codes[2, :, 7:] == -1).all()
    assert (out.quantized[1, :, 25:] == 0).all()


def test_eval_forward_passes_gradient():
    rvq = _small(rvq_dim=8)
    rvq.eval()
    x = torch.randn(2, 16, 10, requires_grad=True)
    rvq(x).quantized.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_padded_batch_codes_equal_items_alone():
    torch.manual_seed(2)
    rvq = _small(rvq_dim=8)
    x = torch.randn(4, 16, 50)
    rvq(x)
    rvq.eval()
    lengths = [50, 33, 1, 20]
    mask = _lengths_mask(lengths, 50)
    xp = x.clone()
    xp[~mask[:, None, :].expand_as(xp)] = 1e6  # garbage in padding must not matter
    codes = rvq.encode(xp, mask)
    for b, n in enumerate(lengths):
        alone = rvq.encode(x[b:b + 1, :, :n])
        assert torch.equal(codes[b:b + 1, :, :n], alone)
        assert (codes[b, :, n:] == -1).all()
    # also through lengths instead of a mask
    assert torch.equal(rvq.encode(xp, torch.tensor(lengths)), codes)


def test_training_padding_never_touches_codebooks():
    torch.manual_seed(3)
    a = _small(rvq_dim=8, threshold_ema_dead_code=1.0)
    b = copy.deepcopy(a)
    lengths = [30, 17, 0]
    x = torch.randn(3, 16, 30)
    mask = _lengths_mask(lengths, 30)
    xp = x.clone()
    xp[~mask[:, None, :].expand_as(xp)] = float("nan")  # NaN padding: must never reach any statistic
    cat = torch.cat([x[i, :, :n] for i, n in enumerate(lengths)], dim=1)[None]  # the valid frames, unpadded
    for step in range(3):
        torch.manual_seed(100 + step)
        oa = a(xp, mask)
        torch.manual_seed(100 + step)
        ob = b(cat)
        assert torch.isfinite(oa.commit_loss) and torch.isfinite(oa.quantized).all()
        assert torch.equal(oa.codes.transpose(1, 2)[mask], ob.codes[0].t())
        assert torch.allclose(oa.commit_loss, ob.commit_loss, rtol=1e-5, atol=1e-7)
        assert torch.equal(oa.perplexity, ob.perplexity) and torch.equal(oa.usage, ob.usage)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_all_padded_batch_is_finite_and_leaves_codebooks():
    torch.manual_seed(4)
    rvq = _small(rvq_dim=8)
    rvq(torch.randn(2, 16, 30))
    before = copy.deepcopy(rvq.state_dict())
    out = rvq(torch.randn(2, 16, 5), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.isfinite(out.commit_loss) and float(out.commit_loss.detach()) == 0
    assert (out.codes == -1).all() and (out.quantized == 0).all()
    assert torch.equal(out.perplexity, torch.zeros(4)) and torch.equal(out.usage, torch.zeros(4))
    out.commit_loss.backward()  # graph is still valid
    for k, v in rvq.state_dict().items():
        assert torch.equal(v, before[k]), k
    # and on a fresh (un-initialised) quantizer: no kmeans on nothing
    fresh = _small()
    out = fresh(torch.randn(1, 16, 3), torch.zeros(1, 3, dtype=torch.bool))
    assert not bool(fresh.layers[0].cb.initted) and torch.isfinite(out.commit_loss)


def test_dead_codes_are_reseeded():
    torch.manual_seed(5)
    rvq = ResidualVQ(input_dim=4, num_quantizers=1, codebook_size=8, codebook_dim=4, kmeans_init=False,
                     threshold_ema_dead_code=0.5)
    cb = rvq.layers[0].cb
    cb.set_codes(torch.full((8, 4), 100.0), count=0.505)  # below threshold after one decay  # all far away: only code 0 (tie break) will be used
    x = torch.randn(2, 4, 64) * 0.1
    rvq(x)
    # unused codes decayed below the threshold and were re-seeded from the current inputs
    assert cb.embed.abs().max() < 50
    data = x.transpose(1, 2).reshape(-1, 4)
    assert (cb.embed[1:, None] == data[None]).all(-1).any(-1).all()  # re-seeded codes are actual input vectors
    assert torch.allclose(cb.cluster_size[1:], torch.full((7,), 0.5))
    out = rvq(x)
    assert float(out.usage[0]) > 0.5  # and they get used


def test_kmeans_init_beats_random_on_clustered_data():
    data = _clustered(4096, 8, k=32)
    x = data.t()[None]
    torch.manual_seed(6)
    km = ResidualVQ(input_dim=8, num_quantizers=1, codebook_size=32, codebook_dim=8, kmeans_init=True,
                    threshold_ema_dead_code=0)
    rnd = ResidualVQ(input_dim=8, num_quantizers=1, codebook_size=32, codebook_dim=8, kmeans_init=False,
                     threshold_ema_dead_code=0)
    km(x)  # first training batch -> kmeans
    assert bool(km.layers[0].cb.initted)
    km.eval(), rnd.eval()
    e_km = float((km.decode(km.encode(x)) - x).pow(2).mean())
    e_rnd = float((rnd.decode(rnd.encode(x)) - x).pow(2).mean())
    assert e_km < 0.2 * e_rnd, (e_km, e_rnd)
    # explicit init from a larger sample, configurable iterations
    ex = ResidualVQ(input_dim=8, num_quantizers=2, codebook_size=32, codebook_dim=8, kmeans_iters=20)
    ex.init_codebooks_from_data(x)
    assert all(bool(cb.initted) for cb in ex.codebooks)
    ex.eval()
    assert float((ex.decode(ex.encode(x)) - x).pow(2).mean()) < e_km + 1e-3


def test_kmeans_function():
    data = _clustered(2000, 4, k=8, spread=0.01)
    c, counts = kmeans(data, 8, iters=15, generator=torch.Generator().manual_seed(0))
    assert c.shape == (8, 4) and counts.sum() == 2000
    assert torch.cdist(data, c).min(1).values.pow(2).mean() < 1.0
    c2, counts2 = kmeans(data[:3], 8, iters=2)  # fewer rows than centroids
    assert c2.shape == (8, 4) and counts2.sum() == 3


@pytest.mark.parametrize("use_ema", [True, False])
def test_ema_and_gradient_variants_learn(use_ema):
    torch.manual_seed(7)
    rvq = ResidualVQ(input_dim=8, num_quantizers=2, codebook_size=32, codebook_dim=8, use_ema=use_ema,
                     kmeans_init=False)
    opt = torch.optim.Adam(rvq.parameters(), lr=0.05) if not use_ema else None
    x = _clustered(1024, 8, k=24).t()[None]
    losses = []
    for _ in range(40):
        out = rvq(x)
        loss = out.commit_loss + out.codebook_loss
        losses.append(float(loss.detach()))
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
    if not use_ema:
        assert float(out.codebook_loss.detach()) > 0 and rvq.layers[0].cb.embed.grad is not None
    else:
        assert float(out.codebook_loss) == 0
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_load_saved_codebooks_reproduces_codes(tmp_path):
    torch.manual_seed(8)
    a = _small()
    x = torch.randn(2, 16, 30)
    a(x)
    a.eval()
    codes = a.encode(x)
    for ext in ("npy", "npz", "safetensors"):
        p = tmp_path / f"cb.{ext}"
        a.save_codebooks(p)
        b = _small()
        b.load_state_dict({k: v for k, v in a.state_dict().items() if "codebook" not in k and "embed" not in k
                           and "cluster_size" not in k and "initted" not in k}, strict=False)
        b.load_codebooks(p)
        b.eval()
        assert torch.equal(b.encode(x), codes), ext
        assert all(bool(cb.initted) for cb in b.codebooks)
    arr = np.load(tmp_path / "cb.npy")
    assert arr.shape == (4, 32, 4)
    with pytest.raises(ValueError):
        _small().load_codebooks(np.zeros((3, 32, 4), np.float32))
    # a loaded codebook is used as-is by training (no kmeans over it)
    c = _small(input_dim=4)
    c.load_codebooks(tmp_path / "cb.npz")
    before = c.codebook_array().clone()
    c.train()
    c(torch.randn(1, 4, 5))
    assert bool(c.layers[0].cb.initted) and c.codebook_array().shape == before.shape


def test_any_nq_and_prefix_property():
    torch.manual_seed(9)
    rvq = ResidualVQ(input_dim=8, num_quantizers=32, codebook_size=16, codebook_dim=4, rvq_dim=8)
    x = torch.randn(2, 8, 12)
    rvq(x)
    rvq.eval()
    full = rvq.encode(x)
    assert full.shape == (2, 32, 12)
    for n in range(1, 33):
        c = rvq.encode(x, n_q=n)
        assert c.shape == (2, n, 12)
        assert torch.equal(c, full[:, :n])
        assert rvq.decode(c).shape == (2, 8, 12)
        assert rvq(x, n_q=n).codes.shape == (2, n, 12)
    with pytest.raises(ValueError):
        rvq.encode(x, n_q=0)
    with pytest.raises(ValueError):
        rvq.encode(x, n_q=33)


def test_decode_ignores_minus_one_levels():
    torch.manual_seed(10)
    rvq = _small(rvq_dim=8, output_dim=6)
    x = torch.randn(2, 16, 10)
    rvq(x)
    rvq.eval()
    codes = rvq.encode(x)
    marked = codes.clone()
    marked[:, 2:] = -1
    assert torch.allclose(rvq.decode(marked), rvq.decode(codes[:, :2]), atol=1e-6)
    none = torch.full_like(codes, -1)
    assert (rvq.decode(none) == 0).all()  # all -1 -> zero even with output bias
    with pytest.raises(ValueError):
        rvq.decode(codes.clamp(max=0) + 32)


def test_quantizer_dropout_varies_levels_per_item():
    torch.manual_seed(11)
    rvq = ResidualVQ(input_dim=8, num_quantizers=8, codebook_size=16, codebook_dim=4, quantizer_dropout=1.0,
                     quantizer_dropout_cutoff=3)
    x = torch.randn(64, 8, 5)
    out = rvq(x)
    n = out.n_levels
    assert n.min() >= 3 and n.max() <= 8 and len(set(n.tolist())) > 2
    used = (out.codes >= 0).all(dim=2).sum(1)  # levels with codes per item
    assert torch.equal(used, n)
    for b in range(64):
        assert (out.codes[b, n[b]:] == -1).all()
    rvq.eval()
    assert (rvq(x).n_levels == 8).all() and (rvq(x).codes >= 0).all()  # no dropout at inference


def test_draw_level_counts_uniform_is_randint_and_exponent_follows_power_law():
    from scipy.stats import chisquare

    torch.manual_seed(3)
    a = draw_level_counts(500, 2, 9)
    torch.manual_seed(3)
    assert torch.equal(a, torch.randint(2, 10, (500,)))  # exponent 0: the old uniform stream, draw for draw
    torch.manual_seed(4)
    n = draw_level_counts(40000, 1, 8, exponent=1.0)
    assert n.min() >= 1 and n.max() <= 8
    observed = torch.bincount(n, minlength=9)[1:].double().numpy()
    expected = 1.0 / np.arange(1, 9)
    expected = expected / expected.sum() * observed.sum()
    assert chisquare(observed, expected).pvalue > 1e-3  # P(n) ~ 1/n
    assert chisquare(observed, np.full(8, observed.sum() / 8)).pvalue < 1e-12  # and not uniform


def test_quantizer_dropout_exponent_favours_few_levels():
    x = torch.randn(4000, 8, 1)
    means = []
    for exponent in (0.0, 1.0):
        torch.manual_seed(5)
        rvq = ResidualVQ(input_dim=8, num_quantizers=32, codebook_size=16, codebook_dim=4, quantizer_dropout=1.0,
                         quantizer_dropout_exponent=exponent, kmeans_init=False)
        means.append(float(rvq(x).n_levels.double().mean()))
    assert means[0] == pytest.approx(16.5, abs=0.5)  # uniform over 1..32
    assert means[1] == pytest.approx(32 / sum(1 / k for k in range(1, 33)), abs=0.5)  # 1/n: mean 32 / H(32)


@pytest.mark.parametrize("field", ["quantizer_dropout_exponent", "residual_weight"])
def test_config_refuses_negative_quantizer_weights_and_reads_old_files_as_off(field):
    """Fields added later: negative values refused, a config.json written before the field existed reads as 0
    (uniform level draws; no residual loss), and the model's quantizer gets the value."""
    from codec.config import CodecConfig
    from codec.model import CodecModel

    with pytest.raises(ValueError, match=f"{field} must be a finite number >= 0"):
        CodecConfig(**{field: -1.0})
    old = CodecConfig().to_dict()
    old.pop(field)
    assert getattr(CodecConfig.from_dict(old), field) == 0.0
    assert getattr(CodecModel(CodecConfig.preset("tiny", **{field: 2.0})).quantizer, field) == 2.0


def test_skip_rvq_ratio_bypasses_quantizer():
    torch.manual_seed(12)
    rvq = _small(rvq_dim=8, output_dim=16, skip_rvq_ratio=1.0)
    x = torch.randn(3, 16, 7)
    out = rvq(x)
    assert (out.n_levels == 0).all() and (out.codes == -1).all()
    expect = rvq.output_proj(rvq.input_proj(x.transpose(1, 2))).transpose(1, 2)
    assert torch.allclose(out.quantized, expect, atol=1e-5)


def test_shared_codebook():
    torch.manual_seed(13)
    rvq = _small(shared_codebook=True)
    assert len(rvq.codebooks) == 1 and all(l.cb is rvq.codebook for l in rvq.layers)
    names = [n for n, _ in rvq.named_buffers() if n.endswith("embed")]
    assert names == ["codebook.embed"]
    x = torch.randn(2, 16, 40)
    rvq(x)
    rvq.eval()
    c = rvq.encode(x)
    assert torch.equal(rvq.decode(c), rvq(x).quantized)
    assert rvq.codebook_array().shape == (1, 32, 4)


def test_sinkhorn_runs_and_balances():
    torch.manual_seed(14)
    data = torch.cat([torch.randn(900, 4) * 0.1, torch.randn(100, 4) * 0.1 + 5])  # very unbalanced
    plain = ResidualVQ(input_dim=4, num_quantizers=1, codebook_size=16, codebook_dim=4, kmeans_init=False,
                       threshold_ema_dead_code=0)
    sk = copy.deepcopy(plain)
    for cb in sk.codebooks:
        cb.sinkhorn = True
    o1, o2 = plain(data), sk(data)
    assert torch.isfinite(o2.commit_loss) and o2.codes.shape == (1000, 1)
    assert float(o2.perplexity[0]) > float(o1.perplexity[0])
    sk.eval()
    assert (sk.encode(data) >= 0).all()  # inference uses nearest codes
    rvq = _small(sinkhorn=True)
    out = rvq(torch.randn(2, 16, 20), _lengths_mask([20, 5], 20))
    assert torch.isfinite(out.commit_loss)


def test_rows_input_and_autocast():
    torch.manual_seed(15)
    rvq = _small()
    rows = torch.randn(100, 16)
    out = rvq(rows)
    assert out.quantized.shape == (100, 16) and out.codes.shape == (100, 4)
    rvq.eval()
    codes = rvq.encode(rows)
    assert codes.shape == (100, 4) and rvq.decode(codes).shape == (100, 16)
    assert torch.equal(codes, rvq.encode(rows.t()[None])[0].t())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c_ac = rvq.encode(rows)
    assert torch.equal(c_ac, codes)  # distances stay float32 under autocast
    out = rvq(rows.to(torch.bfloat16))
    assert out.quantized.dtype == torch.bfloat16


def test_vector_quantize_single_level():
    torch.manual_seed(16)
    vq = VectorQuantize(dim=16, codebook_size=32, codebook_dim=4)
    x = torch.randn(2, 16, 30)
    mask = _lengths_mask([30, 10], 30)
    out = vq(x, mask)
    assert out.quantized.shape == (2, 16, 30) and out.codes.shape == (2, 30)
    assert (out.codes[1, 10:] == -1).all() and (out.quantized[1, :, 10:] == 0).all()
    assert bool(vq.cb.initted)
    assert isinstance(vq.cb, Codebook)


def test_bench_rvq_small():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        res = bench_rvq(n_frames=2000, num_quantizers=4, codebook_size=64, codebook_dim=8, threads=1, repeats=1,
                        compare_vqp=False)
        assert torch.get_num_threads() == 2  # the thread count asked for is set for the run only
    finally:
        torch.set_num_threads(before)
    assert res["threads"] == 1 and (res["n_frames"], res["num_quantizers"], res["codebook_size"]) == (2000, 4, 64)
    assert res["vqp_status"] == "skipped" and res["vqp_fps"] is None
    assert all(math.isfinite(res[k]) for k in ("ours_fps", "floor_fps", "ratio_floor_over_ours"))


def test_inference_tables_follow_writes_that_skip_the_version_counter():
    """encode / decode cache their tables; a write through ``.data`` (as DDP's broadcast does) must still be seen."""
    torch.manual_seed(12)
    rvq = _small(rvq_dim=8, output_dim=6)
    x = torch.randn(2, 16, 10)
    rvq(x)
    rvq.eval()
    codes = rvq.encode(x)
    before = rvq.decode(codes)
    fresh = copy.deepcopy(rvq)
    with torch.no_grad():
        for layer in rvq.layers:  # a new codebook and output projection, written behind autograd's back
            layer.cb.embed.data.copy_(torch.randn_like(layer.cb.embed))
            layer.out_proj.weight.data.mul_(2.0)
    fresh.layers.load_state_dict(rvq.layers.state_dict())
    assert torch.equal(rvq.encode(x), fresh.encode(x))  # the same as a quantizer that never cached anything
    assert torch.equal(rvq.decode(codes), fresh.decode(codes))
    assert not torch.allclose(rvq.decode(codes), before)


def _drifted_rvq(**kw) -> ResidualVQ:
    """A 4-level RVQ with low-dimensional codes whose output projections are random: decoded sums drift."""
    torch.manual_seed(0)
    return ResidualVQ(input_dim=16, num_quantizers=4, codebook_size=32, codebook_dim=4, **kw)


def _latents(n: int = 3000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=g) * torch.linspace(0.3, 2.0, 16) + 0.5


def _prefix_errors(rvq: ResidualVQ, x: torch.Tensor) -> list:
    rvq.eval()
    return [float((x - rvq.decode(rvq.encode(x, n_q=n))).pow(2).sum() / x.pow(2).sum())
            for n in range(1, rvq.num_quantizers + 1)]


def test_init_codebooks_fits_output_projections_so_every_level_shrinks_the_residual():
    x = _latents()
    drifted = _drifted_rvq()
    for layer in drifted.layers:   # k-means codebooks alone leave random output projections: the sums drift
        layer.cb.init_from_data(layer.project_in(x))
    before = _prefix_errors(drifted, x)
    rvq = _drifted_rvq()
    errors = rvq.init_codebooks_from_data(x, ema_count=1.0)
    after = _prefix_errors(rvq, x)
    assert errors.shape == (4,) and errors.dtype == torch.float64
    assert after == sorted(after, reverse=True) and after[-1] < 0.5 * after[0]   # every level helps
    assert after[-1] < 0.5 * min(before)
    assert np.allclose(after, errors.tolist(), rtol=1e-3)                      # what it reports is what decodes
    assert all(float(cb.cluster_size.mean()) == pytest.approx(1.0) for cb in rvq.codebooks)
    kept = _drifted_rvq()
    kept.init_codebooks_from_data(x)                                           # the sample's own counts
    assert float(kept.layers[0].cb.cluster_size.sum()) == pytest.approx(x.shape[0])
    shared = ResidualVQ(input_dim=16, num_quantizers=3, codebook_size=32, codebook_dim=4, shared_codebook=True)
    shared.init_codebooks_from_data(x)
    errs = _prefix_errors(shared, x)
    assert errs == sorted(errs, reverse=True)
    with pytest.raises(ValueError, match="init_codebooks_from_data needs at least one valid frame"):
        _drifted_rvq().init_codebooks_from_data(torch.zeros(2, 16, 5), torch.tensor([0, 0]))


def test_residual_loss_pulls_decoded_vectors_onto_the_residual():
    x = _latents(2000)
    rvq = _drifted_rvq(residual_weight=1.0, threshold_ema_dead_code=0.0).train()
    out = rvq(x)
    assert out.per_level_residual.shape == (4,)
    assert float(out.residual_loss.detach()) == pytest.approx(float(out.per_level_residual.sum()), rel=1e-6)
    xg = x.clone().requires_grad_(True)
    rvq(xg).residual_loss.backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0              # the input is pulled too
    opt = torch.optim.Adam([p for l in rvq.layers for p in l.out_proj.parameters()], lr=0.05)
    first = None
    for _ in range(60):
        out = rvq(x)
        first = float(out.residual_loss.detach()) if first is None else first
        opt.zero_grad()
        out.residual_loss.backward()
        opt.step()
    last = rvq(x).per_level_residual
    assert float(last.sum()) < 0.5 * first
    assert float(last[-1]) < float(last[0])                                   # later levels now shrink it
    off = _drifted_rvq().train()(x)
    assert float(off.residual_loss) == 0.0 and float(off.per_level_residual.abs().sum()) == 0.0
    assert float(_drifted_rvq(residual_weight=1.0).eval()(x).residual_loss) == 0.0



def test_quantizer_focus_sends_that_fraction_of_items_to_exactly_its_level_count():
    """``quantizer_focus``: in training that fraction of items decodes with exactly ``quantizer_focus_levels``
    levels whatever dropout drew; eval always uses every level; a focus without a level count is refused."""
    x = torch.randn(4000, 8, 1)
    torch.manual_seed(6)
    rvq = ResidualVQ(input_dim=8, num_quantizers=32, codebook_size=16, codebook_dim=4, quantizer_dropout=1.0,
                     quantizer_dropout_exponent=1.0, quantizer_focus=0.3, quantizer_focus_levels=8,
                     kmeans_init=False)
    n = rvq(x).n_levels
    p8 = 1 / 8 / sum(1 / k for k in range(1, 33))  # what the 1/n draw alone gives level count 8
    assert float((n == 8).double().mean()) == pytest.approx(0.3 + 0.7 * p8, abs=0.025)
    assert int(n.min()) == 1 and int(n.max()) == 32  # the other items keep the dropout draw
    rvq.quantizer_focus = 1.0
    assert bool((rvq(x).n_levels == 8).all())
    assert bool((rvq.eval()(x).n_levels == 32).all())
    with pytest.raises(ValueError, match="quantizer_focus_levels must be in 1..num_quantizers"):
        ResidualVQ(input_dim=8, num_quantizers=4, quantizer_focus=0.5, quantizer_focus_levels=5)
    with pytest.raises(ValueError, match="quantizer_focus_levels must be in 1..num_quantizers"):
        ResidualVQ(input_dim=8, num_quantizers=4, quantizer_focus=0.5, quantizer_focus_levels=[2, 5])


def test_quantizer_focus_on_several_level_counts_splits_the_focused_items_by_the_list():
    """A list of focus counts: each focused item draws one entry uniformly, so [8, 8, 8, 2] sends three
    quarters of them to 8 and one quarter to 2; a single count draws nothing beyond the focus coin, so a run with
    one count replays the same random stream as before lists were allowed."""
    x = torch.randn(8000, 8, 1)
    rvq = ResidualVQ(input_dim=8, num_quantizers=32, codebook_size=16, codebook_dim=4, quantizer_focus=1.0,
                     quantizer_focus_levels=[8, 8, 8, 2], kmeans_init=False)
    assert rvq.quantizer_focus_levels == (8, 8, 8, 2)
    n = rvq(x).n_levels
    assert set(n.tolist()) == {2, 8}
    assert float((n == 2).double().mean()) == pytest.approx(0.25, abs=0.02)
    one = ResidualVQ(input_dim=8, num_quantizers=32, codebook_size=16, codebook_dim=4, quantizer_dropout=0.5,
                     quantizer_focus=0.3, quantizer_focus_levels=8, kmeans_init=False)
    torch.manual_seed(3)
    a = one._levels_per_item(64, 32, torch.device("cpu"))
    after_a = torch.rand(1)
    torch.manual_seed(3)  # what the single-count draw was before lists: dropout coin, dropout draw, focus coin
    drop = torch.rand(64) < 0.5
    b = torch.where(drop, draw_level_counts(64, 1, 32, 0.0), torch.full((64,), 32))
    b = torch.where(torch.rand(64) < 0.3, torch.full((64,), 8), b)
    assert torch.equal(a, b) and torch.equal(after_a, torch.rand(1))
    assert bool((rvq.eval()(x).n_levels == 32).all())


def test_config_quantizer_focus_and_level_embedding_checks_and_old_files():
    from codec.config import CodecConfig
    from codec.model import CodecModel

    with pytest.raises(ValueError, match=r"quantizer_focus must be in \[0, 1\]"):
        CodecConfig(quantizer_focus=1.5, quantizer_focus_levels=8)
    with pytest.raises(ValueError, match="quantizer_focus_levels must be in 1..num_quantizers"):
        CodecConfig(quantizer_focus=0.5)
    with pytest.raises(ValueError, match="quantizer_focus_levels must be in 1..num_quantizers"):
        CodecConfig(quantizer_focus=0.5, quantizer_focus_levels=33)
    with pytest.raises(ValueError, match="level_embedding needs decoder_type 'fourier'"):
        CodecConfig(level_embedding=True)
    old = CodecConfig().to_dict()
    for k in ("quantizer_focus", "quantizer_focus_levels", "level_embedding"):
        old.pop(k)
    cfg = CodecConfig.from_dict(old)  # a config.json from before these fields: all off
    assert (cfg.quantizer_focus, cfg.quantizer_focus_levels, cfg.level_embedding) == (0.0, (), False)
    q = CodecModel(CodecConfig.preset("tiny", quantizer_focus=0.25, quantizer_focus_levels=3)).quantizer
    assert (q.quantizer_focus, q.quantizer_focus_levels) == (0.25, (3,))
    # config.json files from 2026-12-07 hold a single integer (0 when off): they read as a list of one / none
    eight = CodecConfig.from_dict({**old, "quantizer_focus": 0.5, "quantizer_focus_levels": 8})
    assert eight.quantizer_focus_levels == (8,)
    assert CodecConfig.from_dict({**old, "quantizer_focus_levels": 0}).quantizer_focus_levels == ()
    two = CodecConfig.from_json(CodecConfig(quantizer_focus=0.5, quantizer_focus_levels=[2, 8]).to_json())
    assert two.quantizer_focus_levels == (2, 8)
    with pytest.raises(ValueError, match="quantizer_focus_levels must be in 1..num_quantizers"):
        CodecConfig(quantizer_focus=0.5, quantizer_focus_levels=[8, 33])
    with pytest.raises(ValueError, match="every entry of quantizer_focus_levels must be in 1..64"):
        CodecConfig(quantizer_focus=0.5, quantizer_focus_levels=[0, 8])
