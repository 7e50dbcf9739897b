"""`codec eval`: objective evaluation of a codec model (per number of quantizers) and classical baselines.

For every input file the model encodes once with the largest requested ``nq`` and decodes the first
``nq`` codebooks for each requested ``nq`` (residual quantization: the first levels of a deeper encoding are
the shallower encoding). Baselines (Opus, AMR-WB, Codec2; see :mod:`codec.eval.baselines`) run on the same reference.
Metrics per file: PESQ-WB, STOI, multi-scale log-mel distance, SI-SDR, bitrate; reported as means with 95 %
Student-t confidence intervals over files.

Outputs: a table on stdout; with ``--out DIR``: ``results.json`` (summaries and per-file values),
``metrics_vs_kbps.png`` and ``spectrogram_<k>.png`` for the first few files.

ViSQOL (speech mode, MOS-LQO) is opt-in: ``--metrics pesq,stoi,mel,sisdr,visqol`` with the unofficial
pure-Python port ``visqol-python[lattice]`` installed (not part of any extra: it builds ``libsvm-official``
from source and pulls the TFLite runtime); the JSON records under ``"visqol"`` whether it was computed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from codec.errors import CodecError

__all__ = ["evaluate", "add_arguments", "run", "list_inputs", "format_table", "METRICS", "DEFAULT_METRICS"]

#: metric key -> (column title, higher is better, decimals in the table)
METRICS: Dict[str, Tuple[str, bool, int]] = {
    "pesq": ("PESQ-WB", True, 2),
    "stoi": ("STOI", True, 3),
    "mel": ("mel-dist", False, 3),
    "sisdr": ("SI-SDR", True, 2),
    "visqol": ("ViSQOL", True, 2),
}
#: metrics computed when none are named (ViSQOL is opt-in)
DEFAULT_METRICS: Tuple[str, ...] = ("pesq", "stoi", "mel", "sisdr")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".oga")
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
        files = []
        for dp, dn, fn in os.walk(src):
            dn.sort()
            files.extend(os.path.join(dp, f) for f in sorted(fn) if f.lower().endswith(AUDIO_EXTS))
        files.sort()
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


def _load_mono(path: str, sample_rate: int) -> np.ndarray:
    """Load a file as mono float32 ``[T]`` at ``sample_rate`` (soxr resampling)."""
    from codec.audio import load_audio, resample, to_mono

    wav, sr = load_audio(path)
    return np.ascontiguousarray(resample(to_mono(wav)[0], int(sr), sample_rate), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def _check_metrics(metrics: Sequence[str]) -> None:
    from codec.eval.metrics import OPTIONAL_PACKAGES, require

    for m in metrics:
        if m not in METRICS:
            raise CodecError(f"unknown metric '{m}' (choose from {', '.join(METRICS)}).")
        if m in OPTIONAL_PACKAGES:
            require(m)


def _score(ref: np.ndarray, est: np.ndarray, sr: int, metrics: Sequence[str]) -> Dict[str, float]:
    from codec.eval import metrics as M

    fns = {"pesq": lambda: M.pesq_wb(ref, est, sr), "stoi": lambda: M.stoi(ref, est, sr),
           "mel": lambda: M.multiscale_mel_distance(ref, est, sr), "sisdr": lambda: M.si_sdr(ref, est),
           "visqol": lambda: M.visqol_speech(ref, est, sr)}
    return {m: fns[m]() for m in metrics}


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


def _parse_int_list(s: Union[str, Sequence[int]]) -> List[int]:
    if isinstance(s, str):
        try:
            v = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise CodecError(f"--nq must be a comma-separated list of integers, not '{s}'.") from None
    else:
        v = [int(x) for x in s]
    if not v or any(x < 1 for x in v):
        raise CodecError(f"--nq values must be positive integers, not '{s if isinstance(s, str) else list(s)}'.")
    return sorted(set(v))


def evaluate(inputs: Union[str, Sequence[str]], model: Optional[object] = None,
             nqs: Union[str, Sequence[int]] = (1, 2, 4, 8, 16, 32), baselines: str = "",
             out_dir: Optional[str] = None, max_files: Optional[int] = None, device: Optional[str] = None,
             sample_rate: Optional[int] = None, metrics: Sequence[str] = DEFAULT_METRICS,
             n_spectrograms: int = 3, verbose: bool = True) -> Dict[str, object]:
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
        metrics: subset of :data:`METRICS` (``pesq stoi mel sisdr visqol``); default :data:`DEFAULT_METRICS`.
    Returns:
        ``{"files", "sample_rate", "systems": [{"name", "kind", "nq"|"codec"/"setting", "kbps",
        "nominal_kbps", "metrics": {key: {"mean", "ci95", "n"}}, "per_file": {key: [..]}}], "visqol", ...}``
    """
    import torch

    from codec.eval import baselines as BL
    from codec.eval.metrics import summarize

    t0 = time.time()
    metrics = list(metrics)
    _check_metrics(metrics)
    files = list_inputs(inputs, max_files)
    mdl = None
    nq_list = _parse_int_list(nqs) if model is not None else []
    model_name = None
    if model is not None:
        if isinstance(model, (str, os.PathLike)):
            import codec

            model_name = str(model)
            mdl = codec.load(str(model), device=device)
        else:
            mdl = model
            model_name = type(model).__name__
        mdl.eval()
        maxq = int(getattr(mdl, "num_quantizers"))
        bad = [q for q in nq_list if q > maxq]
        if bad:
            raise CodecError(f"--nq {bad[0]} exceeds the model's {maxq} quantizers.")
        sr = int(mdl.sample_rate)
    else:
        sr = int(sample_rate or 24000)
    ours_kbps = [float(mdl.bitrate(q)) / 1000 for q in nq_list] if mdl is not None else []
    base_list = BL.parse_baselines(baselines, match_kbps=ours_kbps) if baselines else []
    for c in sorted({c for c, _ in base_list}):
        BL.check_available(c)
    if mdl is None and not base_list:
        raise CodecError("nothing to evaluate: give --model and/or --baseline.")

    systems: List[Dict[str, object]] = []
    for q, k in zip(nq_list, ours_kbps):
        systems.append({"name": f"ours nq={q}", "kind": "model", "nq": q, "nominal_kbps": k,
                        "per_file": {m: [] for m in metrics + ["kbps"]}})
    for c, s in base_list:
        systems.append({"name": f"{c}@{s}", "kind": "baseline", "codec": c, "setting": s,
                        "per_file": {m: [] for m in metrics + ["kbps"]}})
    durations: List[float] = []
    spec_examples: List[Dict[str, object]] = []
    dev = next(mdl.parameters()).device if mdl is not None and any(True for _ in mdl.parameters()) else "cpu"
    for fi, path in enumerate(files):
        ref = _load_mono(path, sr)
        if len(ref) < sr // 4:
            raise CodecError(f"'{path}' is shorter than 0.25 s, too short to evaluate.")
        durations.append(len(ref) / sr)
        outs: Dict[str, np.ndarray] = {}
        if mdl is not None:
            x = torch.from_numpy(ref)[None, None].to(dev)
            with torch.inference_mode():
                codes = mdl.encode(x, nq=max(nq_list))
                for q in nq_list:
                    y = mdl.decode(codes[:, :q])
                    y = y.reshape(-1)[: len(ref)].float().cpu().numpy()
                    if len(y) < len(ref):
                        y = np.concatenate([y, np.zeros(len(ref) - len(y), np.float32)])
                    outs[f"ours nq={q}"] = y
        for sysd in systems:
            name = str(sysd["name"])
            if sysd["kind"] == "model":
                est = outs[name]
                kb = float(sysd["nominal_kbps"])
            else:
                r = BL.run_baseline(str(sysd["codec"]), str(sysd["setting"]), ref, sr)
                est = r.audio
                kb = r.kbps
                sysd.setdefault("nominal_kbps", r.nominal_kbps)
                outs[name] = est
            sc = _score(ref, est, sr, metrics)
            pf = sysd["per_file"]
            for m in metrics:
                pf[m].append(sc[m])  # type: ignore[index]
            pf["kbps"].append(kb)  # type: ignore[index]
        if fi < n_spectrograms:
            spec_examples.append({"path": path, "ref": ref, "outs": outs})
        if verbose:
            print(f"[eval] {fi + 1}/{len(files)} {os.path.basename(path)} ({len(ref) / sr:.1f} s)", file=sys.stderr,
                  flush=True)
    for sysd in systems:
        pf = sysd["per_file"]  # type: ignore[assignment]
        sysd["metrics"] = {m: summarize(pf[m]) for m in metrics}  # type: ignore[index]
        sysd["kbps"] = float(np.mean(pf["kbps"]))  # type: ignore[index]
    result: Dict[str, object] = {
        "model": model_name,
        "sample_rate": sr,
        "files": files,
        "durations": durations,
        "metrics": metrics,
        "systems": systems,
        "visqol": VISQOL_ON if "visqol" in metrics else VISQOL_OFF,
        "confidence": 0.95,
        "wall_time_s": round(time.time() - t0, 2),
    }
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(_jsonable(result), f, indent=2)
        result["plots"] = _plots(result, spec_examples, out_dir)
    return result


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


def format_table(result: Dict[str, object]) -> str:
    """Plain-text table: one row per system, mean ± 95 % CI half-width per metric."""
    metrics: List[str] = list(result["metrics"])  # type: ignore[arg-type]
    head = f"{'system':18s} {'kbps':>7s} " + " ".join(f"{METRICS[m][0]:>14s}" for m in metrics)
    lines = [head, "-" * len(head)]
    for s in result["systems"]:  # type: ignore[union-attr]
        row = f"{s['name']:18s} {s['kbps']:7.2f} "
        row += " ".join(f"{_fmt(s['metrics'][m]['mean'], s['metrics'][m]['ci95'], METRICS[m][2]):>14s}"
                        for m in metrics)
        lines.append(row)
    n = len(result["files"])  # type: ignore[arg-type]
    dur = sum(result["durations"])  # type: ignore[arg-type]
    lines.append(f"{n} files, {dur:.1f} s of audio at {result['sample_rate']} Hz; ± = 95 % t-interval over files; "
                 f"ViSQOL {result['visqol']}")
    return "\n".join(lines)


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


def _plots(result: Dict[str, object], examples: List[Dict[str, object]], out_dir: str) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CodecError("plots need matplotlib: install codec[eval] (pip install 'codec[eval]')") from None
    import torch

    paths: List[str] = []
    metrics: List[str] = list(result["metrics"])  # type: ignore[arg-type]
    systems = result["systems"]  # type: ignore[assignment]
    groups: Dict[str, List[dict]] = {}
    for s in systems:  # type: ignore[union-attr]
        key = "ours" if s["kind"] == "model" else str(s["codec"])
        groups.setdefault(key, []).append(s)
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
        ax.set_xscale("log")
        ax.set_xlabel("bitrate (kbps)")
        title, hib, _ = METRICS[m]
        ax.set_title(f"{title} ({'higher' if hib else 'lower'} is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    p = os.path.join(out_dir, "metrics_vs_kbps.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    sr = int(result["sample_rate"])  # type: ignore[arg-type]
    for k, ex in enumerate(examples):
        outs: Dict[str, np.ndarray] = ex["outs"]  # type: ignore[assignment]
        rows = [("reference", ex["ref"])] + [(n, outs[n]) for n in _spectrogram_panels(systems)]
        fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.8 * len(rows)), squeeze=False)
        for ax, (n, sig) in zip(axes[:, 0], rows):
            t = torch.as_tensor(np.asarray(sig, dtype=np.float32))
            spec = torch.stft(t, n_fft=512, hop_length=128, window=torch.hann_window(512), return_complex=True).abs()
            db = 20 * torch.log10(spec.clamp_min(1e-5))
            ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
                      extent=(0, len(sig) / sr, 0, sr / 2000))
            ax.set_ylabel("kHz")
            ax.set_title(n, fontsize=9)
        axes[-1, 0].set_xlabel("time (s)")
        fig.suptitle(os.path.basename(str(ex["path"])), fontsize=10)
        fig.tight_layout()
        p = os.path.join(out_dir, f"spectrogram_{k}.png")
        fig.savefig(p, dpi=90)
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
        "  codec eval refs/ --baseline codec2@3200+700C --sample-rate 16000 --metrics pesq,stoi\n")
    parser.add_argument("input", help="reference audio: a directory, a .jsonl manifest (path field) or a file")
    parser.add_argument("--model", default=None, help="model directory or pretrained name (omit: baselines only)")
    parser.add_argument("--nq", default="1,2,4,8,16,32", help="comma-separated numbers of quantizers")
    parser.add_argument("--baseline", default="", help="classical codecs: opus,amr-wb,codec2 (defaults) or e.g. "
                        "opus@6+12,amr-wb@6.6,codec2@3200+700C")
    parser.add_argument("--out", default=None, help="directory for results.json and PNG plots")
    parser.add_argument("--max-files", type=int, default=None, help="evaluate only the first N files")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help=f"comma-separated subset of {','.join(METRICS)} (visqol is opt-in)")
    parser.add_argument("--sample-rate", type=int, default=None, help="reference rate without --model (24000)")
    parser.add_argument("--spectrograms", type=int, default=3, help="spectrogram PNGs for the first N files")
    parser.add_argument("--device", default=None, help="torch device for the model (default cpu)")


def run(args: argparse.Namespace) -> int:
    """Run ``codec eval``; prints the table; returns 0."""
    metrics = [m.strip() for m in str(args.metrics).split(",") if m.strip()]
    res = evaluate(args.input, model=args.model, nqs=args.nq, baselines=args.baseline, out_dir=args.out,
                   max_files=args.max_files, device=args.device, sample_rate=args.sample_rate, metrics=metrics,
                   n_spectrograms=args.spectrograms)
    print(format_table(res))
    if args.out:
        print(f"wrote {os.path.join(args.out, 'results.json')} and {len(res.get('plots', []))} PNG files")
    return 0
