"""Audio I/O helpers: loading, atomic saving, resampling, downmixing.

All arrays are ``np.float32`` shaped ``[C, T]`` (channels first).  User errors
(missing file, not audio, empty audio, ...) raise :class:`codec.errors.CodecError`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from .errors import CodecError

__all__ = [
    "load_audio",
    "save_audio",
    "resample",
    "to_mono",
    "audio_info",
    "atomic_output",
    "AudioInfo",
]

PathLike = Union[str, os.PathLike]

#: Extensions libsndfile cannot read but ffmpeg can (tried via ffmpeg directly).
_FFMPEG_ONLY_EXT = {".g722", ".sln", ".m4a", ".aac", ".opus", ".wma", ".amr", ".webm", ".mp4"}


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CodecError(f"input file '{path}' does not exist.")
    if path.is_dir():
        raise CodecError(f"input '{path}' is a directory, not an audio file.")
    if not os.access(path, os.R_OK):
        raise CodecError(f"input file '{path}' is not readable (permission denied).")


def _ffmpeg_decode(path: Path, sr_hint: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """Decode any ffmpeg-readable file to float32 ``[C, T]`` via a subprocess."""
    ffmpeg = shutil.which("ffmpeg")
    ffprobe = shutil.which("ffprobe")
    if ffmpeg is None:
        raise CodecError(f"'{path}' is not an audio file that soundfile can read (install ffmpeg for more formats).")
    sr, channels = None, None
    if ffprobe is not None:
        try:
            out = subprocess.run(
                [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
                 "stream=sample_rate,channels", "-of", "csv=p=0", str(path)],
                capture_output=True, text=True, timeout=60,
            )
            fields = out.stdout.strip().splitlines()[0].split(",") if out.stdout.strip() else []
            if out.returncode == 0 and len(fields) >= 2:
                sr, channels = int(fields[0]), int(fields[1])
        except (subprocess.SubprocessError, ValueError, IndexError, OSError):
            sr, channels = None, None
    if sr is None or channels is None:
        raise CodecError(f"'{path}' is not a readable audio file.")
    proc = subprocess.run(
        [ffmpeg, "-v", "error", "-nostdin", "-i", str(path), "-f", "f32le", "-acodec", "pcm_f32le", "-"],
        capture_output=True, timeout=3600,
    )
    if proc.returncode != 0:
        raise CodecError(f"'{path}' is not a readable audio file (ffmpeg could not decode it).")
    data = np.frombuffer(proc.stdout, dtype="<f4")
    n = (data.size // channels) * channels
    wav = data[:n].reshape(-1, channels).T.astype(np.float32, copy=True)
    return wav, sr


class AudioInfo:
    """Basic facts about an audio file: ``sample_rate``, ``channels``, ``frames`` (samples per channel)."""

    def __init__(self, sample_rate: int, channels: int, frames: int, backend: str):
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.frames = int(frames)
        self.backend = backend

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"AudioInfo(sr={self.sample_rate}, ch={self.channels}, frames={self.frames}, {self.backend})"


def audio_info(path: PathLike) -> AudioInfo:
    """Return :class:`AudioInfo` for ``path`` (soundfile; ``backend='ffmpeg'`` with frames=-1 if only ffmpeg can read it)."""
    import soundfile as sf

    p = Path(path)
    _check_readable(p)
    try:
        i = sf.info(str(p))
        return AudioInfo(i.samplerate, i.channels, i.frames, "soundfile")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass
    wav, sr = _ffmpeg_decode(p)
    return AudioInfo(sr, wav.shape[0], wav.shape[1], "ffmpeg")


def load_audio(path: PathLike) -> Tuple[np.ndarray, int]:
    """Load an audio file as ``(wav float32 [C, T], sample_rate)``.

    Uses soundfile (wav, flac, ogg, mp3, ...); falls back to an ``ffmpeg`` subprocess for
    formats libsndfile cannot read (G.722, .sln, m4a, ...) when ffmpeg is on PATH.
    Raises :class:`CodecError` for missing/unreadable/non-audio files.  Empty audio is
    returned as ``[C, 0]`` (callers decide whether that is an error).
    """
    import soundfile as sf

    p = Path(path)
    _check_readable(p)
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), int(sr)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        err = exc
    if p.stat().st_size == 0:
        raise CodecError(f"input file '{p}' is empty (0 bytes), not audio.")
    try:
        return _ffmpeg_decode(p)
    except CodecError:
        raise
    except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover - unusual system failures
        raise CodecError(f"'{p}' is not a readable audio file ({err}).") from exc


@contextmanager
def atomic_output(path: PathLike, suffix: Optional[str] = None) -> Iterator[Path]:
    """Context manager yielding a temporary path in the same directory as ``path``.

    On success the temp file is moved onto ``path`` with :func:`os.replace` (atomic);
    on any exception (including KeyboardInterrupt) it is removed, so no partial output
    is ever left behind.  Raises :class:`CodecError` if the directory is not writable.
    """
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.exists():
        raise CodecError(f"cannot write '{dest}': directory '{parent}' does not exist.")
    if not parent.is_dir():
        raise CodecError(f"cannot write '{dest}': '{parent}' is not a directory.")
    if dest.is_dir():
        raise CodecError(f"cannot write '{dest}': it is a directory.")
    sfx = suffix if suffix is not None else dest.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".part{sfx}", dir=str(parent))
    except OSError as exc:
        raise CodecError(f"cannot write '{dest}': {exc.strerror or exc} .".replace(" .", ".")) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        try:
            tmp_path.unlink()
        except FileNotFoundError:
            pass
        raise


def save_audio(path: PathLike, wav: np.ndarray, sample_rate: int, subtype: Optional[str] = None) -> None:
    """Write ``wav`` (``[C, T]`` or ``[T]``, float) to ``path`` atomically (temp file + ``os.replace``).

    The format is inferred from the extension (wav, flac, ogg, ...); wav defaults to 16-bit PCM
    unless ``subtype`` is given.  Values are clipped to [-1, 1] for integer subtypes.
    """
    import soundfile as sf

    try:
        import torch

        if isinstance(wav, torch.Tensor):
            wav = wav.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(wav, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise CodecError(f"audio to save must be [C, T] or [T], got shape {tuple(arr.shape)}.")
    dest = Path(path)
    ext = dest.suffix.lower().lstrip(".")
    fmt = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "aiff": "AIFF", "aif": "AIFF", "mp3": "MP3"}.get(ext)
    if fmt is None:
        raise CodecError(f"cannot write '{dest}': unsupported output extension '.{ext}' (use .wav, .flac or .ogg).")
    if subtype is None and fmt == "WAV":
        subtype = "PCM_16"
    if subtype is not None and subtype.startswith("PCM"):
        arr = np.clip(arr, -1.0, 1.0)
    with atomic_output(dest) as tmp:
        try:
            sf.write(str(tmp), arr.T, int(sample_rate), format=fmt, subtype=subtype)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise CodecError(f"cannot write '{dest}': {exc}.") from exc


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample ``x`` (``[..., T]`` float) from ``sr_in`` to ``sr_out`` with soxr (high quality).

    Returns float32 ``[..., T']`` with ``T' = round(T * sr_out / sr_in)``.  No-op if rates match.
    """
    import soxr

    x = np.asarray(x, dtype=np.float32)
    if int(sr_in) == int(sr_out):
        return x
    if sr_in <= 0 or sr_out <= 0:
        raise CodecError(f"invalid sample rates for resampling: {sr_in} -> {sr_out}.")
    lead = x.shape[:-1]
    t = x.shape[-1]
    flat = x.reshape(-1, t)
    if t == 0:
        return np.zeros(lead + (0,), dtype=np.float32)
    # soxr wants [T, C]
    y = soxr.resample(np.ascontiguousarray(flat.T), int(sr_in), int(sr_out), quality="HQ")
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        y = y[:, None]
    return np.ascontiguousarray(y.T).reshape(lead + (y.shape[0],))


def to_mono(x: np.ndarray) -> np.ndarray:
    """Downmix ``[C, T]`` to ``[1, T]`` by averaging channels (``[T]`` input returns ``[1, T]``)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x[None]
    if x.shape[0] == 1:
        return x
    return x.mean(axis=0, keepdims=True, dtype=np.float32).astype(np.float32)
