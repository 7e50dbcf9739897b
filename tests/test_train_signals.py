"""Training under signals sent to the whole process group (as ``timeout``, schedulers and a closed terminal do):
the DataLoader workers survive, the main process saves a checkpoint and stops cleanly (issue 15)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]


def _tones(folder: Path, n: int = 4, sr: int = 16000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t = np.arange(int(sr * (0.4 + 0.2 * i))) / sr
        x = 0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.01 * np.random.default_rng(i).standard_normal(t.size)
        sf.write(folder / f"t{i}.wav", x.astype(np.float32), sr)
    return folder


@pytest.mark.parametrize("sig", ["SIGTERM"])
def test_signal_to_the_process_group_saves_and_stops(tmp_path, sig):
    wavs = _tones(tmp_path / "wavs")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "codec.train", str(REPO / "recipes" / "tiny-cpu.yaml"),
           f"data.train={wavs}", f"data.valid={wavs}", f"train.out_dir={out}", "train.steps=100000",
           "data.num_workers=1", "data.batch_size=2", "data.crop_seconds=0.25", "data.valid_items=1",
           "train.valid_interval=0", "train.ckpt_interval=100000", "train.log_interval=1", "train.progress=false",
           "train.tensorboard=false", "train.threads=1", "adversarial.start_step=100000"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # a new session: the signal goes to the trainer and its DataLoader worker, like `kill -TERM -PGID`
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        metrics = out / "metrics.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, getattr(signal, sig))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped: signal" in err and "Traceback" not in err and "killed by signal" not in err, err
    ckpts = sorted(out.glob("ckpt_*.pt"))
    assert ckpts, err
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)  # plain tensors and containers only
    assert int(state["step"]) >= 2
