"""Streaming keeps memory flat: peak RSS (ru_maxrss) of a subprocess encoding/decoding 10 minutes of audio
with the tiny model is close to that for 1 minute (no timing assertions)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from test_cli_common import make_tiny_model_dir

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ("import resource, sys\n"
          "from codec.cli import main\n"
          "rc = main(sys.argv[1:])\n"
          "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
          "sys.exit(rc)\n")


def write_long_wav(path: Path, sr: int, seconds: int) -> None:
    """Write a long tone+noise wav block by block (the test process itself stays small)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for s in range(seconds):
            t = (np.arange(sr) + s * sr) / sr
            f.write((0.2 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(sr)).astype(np.float32))


def peak_kb(*argv) -> int:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, argv)], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split("MAXRSS_KB")[1].split()[0])


@pytest.mark.slow
def test_memory_flat_for_long_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEC_PRETRAINED_DIR", str(tmp_path))  # decode finds the model the files name
    tiny = make_tiny_model_dir(tmp_path / "tiny")
    sr = 22050  # the tiny model runs at 16 kHz: encode streams through the resampler, decode back to 22.05 kHz
    write_long_wav(tmp_path / "1min.wav", sr, 60)
    write_long_wav(tmp_path / "10min.wav", sr, 600)
    enc = {}
    for name in ("1min", "10min"):
        enc[name] = peak_kb("encode", tmp_path / f"{name}.wav", tmp_path / f"{name}.codes", "--nq", 4,
                            "--model", tiny, "-q")
    dec = {}
    for name in ("1min", "10min"):
        dec[name] = peak_kb("decode", tmp_path / f"{name}.codes", tmp_path / f"{name}.out.wav", "-q")
    from codec.codes_format import read_header

    h = read_header(tmp_path / "10min.codes")
    assert (h.sample_rate, h.orig_sample_rate) == (16000, sr)  # the resampler ran on the way in
    assert h.num_frames == -(-600 * 16000 // h.hop_length)
    info = sf.info(str(tmp_path / "10min.out.wav"))
    assert (info.samplerate, info.frames) == (sr, 600 * sr)  # and on the way out
    # 10 min of float32 audio alone is 53 MB at 22.05 kHz, and offline encoding would also hold every layer
    # activation; streaming (with periodic malloc_trim) stays at the 1-min peak.
    print(f"encode peak RSS: 1 min {enc['1min'] / 1024:.1f} MiB, 10 min {enc['10min'] / 1024:.1f} MiB; "
          f"decode: 1 min {dec['1min'] / 1024:.1f} MiB, 10 min {dec['10min'] / 1024:.1f} MiB")
    assert enc["10min"] - enc["1min"] < 16 * 1024
    assert dec["10min"] - dec["1min"] < 16 * 1024
