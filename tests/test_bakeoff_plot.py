"""recipes/bakeoff/plot.py: learning curves from validation records, at one or several numbers of levels."""
from __future__ import annotations

import json
from pathlib import Path

from recipe_modules import load_recipe


def _plot_module():
    return load_recipe("bakeoff/plot.py", "bakeoff_plot")


def _records(path: Path) -> Path:
    rows = [{"step": 0, "kind": "valid", "cpu_hours": 0.0, "pesq/nq8": 1.5, "stoi/nq8": 0.80, "mel/nq8": 1.4,
             "pesq/nq32": 2.0, "stoi/nq32": 0.85, "mel/nq32": 1.2},
            {"step": 25, "kind": "train", "mel": 1.3},
            {"step": 500, "kind": "valid", "cpu_hours": 0.5, "pesq/nq8": 1.6, "stoi/nq8": 0.81, "mel/nq8": 1.35,
             "pesq/nq32": 2.2, "stoi/nq32": 0.87, "mel/nq32": 1.1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curves_read_the_valid_records_at_the_asked_level_count(tmp_path):
    plot = _plot_module()
    rec = _records(tmp_path / "run.jsonl")
    assert plot.curves(rec) == [(0.0, 0, 1.5, 0.80, 1.4), (0.5, 500, 1.6, 0.81, 1.35)]
    assert plot.curves(rec, 32) == [(0.0, 0, 2.0, 0.85, 1.2), (0.5, 500, 2.2, 0.87, 1.1)]


def test_plot_rows_per_nq_with_shifted_hours(tmp_path, capsys):
    plot = _plot_module()
    rec = _records(tmp_path / "run.jsonl")
    out = tmp_path / "curves.png"
    assert plot.main([str(out), "--nq", "8,32", f"A={rec}+2.5"]) == 0
    assert out.stat().st_size > 0
    table = capsys.readouterr().out
    assert "| A | 500 | 3.000 | 1.600 | 0.810 | 1.350 |" in table   # nq 8, shifted by 2.5 CPU-hours
    assert "| A | 500 | 3.000 | 2.200 | 0.870 | 1.100 |" in table   # nq 32
    assert "PESQ-WB nq32" in table


def test_plot_refuses_bad_arguments(tmp_path, capsys):
    plot = _plot_module()
    assert plot.main([str(tmp_path / "x.png"), "--nq", "eight", "A=run"]) == 2
    assert plot.main([str(tmp_path / "x.png"), "run-without-name"]) == 2
    assert "plot.py OUT.png" in capsys.readouterr().err
