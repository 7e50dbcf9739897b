"""codec.train config handling and data pipeline (no model needed)."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from codec.errors import CodecError
from codec.train.config import load_config
from codec.train.data import (CropDataset, StepBatchSampler, ValidDataset, collate, load_segment, rms_normalize,
                              read_items, worker_init_fn)


def _write_tones(folder, n=5, sr=16000):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rate = sr if i % 2 == 0 else 22050
        T = int(rate * (0.2 + 0.3 * i))
        t = np.arange(T) / rate
        x = 0.1 * sum(np.sin(2 * np.pi * (150 + 30 * i) * k * t) / k for k in range(1, 4)) + 0.01 * rng.standard_normal(T)
        p = folder / f"t{i}.wav"
        sf.write(p, x.astype(np.float32), rate)
        rows.append({"path": p.name, "duration": T / rate, "speaker": f"s{i % 2}", "sample_rate": rate})
    return rows


def test_config_defaults_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model:\n  preset: tiny\n  overrides: {num_quantizers: 4}\ndata:\n  batch_size: 3\n")
    cfg = load_config(y, ["train.steps=7", "optim.lr=1e-4", "model.overrides.codebook_size=64",
                          "loss.mel_windows=[64,128]", "loss.mel_bands=[10,20]", "train.resume=null"])
    assert cfg["data"]["batch_size"] == 3 and cfg["train"]["steps"] == 7
    assert cfg["optim"]["lr"] == pytest.approx(1e-4)
    assert cfg["model"]["overrides"] == {"num_quantizers": 4, "codebook_size": 64}
    assert cfg["loss"]["mel_windows"] == [64, 128] and cfg["train"]["resume"] is None
    assert cfg["data"]["crop_seconds"] == 1.0  # default kept
    with pytest.raises(CodecError, match="unknown config key 'train.stepz'"):
        load_config(y, ["train.stepz=3"])
    with pytest.raises(CodecError, match="section.key=value"):
        load_config(y, ["train.steps"])
    y.write_text("trian:\n  steps: 3\n")
    with pytest.raises(CodecError, match="unknown config section"):
        load_config(y)


def test_shipped_recipes_parse(monkeypatch, tmp_path):
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert {"tiny-cpu.yaml", "speech-16k.yaml", "speech-24k.yaml"} <= {r.name for r in recipes}
    monkeypatch.delenv("CODEC_DATA", raising=False)
    with pytest.raises(CodecError, match="CODEC_DATA is not set"):
        load_config(recipes[0].parent / "speech-24k.yaml")
    monkeypatch.setenv("CODEC_DATA", str(tmp_path))
    for r in recipes:
        cfg = load_config(r)
        assert cfg["train"]["steps"] > 0
        if isinstance(cfg["data"].get("train"), str) and "corpus" not in r.name:
            assert "${" not in cfg["data"]["train"], r.name   # the variable was filled in


def test_manifest_and_folder(tmp_path):
    rows = _write_tones(tmp_path / "wavs")
    man = tmp_path / "wavs" / "m.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = read_items(man)
    assert len(items) == 5 and items[0]["path"].startswith(str(tmp_path))   # relative to the manifest
    assert len(read_items(tmp_path / "wavs")) == 5
    assert len(read_items(man, min_seconds=0.6)) == 3
    assert len(read_items([man, tmp_path / "wavs"])) == 10
    with pytest.raises(CodecError):
        read_items(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"duration": 1}\n')
    with pytest.raises(CodecError, match="no 'path'"):
        read_items(bad)


def test_crops_deterministic_padded_resampled_normalised(tmp_path):
    _write_tones(tmp_path / "wavs")
    items = read_items(tmp_path / "wavs")
    ds = CropDataset(items, 16000, 0.5, seed=3, rms_db=-20.0)
    seen_short = seen_full = False
    for k in range(12):
        x, n = ds[k]
        assert x.shape == (1, 8000) and x.dtype == np.float32
        assert 0 < n <= 8000
        assert np.all(x[0, n:] == 0)
        x2, n2 = ds[k]
        assert n2 == n and np.array_equal(x, x2)               # deterministic in k
        rms_db = 20 * np.log10(np.sqrt(np.mean(x[0, :n] ** 2)))
        assert abs(rms_db + 20) < 0.5
        seen_short |= n < 8000
        seen_full |= n == 8000
    assert seen_short and seen_full
    # each epoch visits every item once
    assert sorted(ds.item_index(k) for k in range(5)) == list(range(5))
    # resampled items (22.05 kHz files) come out at 16 kHz length
    v = ValidDataset(items, 16000, max_items=5)
    for i in range(5):
        x, n = v[i]
        assert n == x.shape[-1]
        assert abs(n - round(items[i]["duration"] * 16000)) <= 2 if "duration" in items[i] else n > 0


def test_level_range_draws_each_crops_level_and_validation_can_keep_the_recorded_level(tmp_path):
    _write_tones(tmp_path / "wavs")
    items = read_items(tmp_path / "wavs")
    ds = CropDataset(items, 16000, 0.5, seed=3, rms_db=[-40.0, -12.0])
    levels = []
    for k in range(40):
        x, n = ds[k]
        assert np.array_equal(x, ds[k][0])                     # still deterministic in k
        levels.append(20 * np.log10(np.sqrt(np.mean(x[0, :n].astype(np.float64) ** 2))))
    levels = np.array(levels)
    assert levels.min() >= -40.5 and levels.max() <= -11.5
    assert levels.max() - levels.min() > 15                    # spread over the range, not one level
    recorded = ValidDataset(items, 16000, max_items=2, rms_db=None)[0][0]
    raw = load_segment(items[0]["path"], 16000, 0.0, 10.0)
    assert np.array_equal(recorded[0], raw)


def test_speed_range_plays_each_crop_faster_or_slower_by_its_drawn_factor(tmp_path):
    sr = 16000
    t = np.arange(4 * sr) / sr
    sf.write(tmp_path / "tone.wav", (0.1 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32), sr)
    items = [{"path": str(tmp_path / "tone.wav"), "duration": 4.0}]

    def peak_hz(x):
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        return np.argmax(spec) * sr / len(x)

    fast = CropDataset(items, sr, 1.0, seed=1, rms_db=None, speed=[1.2, 1.2])
    slow = CropDataset(items, sr, 1.0, seed=1, rms_db=None, speed=[0.8, 0.8])
    same = CropDataset(items, sr, 1.0, seed=1, rms_db=None)
    for ds, hz in ((fast, 1200.0), (slow, 800.0), (same, 1000.0)):
        x, n = ds[0]
        assert n == sr                                          # still a full crop of the model's length
        assert abs(peak_hz(x[0]) - hz) <= 2.0
    spread = CropDataset(items, sr, 1.0, seed=1, rms_db=None, speed=[0.9, 1.1])
    peaks = [peak_hz(spread[k][0][0]) for k in range(12)]
    assert np.array_equal(spread[3][0], spread[3][0])          # deterministic in k
    assert min(peaks) < 980 and max(peaks) > 1020 and all(895 <= p <= 1105 for p in peaks)


@pytest.mark.parametrize("key,value,message", [
    ("speed", [1.1, 0.9], "data.speed must be [low, high] with 0.5 <= low <= high <= 2.0, or null; got [1.1, 0.9]."),
    ("speed", 1.1, "data.speed must be [low, high] with 0.5 <= low <= high <= 2.0, or null; got 1.1."),
    ("rms_db", [-12.0, -40.0], "data.rms_db must be a number of dBFS, [low, high] with low <= high, or null; "
                               "got [-12.0, -40.0]."),
    ("rms_db", "loud", "data.rms_db must be a number of dBFS, [low, high] with low <= high, or null; got 'loud'."),
    ("valid_rms_db", [-30.0, -20.0], "data.valid_rms_db must be a number of dBFS or null; got [-30.0, -20.0]."),
])
def test_level_and_speed_settings_are_checked(key, value, message):
    with pytest.raises(CodecError) as e:
        load_config(None, [f"data.{key}={value}"])
    assert str(e.value) == message


def test_rms_normalize_limits():
    x = np.full(100, 1e-6, dtype=np.float32)
    y = rms_normalize(x, -20.0, max_gain_db=20.0)
    assert np.allclose(y, x * 10)                              # at most +20 dB
    x = np.r_[np.zeros(99), 1.0].astype(np.float32)
    assert np.max(np.abs(rms_normalize(x, -3.0))) <= 0.99 + 1e-6


def test_step_sampler_shards_and_resumes():
    a = StepBatchSampler(2, start_step=0, rank=0, world=2)
    b = StepBatchSampler(2, start_step=0, rank=1, world=2)
    ia, ib = iter(a), iter(b)
    first = [next(ia) for _ in range(3)]
    second = [next(ib) for _ in range(3)]
    assert not set(sum(first, [])) & set(sum(second, []))     # ranks never share a crop
    resumed = iter(StepBatchSampler(2, start_step=2, rank=0, world=2))
    assert next(resumed) == first[2]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_match(tmp_path, workers):
    _write_tones(tmp_path / "wavs")
    ds = CropDataset(read_items(tmp_path / "wavs"), 16000, 0.3, seed=1)
    kw = dict(batch_sampler=StepBatchSampler(3), collate_fn=collate, worker_init_fn=worker_init_fn)
    ref = [b for _, b in zip(range(3), DataLoader(ds, num_workers=0, **kw))]
    got = [b for _, b in zip(range(3), DataLoader(ds, num_workers=workers, **kw))]
    for (x, n), (y, m) in zip(ref, got):
        assert x.shape == (3, 1, 4800)
        assert torch.equal(x, y) and torch.equal(n, m)
