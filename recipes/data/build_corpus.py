#!/usr/bin/env python3
"""Build the speech (and optionally music) corpus for `codec` from Debian packages.

Runs unattended on a fresh Debian/Ubuntu machine with only the package registries reachable:

1. ``apt-get download PKG`` into ``--debs`` (skipped when ``PKG_*.deb`` is already there);
2. ``dpkg -x`` into ``--extract/PKG`` (never installed system-wide; skipped when already extracted);
3. find the audio files of each source (path rules below), drop identical files (sha1 of the bytes);
4. decode: soundfile for Ogg Vorbis / Opus / WAV, an ``ffmpeg`` subprocess for raw G.722 (asterisk);
5. mix to mono, measure the bandwidth (99 % energy roll-off at the original rate), trim silences
   longer than ``--max-silence`` (0.5 s) at the ends and inside (energy based), check the RMS level
   (drop near-silent / too-short clips, scale down clips whose decoded peak exceeds full scale);
6. drop duplicates of the decoded PCM (sha1 of the 16 kHz int16 samples);
7. resample with soxr to 16 kHz and 24 kHz, write 16-bit mono wav files and jsonl manifests.

Validation is split off by speaker / voice pack / source (never by random clip); see
``VALID_RULES`` and ``recipes/data/README.md``.

Outputs under ``--out`` (paths inside the manifests are absolute)::

    wav16k/<source>/<id>.wav  wav24k/<source>/<id>.wav
    train_16k.jsonl valid_16k.jsonl train_24k.jsonl valid_24k.jsonl
    valid_eval.jsonl (24 kHz) valid_eval_16k.jsonl   fixed held-out clips >= 2 s for `codec eval`
    stats.json

Only numpy, soundfile and soxr are needed (plus ffmpeg for the G.722 telephone prompts).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

SPEECH_PACKAGES: List[str] = [
    "tuxpaint-stamps-default",
    "fillets-ng-data-cs",
    "asterisk-core-sounds-en-g722",
    "asterisk-core-sounds-es-g722",
    "asterisk-core-sounds-fr-g722",
    "asterisk-core-sounds-it-g722",
    "asterisk-core-sounds-ru-g722",
    "klettres-data",
    "ktuberling-data",
    "hedgewars-data",
    "alsa-utils",
]
MUSIC_PACKAGES: List[str] = ["hedgewars-data", "wesnoth-1.16-music", "singularity-music"]

AUDIO_EXTS = (".ogg", ".oga", ".opus", ".wav", ".flac", ".g722")
TARGET_RATES = (16000, 24000)

# ISO 639-1 codes (plus a few 639-2) used to recognise localised file / directory names.
LANG_CODES = set(
    """af am ar ast az be bg bn bo br bs ca cs cy da de el en eo es et eu fa fi fo fr fy ga gd gl gu he hi hr hu hy
    id is it ja ka kk km kn ko ku lb lt lv mk ml mn mr ms mt my nb nds ne nl nn no oc pa pl ps pt ro ru rw sa sk sl
    sq sr sv sw ta te tg th tl tn tr tw uk ur uz vi wa wo xh zh zu""".split()
)

#: Held-out (validation) speakers. A clip goes to ``valid`` when its ``speaker`` is listed here,
#: or its source is fully held out. Everything else is ``train``.
VALID_RULES: Dict[str, object] = {
    "speakers": {
        "asterisk-Carlo",  # one professional telephone voice (Italian, male)
        "tuxpaint-el", "tuxpaint-bg", "tuxpaint-lt", "tuxpaint-nl",  # four tuxpaint description languages
        "klettres-he", "klettres-nl",  # two klettres voices
        "ktuberling-gl", "ktuberling-sl",  # two ktuberling voices
        "hedgewars-Pirate", "hedgewars-Default_uk",  # two hedgewars voice packs
    },
    "sources": {"alsa-utils", "singularity-music"},  # whole sources held out
}


@dataclass
class Item:
    """One input audio file and its metadata derived from the path."""

    path: str  # absolute path of the extracted file
    source: str  # Debian package name
    rel: str  # path inside the package tree
    speaker: str
    language: str
    kind: str = "speech"  # "speech" or "music"
    split: str = "train"
    uid: str = ""  # output file stem (unique within the source)


def _lang_norm(code: str) -> str:
    """'en_US' -> 'en', 'pt_BR' -> 'pt-BR', 'sr@latin' -> 'sr'."""
    code = code.split("@")[0]
    if "_" in code:
        a, b = code.split("_", 1)
        if a == "en":
            return "en"
        return f"{a}-{b}"
    return code


def classify(source: str, rel: str, include_music: bool = False) -> Optional[Tuple[str, str, str]]:
    """Decide whether a file of a package is corpus audio, and derive (speaker, language, kind).

    Args:
        source: Debian package name.
        rel: path inside the package tree, e.g. ``usr/share/klettres/fr/alpha/a.ogg``.
        include_music: also accept music files.
    Returns:
        ``(speaker, language, kind)`` or ``None`` when the file is not used.
    """
    low = rel.lower()
    if not low.endswith(AUDIO_EXTS):
        return None
    name = os.path.basename(rel)
    stem = os.path.splitext(name)[0]
    parts = rel.split("/")
    if source == "tuxpaint-stamps-default":
        # <stamp>_desc[_<lang>[_<CC>]].ogg = spoken description; <stamp>_<lang>[_<CC>].ogg = spoken name;
        # bare <stamp>.ogg = sound effect (animal noises...), skipped.
        m = re.match(r"^(.*?)_desc(?:_([a-z]{2,3})(?:_([A-Z]{2}))?)?$", stem)
        if m:
            lang = m.group(2) or "en"
        else:
            m = re.match(r"^(.*)_([a-z]{2,3})(?:_([A-Z]{2}))?$", stem)
            if not m or m.group(2) not in LANG_CODES:
                return None
            lang = m.group(2)
        if lang not in LANG_CODES:
            return None
        return f"tuxpaint-{lang}", lang, "speech"
    if source == "fillets-ng-data-cs":
        # sound/<level>/cs/<level-prefix>-<character>-<line>.ogg ; character m = small fish, v = big fish.
        if "/cs/" not in rel:
            return None
        fields = stem.split("-")
        char = fields[1] if len(fields) >= 3 and fields[1] else "other"
        if not re.match(r"^[a-z]+$", char):
            char = "other"
        return f"fillets-{char}", "cs", "speech"
    if source.startswith("asterisk-core-sounds-"):
        # usr/share/asterisk/sounds/<ll_CC_g_Name>/...; skip the silence/ prompts.
        if "/silence/" in rel:
            return None
        try:
            voice = parts[parts.index("sounds") + 1]
        except (ValueError, IndexError):
            return None
        lang = voice.split("_")[0] if re.match(r"^[a-z]{2}_", voice) else source.split("-")[3]
        # speaker = the voice's name (the same "Allison" records en_US and es_MX)
        return f"asterisk-{voice.split('_')[-1]}", lang, "speech"
    if source == "klettres-data":
        # usr/share/klettres/<lang>/{alpha,syllab}/*.ogg ; one voice per language directory.
        try:
            lang_dir = parts[parts.index("klettres") + 1]
        except (ValueError, IndexError):
            return None
        return f"klettres-{lang_dir}", _lang_norm(lang_dir), "speech"
    if source == "ktuberling-data":
        # usr/share/ktuberling/sounds/<lang>/*.{ogg,wav,opus}; one voice per language directory.
        try:
            lang_dir = parts[parts.index("sounds") + 1]
        except (ValueError, IndexError):
            return None
        if len(parts) <= parts.index("sounds") + 2:
            return None
        return f"ktuberling-{lang_dir}", _lang_norm(lang_dir), "speech"
    if source == "hedgewars-data":
        if "/Sounds/voices/" in rel:
            pack = parts[parts.index("voices") + 1]
            if pack == "Robot":  # processed (vocoded) voice: not natural speech
                return None
            m = re.search(r"_(\w\w)$", pack)
            lang = m.group(1) if m else ("ru" if pack == "Russian" else "en")
            return f"hedgewars-{pack}", lang, "speech"
        if include_music and "/Music/" in rel:
            return "music-hedgewars", "none", "music"
        return None
    if source == "alsa-utils":
        # usr/share/sounds/alsa/<Channel_Name>.wav ; Noise.wav is pink noise.
        if "/sounds/alsa/" not in rel or stem == "Noise":
            return None
        return "alsa-utils-voice", "en", "speech"
    if include_music and source in MUSIC_PACKAGES:
        return f"music-{source}", "none", "music"
    return None


def assign_split(speaker: str, source: str) -> str:
    """``'valid'`` for held-out speakers / sources (see ``VALID_RULES``), else ``'train'``."""
    if speaker in VALID_RULES["speakers"] or source in VALID_RULES["sources"]:  # type: ignore[operator]
        return "valid"
    return "train"


# --------------------------------------------------------------------------------------------
# Fetch + extract
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    """Print a progress line (flushed)."""
    print(msg, flush=True)


def fetch_package(pkg: str, debs_dir: str) -> str:
    """Download ``pkg`` with ``apt-get download`` into ``debs_dir`` unless already there; return the .deb path."""
    os.makedirs(debs_dir, exist_ok=True)
    found = sorted(glob.glob(os.path.join(debs_dir, f"{pkg}_*.deb")))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise SystemExit(f"build_corpus: apt-get not found; put {pkg}_*.deb into {debs_dir} by hand")
    log(f"[fetch] apt-get download {pkg}")
    r = subprocess.run(["apt-get", "download", pkg], cwd=debs_dir, capture_output=True, text=True)
    found = sorted(glob.glob(os.path.join(debs_dir, f"{pkg}_*.deb")))
    if r.returncode != 0 or not found:
        raise SystemExit(
            f"build_corpus: 'apt-get download {pkg}' failed ({r.stderr.strip()[-300:]}); "
            "run 'apt-get update' first (the package lists must be present)"
        )
    return found[-1]


def extract_package(deb: str, pkg: str, extract_dir: str) -> str:
    """``dpkg -x`` the .deb into ``extract_dir/pkg`` (skipped when a completed marker exists)."""
    dest = os.path.join(extract_dir, pkg)
    marker = os.path.join(dest, ".extracted")
    if os.path.exists(marker):
        return dest
    if shutil.which("dpkg") is None:
        raise SystemExit("build_corpus: dpkg not found (needed for 'dpkg -x'); run on Debian/Ubuntu")
    os.makedirs(dest, exist_ok=True)
    log(f"[extract] dpkg -x {os.path.basename(deb)}")
    subprocess.run(["dpkg", "-x", deb, dest], check=True)
    with open(marker, "w") as f:
        f.write(os.path.basename(deb) + "\n")
    return dest


def discover(root: str, source: str, include_music: bool = False) -> List[Item]:
    """List the usable audio files of one extracted package tree (sorted, deterministic)."""
    items: List[Item] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            c = classify(source, rel, include_music)
            if c is None:
                continue
            spk, lang, kind = c
            items.append(Item(path=full, source=source, rel=rel, speaker=spk, language=lang, kind=kind,
                              split=assign_split(spk, source)))
    # unique output stem per source
    seen: Dict[str, int] = {}
    for it in items:
        tail = "/".join(it.rel.split("/")[-3:])
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(tail)[0].replace("/", "__"))
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        it.uid = stem if n == 0 else f"{stem}-{n}"
    return items


# --------------------------------------------------------------------------------------------
# Signal processing
# --------------------------------------------------------------------------------------------


def decode(path: str) -> Tuple[np.ndarray, int]:
    """Decode an audio file to float32 mono ``[T]`` and its sample rate.

    soundfile handles Ogg Vorbis/Opus/WAV/FLAC; raw G.722 (``.g722``) goes through ffmpeg.
    """
    if path.lower().endswith(".g722"):
        ff = shutil.which("ffmpeg")
        if ff is None:
            raise RuntimeError("ffmpeg not found: needed to decode G.722 (install it: apt-get install ffmpeg)")
        r = subprocess.run([ff, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "g722", "-i", path,
                            "-f", "s16le", "-ac", "1", "-ar", "16000", "-"], capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"ffmpeg failed on {path}: {r.stderr.decode(errors='replace').strip()[-200:]}")
        x = np.frombuffer(r.stdout, dtype="<i2").astype(np.float32) / 32768.0
        return x, 16000
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    return x.mean(axis=1).astype(np.float32), int(sr)


def frame_energy_db(x: np.ndarray, sr: int, frame_s: float = 0.02) -> Tuple[np.ndarray, int]:
    """Frame RMS in dBFS ``[F]`` (non-overlapping frames of ``frame_s``) and the frame length in samples."""
    n = max(1, int(round(frame_s * sr)))
    f = int(np.ceil(len(x) / n))
    pad = np.zeros(f * n, dtype=np.float64)
    pad[: len(x)] = x
    rms = np.sqrt(np.mean(pad.reshape(f, n) ** 2, axis=1) + 1e-12)
    return 20 * np.log10(rms + 1e-12), n


def trim_silence(x: np.ndarray, sr: int, max_silence: float = 0.5, keep: float = 0.15,
                 rel_db: float = -40.0, abs_db: float = -60.0) -> np.ndarray:
    """Shorten silent stretches longer than ``max_silence`` seconds.

    A 20 ms frame is silent when its RMS is below ``max(loudest_frame + rel_db, abs_db)`` dBFS.
    Leading/trailing silence is cut down to ``keep`` s; inner silent runs longer than
    ``max_silence`` are cut down to ``2 * keep`` s (joined with a 5 ms cross-fade).

    Args:
        x: mono signal ``[T]``.
    Returns:
        trimmed signal ``[T']`` (empty if everything is silent).
    """
    if len(x) == 0:
        return x
    db, n = frame_energy_db(x, sr)
    thr = max(float(db.max()) + rel_db, abs_db)
    voiced = db > thr
    if not voiced.any():
        return x[:0]
    keep_f = max(1, int(round(keep * sr / n)))
    max_f = int(round(max_silence * sr / n))
    idx = np.flatnonzero(voiced)
    first, last = idx[0], idx[-1]
    start = max(0, (first - keep_f)) * n
    end = min(len(x), (last + 1 + keep_f) * n)
    # inner runs of silence
    segments: List[Tuple[int, int]] = []
    seg_start = start
    f = first
    while f <= last:
        if voiced[f]:
            f += 1
            continue
        g = f
        while g <= last and not voiced[g]:
            g += 1
        if g - f > max_f:
            cut_a = (f + keep_f) * n
            cut_b = (g - keep_f) * n
            segments.append((seg_start, cut_a))
            seg_start = cut_b
        f = g
    segments.append((seg_start, end))
    if len(segments) == 1:
        return x[start:end].copy()
    fade = int(0.005 * sr)
    out = x[segments[0][0]:segments[0][1]].astype(np.float32).copy()
    for a, b in segments[1:]:
        seg = x[a:b].astype(np.float32)
        k = min(fade, len(out), len(seg))
        if k > 0:
            w = np.linspace(0.0, 1.0, k, dtype=np.float32)
            out[-k:] = out[-k:] * (1 - w) + seg[:k] * w
            seg = seg[k:]
        out = np.concatenate([out, seg])
    return out


def _mean_power_spectrum(x: np.ndarray, n_fft: int) -> Tuple[np.ndarray, int]:
    """Mean power spectrum of ``x [T]`` (T >= 16) over Hann-windowed frames with 50 % overlap.

    ``n_fft`` is reduced to the largest power of two not above ``T`` when the signal is shorter.
    Returns ``(power [n_fft // 2 + 1], n_fft used)``.
    """
    n_fft = min(n_fft, 1 << int(np.floor(np.log2(len(x)))))
    hop = n_fft // 2
    win = np.hanning(n_fft).astype(np.float64)
    nfr = 1 + max(0, (len(x) - n_fft) // hop)
    frames = np.stack([x[i * hop:i * hop + n_fft] for i in range(nfr)]).astype(np.float64) * win
    return (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0), n_fft


def bandwidth_hz(x: np.ndarray, sr: int, rolloff: float = 0.99, n_fft: int = 2048) -> float:
    """Frequency (Hz) below which ``rolloff`` of the signal energy lies (mean power spectrum)."""
    if len(x) < 16:
        return 0.0
    p, n_fft = _mean_power_spectrum(x, n_fft)
    c = np.cumsum(p)
    if c[-1] <= 0:
        return 0.0
    k = int(np.searchsorted(c, rolloff * c[-1]))
    return float(k * sr / n_fft)


def cutoff_hz(x: np.ndarray, sr: int, drop_db: float = 60.0, n_fft: int = 2048) -> float:
    """Highest frequency (Hz) whose smoothed mean power is within ``drop_db`` dB of the spectral peak:
    a rough estimate of the recording's low-pass cut-off (codec / resampling band limit)."""
    if len(x) < 16:
        return 0.0
    p, n_fft = _mean_power_spectrum(x, n_fft)
    k = max(1, len(p) // 128)
    ps = np.convolve(p, np.ones(k) / k, mode="same")
    db = 10 * np.log10(ps + 1e-20)
    idx = np.flatnonzero(db > db.max() - drop_db)
    return float(idx[-1] * sr / n_fft) if len(idx) else 0.0


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """soxr (HQ) resampling of a mono float32 signal ``[T]``."""
    if sr_in == sr_out:
        return x.astype(np.float32)
    import soxr

    return soxr.resample(x.astype(np.float32), sr_in, sr_out, quality="HQ").astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float ``[-1, 1]`` -> int16 with clipping."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


@dataclass
class Options:
    """Processing options passed to the workers."""

    out: str
    max_silence: float = 0.5
    min_duration: float = 0.3
    min_rms_db: float = -50.0
    trim_music: bool = False


def process_item(args: Tuple[Item, Options]) -> Dict[str, object]:
    """Decode, analyse, trim, resample and write one file. Returns a manifest record or a ``{"drop": reason}``."""
    it, opt = args
    try:
        x, sr = decode(it.path)
    except Exception as e:  # noqa: BLE001 - reported per file, the build continues
        return {"drop": f"decode error: {e}", "item": it.rel, "source": it.source}
    if len(x) == 0 or not np.isfinite(x).all():
        return {"drop": "empty or non-finite", "item": it.rel, "source": it.source}
    orig_dur = len(x) / sr
    if it.kind == "speech" or opt.trim_music:
        y = trim_silence(x, sr, max_silence=opt.max_silence)
    else:
        y = trim_silence(x, sr, max_silence=1e9)  # music: ends only
    if len(y) < opt.min_duration * sr:
        return {"drop": "too short after silence trim", "item": it.rel, "source": it.source}
    peak = float(np.abs(y).max())
    gain = 1.0
    if peak > 0.999:  # decoded Vorbis overshoot: scale to avoid hard clipping at int16
        gain = 0.999 / peak
        y = y * gain
    clipped = float(np.mean(np.abs(y) >= 0.99 * max(peak * gain, 1e-9))) if peak * gain > 0.98 else 0.0
    db, _ = frame_energy_db(y, sr)
    active = db[db > max(float(db.max()) - 40.0, -60.0)]
    rms_active_db = float(20 * np.log10(np.sqrt(np.mean(10 ** (active / 10))) + 1e-12)) if len(active) else -120.0
    if rms_active_db < opt.min_rms_db:
        return {"drop": "too quiet", "item": it.rel, "source": it.source}
    bw = bandwidth_hz(y, sr)
    cut = cutoff_hz(y, sr)
    outs: Dict[int, np.ndarray] = {}
    for tsr in TARGET_RATES:
        outs[tsr] = to_int16(resample(y, sr, tsr))
    pcm_hash = hashlib.sha1(outs[16000].tobytes()).hexdigest()
    import soundfile as sf

    paths = {}
    for tsr, pcm in outs.items():
        p = os.path.join(opt.out, f"wav{tsr // 1000}k", it.source, it.uid + ".wav")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = p + ".tmp.wav"
        sf.write(tmp, pcm, tsr, subtype="PCM_16")
        os.replace(tmp, p)
        paths[tsr] = p
    return {
        "id": f"{it.source}/{it.uid}",
        "paths": paths,
        "duration": round(len(outs[24000]) / 24000, 4),
        "orig_duration": round(orig_dur, 4),
        "source": it.source,
        "speaker": it.speaker,
        "language": it.language,
        "kind": it.kind,
        "split": it.split,
        "orig_path": it.rel,
        "orig_sample_rate": sr,
        "bandwidth_hz": round(bw, 1),
        "cutoff_hz": round(cut, 1),
        "rms_db": round(rms_active_db, 2),
        "peak": round(peak, 4),
        "gain": round(gain, 4),
        "clipped_fraction": round(clipped, 6),
        "pcm_sha1": pcm_hash,
    }


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def file_sha1(path: str) -> str:
    """sha1 of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def select_eval(records: Sequence[Dict[str, object]], n: int = 24, min_dur: float = 2.0,
                max_dur: float = 12.0) -> List[Dict[str, object]]:
    """Pick a fixed, deterministic eval subset of validation records (>= ``min_dur`` s),
    round-robin over speakers so every held-out voice is represented."""
    by_spk: Dict[str, List[Dict[str, object]]] = {}
    for r in records:
        if r["split"] == "valid" and r.get("kind") == "speech" and min_dur <= float(r["duration"]) <= max_dur:
            by_spk.setdefault(str(r["speaker"]), []).append(r)
    for v in by_spk.values():
        v.sort(key=lambda r: str(r["pcm_sha1"]))
    out: List[Dict[str, object]] = []
    spks = sorted(by_spk)
    i = 0
    while len(out) < n and any(len(by_spk[s]) > i for s in spks):
        for s in spks:
            if len(by_spk[s]) > i and len(out) < n:
                out.append(by_spk[s][i])
        i += 1
    return sorted(out, key=lambda r: str(r["id"]))


def manifest_line(r: Dict[str, object], sr: int) -> str:
    """jsonl line for one record at target rate ``sr``."""
    d = {
        "path": r["paths"][sr],  # type: ignore[index]
        "duration": r["duration"],
        "sample_rate": sr,
        "source": r["source"],
        "speaker": r["speaker"],
        "language": r["language"],
        "kind": r["kind"],
        "split": r["split"],
        "orig_sample_rate": r["orig_sample_rate"],
        "bandwidth_hz": r["bandwidth_hz"],
        "cutoff_hz": r["cutoff_hz"],
        "rms_db": r["rms_db"],
        "peak": r["peak"],
        "gain": r["gain"],
        "clipped_fraction": r["clipped_fraction"],
        "orig_path": r["orig_path"],
        "id": r["id"],
    }
    return json.dumps(d, ensure_ascii=False)


def build(out: str, packages: Sequence[str], debs: str, extract: str, include_music: bool = False,
          workers: int = 2, limit: int = 0, roots: Optional[Dict[str, str]] = None,
          max_silence: float = 0.5, eval_count: int = 24) -> Dict[str, object]:
    """Build the corpus; return the stats dict (also written to ``out/stats.json``).

    Args:
        out: output directory.
        packages: Debian package names.
        debs / extract: where .deb files are downloaded / extracted.
        roots: optional ``{package: extracted_root}`` overriding fetch + extract (used by tests).
        limit: process at most this many files per package (0 = all; for smoke tests).
    """
    t0 = time.time()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    items: List[Item] = []
    for pkg in packages:
        if roots and pkg in roots:
            root = roots[pkg]
        else:
            deb = fetch_package(pkg, debs)
            root = extract_package(deb, pkg, extract)
        found = discover(root, pkg, include_music)
        if limit:
            found = found[:limit]
        log(f"[scan] {pkg}: {len(found)} audio files")
        items.extend(found)
    if any(it.path.lower().endswith(".g722") for it in items) and shutil.which("ffmpeg") is None:
        raise SystemExit("build_corpus: ffmpeg not found; it is needed to decode the G.722 asterisk prompts "
                         "(install it: apt-get install ffmpeg)")
    # duplicate files by bytes (first in package order wins)
    seen_bytes: Dict[str, str] = {}
    unique: List[Item] = []
    dup_bytes = 0
    for it in items:
        h = file_sha1(it.path)
        if h in seen_bytes:
            dup_bytes += 1
            continue
        seen_bytes[h] = it.rel
        unique.append(it)
    log(f"[dedup] {dup_bytes} byte-identical files dropped, {len(unique)} to decode with {workers} workers")
    opt = Options(out=out, max_silence=max_silence)
    records: List[Dict[str, object]] = []
    drops: Dict[str, int] = {}
    seen_pcm: set = set()
    dup_pcm = 0
    jobs = [(it, opt) for it in unique]
    t1 = time.time()
    if workers > 1:
        ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
        pool = ctx.Pool(workers)
        results: Iterable[Dict[str, object]] = pool.imap(process_item, jobs, chunksize=8)
    else:
        pool = None
        results = map(process_item, jobs)
    try:
        for i, r in enumerate(results):
            if "drop" in r:
                key = f"{r['source']}: {r['drop'].split(':')[0]}"  # type: ignore[union-attr]
                drops[key] = drops.get(key, 0) + 1
                if str(r["drop"]).startswith("decode error"):
                    log(f"[warn] {r['item']}: {r['drop']}")
            elif r["pcm_sha1"] in seen_pcm:
                dup_pcm += 1
                for p in r["paths"].values():  # type: ignore[union-attr]
                    try:
                        os.remove(p)
                    except OSError:
                        pass
            else:
                seen_pcm.add(r["pcm_sha1"])
                records.append(r)
            if (i + 1) % 1000 == 0:
                log(f"[decode] {i + 1}/{len(jobs)} files, {time.time() - t1:.0f} s")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    records.sort(key=lambda r: str(r["id"]))
    # manifests
    for sr in TARGET_RATES:
        for split in ("train", "valid"):
            p = os.path.join(out, f"{split}_{sr // 1000}k.jsonl")
            with open(p + ".tmp", "w", encoding="utf-8") as f:
                for r in records:
                    if r["split"] == split:
                        f.write(manifest_line(r, sr) + "\n")
            os.replace(p + ".tmp", p)
    ev = select_eval(records, n=eval_count)
    for sr, name in ((24000, "valid_eval.jsonl"), (16000, "valid_eval_16k.jsonl")):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            for r in ev:
                f.write(manifest_line(r, sr) + "\n")
    # stats
    per: Dict[str, Dict[str, object]] = {}
    for r in records:
        k = str(r["source"])
        s = per.setdefault(k, {"train_clips": 0, "valid_clips": 0, "train_hours": 0.0, "valid_hours": 0.0,
                               "speakers": set(), "bandwidth_hz_median": [],
                               "cutoff_hz_median": []})
        s[f"{r['split']}_clips"] = int(s[f"{r['split']}_clips"]) + 1  # type: ignore[arg-type]
        s[f"{r['split']}_hours"] = float(s[f"{r['split']}_hours"]) + float(r["duration"]) / 3600  # type: ignore
        s["speakers"].add(r["speaker"])  # type: ignore[union-attr]
        s["bandwidth_hz_median"].append(r["bandwidth_hz"])  # type: ignore[union-attr]
        s["cutoff_hz_median"].append(r["cutoff_hz"])  # type: ignore[union-attr]
    for s in per.values():
        s["speakers"] = len(s["speakers"])  # type: ignore[arg-type]
        s["bandwidth_hz_median"] = float(np.median(s["bandwidth_hz_median"]))  # type: ignore[arg-type]
        s["cutoff_hz_median"] = float(np.median(s["cutoff_hz_median"]))  # type: ignore[arg-type]
        s["train_hours"] = round(float(s["train_hours"]), 4)  # type: ignore[arg-type]
        s["valid_hours"] = round(float(s["valid_hours"]), 4)  # type: ignore[arg-type]
    tot = {sp: {"clips": sum(1 for r in records if r["split"] == sp),
                "hours": round(sum(float(r["duration"]) for r in records if r["split"] == sp) / 3600, 4)}
           for sp in ("train", "valid")}
    stats: Dict[str, object] = {
        "per_source": per, "total": tot, "eval_clips": len(ev),
        "eval_hours": round(sum(float(r["duration"]) for r in ev) / 3600, 4),
        "dropped": drops, "duplicates_bytes": dup_bytes, "duplicates_pcm": dup_pcm,
        "valid_rules": {k: sorted(v) for k, v in VALID_RULES.items()},  # type: ignore[call-overload]
        "wall_time_s": round(time.time() - t0, 1), "workers": workers, "packages": list(packages),
    }
    with open(os.path.join(out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    # report
    log("")
    log(f"{'source':34s} {'train':>7s} {'h':>7s} {'valid':>7s} {'h':>7s} {'spk':>4s} {'bw99':>6s} {'cutoff':>6s}")
    for k in sorted(per):
        s = per[k]
        log(f"{k:34s} {s['train_clips']:7d} {s['train_hours']:7.3f} {s['valid_clips']:7d} {s['valid_hours']:7.3f} "
            f"{s['speakers']:4d} {s['bandwidth_hz_median']:6.0f} {s['cutoff_hz_median']:6.0f}")
    log(f"{'TOTAL':34s} {tot['train']['clips']:7d} {tot['train']['hours']:7.3f} {tot['valid']['clips']:7d} "
        f"{tot['valid']['hours']:7.3f}")
    log("(bw99 = median 99 % energy roll-off, cutoff = median -60 dB spectral cut-off, Hz at the original rate)")
    log(f"eval set: {len(ev)} clips ({stats['eval_hours'] * 3600:.0f} s) -> {out}/valid_eval.jsonl")
    log(f"dropped: {drops}  duplicates: {dup_bytes} by bytes, {dup_pcm} by decoded PCM")
    log(f"wall time: {stats['wall_time_s']:.0f} s ({workers} workers)")
    return stats


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output corpus directory")
    p.add_argument("--debs", default=None, help="where .deb files go (default: OUT/_debs)")
    p.add_argument("--extract", default=None, help="where packages are extracted (default: OUT/_extract)")
    p.add_argument("--include-music", action="store_true", help="also add the music packages (kind=music)")
    p.add_argument("--packages", default=None, help="comma-separated package list overriding the defaults")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="max files per package (0 = all)")
    p.add_argument("--max-silence", type=float, default=0.5, help="longest silence kept (s)")
    p.add_argument("--eval-count", type=int, default=24, help="clips in valid_eval.jsonl")
    a = p.parse_args(argv)
    if a.packages:
        pkgs = [x.strip() for x in a.packages.split(",") if x.strip()]
    else:
        pkgs = list(SPEECH_PACKAGES)
        if a.include_music:
            pkgs += [m for m in MUSIC_PACKAGES if m not in pkgs]
    debs = a.debs or os.path.join(a.out, "_debs")
    extract = a.extract or os.path.join(a.out, "_extract")
    build(a.out, pkgs, debs, extract, include_music=a.include_music, workers=a.workers, limit=a.limit,
          max_silence=a.max_silence, eval_count=a.eval_count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
