"""``codec demo``: encode and decode the shipped sample(s) with the shipped model at several ``--nq`` values.

For each sample and each nq: ``<out>/<stem>.nq<K>.codes`` and the decoded ``<out>/<stem>.nq<K>.wav`` are
written through the same streaming pipeline as ``codec encode`` / ``codec decode``; the table shows
bitrate, file size and quality figures (SI-SDR, multi-scale log-mel distance from :mod:`codec.eval.metrics`,
PESQ-WB and STOI when ``pesq`` / ``pystoi`` are installed).  A ``results.json`` is written next to them.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .errors import CodecError, OptionError

__all__ = ["run_demo", "demo", "format_demo_table"]


def _parse_nqs(text: str, max_nq: int) -> List[int]:
    try:
        vals = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise OptionError("nq", f"must be comma-separated integers, got '{text}'.") from None
    if not vals:
        raise OptionError("nq", "needs at least one value.")
    bad = [v for v in vals if not 1 <= v <= max_nq]
    if bad:
        raise OptionError("nq", f"{bad[0]} is out of range: this model has levels 1 to {max_nq}.")
    return vals


def _quality(ref: np.ndarray, est: np.ndarray, sr: int) -> Dict[str, float]:
    from .eval import metrics

    r, e = ref.mean(axis=0), est.mean(axis=0)
    n = min(len(r), len(e))
    r, e = r[:n], e[:n]
    out = {"si_sdr": float(metrics.si_sdr(r, e)), "mel_distance": float(metrics.multiscale_mel_distance(r, e, sr))}
    for key, fn in (("pesq", getattr(metrics, "pesq_wb", None)), ("stoi", getattr(metrics, "stoi", None))):
        if fn is None:
            continue
        try:
            out[key] = float(fn(r, e, sr))
        except CodecError:  # optional package missing or too short
            pass
    return out


def demo(model, model_name: str, samples: List[Path], nqs: List[int], out_dir: Path,
         progress=None) -> List[Dict[str, object]]:
    """Run the demo; returns one row per (sample, nq) with bitrate, sizes and quality figures."""
    from .audio import load_audio
    from .pipeline import DecodeJob, EncodeJob, decode_files, encode_files

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, object]] = []
    for sample in samples:
        ref, sr = load_audio(sample)
        for nq in nqs:
            codes = out_dir / f"{sample.stem}.nq{nq}.codes"
            wav = out_dir / f"{sample.stem}.nq{nq}.wav"
            r = encode_files(model, model_name, [EncodeJob(sample, codes)], nq)[0]
            if r.error:
                raise CodecError(r.error)
            d = decode_files([DecodeJob(codes, wav)], model=model)[0]
            if d.error:
                raise CodecError(d.error)
            est, _ = load_audio(wav)
            h = r.header
            row: Dict[str, object] = {
                "sample": sample.name, "nq": nq, "kbps": h.bitrate / 1000.0, "bytes": h.file_size,
                "seconds": h.duration, "codes": str(codes), "decoded": str(wav),
            }
            row.update(_quality(ref, est, sr))
            rows.append(row)
            if progress is not None:
                progress(1)
    return rows


def format_demo_table(rows: List[Dict[str, object]]) -> str:
    """Plain-text table of :func:`demo` rows."""
    cols = [("sample", "sample", "{}"), ("nq", "nq", "{}"), ("kbps", "kbps", "{:.2f}"), ("bytes", "bytes", "{}"),
            ("si_sdr", "SI-SDR dB", "{:.2f}"), ("mel_distance", "mel dist", "{:.3f}"),
            ("pesq", "PESQ-WB", "{:.2f}"), ("stoi", "STOI", "{:.3f}")]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        line = []
        for key, _, f in cols:
            v = r.get(key)
            line.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    fmt_line = lambda c: "  ".join(s.rjust(w) if i else s.ljust(w) for i, (s, w) in enumerate(zip(c, widths)))
    return "\n".join([fmt_line(cells[0]), "  ".join("-" * w for w in widths)] + [fmt_line(c) for c in cells[1:]])


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``codec demo`` (see :mod:`codec.demo`)."""
    from .pretrained import search_dirs
    from .pipeline import resolve_model

    if args.samples:
        samples = [Path(s) for s in args.samples]
    else:  # the first pretrained directory with samples ($CODEC_PRETRAINED_DIR, then <repo>/pretrained)
        dirs = [d / "samples" for d in search_dirs()]
        sdir = next((d for d in dirs if any(d.glob("*.wav"))), dirs[-1])
        samples = sorted(sdir.glob("*.wav"))
        if not samples:
            raise OptionError("samples", "FILE.", lead=f"no sample found: '{sdir}' has no .wav files; pass ")
    for s in samples:
        if not s.is_file():
            raise CodecError(f"input file '{s}' does not exist.")
    model, name = resolve_model(args.model, args.device)
    nqs = _parse_nqs(args.nq, int(model.num_quantizers))
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError("out_dir", f"'{out_dir}' exists and is not a directory.")
    from tqdm import tqdm
    import sys

    with tqdm(total=len(samples) * len(nqs), desc="demo", leave=False,
              disable=args.quiet or not sys.stdout.isatty()) as bar:
        rows = demo(model, name, samples, nqs, out_dir, progress=bar.update)
    print(f"model: {name}  ({model.sample_rate} Hz, {model.frame_rate:g} frames/s, up to {model.num_quantizers} levels)")
    print(format_demo_table(rows))
    with open(out_dir / "results.json", "w") as fh:
        json.dump({"model": name, "rows": rows}, fh, indent=2)
    print(f"decoded audio and results.json in {out_dir}/")
    return 0
