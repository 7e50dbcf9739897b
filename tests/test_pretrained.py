"""save_pretrained / codec.load: round trip, weights hash, name resolution, clear refusals."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import codec
from codec.config import CodecConfig
from codec.errors import CodecError
from codec.model import CodecModel
from codec.pretrained import save_pretrained


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    m = CodecModel(CodecConfig.preset("tiny")).eval()
    d = tmp_path / "m"
    h = save_pretrained(m, d)
    return m, d, h


def test_round_trip_and_hash(saved):
    m, d, h = saved
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    assert len(h) == 16 and m.weights_hash == h
    m2 = codec.load(d)
    assert m2.weights_hash == h and not m2.training
    assert m2.config == m.config
    x = 0.2 * torch.randn(1, 1, 4000)
    assert torch.equal(m.encode(x), m2.encode(x))
    assert torch.allclose(m.decode(m.encode(x)), m2.decode(m2.encode(x)))
    m3 = codec.load(str(d), device="cpu")
    assert m3.device.type == "cpu"


def test_readme_is_kept(saved):
    m, d, _ = saved
    (d / "README.md").write_text("card")
    save_pretrained(m, d)
    assert (d / "README.md").read_text() == "card"


def test_name_resolution(saved, monkeypatch):
    _, d, h = saved
    monkeypatch.setenv("CODEC_PRETRAINED_DIR", str(d.parent))
    assert codec.load("m").weights_hash == h
    with pytest.raises(CodecError, match="neither"):
        codec.load("no-such-model")


def _err(path):
    with pytest.raises(CodecError) as ei:
        codec.load(path)
    msg = str(ei.value)
    assert msg.endswith(".") and "\n" not in msg
    return msg


def test_refusals(saved, tmp_path):
    m, d, _ = saved
    assert "does not exist" in _err(tmp_path / "nope" / "x")
    (tmp_path / "empty").mkdir()
    assert "config.json" in _err(tmp_path / "empty")
    cfg = json.loads((d / "config.json").read_text())

    def variant(name, cfg_text=None, weights=None, drop_weights=False):
        v = tmp_path / name
        v.mkdir()
        (v / "config.json").write_text(cfg_text if cfg_text is not None else json.dumps(cfg))
        if not drop_weights:
            if weights is None:
                (v / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
            else:
                save_file(weights, str(v / "model.safetensors"))
        return v

    assert "model.safetensors" in _err(variant("now", drop_weights=True))
    assert "JSON" in _err(variant("badjson", cfg_text="{not json"))
    assert "unknown config field" in _err(variant("unk", cfg_text=json.dumps({**cfg, "wobble": 3})))
    assert "valid model config" in _err(variant("badval", cfg_text=json.dumps({**cfg, "activation": "tanh"})))
    sd = load_file(str(d / "model.safetensors"))
    k = "encoder.conv_in.weight_v"
    missing = {a: b for a, b in sd.items() if a != k}
    assert "missing" in _err(variant("miss", weights=missing))
    assert "unexpected" in _err(variant("extra", weights={**sd, "foo.bar": torch.zeros(2)}))
    assert "shape" in _err(variant("shape", weights={**sd, k: torch.zeros(3, 3, 3)}))
    bad = variant("corrupt")
    (bad / "model.safetensors").write_bytes(b"garbage" * 10)
    assert "cannot read weights" in _err(bad)
    other = json.dumps({**cfg, "latent_dim": 16})
    assert "do not match" in _err(variant("mismatch", cfg_text=other))


def test_int8_weights_round_trip(saved, tmp_path):
    m, d, _ = saved
    q = tmp_path / "q"
    save_pretrained(m, q, int8=True)
    sd = load_file(str(q / "model.safetensors"))
    own = m.state_dict()
    big = [k for k, v in own.items() if v.dim() >= 2 and v.numel() >= 4096 and not k.startswith("quantizer.")]
    assert big
    for k, v in own.items():
        if k in big:
            assert sd[k].dtype == torch.int8 and sd[k + ".int8_scale"].dtype == torch.float32
            assert sd[k + ".int8_scale"].shape == (v.shape[0],)
        elif v.is_floating_point():
            assert sd[k].dtype == torch.float16 and k + ".int8_scale" not in sd
    loaded = codec.load(q)
    for k in big:
        w, w8 = own[k].reshape(own[k].shape[0], -1), loaded.state_dict()[k].reshape(own[k].shape[0], -1)
        step = w.abs().amax(dim=1, keepdim=True) / 127
        assert (w8 - w).abs().le(step / 2 + 1e-6).all()
    x = 0.2 * torch.randn(1, 1, 4000)
    ref = m.decode(m.encode(x))
    assert (loaded.decode(m.encode(x)) - ref).pow(2).mean() < 1e-3 * ref.pow(2).mean()
    assert (q / "model.safetensors").stat().st_size < 0.35 * (d / "model.safetensors").stat().st_size


def test_int8_refusals(saved, tmp_path):
    m, _, _ = saved
    q = tmp_path / "q"
    save_pretrained(m, q, int8=True)
    sd = load_file(str(q / "model.safetensors"))
    k = next(k[:-len(".int8_scale")] for k in sd if k.endswith(".int8_scale"))

    def variant(name, weights):
        v = tmp_path / name
        v.mkdir()
        (v / "config.json").write_text((q / "config.json").read_text())
        save_file(weights, str(v / "model.safetensors"))
        return v

    f = "model.safetensors"
    no_scale = {a: b for a, b in sd.items() if a != k + ".int8_scale"}
    assert _err(variant("noscale", no_scale)).endswith(f"tensor '{k}' is stored as int8, expected float32.")
    stray = {**sd, "foo.int8_scale": torch.ones(2)}
    assert _err(variant("stray", stray)).endswith(
        f"{f}' are corrupted: scale 'foo.int8_scale' has no int8 tensor 'foo' beside it.")
    rows = sd[k].shape[0]
    short = {**sd, k + ".int8_scale": torch.ones(rows + 1)}
    assert _err(variant("short", short)).endswith(
        f"scale '{k}.int8_scale' must be a float vector of ({rows},) values, got float32 ({rows + 1},).")
    nan = {**sd, k + ".int8_scale": torch.full((rows,), float("nan"))}
    assert "contains NaN or infinite values" in _err(variant("nan", nan))
