"""Learning curves of the bake-off runs: validation PESQ-WB and STOI at nq 8 against CPU-hours.

    python recipes/bakeoff/plot.py OUT.png NAME=RUN_DIR [NAME=RUN_DIR[+HOURS] ...]
    python recipes/bakeoff/plot.py OUT.png NAME=docs/curves/stage4.jsonl+7.3   # a kept copy of the records
    python recipes/bakeoff/plot.py OUT.png --nq 8,32 NAME=RUN_DIR   # one row of panels per number of levels

``+HOURS`` shifts a run's curve right by the CPU-hours spent before it (a run that continued another run's
model with ``model.init_from``). Reads each run's ``metrics.jsonl``, or a ``.jsonl`` file named directly (the
copies kept in ``docs/curves/``): the ``valid`` records written by ``codec train``, which carry ``cpu_hours`` and,
with the ``eval`` extras installed, ``pesq/nqN`` and ``stoi/nqN``. Prints the points as a Markdown table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def curves(run: Path, nq: int = 8):
    """-> list of (cpu_hours, step, pesq, stoi, mel) from a run's validation records (a run directory or a
    metrics ``.jsonl`` file)."""
    out = []
    path = run if run.suffix == ".jsonl" else run / "metrics.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "valid" and f"pesq/nq{nq}" in rec:
            out.append((rec["cpu_hours"], rec["step"], rec[f"pesq/nq{nq}"], rec[f"stoi/nq{nq}"], rec[f"mel/nq{nq}"]))
    return out


def _split_nq(argv):
    """``[OUT, (--nq N,M)?, NAME=RUN...]`` -> (OUT, [N, M], runs); None when the arguments do not parse."""
    nqs = [8]
    if len(argv) > 2 and argv[1] == "--nq":
        try:
            nqs = [int(n) for n in argv[2].split(",")]
        except ValueError:
            return None
        argv = argv[:1] + argv[3:]
    if len(argv) < 2 or any("=" not in a for a in argv[1:]) or not nqs:
        return None
    return argv[0], nqs, argv[1:]


def main(argv) -> int:
    parsed = _split_nq(argv)
    if parsed is None:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out, nqs, args = parsed
    runs = []  # (name, records, CPU-hours before the run)
    for arg in args:
        name, run = arg.split("=", 1)
        run, _, shift = run.partition("+")
        runs.append((name, Path(run), float(shift or 0)))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(nqs), 2, figsize=(10, 4 * len(nqs)), squeeze=False)
    for row, nq in zip(axes, nqs):
        print(f"| run | step | CPU-hours | PESQ-WB nq{nq} | STOI nq{nq} | mel nq{nq} |\n|---|---|---|---|---|---|")
        for name, run, shift in runs:
            pts = [(p[0] + shift, *p[1:]) for p in curves(run, nq)]
            if not pts:
                continue
            h = [p[0] for p in pts]
            row[0].plot(h, [p[2] for p in pts], marker="o", label=name)
            row[1].plot(h, [p[3] for p in pts], marker="o", label=name)
            for p in pts:
                print(f"| {name} | {p[1]} | {p[0]:.3f} | {p[2]:.3f} | {p[3]:.3f} | {p[4]:.3f} |")
        for ax, what in zip(row, ("PESQ-WB", "STOI")):
            ax.set_xlabel("CPU-hours (2 DDP processes x 1 thread)")
            ax.set_ylabel(f"{what} at nq {nq}")  # the records carry no bitrate: it depends on the model
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("Validation subset (the first data.valid_items held-out clips, <= 4 s) during training")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
