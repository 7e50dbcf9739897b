"""Audio I/O helpers: loading, atomic saving, resampling, downmixing, level scaling.

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
from typing import Iterable, Iterator, List, Optional, Tuple, Union

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
    "AudioReader",
]

PathLike = Union[str, os.PathLike]

#: Extensions recognised as audio when scanning directories (soundfile formats + common ffmpeg ones).
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".w64", ".rf64", ".caf",
                    ".opus", ".m4a", ".aac", ".g722", ".sln", ".wma", ".webm"}


def find_files(folder: PathLike, extensions: Optional[Iterable[str]] = AUDIO_EXTENSIONS) -> List[Path]:
    """The files under ``folder`` (recursively, sorted, hidden names skipped) whose lower-cased suffix is in
    ``extensions`` (all files when ``None``): the one directory scan of codec (CLI inputs, eval, training data)."""
    exts = None if extensions is None else {e.lower() for e in extensions}
    return sorted(f for f in Path(folder).rglob("*")
                  if f.is_file() and not f.name.startswith(".") and (exts is None or f.suffix.lower() in exts))


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CodecError(f"input file '{path}' does not exist.")
    if path.is_dir():
        raise CodecError(f"input '{path}' is a directory, not an audio file.")
    if not os.access(path, os.R_OK):
        raise CodecError(f"input file '{path}' is not readable (permission denied).")


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
    with AudioReader(p) as reader:
        return AudioInfo(reader.sample_rate, reader.channels, -1, "ffmpeg")


def load_audio(path: PathLike) -> Tuple[np.ndarray, int]:
    """Load an audio file as ``(wav float32 [C, T], sample_rate)``.

    Uses soundfile (wav, flac, ogg, mp3, ...); falls back to an ``ffmpeg`` subprocess for
    formats libsndfile cannot read (G.722, .sln, m4a, ...) when ffmpeg is on PATH.
    Raises :class:`CodecError` for missing/unreadable/non-audio files.  Empty audio is
    returned as ``[C, 0]`` (callers decide whether that is an error).
    """
    with AudioReader(path) as reader:
        blocks = []
        while True:
            blk = reader.read(1 << 20)
            if blk.shape[1] == 0:
                break
            blocks.append(blk)
        sr = reader.sample_rate
        if not blocks:
            return np.zeros((reader.channels, 0), dtype=np.float32), sr
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)), sr


def current_umask() -> int:
    """The process umask (read from /proc on Linux, else by setting and restoring it)."""
    try:
        with open("/proc/self/status", "r") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ffmpeg_path_arg(path: PathLike) -> str:
    """``path`` as an ffmpeg/ffprobe URL (``file:/abs/path``) that can never be read as an option or protocol."""
    return "file:" + os.path.abspath(os.fspath(path))


@contextmanager
def atomic_output(path: PathLike, suffix: Optional[str] = None) -> Iterator[Path]:
    """Context manager yielding a temporary path in the same directory as ``path``.

    On success the temp file gets the mode a new file would get (``0o666 & ~umask``, not mkstemp's 0600) and is
    moved onto ``path`` with :func:`os.replace` (atomic);
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
        try:
            os.chmod(tmp_path, 0o666 & ~current_umask())
        except OSError:  # pragma: no cover - e.g. a filesystem without modes
            pass
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
    if t == 0:
        return np.zeros(lead + (0,), dtype=np.float32)
    flat = x.reshape(-1, t)
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


class AudioReader:
    """Read an audio file in blocks with flat memory: ``with AudioReader(path) as r: blk = r.read(n)``.

    ``read(n)`` returns float32 ``[C, n']`` with ``n' <= n`` (``n' == 0`` at end of file).
    Attributes: ``sample_rate``, ``channels``, ``frames`` (total per channel, or -1 if unknown
    before reading, e.g. for ffmpeg-decoded inputs).  Uses soundfile, or an ``ffmpeg`` pipe for
    formats libsndfile cannot read.  Raises :class:`CodecError` for missing/unreadable/non-audio files.
    """

    def __init__(self, path: PathLike):
        import soundfile as sf

        self.path = Path(path)
        _check_readable(self.path)
        self._sf = None
        self._proc = None
        self._eof = False
        try:
            self._sf = sf.SoundFile(str(self.path), "r")
            self.sample_rate = int(self._sf.samplerate)
            self.channels = int(self._sf.channels)
            self.frames = int(self._sf.frames)
            self.backend = "soundfile"
            return
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
            self._sf = None
        if self.path.stat().st_size == 0:
            raise CodecError(f"input file '{self.path}' is empty (0 bytes), not audio.")
        self._open_ffmpeg()

    def _open_ffmpeg(self) -> None:
        ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
        if ffmpeg is None or ffprobe is None:
            raise CodecError(f"'{self.path}' is not an audio file that soundfile can read (install ffmpeg for more formats).")
        try:
            out = subprocess.run(
                [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
                 "stream=sample_rate,channels", "-of", "csv=p=0", ffmpeg_path_arg(self.path)],
                capture_output=True, text=True, timeout=60,
            )
            fields = out.stdout.strip().splitlines()[0].split(",") if out.stdout.strip() else []
            if out.returncode != 0 or len(fields) < 2:
                raise ValueError
            self.sample_rate, self.channels = int(fields[0]), int(fields[1])
        except (subprocess.SubprocessError, ValueError, IndexError, OSError):
            raise CodecError(f"'{self.path}' is not an audio file (neither soundfile nor ffmpeg can read it).") from None
        if self.sample_rate <= 0 or self.channels <= 0:
            raise CodecError(f"'{self.path}' is not an audio file (neither soundfile nor ffmpeg can read it).")
        self.frames = -1
        self.backend = "ffmpeg"
        self._proc = subprocess.Popen(
            [ffmpeg, "-v", "error", "-nostdin", "-i", ffmpeg_path_arg(self.path), "-map", "0:a:0",
             "-f", "f32le", "-acodec", "pcm_f32le", "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def read(self, n: int) -> np.ndarray:
        """Read up to ``n`` samples per channel -> float32 ``[C, n']`` (``n' == 0`` at end of file)."""
        if self._eof or n <= 0:
            return np.zeros((self.channels, 0), dtype=np.float32)
        if self._sf is not None:
            try:
                data = self._sf.read(n, dtype="float32", always_2d=True)
            except Exception as exc:  # libsndfile decode errors mid-file
                raise CodecError(f"'{self.path}' could not be decoded past sample {self._sf.tell()} ({exc}).") from exc
            if data.shape[0] == 0:
                self._eof = True
            return np.ascontiguousarray(data.T)
        assert self._proc is not None and self._proc.stdout is not None
        want = n * self.channels * 4
        buf = bytearray()
        while len(buf) < want:
            piece = self._proc.stdout.read(want - len(buf))
            if not piece:
                break
            buf += piece
        if len(buf) < want:
            self._eof = True
            self._proc.wait()
            if self._proc.returncode != 0 and not buf:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace").strip()
                first = err.splitlines()[0] if err else "unknown error"
                raise CodecError(f"'{self.path}' is not a decodable audio file (ffmpeg: {first}).")
        usable = (len(buf) // (4 * self.channels)) * 4 * self.channels
        arr = np.frombuffer(bytes(buf[:usable]), dtype="<f4").reshape(-1, self.channels)
        return np.ascontiguousarray(arr.T, dtype=np.float32)

    def close(self) -> None:
        """Release the file / ffmpeg process."""
        if self._sf is not None:
            self._sf.close()
            self._sf = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for fh in (self._proc.stdout, self._proc.stderr):
                if fh is not None:
                    fh.close()
            self._proc = None

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def rms_normalize(x: np.ndarray, target_db: Optional[float], max_gain_db: float = 20.0) -> np.ndarray:
    """Scale ``x [..., T]`` to RMS ``target_db`` dBFS, gain limited to ``max_gain_db`` and peak to 0.99
    (``target_db`` None: ``x`` unchanged)."""
    if target_db is None or x.size == 0:
        return x
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)
    gain_db = min(float(target_db) - 20.0 * np.log10(rms), float(max_gain_db))
    gain = 10.0 ** (gain_db / 20.0)
    peak = float(np.max(np.abs(x))) * gain
    if peak > 0.99:
        gain *= 0.99 / peak
    return (x * gain).astype(np.float32)
