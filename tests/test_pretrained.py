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
