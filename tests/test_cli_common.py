"""Shared helpers for the CLI tests (no tests here): a tiny random-weight model saved with save_pretrained, signals."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import numpy as np
import soundfile as sf


def make_tiny_model_dir(path: Path, seed: int = 0, **overrides) -> Path:
    """Save ``CodecModel(CodecConfig.preset("tiny", **overrides))`` with seeded random weights to ``path``."""
    import torch

    from codec import CodecConfig, CodecModel
    from codec.pretrained import save_pretrained

    torch.manual_seed(seed)
    model = CodecModel(CodecConfig.preset("tiny", **overrides)).eval()
    save_pretrained(model, str(path))
    return path


def speechlike(sr: int, seconds: float, channels: int = 1, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    """Harmonic signal with a syllable envelope, float32 ``[T, C]`` (soundfile layout)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(sr * seconds))) / sr
    out = []
    for c in range(channels):
        f0 = 120.0 + 40 * c
        ph = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / sr
        x = sum(np.sin(k * ph + rng.uniform(0, 6)) / k for k in range(1, 12))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t - np.pi / 2)
        out.append(amp * x / (np.abs(x).max() + 1e-9) * (0.2 + 0.8 * env))
    return np.stack(out, 1).astype(np.float32)


def write_wav(path: Path, sr: int, seconds: float, channels: int = 1, subtype: str = "PCM_16", **kw) -> Path:
    sf.write(str(path), speechlike(sr, seconds, channels, **kw), sr, subtype=subtype)
    return path


def listing(d: Path) -> List[str]:
    """All entries under ``d`` (relative, sorted), to check that no partial/temp file is left."""
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*"))


@contextmanager
def models_by_name(directory: Path) -> Iterator[Path]:
    """Inside, the model directories in ``directory`` resolve by name (``$CODEC_PRETRAINED_DIR``), as ``codec
    decode`` needs for the name a ``.codes`` file records (never a path)."""
    old = os.environ.get("CODEC_PRETRAINED_DIR")
    os.environ["CODEC_PRETRAINED_DIR"] = str(directory)
    try:
        yield directory
    finally:
        if old is None:
            os.environ.pop("CODEC_PRETRAINED_DIR", None)
        else:
            os.environ["CODEC_PRETRAINED_DIR"] = old
