"""Train on a borrowed GPU inside a fixed time box, then hand the model back (run this on the GPU machine).

    python3 recipes/gpu/run.py --pack gpu-pack --out $OUT [--minutes 7] [--recipe recipes/speech-24k-gpu.yaml]
        [section.key=value ...]

1. installs the pack's wheels into ``WORK/site`` (the GPU image has torch but not soundfile / soxr / librosa);
2. unpacks the pack (``recipes/gpu/pack.py unpack``) into ``WORK/data`` and points ``CODEC_DATA`` at it;
3. trains ``--probe-steps`` steps to measure the step rate on this machine;
4. sets ``train.steps`` and ``optim.decay_steps`` so that the cosine schedule ends when ``--minutes`` (counted
   from the start of this script) are spent, less ``--reserve-s`` for the export, and trains (``train.max_hours``
   is a backstop);
5. exports the best checkpoint to ``OUT/model`` (float16 safetensors: 45 MB for the shipped model's size), splits
   any file there over ``--max-file-mib`` into parts (``recipes/gpu/parts.py``; the device tool hands back files of
   at most 16 MiB), and copies ``metrics.jsonl`` and a ``run.json`` summary (with the weights' SHA-256) to ``OUT``.
   Back here, ``python recipes/gpu/parts.py join OUT/model`` restores the weights before ``codec.load``.

Everything after the options is passed to ``codec train`` as overrides (e.g. ``model.init_from=null`` to train
from scratch, ``data.batch_size=256``). On CPU the same script runs with ``train.device=cpu`` and small settings,
which is how the tests check it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from parts import MIB, sha256, split  # recipes/gpu/parts.py, beside this script

REPO = Path(__file__).resolve().parents[2]


def _sh(cmd: List[str], env: Dict[str, str], what: str) -> None:
    print(f"[gpu-run] {what}: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"[gpu-run] {what} failed (exit {r.returncode}).")


def _install_wheels(pack: Path, site: Path, env: Dict[str, str]) -> None:
    wheels = sorted((pack / "wheels").glob("*.whl")) if (pack / "wheels").is_dir() else []
    if wheels:
        _sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
             "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)], env, "install wheels")


def _last_rate(metrics: Path) -> float:
    """Audio seconds per second of the last training record in a run's ``metrics.jsonl``."""
    rates = [json.loads(l).get("audio_s_per_s") for l in metrics.read_text().splitlines() if l.strip()]
    rates = [r for r in rates if r]
    if not rates:
        raise SystemExit(f"[gpu-run] the probe wrote no training record to {metrics}.")
    return float(rates[-1])


def _crop_batch(run_dir: Path) -> Tuple[int, float]:
    """``(data.batch_size, data.crop_seconds)`` of a run, from the merged config ``codec train`` saved in it."""
    import yaml

    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    return int(data["batch_size"]), float(data["crop_seconds"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", type=Path, required=True, help="the folder recipes/gpu/pack.py wrote")
    p.add_argument("--out", type=Path, required=True, help="where the model and logs go ($OUT on the device)")
    p.add_argument("--minutes", type=float, default=7.0, help="time box, from the start of this script")
    p.add_argument("--recipe", type=Path, default=REPO / "recipes" / "speech-24k-gpu.yaml")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-run"))
    p.add_argument("--probe-steps", type=int, default=50)
    p.add_argument("--reserve-s", type=float, default=45.0, help="seconds kept for validation and the export")
    p.add_argument("--max-file-mib", type=float, default=16.0,
                   help="split exported files larger than this into parts (the device tool's per-file limit)")
    args, overrides = p.parse_known_args(argv)
    t0 = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    site = args.work / "site"
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    _install_wheels(args.pack, site, env)
    data = args.work / "data"
    _sh([sys.executable, str(REPO / "recipes" / "gpu" / "pack.py"), "unpack", str(args.pack), str(data)], env,
        "unpack")
    env["CODEC_DATA"] = str(data)
    train = [sys.executable, "-m", "codec.train", str(args.recipe)]
    probe = args.work / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    log_every = max(1, min(25, args.probe_steps // 2))
    _sh(train + [*overrides, f"train.steps={args.probe_steps}", f"optim.decay_steps={args.probe_steps}",
                 "train.valid_interval=0", f"train.ckpt_interval={args.probe_steps}", f"train.log_interval={log_every}",
                 f"train.out_dir={probe}"], env, "probe")
    rate = _last_rate(probe / "metrics.jsonl")
    batch, crop = _crop_batch(probe)
    steps_per_s = rate / (batch * crop)
    left = args.minutes * 60 - (time.time() - t0) - args.reserve_s
    steps = max(1, int(left * steps_per_s))
    print(f"[gpu-run] probe: {rate:.0f} audio-s/s = {steps_per_s:.2f} steps/s; {left:.0f} s left -> {steps} steps",
          flush=True)
    run = args.work / "run"
    shutil.rmtree(run, ignore_errors=True)
    _sh(train + [*overrides, f"train.steps={steps}", f"optim.decay_steps={steps}", f"train.out_dir={run}",
                 f"train.max_hours={(left + args.reserve_s / 2) / 3600:.4f}"], env, "train")
    model_dir = args.out / "model"
    _sh([sys.executable, "-m", "codec.train.export", str(run), str(model_dir), "--half"], env, "export")
    weights_sha256 = sha256(model_dir / "model.safetensors")
    for f in sorted(model_dir.iterdir()):
        parts = split(f, int(args.max_file_mib * MIB))
        if len(parts) > 1:
            print(f"[gpu-run] {f.name} split into {len(parts)} parts of at most {args.max_file_mib:g} MiB; back "
                  f"here: python recipes/gpu/parts.py join {model_dir}", flush=True)
    shutil.copy2(run / "metrics.jsonl", args.out / "metrics.jsonl")
    summary = {"probe_audio_s_per_s": rate, "steps": steps, "batch": batch, "crop_seconds": crop,
               "minutes": args.minutes, "wall_s": round(time.time() - t0, 1), "overrides": list(overrides),
               "weights_sha256": weights_sha256, "model_files": sorted(f.name for f in model_dir.iterdir()),
               "pack": json.loads((args.pack / "pack.json").read_text()) if (args.pack / "pack.json").is_file() else None}
    (args.out / "run.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[gpu-run] done in {summary['wall_s']} s: {args.out / 'model'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
