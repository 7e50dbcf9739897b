"""`codec eval`: objective evaluation of a codec model (per number of quantizers) and classical baselines.

For every input file the model encodes once with the largest requested ``nq`` and decodes the first
``nq`` codebooks for each requested ``nq`` (residual quantization: the first levels of a deeper encoding are
the shallower encoding). Baselines (Opus, AMR-WB, Codec2; see :mod:`codec.eval.baselines`) run on the same reference.
Metrics per file: PESQ-WB, STOI, multi-scale log-mel distance, SI-SDR, DNSMOS (SIG/BAK/OVRL) and bitrate by
default; opt-in DistillMOS, speaker similarity (Resemblyzer) and ViSQOL; reported as means with 95 % Student-t
confidence intervals over files. The non-intrusive MOS predictors also score the references (the "reference" row).

Rates: the model (or ``--sample-rate``) rate is the evaluation rate; the mel distance and SI-SDR score there.
The fixed-rate metrics (PESQ-WB, DNSMOS, DistillMOS, speaker similarity and ViSQOL at 16 kHz, STOI at 10 kHz; see
:data:`codec.eval.metrics.METRIC_RATES`) take the reference resampled from the file's own rate, never through a
lower model rate, and the decoded audio resampled from the model rate: an 8 kHz system is scored against the
full-band 16 kHz reference. ``results.json`` records each metric's rate under ``"metric_rates"``.

Outputs: a table on stdout; with ``--out DIR``: ``results.json`` (summaries and per-file values), the same table
as ``results.md`` (Markdown) and ``results.csv``, ``metrics_vs_kbps.png`` and ``spectrogram_<k>.png`` (dBFS
colour bars) for the first few files.

ViSQOL (speech mode, MOS-LQO) is opt-in: ``--metrics pesq,stoi,mel,sisdr,visqol`` with the unofficial
pure-Python port ``visqol-python[lattice]`` installed (not part of any extra: it builds ``libsvm-official``
from source and pulls the TFLite runtime); the JSON records under ``"visqol"`` whether it was computed.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from codec.audio import find_files
from codec.errors import CodecError, OptionError

__all__ = ["evaluate", "add_arguments", "run", "list_inputs", "format_table", "format_markdown", "write_csv",
           "rate_note", "expand_metrics", "METRICS", "METRIC_GROUPS", "NON_INTRUSIVE", "DEFAULT_METRICS"]

#: metric column -> (column title, higher is better, decimals in the table)
METRICS: Dict[str, Tuple[str, bool, int]] = {
    "pesq": ("PESQ-WB", True, 2),
    "stoi": ("STOI", True, 3),
    "mel": ("mel-dist", False, 3),
    "sisdr": ("SI-SDR", True, 2),
    "dnsmos_sig": ("DNSMOS-SIG", True, 2),
    "dnsmos_bak": ("DNSMOS-BAK", True, 2),
    "dnsmos_ovrl": ("DNSMOS-OVRL", True, 2),
    "distillmos": ("DistillMOS", True, 2),
    "spk_sim": ("spk-sim", True, 3),
    "visqol": ("ViSQOL", True, 2),
}
#: ``--metrics`` names that stand for several columns
METRIC_GROUPS: Dict[str, Tuple[str, ...]] = {"dnsmos": ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")}
#: columns that score the decoded audio alone (the references get a row of their own)
NON_INTRUSIVE = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "distillmos")
#: metrics computed when none are named (DistillMOS, speaker similarity and ViSQOL are opt-in)
DEFAULT_METRICS: Tuple[str, ...] = ("pesq", "stoi", "mel", "sisdr", "dnsmos")
_CHOICES = ("pesq", "stoi", "mel", "sisdr", "dnsmos", "distillmos", "spk_sim", "visqol")
VISQOL_OFF = "not computed (opt-in: --metrics ...,visqol with visqol-python[lattice] installed)"
VISQOL_ON = "speech mode, visqol-python (unofficial port of ViSQOL v3) with the lattice mapping"


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def list_inputs(src: Union[str, Sequence[str]], max_files: Optional[int] = None) -> List[str]:
    """Resolve the evaluation inputs.

    Args:
        src: a directory (searched recursively for audio files), a ``.jsonl`` manifest (``path`` field;
            relative paths are resolved against the manifest's folder), a single audio file, or a list of files.
        max_files: keep only the first N (sorted order for directories, file order for manifests).
    """
    if isinstance(src, (list, tuple)):
        files = [str(s) for s in src]
    elif os.path.isdir(src):
        files = [str(f) for f in find_files(src)]
    elif os.path.isfile(src) and src.endswith((".jsonl", ".json")):
        files = []
        base = os.path.dirname(os.path.abspath(src))
        with open(src, encoding="utf-8") as f:
            for i, line in enumerate(f):
                line = line.strip()
                if not line:
                    continue
                try:
                    p = json.loads(line)["path"]
                except (ValueError, KeyError, TypeError):
                    raise CodecError(f"manifest '{src}' line {i + 1} is not a JSON object with a 'path'.") from None
                files.append(p if os.path.isabs(p) else os.path.join(base, p))
    elif os.path.exists(src):
        files = [src]
    else:
        raise CodecError(f"evaluation input '{src}' does not exist.")
    if max_files is not None and max_files > 0:
        files = files[:max_files]
    if not files:
        raise CodecError(f"no audio files found in '{src}'.")
    for p in files:
        if not os.path.isfile(p):
            raise CodecError(f"audio file '{p}' does not exist.")
    return files


def _references(path: str, sample_rate: int, rates: Sequence[int], level_db: Optional[float] = None
                ) -> Dict[int, np.ndarray]:
    """The file as mono float32 ``[T]`` at ``sample_rate`` and at each of ``rates``, each resampled (soxr) from
    the file's own rate: ``{rate: [T_rate]}``; first scaled to RMS ``level_db`` dBFS (peak at most 0.99) when
    given."""
    from codec.audio import load_audio, resample, rms_normalize, to_mono

    wav, sr = load_audio(path)
    mono = rms_normalize(to_mono(wav)[0], level_db, max_gain_db=math.inf)
    return {r: np.ascontiguousarray(resample(mono, int(sr), r), dtype=np.float32)
            for r in sorted({int(sample_rate), *map(int, rates)})}


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def expand_metrics(names: Sequence[str]) -> List[str]:
    """``--metrics`` names -> metric columns (``dnsmos`` -> SIG, BAK, OVRL), in order, without repeats.

    Raises:
        CodecError: an unknown name.
    """
    out: List[str] = []
    for n in names:
        cols = METRIC_GROUPS.get(n, (n,))
        if cols[0] not in METRICS:
            raise CodecError(f"unknown metric '{n}' (choose from {', '.join(_CHOICES)}).")
        out.extend(c for c in cols if c not in out)
    return out


def _package_key(column: str) -> str:
    """The metric behind a column (``dnsmos_ovrl`` -> ``dnsmos``)."""
    return next((g for g, cols in METRIC_GROUPS.items() if column in cols), column)


def _rate(column: str, sr: int) -> int:
    """The rate a column scores at: its fixed rate, else the evaluation rate ``sr``."""
    from codec.eval.metrics import METRIC_RATES

    return int(METRIC_RATES.get(_package_key(column), sr))


def _check_metrics(metrics: Sequence[str]) -> None:
    from codec.eval.metrics import OPTIONAL_PACKAGES, require

    for key in dict.fromkeys(_package_key(m) for m in metrics):
        if key in OPTIONAL_PACKAGES:
            require(key)


def _score(refs: Dict[int, np.ndarray], est: Optional[np.ndarray], sr: int,
           metrics: Sequence[str]) -> Dict[str, float]:
    """Score ``est [T]`` (at ``sr``) against the references ``{rate: [T_rate]}``; ``est=None`` scores the
    reference itself with the non-intrusive columns only."""
    from codec.audio import resample
    from codec.eval import metrics as M

    ests: Dict[int, np.ndarray] = {}
    if est is not None:
        ests = {r: (est if r == sr else resample(est, sr, r)) for r in {_rate(m, sr) for m in metrics}}
    else:
        metrics = [m for m in metrics if m in NON_INTRUSIVE]
    out: Dict[str, float] = {}
    for m in metrics:
        r = _rate(m, sr)
        ref = refs[r]
        e = ests.get(r, ref)
        if m.startswith("dnsmos_"):
            if "_dnsmos" not in out:
                out["_dnsmos"] = M.dnsmos(e, r)  # type: ignore[assignment]
            out[m] = out["_dnsmos"][m.split("_", 1)[1]]  # type: ignore[index]
            continue
        fns = {"pesq": lambda: M.pesq_wb(ref, e, r), "stoi": lambda: M.stoi(ref, e, r),
               "mel": lambda: M.multiscale_mel_distance(ref, e, r), "sisdr": lambda: M.si_sdr(ref, e),
               "visqol": lambda: M.visqol_speech(ref, e, r), "distillmos": lambda: M.distill_mos(e, r),
               "spk_sim": lambda: M.speaker_similarity(ref, e, r)}
        out[m] = fns[m]()
    out.pop("_dnsmos", None)
    return out


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


def _parse_int_list(s: Union[str, Sequence[int]]) -> List[int]:
    if isinstance(s, str):
        try:
            v = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise OptionError("nq", f"must be a comma-separated list of integers, not '{s}'.") from None
    else:
        v = [int(x) for x in s]
    if not v or any(x < 1 for x in v):
        raise OptionError("nq", f"values must be positive integers, not '{s if isinstance(s, str) else list(s)}'.")
    return sorted(set(v))


def _systems(nq_list: Sequence[int], ours_kbps: Sequence[float], base_list: Sequence[Tuple[str, str]],
             metrics: Sequence[str]) -> List[Dict[str, object]]:
    """One empty result record per system: the model at each nq, then each baseline setting."""
    systems: List[Dict[str, object]] = []
    for q, k in zip(nq_list, ours_kbps):
        systems.append({"name": f"ours nq={q}", "kind": "model", "nq": q, "nominal_kbps": k,
                        "per_file": {m: [] for m in list(metrics) + ["kbps"]}})
    for c, s in base_list:
        systems.append({"name": f"{c}@{s}", "kind": "baseline", "codec": c, "setting": s,
                        "per_file": {m: [] for m in list(metrics) + ["kbps"]}})
    return systems


def _score_system(sysd: Dict[str, object], refs: Dict[int, np.ndarray], outs: Dict[str, np.ndarray], sr: int,
                  metrics: Sequence[str]) -> None:
    """Score one system on one file and append to its ``per_file`` lists; a baseline is run here (its output
    joins ``outs``, for the spectrograms), the model's output is already in ``outs``."""
    from codec.eval import baselines as BL

    name = str(sysd["name"])
    if sysd["kind"] == "model":
        est, kb = outs[name], float(sysd["nominal_kbps"])  # type: ignore[arg-type]
    else:
        r = BL.run_baseline(str(sysd["codec"]), str(sysd["setting"]), refs[sr], sr)
        est, kb = r.audio, r.kbps
        sysd.setdefault("nominal_kbps", r.nominal_kbps)
        outs[name] = est
    sc = _score(refs, est, sr, metrics)
    pf = sysd["per_file"]
    for m in metrics:
        pf[m].append(sc[m])  # type: ignore[index]
    pf["kbps"].append(kb)  # type: ignore[index]


def _summarize(systems: List[Dict[str, object]], reference: Dict[str, object], ref_metrics: Sequence[str],
               metrics: Sequence[str], sr: int, files: Sequence[str], durations: Sequence[float],
               model_name: Optional[str]) -> Dict[str, object]:
    """Means and 95% intervals of every system's per-file scores -> the result record :func:`evaluate` returns."""
    from codec.eval.metrics import summarize

    for sysd in systems:
        pf = sysd["per_file"]  # type: ignore[assignment]
        sysd["metrics"] = {m: summarize(pf[m]) for m in metrics}  # type: ignore[index]
        sysd["kbps"] = float(np.mean(pf["kbps"]))  # type: ignore[index]
    reference["metrics"] = {m: summarize(v) for m, v in reference["per_file"].items()}  # type: ignore[union-attr]
    result: Dict[str, object] = {
        "model": model_name,
        "sample_rate": sr,
        "files": files,
        "durations": durations,
        "metrics": metrics,
        "metric_rates": {m: _rate(m, sr) for m in metrics},
        "systems": systems,
        "reference": reference if ref_metrics else {},
        "visqol": VISQOL_ON if "visqol" in metrics else VISQOL_OFF,
        "confidence": 0.95,
    }
    return result


def evaluate(inputs: Union[str, Sequence[str]], model: Optional[object] = None,
             nqs: Union[str, Sequence[int]] = (1, 2, 4, 8, 16, 32), baselines: str = "",
             out_dir: Optional[str] = None, max_files: Optional[int] = None, device: Optional[str] = None,
             sample_rate: Optional[int] = None, metrics: Sequence[str] = DEFAULT_METRICS,
             n_spectrograms: int = 3, verbose: bool = True, level_db: Optional[float] = None) -> Dict[str, object]:
    """Evaluate a codec model and/or classical baselines on reference audio.

    Args:
        inputs: directory, ``.jsonl`` manifest, audio file or list of files (see :func:`list_inputs`).
        model: a model directory / pretrained name (loaded with ``codec.load``) or a ``CodecModel``;
            ``None`` evaluates only the baselines.
        nqs: numbers of quantizers to evaluate (``"1,2,4"`` or ints); values above the model's
            ``num_quantizers`` raise CodecError.
        baselines: ``--baseline`` spec, e.g. ``"opus,amr-wb,codec2"`` or ``"opus@6+12"`` (see
            :func:`codec.eval.baselines.parse_baselines`); empty = none.
        out_dir: write ``results.json`` and PNG plots there.
        sample_rate: reference rate when no model is given (default 24000); otherwise the model's rate.
        metrics: names from ``pesq stoi mel sisdr dnsmos distillmos spk_sim visqol`` (``dnsmos`` = its SIG,
            BAK and OVRL columns, see :func:`expand_metrics`); default :data:`DEFAULT_METRICS`.
        level_db: scale every file to this RMS level in dBFS (peak at most 0.99) before coding and scoring,
            to measure how a codec copes with quiet or loud input; None (default): as recorded.
    Returns:
        ``{"files", "sample_rate", "metrics": [columns], "metric_rates": {column: Hz}, "systems": [{"name",
        "kind", "nq"|"codec"/"setting", "kbps", "nominal_kbps", "metrics": {column: {"mean", "ci95", "n"}},
        "per_file": {column: [..]}}], "reference": {"metrics", "per_file"} (non-intrusive columns of the
        references; empty without them), "visqol", "level_db", ...}``
    """
    from codec.eval import baselines as BL

    t0 = time.time()
    if level_db is not None and not (math.isfinite(float(level_db)) and float(level_db) <= 0):
        raise OptionError("level_db", f"must be a level at or below 0 dBFS, not {level_db:g}.")
    metrics = expand_metrics(list(metrics))
    _check_metrics(metrics)
    files = list_inputs(inputs, max_files)
    nq_list = _parse_int_list(nqs) if model is not None else []
    mdl, model_name = _load_eval_model(model, device, nq_list)
    sr = int(mdl.sample_rate) if mdl is not None else int(sample_rate or 24000)
    ours_kbps = [float(mdl.bitrate(q)) / 1000 for q in nq_list] if mdl is not None else []
    base_list = BL.parse_baselines(baselines, match_kbps=ours_kbps) if baselines else []
    for c in sorted({c for c, _ in base_list}):
        BL.check_available(c)
    if mdl is None and not base_list:
        raise OptionError("model", "and/or baselines.", lead="nothing to evaluate: give a ")

    systems = _systems(nq_list, ours_kbps, base_list, metrics)
    rates = [_rate(m, sr) for m in metrics]
    ref_metrics = [m for m in metrics if m in NON_INTRUSIVE]
    reference: Dict[str, object] = {"per_file": {m: [] for m in ref_metrics}}
    durations: List[float] = []
    spec_examples: List[Dict[str, object]] = []
    dev = next(mdl.parameters()).device if mdl is not None and any(True for _ in mdl.parameters()) else "cpu"
    for fi, path in enumerate(files):
        refs = _references(path, sr, rates, level_db)
        ref = refs[sr]
        if len(ref) < sr // 4:
            raise CodecError(f"'{path}' is shorter than 0.25 s, too short to evaluate.")
        durations.append(len(ref) / sr)
        outs = _decode_at_each_nq(mdl, ref, nq_list, dev) if mdl is not None else {}
        for sysd in systems:
            _score_system(sysd, refs, outs, sr, metrics)
        for m, v in _score(refs, None, sr, ref_metrics).items():
            reference["per_file"][m].append(v)  # type: ignore[index]
        if fi < n_spectrograms:
            spec_examples.append({"path": path, "ref": ref, "outs": outs})
        if verbose:
            print(f"[eval] {fi + 1}/{len(files)} {os.path.basename(path)} ({len(ref) / sr:.1f} s)", file=sys.stderr,
                  flush=True)
    result = _summarize(systems, reference, ref_metrics, metrics, sr, files, durations, model_name)
    result["level_db"] = None if level_db is None else float(level_db)
    result["wall_time_s"] = round(time.time() - t0, 2)
    if out_dir:
        result["plots"] = _write_results(result, spec_examples, out_dir)
    return result


def _load_eval_model(model: Optional[object], device: Optional[str], nq_list: Sequence[int]) -> Tuple[object, Optional[str]]:
    """``(model in eval mode, its name)`` for :func:`evaluate`'s ``model`` (a directory / pretrained name or a
    ``CodecModel``; ``(None, None)`` for none), checking that every ``nq`` fits it."""
    if model is None:
        return None, None
    if isinstance(model, (str, os.PathLike)):
        import codec

        mdl, model_name = codec.load(str(model), device=device), str(model)
    else:
        mdl, model_name = model, type(model).__name__
    mdl.eval()
    maxq = int(getattr(mdl, "num_quantizers"))
    bad = [q for q in nq_list if q > maxq]
    if bad:
        raise OptionError("nq", f"{bad[0]} exceeds the model's {maxq} quantizers.")
    return mdl, model_name


def _decode_at_each_nq(mdl, ref: np.ndarray, nq_list: Sequence[int], dev) -> Dict[str, np.ndarray]:
    """Encode ``ref`` [T] once at the largest nq and decode it with each nq's first levels:
    ``{"ours nq=Q": audio [T]}`` (trimmed or zero-padded to ``len(ref)``)."""
    import torch

    outs: Dict[str, np.ndarray] = {}
    x = torch.from_numpy(ref)[None, None].to(dev)
    with torch.inference_mode():
        codes = mdl.encode(x, nq=max(nq_list))
        for q in nq_list:
            y = mdl.decode(codes[:, :q]).reshape(-1)[: len(ref)].float().cpu().numpy()
            if len(y) < len(ref):
                y = np.concatenate([y, np.zeros(len(ref) - len(y), np.float32)])
            outs[f"ours nq={q}"] = y
    return outs


def _write_results(result: Dict[str, object], spec_examples: List[Dict[str, object]], out_dir: str) -> List[str]:
    """Write ``results.json``, ``results.md``, ``results.csv`` and the plots into ``out_dir``; returns the plots."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(_jsonable(result), f, indent=2)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(format_markdown(result))
    write_csv(result, os.path.join(out_dir, "results.csv"))
    return _plots(result, spec_examples, out_dir)


def _jsonable(o: object) -> object:
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


def _fmt(mean: float, ci: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}±{ci:.{digits}f}"


def _rows(result: Dict[str, object]) -> List[Tuple[str, Optional[float], Dict[str, dict]]]:
    """``(name, kbps or None, {column: summary})`` per system, then the references' row when scored."""
    rows = [(str(s["name"]), float(s["kbps"]), s["metrics"]) for s in result["systems"]]  # type: ignore[union-attr]
    ref = result.get("reference") or {}
    if ref:
        rows.append(("reference", None, ref["metrics"]))  # type: ignore[index]
    return rows


def _cell(summaries: Dict[str, dict], m: str) -> str:
    """``mean±ci`` of column ``m``, ``n/a`` without a value, empty when the row has no such column."""
    if m not in summaries:
        return ""
    return _fmt(summaries[m]["mean"], summaries[m]["ci95"], METRICS[m][2])


def rate_note(result: Dict[str, object]) -> str:
    """Which rate each metric scored at, e.g. ``PESQ-WB, DNSMOS at 16 kHz; STOI at 10 kHz; mel-dist, SI-SDR at
    24 kHz (the evaluation rate)``."""
    by_rate: Dict[int, List[str]] = {}
    for m, r in result["metric_rates"].items():  # type: ignore[union-attr]
        key = _package_key(m)
        title = key.upper() if key in METRIC_GROUPS else METRICS[m][0]
        if title not in by_rate.setdefault(int(r), []):
            by_rate[int(r)].append(title)
    sr = int(result["sample_rate"])  # type: ignore[arg-type]
    parts = [f"{', '.join(t)} at {r / 1000:g} kHz" + (" (the evaluation rate)" if r == sr else "")
             for r, t in sorted(by_rate.items(), reverse=True)]
    return "; ".join(parts)


def _footer(result: Dict[str, object]) -> str:
    n = len(result["files"])  # type: ignore[arg-type]
    dur = sum(result["durations"])  # type: ignore[arg-type]
    level = result.get("level_db")
    scaled = "" if level is None else f" scaled to {level:g} dBFS RMS"
    return (f"{n} files{scaled}, {dur:.1f} s of audio at {result['sample_rate']} Hz; ± = 95 % t-interval over files; "
            f"rates: {rate_note(result)}; ViSQOL {result['visqol']}")


def format_table(result: Dict[str, object]) -> str:
    """Plain-text table: one row per system (and the references' row for non-intrusive metrics), mean ± 95 %
    CI half-width per metric, then a line saying which rate each metric used."""
    metrics: List[str] = list(result["metrics"])  # type: ignore[arg-type]
    head = f"{'system':18s} {'kbps':>7s} " + " ".join(f"{METRICS[m][0]:>14s}" for m in metrics)
    lines = [head, "-" * len(head)]
    for name, kbps, summ in _rows(result):
        kb = f"{kbps:7.2f}" if kbps is not None else f"{'-':>7s}"
        lines.append(f"{name:18s} {kb} " + " ".join(f"{_cell(summ, m):>14s}" for m in metrics))
    lines.append(_footer(result))
    return "\n".join(lines)


def format_markdown(result: Dict[str, object]) -> str:
    """The table of :func:`format_table` as Markdown (arrows say which direction is better), with the notes."""
    metrics: List[str] = list(result["metrics"])  # type: ignore[arg-type]
    cols = ["system", "kbps"] + [f"{METRICS[m][0]} {'↑' if METRICS[m][1] else '↓'}" for m in metrics]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    for name, kbps, summ in _rows(result):
        kb = f"{kbps:.2f}" if kbps is not None else "-"
        lines.append("| " + " | ".join([name, kb] + [_cell(summ, m) for m in metrics]) + " |")
    return "\n".join(lines) + "\n\n" + _footer(result) + "\n"


def write_csv(result: Dict[str, object], path: str) -> None:
    """One row per system (and the references): name, kind, kbps, nominal kbps, then ``<column>_mean``,
    ``<column>_ci95`` and ``<column>_n`` per metric (empty where a row has no value)."""
    metrics: List[str] = list(result["metrics"])  # type: ignore[arg-type]
    kinds = {str(s["name"]): s for s in result["systems"]}  # type: ignore[union-attr]
    head = ["system", "kind", "kbps", "nominal_kbps"] + [f"{m}_{k}" for m in metrics for k in ("mean", "ci95", "n")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(head)
        for name, kbps, summ in _rows(result):
            s = kinds.get(name, {"kind": "reference"})
            row: List[object] = [name, s["kind"], "" if kbps is None else f"{kbps:.4f}", s.get("nominal_kbps", "")]
            for m in metrics:
                v = summ.get(m)
                row += ["", "", ""] if v is None else [
                    *(f"{v[k]:.6g}" if math.isfinite(v[k]) else "" for k in ("mean", "ci95")), v["n"]]
            w.writerow(row)


def _spectrogram_panels(systems: Sequence[Dict[str, object]]) -> List[str]:
    """System names shown under the reference: ours at the lowest, middle and highest nq, and the first
    setting of each baseline codec."""
    names = [str(s["name"]) for s in systems if s["kind"] == "model"]
    if len(names) > 3:
        names = [names[0], names[len(names) // 2], names[-1]]
    seen = set()
    for s in systems:
        if s["kind"] == "baseline" and s["codec"] not in seen:
            seen.add(s["codec"])
            names.append(str(s["name"]))
    return names


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CodecError("plots need matplotlib: install codec[eval] (pip install 'codec[eval]')") from None
    return plt


def _kbps_axis(ax) -> None:
    """Log bitrate axis with plain-number ticks at 1-2-5 steps (``0.5 1 2 5 10``, not ``10^0``)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("bitrate (kbps)")


def _metrics_figure(result: Dict[str, object]):
    """Metric vs kbps, one panel per column (mean ± 95 % CI per system; dashed: the references' score)."""
    plt = _pyplot()
    metrics: List[str] = list(result["metrics"])  # type: ignore[arg-type]
    groups: Dict[str, List[dict]] = {}
    for s in result["systems"]:  # type: ignore[union-attr]
        key = "ours" if s["kind"] == "model" else str(s["codec"])
        groups.setdefault(key, []).append(s)
    ref = (result.get("reference") or {}).get("metrics", {})  # type: ignore[union-attr]
    ncol = 2 if len(metrics) > 1 else 1
    nrow = int(math.ceil(len(metrics) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4 * nrow), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for g, ss in groups.items():
            ss = sorted(ss, key=lambda s: s["kbps"])
            x = [s["kbps"] for s in ss]
            y = [s["metrics"][m]["mean"] for s in ss]
            e = [s["metrics"][m]["ci95"] if math.isfinite(s["metrics"][m]["ci95"]) else 0.0 for s in ss]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=g)
            if g == "ours":
                for s in ss:
                    ax.annotate(f"nq={s['nq']}", (s["kbps"], s["metrics"][m]["mean"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
        if m in ref and math.isfinite(ref[m]["mean"]):
            ax.axhline(ref[m]["mean"], color="gray", linestyle="--", linewidth=1, label="reference")
        _kbps_axis(ax)
        title, hib, _ = METRICS[m]
        rate = int(result["metric_rates"][m])  # type: ignore[index]
        ax.set_title(f"{title} at {rate / 1000:g} kHz ({'higher' if hib else 'lower'} is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _spectrogram_figure(example: Dict[str, object], systems: Sequence[Dict[str, object]], sr: int):
    """Reference and decoded spectrograms of one file on one dBFS colour scale (0 dBFS = a full-scale sine),
    each panel with its colour bar."""
    import torch

    plt = _pyplot()
    outs: Dict[str, np.ndarray] = example["outs"]  # type: ignore[assignment]
    rows = [("reference", example["ref"])] + [(n, outs[n]) for n in _spectrogram_panels(systems)]
    win = torch.hann_window(512)
    dbs = []
    for _, sig in rows:
        t = torch.as_tensor(np.asarray(sig, dtype=np.float32))
        spec = torch.stft(t, n_fft=512, hop_length=128, window=win, return_complex=True).abs() / (win.sum() / 2)
        dbs.append(20 * torch.log10(spec.clamp_min(1e-6)))
    top = float(dbs[0].max())
    fig, axes = plt.subplots(len(rows), 1, figsize=(8.8, 1.8 * len(rows)), squeeze=False)
    for ax, (n, sig), db in zip(axes[:, 0], rows, dbs):
        im = ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                       extent=(0, len(sig) / sr, 0, sr / 2000))
        fig.colorbar(im, ax=ax, pad=0.01, label="dBFS")
        ax.set_ylabel("kHz")
        ax.set_title(n, fontsize=9)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(os.path.basename(str(example["path"])), fontsize=10)
    fig.tight_layout()
    return fig


def _plots(result: Dict[str, object], examples: List[Dict[str, object]], out_dir: str) -> List[str]:
    plt = _pyplot()
    systems: List[Dict[str, object]] = result["systems"]  # type: ignore[assignment]
    sr = int(result["sample_rate"])  # type: ignore[arg-type]
    figs = [("metrics_vs_kbps.png", _metrics_figure(result), 100)]
    figs += [(f"spectrogram_{k}.png", _spectrogram_figure(ex, systems, sr), 90) for k, ex in enumerate(examples)]
    paths: List[str] = []
    for name, fig, dpi in figs:
        p = os.path.join(out_dir, name)
        fig.savefig(p, dpi=dpi)
        plt.close(fig)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``codec eval``."""
    parser.epilog = (
        "examples:\n"
        "  codec eval refs/ --model speech-24k --nq 1,2,4,8,16,32 --baseline opus,amr-wb,codec2 --out eval-out\n"
        "  codec eval valid.jsonl --model runs/x/export --nq 8 --baseline opus@6+12 --max-files 10\n"
        "  codec eval refs/ --baseline codec2@3200+700C --sample-rate 16000 --metrics pesq,stoi\n"
        "  codec eval valid.jsonl --model runs/x/export --out eval-x --against eval-shipped   # paired, per clip\n"
        "  codec eval eval-x/results.json --against eval-shipped/results.json   # two earlier runs, nothing re-run\n")
    parser.add_argument("input", help="reference audio: a directory, a .jsonl manifest (path field) or a file; or an "
                        "earlier run's results.json to compare with --against")
    parser.add_argument("--model", default=None, help="model directory or pretrained name (omit: baselines only)")
    parser.add_argument("--nq", default="1,2,4,8,16,32", help="comma-separated numbers of quantizers")
    parser.add_argument("--baseline", default="", help="classical codecs: opus,amr-wb,codec2 (defaults) or e.g. "
                        "opus@6+12,amr-wb@6.6,codec2@3200+700C")
    parser.add_argument("--out", default=None, help="directory for results.json, results.md, results.csv and PNG plots")
    parser.add_argument("--max-files", type=int, default=None, help="evaluate only the first N files")
    parser.add_argument("--level-db", type=float, default=None, metavar="DB",
                        help="scale every file to this RMS level in dBFS (e.g. -40: quiet input) before coding and "
                             "scoring (default: as recorded)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help=f"comma-separated subset of {','.join(_CHOICES)} (distillmos, spk_sim and visqol are "
                        "opt-in; dnsmos = its SIG, BAK and OVRL)")
    parser.add_argument("--sample-rate", type=int, default=None, help="reference rate without --model (24000)")
    parser.add_argument("--spectrograms", type=int, default=3, help="spectrogram PNGs for the first N files")
    parser.add_argument("--device", default=None, help="torch device for the model (default cpu)")
    parser.add_argument("--against", default=None, metavar="OLD",
                        help="an earlier run's results.json (or its --out directory): also print a paired per-clip "
                        "comparison (clips better / worse, Wilcoxon p; comparison.md and .json under --out)")


def _is_results_file(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".json")


def run(args: argparse.Namespace) -> int:
    """Run ``codec eval``; prints the table (and the paired comparison with ``--against``); returns 0."""
    from codec.eval import compare as CMP

    metrics = [m.strip() for m in str(args.metrics).split(",") if m.strip()]
    old = CMP.load_results(args.against) if args.against else None
    if _is_results_file(str(args.input)):
        if old is None:
            raise OptionError("against", "OLD is needed with a results.json input: it names the run to compare "
                              "with.", lead="")
        chosen = expand_metrics(metrics) if str(args.metrics) != ",".join(DEFAULT_METRICS) else None
        print(CMP.format_comparison(CMP.compare(old, CMP.load_results(args.input), chosen)))
        return 0
    if old is not None:  # refuse before minutes of scoring, not after
        CMP.check_overlap(old, list_inputs(args.input, args.max_files))
        CMP.check_level(old, args.level_db)
    res = evaluate(args.input, model=args.model, nqs=args.nq, baselines=args.baseline, out_dir=args.out,
                   max_files=args.max_files, device=args.device, sample_rate=args.sample_rate, metrics=metrics,
                   n_spectrograms=args.spectrograms, level_db=args.level_db)
    print(format_table(res))
    if args.out:
        print(f"wrote {os.path.join(args.out, 'results.json')}, results.md, results.csv and "
              f"{len(res.get('plots', []))} PNG files")
    if old is not None:
        cmp = CMP.compare(old, res)
        text = CMP.format_comparison(cmp)
        print("\n" + text)
        if args.out:
            with open(os.path.join(args.out, "comparison.md"), "w", encoding="utf-8") as f:
                f.write(text + "\n")
            with open(os.path.join(args.out, "comparison.json"), "w", encoding="utf-8") as f:
                json.dump(_jsonable(cmp), f, indent=1)
    return 0
