"""Paired comparison of two ``codec eval`` runs on the same files (``codec eval ... --against OLD``).

Two models scored on the same clips differ by less than the 95 % intervals of either mean long before the
difference stops being real: the clips vary far more among themselves than a model step moves them.  A paired
test looks at each clip's change instead.  For every system both runs scored (matched by name, e.g.
``ours nq=8``) and every metric both recorded, over the files both scored (matched by path), this module
reports the two means, the mean change, how many clips got better / worse, the two-sided Wilcoxon
signed-rank p-value of the per-clip changes (:func:`scipy.stats.wilcoxon`) and the clip that moved most
against the new run, so that one outlier (PESQ is known to flip on single clips) is seen for what it is.

"Better" follows each metric's direction (:data:`codec.eval.harness.METRICS`: lower is better for the mel
distance).  Clips where either run has no finite value are left out of that row.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Union

import numpy as np

from codec.errors import CodecError

__all__ = ["load_results", "check_overlap", "compare", "format_comparison"]

RESULTS_NAME = "results.json"


def load_results(path: Union[str, os.PathLike]) -> Dict[str, object]:
    """The record of an earlier ``codec eval --out DIR`` run: ``DIR`` or ``DIR/results.json``.

    Raises:
        CodecError: the path holds no results file, or the file is not one ``codec eval`` wrote.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, RESULTS_NAME)
    if not os.path.isfile(p):
        raise CodecError(f"'{p}' does not exist: give a results.json written by 'codec eval --out DIR' "
                         "(or that DIR).")
    try:
        with open(p, encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodecError(f"'{p}' is not a results file of 'codec eval' ({type(e).__name__}).") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("files"), list) or not isinstance(rec.get("systems"), list):
        raise CodecError(f"'{p}' is not a results file of 'codec eval' (no 'files' and 'systems' lists).")
    return rec


def _higher_is_better(metric: str) -> bool:
    from codec.eval.harness import METRICS

    return METRICS[metric][1] if metric in METRICS else True


def _wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired changes (1.0 when every change is zero, nan for none)."""
    import scipy.stats

    if diffs.size == 0:
        return float("nan")
    if not np.any(diffs != 0):
        return 1.0
    return float(scipy.stats.wilcoxon(diffs).pvalue)


def _row(system: str, metric: str, files: List[str], old: List[float], new: List[float]) -> Dict[str, object]:
    a, b = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    kept = [f for f, k in zip(files, ok) if k]
    sign = 1.0 if _higher_is_better(metric) else -1.0
    gain = sign * (b - a)  # > 0: the new run is better on that clip
    row: Dict[str, object] = {
        "system": system, "metric": metric, "n": int(a.size),
        "old": float(a.mean()) if a.size else float("nan"),
        "new": float(b.mean()) if b.size else float("nan"),
        "diff": float((b - a).mean()) if a.size else float("nan"),
        "better": int((gain > 0).sum()), "worse": int((gain < 0).sum()),
        "p": _wilcoxon_p(b - a),
        "worst_file": None, "worst_diff": float("nan"),
    }
    if a.size and gain.min() < 0:
        i = int(gain.argmin())
        row["worst_file"], row["worst_diff"] = kept[i], float(b[i] - a[i])
    return row


def check_overlap(old: Dict[str, object], files: List[str]) -> List[str]:
    """The files of ``files`` that the ``old`` record scored too (in ``files``' order).

    Raises:
        CodecError: none of them.
    """
    seen = {str(f) for f in old["files"]}  # type: ignore[union-attr]
    common = [str(f) for f in files if str(f) in seen]
    if not common:
        raise CodecError("the two runs share no file: compare runs made on the same input.")
    return common


def _level_name(level: Optional[float]) -> str:
    return "as recorded" if level is None else f"at {level:g} dBFS"


def check_level(old: Dict[str, object], level_db: Optional[float]) -> None:
    """Refuse to pair ``old`` with a run that scored its input at another ``--level-db`` (None: as recorded).

    Raises:
        CodecError: the levels differ.
    """
    before = old.get("level_db")
    before = None if before is None else float(before)  # type: ignore[arg-type]
    now = None if level_db is None else float(level_db)
    if before != now:
        raise CodecError(f"the two runs scored their input at different levels ({_level_name(before)} and "
                         f"{_level_name(now)}): compare runs made with the same --level-db.")


def compare(old: Dict[str, object], new: Dict[str, object], metrics: Optional[List[str]] = None) -> Dict[str, object]:
    """Paired per-clip comparison of two ``codec eval`` records (as :func:`load_results` or ``evaluate`` give).

    Args:
        old, new: the two records; ``new`` is the run being judged.
        metrics: columns to compare (default: every column both runs recorded, in ``new``'s order).
    Returns:
        ``{"old", "new" (model names), "files" (clips in common), "only_old", "only_new" (clip counts),
        "rows": [{"system", "metric", "n", "old", "new", "diff", "better", "worse", "p", "worst_file",
        "worst_diff"}]}`` with one row per common system and metric, in ``new``'s system order.
    Raises:
        CodecError: the runs share no file, no system or no metric, or scored their input at different levels.
    """
    check_level(old, new.get("level_db"))  # type: ignore[arg-type]
    old_files, new_files = [str(f) for f in old["files"]], [str(f) for f in new["files"]]  # type: ignore[union-attr]
    old_at = {f: i for i, f in enumerate(old_files)}
    common = check_overlap(old, new_files)
    new_at = {f: i for i, f in enumerate(new_files)}
    old_sys = {str(s["name"]): s for s in old["systems"]}  # type: ignore[union-attr,index]
    pairs = [(s, old_sys[str(s["name"])]) for s in new["systems"] if str(s["name"]) in old_sys]  # type: ignore
    if not pairs:
        raise CodecError("the two runs share no system (e.g. 'ours nq=8'): compare runs of the same systems.")
    cols = [str(m) for m in (metrics if metrics is not None else new["metrics"])]  # type: ignore[union-attr]
    cols = [m for m in cols if m in set(map(str, old["metrics"]))]  # type: ignore[arg-type]
    if not cols:
        raise CodecError("the two runs share no metric: compare runs scored with the same --metrics.")
    rows = []
    for s_new, s_old in pairs:
        for m in cols:
            pn, po = s_new["per_file"].get(m), s_old["per_file"].get(m)  # type: ignore[union-attr]
            if pn is None or po is None:
                continue
            rows.append(_row(str(s_new["name"]), m, common, [po[old_at[f]] for f in common],
                             [pn[new_at[f]] for f in common]))
    return {"old": old.get("model"), "new": new.get("model"), "files": len(common),
            "only_old": len(old_files) - len(common), "only_new": len(new_files) - len(common), "rows": rows}


def _num(v: float, digits: int, signed: bool = False) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _p(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.2g}" if v < 0.01 else f"{v:.2f}"


def format_comparison(cmp: Dict[str, object]) -> str:
    """The comparison as a Markdown table (one row per system and metric) with a one-line header."""
    from codec.eval.harness import METRICS

    n = int(cmp["files"])  # type: ignore[arg-type]
    lines = [f"paired comparison on {n} clip{'s' if n != 1 else ''}: {cmp['new']} (new) against {cmp['old']} (old)"]
    if cmp["only_old"] or cmp["only_new"]:
        lines[0] += f"; left out: {cmp['only_old']} clips only in old, {cmp['only_new']} only in new"
    lines += ["", "| system | metric | old | new | change | clips better / worse | Wilcoxon p | largest setback |",
              "|---|---|---|---|---|---|---|---|"]
    for r in cmp["rows"]:  # type: ignore[union-attr]
        title, _, digits = METRICS.get(str(r["metric"]), (str(r["metric"]), True, 3))
        worst = "-" if r["worst_file"] is None else \
            f"{os.path.basename(str(r['worst_file']))} ({_num(r['worst_diff'], digits + 1, True)})"
        lines.append(f"| {r['system']} | {title} | {_num(r['old'], digits)} | {_num(r['new'], digits)} | "
                     f"{_num(r['diff'], digits + 1, True)} | {r['better']} / {r['worse']} of {r['n']} | {_p(r['p'])} | "
                     f"{worst} |")
    return "\n".join(lines)
