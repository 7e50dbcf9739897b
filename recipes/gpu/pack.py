"""Pack the training corpus small enough to travel with the code to a borrowed GPU machine, and unpack it there.

    python recipes/gpu/pack.py pack $CODEC_DATA/train_24k.jsonl $CODEC_DATA/valid_eval.jsonl gpu-pack \
        [--kbps 16] [--budget-mib MIB | --travel-mib 64] [--no-wheels]
    python recipes/gpu/pack.py unpack gpu-pack /tmp/gpu-data [--sample-rate 24000] [--jobs N]

``pack`` encodes training clips (shuffled, seed 0) as Ogg Opus at ``--kbps`` until ``--budget-mib`` is spent (by
default, what is left of ``--travel-mib`` after the repository's own files that travel with it, less 1 MiB: the
device tool sends at most 64 MiB in all, and the shipped model's weights alone are about 50 MB of that),
keeps the validation clips lossless (FLAC), and downloads the wheels the GPU image lacks (soundfile, soxr,
librosa and what they need; ``pip download`` needs the network). Layout of the pack::

    pack.json        what is inside (kbps, hours, sizes)
    train/*.opus     train.jsonl lists them (path relative to the pack, duration, speaker)
    valid/*.flac     valid.jsonl
    wheels/*.whl

``unpack`` decodes the Opus files to 16-bit wav at ``--sample-rate`` (all cores) and writes ``train.jsonl`` /
``valid.jsonl`` manifests beside them, which ``codec train`` reads as ``data.train`` / ``data.valid``.
Training audio is lossy (Opus at 16 kbps is close to transparent for wideband speech, not for music); the
validation audio is not. The pack folder is git-ignored (``gpu-pack/``): a tool that copies the working tree
to the GPU machine must be told to take it along (with this project's device tool: ``carry: ["gpu-pack"]``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: wheels the GPU image (torch, numpy, scipy, pyyaml, safetensors, tqdm, numba, scikit-learn... already there)
#: lacks for `codec train`; pinned so that the device runs what was tested here.
WHEELS = ("soundfile==0.13.1", "cffi==2.1.1", "pycparser==3.12", "soxr==1.1.0", "librosa==0.11.0",
          "audioread==3.1.0", "decorator==5.3.1", "pooch==1.9.0", "platformdirs==4.14.9", "pystoi==0.4.1")
#: the device's Python (the image's python3)
DEVICE_PYTHON = "3.12"


def _write_manifest(path: Path, rows: Sequence[Dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _encode_one(job: Tuple[str, str, float]) -> int:
    """Opus-encode one clip (``src`` wav/flac -> ``dst``); returns the file's size in bytes."""
    from codec.audio import load_audio, save_audio
    from codec.eval.baselines import opus_encode

    src, dst, kbps = job
    x, sr = load_audio(src)
    with tempfile.TemporaryDirectory() as td:
        wav = os.path.join(td, "in.wav")
        save_audio(wav, x.mean(axis=0), sr, subtype="PCM_16")
        opus_encode(wav, dst, kbps)
    return os.path.getsize(dst)


def _download_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    plats = [f"--platform=manylinux_2_{n}_x86_64" for n in (28, 27, 17)] + ["--platform=manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation",
           "cp", "--python-version", DEVICE_PYTHON, *plats, "-d", str(dest), *WHEELS]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pack: pip download failed (is the network reachable?): {r.stderr.strip()[-300:]}")


def _kept(item: Dict, path: str) -> Dict:
    """The manifest fields a pack keeps for one clip, with its path inside the pack."""
    return {**{k: v for k, v in item.items() if k in ("duration", "speaker", "id")}, "path": path}


@contextmanager
def _mapper(jobs: int) -> Iterator[Callable[[Callable, Sequence], List]]:
    """A ``map(fn, jobs_list) -> list`` over ``jobs`` worker processes (0: one per core; 1: in this process),
    with one pool for the whole ``with`` block."""
    if jobs == 1:
        yield lambda fn, jobs_list: [fn(j) for j in jobs_list]
        return
    with ProcessPoolExecutor(max_workers=jobs or None) as ex:
        yield lambda fn, jobs_list: list(ex.map(fn, jobs_list, chunksize=8))


def _tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def travelling_bytes(repo: Path = REPO) -> int:
    """Bytes of the files a copy of ``repo``'s working tree takes along: tracked files, and untracked ones that
    git does not ignore (what this project's device tool sends; an ignored pack folder is not among them)."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                       capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"pack: cannot list the files of {repo} (git ls-files failed); give --budget-mib.")
    files = {repo / name for name in r.stdout.decode().split("\0") if name}
    return sum(f.stat().st_size for f in files if f.is_file())


def default_budget_mib(travel_mib: float = 64.0, repo: Path = REPO) -> float:
    """The pack budget that keeps the pack and ``repo``'s travelling files within ``travel_mib`` (1 MiB spare)."""
    own_mib = travelling_bytes(repo) / 2 ** 20
    budget = travel_mib - 1.0 - own_mib
    if budget <= 0:
        raise SystemExit(f"pack: the repository's own files already take {own_mib:.1f} MiB "
                         f"of the {travel_mib:g} MiB that may travel; nothing is left for a pack.")
    return round(budget, 2)


def pack(train: Path, valid: Path, out: Path, kbps: float = 16.0, budget_mib: float | None = None,
         wheels: bool = True, jobs: int = 0, seed: int = 0, travel_mib: float = 64.0) -> Dict:
    """Build the pack in ``out`` (see the module docstring); returns the ``pack.json`` record.
    ``budget_mib=None`` takes :func:`default_budget_mib` of ``travel_mib``."""
    from codec.audio import load_audio, save_audio
    from codec.train.data import read_items

    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"pack: '{out}' exists and is not empty; remove it or pick another folder.")
    items, valid_items = read_items(train), read_items(valid)  # refused before anything is written
    if budget_mib is None:
        budget_mib = default_budget_mib(travel_mib)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "valid").mkdir(exist_ok=True)
    vrows = []
    for i, it in enumerate(valid_items):
        x, sr = load_audio(it["path"])
        name = f"valid/{i:04d}.flac"
        save_audio(out / name, x.mean(axis=0), sr, subtype="PCM_16")
        vrows.append(_kept(it, name))
    _write_manifest(out / "valid.jsonl", vrows)
    if wheels:
        _download_wheels(out / "wheels")
    budget = int(budget_mib * 2 ** 20) - _tree_bytes(out)
    if budget <= 0:
        raise SystemExit(f"pack: the validation clips and wheels already take {_tree_bytes(out) / 2 ** 20:.1f} MiB "
                         f"of the {budget_mib:g} MiB budget; raise --budget-mib.")
    random.Random(seed).shuffle(items)
    rows, used, full = [], 0, False
    chunk = max(1, jobs or os.cpu_count() or 1) * 16
    with _mapper(jobs) as run:
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            names = [f"train/{start + j:05d}.opus" for j in range(len(part))]
            sizes = run(_encode_one, [(it["path"], str(out / n), kbps) for it, n in zip(part, names)])
            for it, name, size in zip(part, names, sizes):
                full = full or used + size > budget
                if full:  # the budget is spent: this clip and every later one stay out
                    (out / name).unlink()
                    continue
                used += size
                rows.append(_kept(it, name))
            if full:
                break
    if not rows:
        raise SystemExit(f"pack: not one training clip fits in {budget_mib:g} MiB; raise --budget-mib.")
    _write_manifest(out / "train.jsonl", rows)
    hours = sum(float(r.get("duration", 0.0)) for r in rows) / 3600
    info = {"kbps": kbps, "train_clips": len(rows), "train_hours": round(hours, 3), "of_clips": len(items),
            "valid_clips": len(vrows), "bytes": _tree_bytes(out), "budget_mib": budget_mib}
    (out / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _decode_one(job: Tuple[str, str, int]) -> float:
    """Decode one packed clip to 16-bit wav at the target rate; returns its duration in seconds."""
    from codec.audio import load_audio, resample, save_audio

    src, dst, sr_out = job
    x, sr = load_audio(src)
    y = resample(x.mean(axis=0), sr, sr_out)
    save_audio(dst, y, sr_out, subtype="PCM_16")
    return len(y) / sr_out


def unpack(pack_dir: Path, out: Path, sample_rate: int = 24000, jobs: int = 0) -> Dict:
    """Decode ``pack_dir`` into ``out`` (wav files + ``train.jsonl`` / ``valid.jsonl``); returns counts."""
    from codec.train.data import read_items

    out.mkdir(parents=True, exist_ok=True)
    result = {}
    with _mapper(jobs) as run:
        for split in ("train", "valid"):
            rows = read_items(pack_dir / f"{split}.jsonl")
            (out / split).mkdir(exist_ok=True)
            dsts = [str(out / split / (Path(r["path"]).stem + ".wav")) for r in rows]
            durs = run(_decode_one, [(r["path"], d, sample_rate) for r, d in zip(rows, dsts)])
            new = [dict(r, path=os.path.relpath(d, out), duration=round(t, 4), sample_rate=sample_rate)
                   for r, d, t in zip(rows, dsts, durs)]
            _write_manifest(out / f"{split}.jsonl", new)
            result[split] = {"clips": len(new), "hours": round(sum(durs) / 3600, 3)}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="build the pack")
    a.add_argument("train", type=Path)
    a.add_argument("valid", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--kbps", type=float, default=16.0)
    a.add_argument("--budget-mib", type=float, default=None,
                   help="the pack's size; default: what --travel-mib leaves beside the repository's own files")
    a.add_argument("--travel-mib", type=float, default=64.0, help="what may travel in all (the device tool: 64)")
    a.add_argument("--no-wheels", action="store_true")
    a.add_argument("--jobs", type=int, default=0)
    b = sub.add_parser("unpack", help="decode a pack to wav + manifests")
    b.add_argument("pack", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--sample-rate", type=int, default=24000)
    b.add_argument("--jobs", type=int, default=0)
    args = p.parse_args(argv)
    from codec.errors import CodecError

    try:
        if args.cmd == "pack":
            info = pack(args.train, args.valid, args.out, args.kbps, args.budget_mib, not args.no_wheels, args.jobs,
                        travel_mib=args.travel_mib)
        else:
            info = unpack(args.pack, args.out, args.sample_rate, args.jobs)
    except CodecError as exc:
        print(f"pack: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
