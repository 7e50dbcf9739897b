"""The GPU time-box recipe (recipes/gpu): the travelling pack round-trips, respects its budget, and the device
driver trains, times itself and hands back a float16 model, all checked here on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from recipe_modules import REPO, load_recipe

import codec

pack_mod = load_recipe("gpu/pack.py", "gpu_pack")
parts_mod = load_recipe("gpu/parts.py", "gpu_parts")


def _voiced(seconds: float, f0: float, sr: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    return (0.2 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _corpus(root: Path, n_train: int = 4) -> tuple:
    rows = []
    for i in range(n_train):
        p = root / f"t{i}.wav"
        sf.write(p, _voiced(1.5 + 0.5 * i, 110 + 20 * i), 24000)
        rows.append({"path": p.name, "duration": 1.5 + 0.5 * i, "speaker": f"s{i % 2}"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sf.write(root / "v0.wav", _voiced(1.2, 150), 24000)
    (root / "valid.jsonl").write_text(json.dumps({"path": "v0.wav", "duration": 1.2}) + "\n")
    return root / "train.jsonl", root / "valid.jsonl"


def test_pack_round_trip_keeps_durations_and_lossless_validation(tmp_path):
    train, valid = _corpus(tmp_path)
    info = pack_mod.pack(train, valid, tmp_path / "pack", kbps=16, budget_mib=1.0, wheels=False, jobs=1)
    assert info["train_clips"] == 4 and info["valid_clips"] == 1 and info["bytes"] <= 2 ** 20
    assert sorted(p.suffix for p in (tmp_path / "pack" / "train").iterdir()) == [".opus"] * 4
    out = pack_mod.unpack(tmp_path / "pack", tmp_path / "data", sample_rate=24000, jobs=1)
    assert out["train"]["clips"] == 4 and out["valid"]["clips"] == 1
    rows = [json.loads(l) for l in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    want = sorted(1.5 + 0.5 * i for i in range(4))
    assert sorted(r["duration"] for r in rows) == pytest.approx(want, abs=0.01)
    y, sr = sf.read(tmp_path / "data" / rows[0]["path"])
    assert sr == 24000 and np.abs(y).max() > 0.05  # decoded audio, not silence
    v = json.loads((tmp_path / "data" / "valid.jsonl").read_text())
    x, _ = sf.read(tmp_path / "data" / v["path"], dtype="float32")
    ref = _voiced(1.2, 150)
    assert np.abs(x - ref).max() < 1e-3  # FLAC, 16 bit: the validation references are not Opus-coded


def test_pack_stops_at_the_budget_and_refuses_a_budget_too_small(tmp_path):
    train, valid = _corpus(tmp_path, n_train=6)
    full = pack_mod.pack(train, valid, tmp_path / "full", budget_mib=1.0, wheels=False, jobs=1)
    valid_bytes = sum(f.stat().st_size for f in (tmp_path / "full" / "valid").iterdir())
    train_bytes = sorted(f.stat().st_size for f in (tmp_path / "full" / "train").iterdir())
    budget = (valid_bytes + 3000 + sum(train_bytes) // 2) / 2 ** 20
    part = pack_mod.pack(train, valid, tmp_path / "part", budget_mib=budget, wheels=False, jobs=1)
    assert 0 < part["train_clips"] < full["train_clips"]
    listed = {json.loads(l)["path"] for l in (tmp_path / "part" / "train.jsonl").read_text().splitlines()}
    assert {f"train/{f.name}" for f in (tmp_path / "part" / "train").iterdir()} == listed  # no stray files
    with pytest.raises(SystemExit, match="already take .* MiB of the 0.0001 MiB budget; raise --budget-mib"):
        pack_mod.pack(train, valid, tmp_path / "tiny", budget_mib=0.0001, wheels=False, jobs=1)
    with pytest.raises(SystemExit, match="exists and is not empty"):
        pack_mod.pack(train, valid, tmp_path / "full", budget_mib=1.0, wheels=False, jobs=1)


def test_device_driver_trains_in_its_time_box_and_returns_a_half_model(tmp_path):
    train, valid = _corpus(tmp_path)
    pack_mod.pack(train, valid, tmp_path / "pack", budget_mib=1.0, wheels=False, jobs=1)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "recipes" / "gpu" / "run.py"), "--pack", str(tmp_path / "pack"),
           "--out", str(out), "--work", str(tmp_path / "work"), "--minutes", "0.2", "--probe-steps", "2",
           "--reserve-s", "0", "train.device=cpu", "data.batch_size=2", "data.num_workers=0", "data.valid_items=1",
           "train.valid_nq=[8]", "train.threads=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((out / "run.json").read_text())
    assert summary["steps"] >= 1 and summary["batch"] == 2 and summary["pack"]["train_clips"] == 4
    assert "steps/s" in r.stdout and f"-> {summary['steps']} steps" in r.stdout
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == summary["steps"]  # the schedule was sized to the box and ran to its end
    # the shipped model's float16 weights (45 MB) come back in parts within the device tool's 16 MiB per file
    files = sorted((out / "model").iterdir())
    assert [f.name for f in files] == summary["model_files"] and not (out / "model" / "model.safetensors").exists()
    assert all(f.stat().st_size <= 16 * 2 ** 20 for f in files)
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8  # the device tool hands back at most 8 files
    j = subprocess.run([sys.executable, str(REPO / "recipes" / "gpu" / "parts.py"), "join", str(out / "model")],
                       capture_output=True, text=True, cwd=REPO)
    assert j.returncode == 0, j.stderr
    assert f"sha256 {summary['weights_sha256']}" in j.stdout
    from safetensors import safe_open

    with safe_open(str(out / "model" / "model.safetensors"), "pt") as h:
        dtypes = {h.get_tensor(k).dtype for k in h.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    m = codec.load(out / "model")
    assert next(m.parameters()).dtype == torch.float32


def test_export_half_halves_the_file_and_decodes_like_the_float32_model(tmp_path):
    m = codec.CodecModel(codec.CodecConfig.preset("tiny")).eval()
    codec.save_pretrained(m, tmp_path / "f32")
    codec.save_pretrained(m, tmp_path / "f16", half=True)
    a, b = (tmp_path / d / "model.safetensors" for d in ("f32", "f16"))
    assert b.stat().st_size < 0.6 * a.stat().st_size
    m16 = codec.load(tmp_path / "f16")
    x = torch.from_numpy(_voiced(0.5, 140, m.config.sample_rate))[None, None]
    with torch.no_grad():
        codes = m.encode(x)
        y32, y16 = m.decode(codes), m16.decode(codes)
    assert (y32 - y16).abs().max() < 2e-2 * y32.abs().max()


def test_parts_split_and_join_restore_the_file_byte_for_byte(tmp_path):
    data = np.random.default_rng(0).bytes(10_000)
    f = tmp_path / "w.bin"
    f.write_bytes(data)
    assert parts_mod.split(f, 20_000) == [f] and f.read_bytes() == data  # within the limit: left alone
    parts = parts_mod.split(f, 3_000)
    assert [p.name for p in parts] == [f"w.bin.part{k}-of-4" for k in range(1, 5)] and not f.exists()
    assert [p.stat().st_size for p in parts] == [3000, 3000, 3000, 1000]
    assert parts_mod.join(tmp_path) == {"w.bin": parts_mod.sha256(f)}
    assert f.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]


def test_parts_join_refuses_an_incomplete_set_and_writes_nothing(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 100)
    parts = parts_mod.split(f, 40)
    parts[1].unlink()
    with pytest.raises(SystemExit, match=r"w.bin: its parts are incomplete \(have \[1, 3\], counts \[3\]\); "
                                         "copy all of them back first."):
        parts_mod.join(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin.part1-of-3", "w.bin.part3-of-3"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no parts"):
        parts_mod.join(tmp_path / "empty")


def test_pack_budget_defaults_to_what_the_repository_leaves_of_the_travel_limit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("gpu-pack/\n")
    (repo / "tracked.bin").write_bytes(b"t" * 2 ** 20)
    subprocess.run(["git", "add", "tracked.bin", ".gitignore"], cwd=repo, check=True)
    (repo / "untracked.bin").write_bytes(b"u" * 2 ** 19)   # travels: not ignored
    (repo / "gpu-pack").mkdir()
    (repo / "gpu-pack" / "big.opus").write_bytes(b"p" * 10 * 2 ** 20)  # ignored: stays behind
    assert pack_mod.travelling_bytes(repo) == 2 ** 20 + 2 ** 19 + len("gpu-pack/\n")
    assert pack_mod.default_budget_mib(4.0, repo) == pytest.approx(4.0 - 1.0 - 1.5, abs=0.01)
    with pytest.raises(SystemExit, match="the repository's own files already take 1.5 MiB of the 2 MiB that may "
                                         "travel; nothing is left for a pack."):
        pack_mod.default_budget_mib(2.0, repo)
