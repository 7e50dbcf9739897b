"""File-level encode/decode pipelines used by ``codec encode`` / ``codec decode`` (streaming, flat memory).

Encode: audio file -> blocks (soundfile / ffmpeg pipe) -> optional downmix -> streaming soxr resample to
the model rate -> ``model.stream_encoder`` -> codes collected in memory (they are tiny) -> ``.codes`` written
atomically.  Decode: ``.codes`` -> ``model.stream_decoder`` in chunks -> streaming resample to the output rate
-> written block by block to a temporary file that is renamed on success.

Several files can share one streaming batch (``batch_size`` = number of code streams decoded together);
a file that ends early is fed zeros (its extra frames are discarded), which is what offline
encoding does with its end padding too.

Policy for hard inputs (documented in ``docs/codes-format.md`` / the CLI help):

- zero samples: refused; shorter than one frame: padded with zeros to one frame (the original length is
  stored, so decoding gives back exactly the original number of samples);
- NaN / infinite samples: refused;
- clipped (>= 0.1 % of samples at |x| >= 0.999) or above full scale (|x| > 1): a warning, then encoded as is;
- more than :data:`MAX_INPUT_CHANNELS` channels: refused.
"""
from __future__ import annotations

import hashlib
import math
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .audio import AudioReader, atomic_output
from .codes_format import (MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, CodesFile, CodesHeader, bits_for, read_codes,
                           write_codes)
from .errors import CodecError, OptionError

__all__ = [
    "DEFAULT_MODEL",
    "MAX_INPUT_CHANNELS",
    "model_fingerprint",
    "codes_model_name",
    "codes_header",
    "resolve_model",
    "check_not_same_file",
    "EncodeJob",
    "DecodeJob",
    "JobResult",
    "encode_files",
    "decode_files",
    "encode_file",
    "decode_file",
]

DEFAULT_MODEL = "speech-24k"
MAX_INPUT_CHANNELS = 8
CLIP_LEVEL = 0.999
CLIP_WARN_FRACTION = 1e-3
PathLike = Union[str, os.PathLike]
Progress = Optional[Callable[[float], None]]  # called with seconds of audio processed


# ---------------------------------------------------------------------------------------------
# model helpers
# ---------------------------------------------------------------------------------------------

def model_fingerprint(model) -> bytes:
    """SHA-256 (32 bytes) of the model's ``state_dict`` (sorted names, dtype, shape, raw little-endian bytes).

    Cached on the model object (``model._codes_fingerprint``); device and load path do not change it.
    """
    cached = getattr(model, "_codes_fingerprint", None)
    if isinstance(cached, bytes):
        return cached
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode("utf-8"))
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes() if t.numel() else b"")
    digest = h.digest()
    try:
        object.__setattr__(model, "_codes_fingerprint", digest)
    except Exception:  # pragma: no cover
        pass
    return digest


def _pretrained_dir() -> Path:
    """Kept for callers of older versions: the first directory pretrained names are looked up in."""
    from .pretrained import pretrained_dir

    return pretrained_dir()


def resolve_model(spec: Optional[str] = None, device: Optional[str] = None) -> Tuple[object, str]:
    """Load a model by directory or pretrained name -> ``(model in eval mode, name to store in .codes)``.

    ``spec=None`` means the default shipped model :data:`DEFAULT_MODEL`.  Names and paths are resolved by
    :func:`codec.pretrained.locate` (the one resolver of codec): names only in ``$CODEC_PRETRAINED_DIR`` then
    ``<repo>/pretrained``, paths as given.  The stored name is :func:`codes_model_name`: the name for names, the
    directory's name for paths (``.codes`` files never record a local path).
    Raises :class:`CodecError` with one sentence if missing or invalid.
    """
    try:
        from .pretrained import load, locate
    except ImportError as exc:  # pragma: no cover - during parallel development
        raise CodecError(f"the model code is not available ({exc}).") from exc
    directory, stored = locate(spec)
    try:
        model = load(directory, device=device)
    except CodecError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CodecError(f"cannot load model '{stored}': {msg.rstrip('.')}.") from exc
    model.eval()
    return model, codes_model_name(model)


def codes_model_name(model) -> str:
    """The model name a ``.codes`` header records: ``model.model_name`` (set by :func:`codec.load`: the pretrained
    name, or the model directory's name -- never a path), or ``""`` for a model not loaded from a directory."""
    return str(getattr(model, "model_name", "") or "")


def codes_header(model, nq: int, num_frames: int, channels: int, orig_channels: int, orig_length: int,
                 orig_sample_rate: int, model_name: Optional[str] = None) -> CodesHeader:
    """The header of a ``.codes`` file holding ``channels`` code streams of ``num_frames`` frames x ``nq`` levels
    made by ``model`` from audio of ``orig_length`` samples x ``orig_channels`` at ``orig_sample_rate`` Hz (the one
    header builder: ``codec encode`` and :func:`codec.save_codes` both use it).  ``model_name`` defaults to
    :func:`codes_model_name`; a path is recorded by its last component only (never a local path)."""
    sr, hop, cb, _ = _model_facts(model)
    name = codes_model_name(model) if model_name is None else str(model_name)
    if name and ("/" in name or os.sep in name or name.startswith("~")):
        name = Path(name).expanduser().resolve().name
    return CodesHeader(
        sample_rate=sr, hop_length=hop, frame_rate=sr / hop, codebook_size=cb, bits_per_code=bits_for(cb),
        channels=int(channels), orig_channels=int(orig_channels), num_levels=int(nq), num_frames=int(num_frames),
        orig_length=int(orig_length), orig_sample_rate=int(orig_sample_rate), weights_sha256=model_fingerprint(model),
        model_name=name,
    )


def _model_facts(model) -> Tuple[int, int, int, int]:
    """(sample_rate, hop_length, codebook_size, num_quantizers) of a CodecModel."""
    return int(model.sample_rate), int(model.hop_length), int(model.codebook_size), int(model.num_quantizers)


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        import torch

        return torch.device("cpu")


def check_not_same_file(src: PathLike, dst: PathLike) -> None:
    """Raise :class:`CodecError` if writing ``dst`` would overwrite the input ``src``."""
    s, d = Path(src), Path(dst)
    same = s.resolve() == d.resolve()
    if not same and d.exists():
        try:
            same = os.path.samefile(s, d)
        except OSError:
            same = False
    if same:
        raise CodecError(f"output '{dst}' would overwrite the input '{src}'; choose another output path.")


def _check_output_dir(dst: Path) -> None:
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise CodecError(f"cannot write '{dst}': '{parent}' is not a directory.")
        raise CodecError(f"cannot write '{dst}': directory '{parent}' does not exist.")
    if dst.is_dir():
        raise CodecError(f"cannot write '{dst}': it is a directory.")
    if not os.access(parent, os.W_OK):
        raise CodecError(f"cannot write '{dst}': permission denied.")


# ---------------------------------------------------------------------------------------------
# jobs
# ---------------------------------------------------------------------------------------------

@dataclass
class EncodeJob:
    """One file to encode: ``src`` audio -> ``dst`` .codes."""

    src: Path
    dst: Path


@dataclass
class DecodeJob:
    """One file to decode: ``src`` .codes -> ``dst`` audio."""

    src: Path
    dst: Path


@dataclass
class JobResult:
    """Outcome of one job: ``header`` on success, else ``failure`` (its ``error`` is one sentence); ``warnings``
    either way."""

    src: Path
    dst: Path
    header: Optional[CodesHeader] = None
    failure: Optional[CodecError] = None
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def error(self) -> Optional[str]:
        """The failure as one sentence (``None`` on success)."""
        return None if self.failure is None else str(self.failure)


class _EncState:
    """Per-file state of a streaming encode."""

    def __init__(self, job: EncodeJob, keep_channels: bool, model_sr: int, block: int):
        import soxr

        self.job = job
        self.reader = AudioReader(job.src)
        c = self.reader.channels
        if c > MAX_INPUT_CHANNELS:
            self.reader.close()
            raise CodecError(
                f"'{job.src}' has {c} channels; codec supports 1 to {MAX_INPUT_CHANNELS} channels."
            )
        if self.reader.frames == 0:
            self.reader.close()
            raise CodecError(f"'{job.src}' contains no audio samples.")
        if not MIN_SAMPLE_RATE <= self.reader.sample_rate <= MAX_SAMPLE_RATE:
            sr = self.reader.sample_rate
            self.reader.close()
            raise CodecError(f"'{job.src}' has sample rate {sr} Hz; codec supports {MIN_SAMPLE_RATE} to "
                             f"{MAX_SAMPLE_RATE} Hz.")
        self.in_channels = c
        self.streams = c if keep_channels else 1
        self.in_sr = self.reader.sample_rate
        self.resampler = (
            None if self.in_sr == model_sr
            else soxr.ResampleStream(self.in_sr, model_sr, self.streams, dtype="float32", quality="HQ")
        )
        self.block = max(1024, int(math.ceil(block * self.in_sr / model_sr)))
        self.fifo: List[np.ndarray] = []
        self.fifo_len = 0
        self.eof = False
        self.in_len = 0
        self.model_len = 0
        self.peak = 0.0
        self.clipped = 0
        self.codes: List[np.ndarray] = []
        self.failure: Optional[CodecError] = None
        self.slot = 0

    def _push(self, y: np.ndarray) -> None:
        if y.shape[1]:
            self.fifo.append(y)
            self.fifo_len += y.shape[1]
            self.model_len += y.shape[1]

    def fill(self, need: int) -> float:
        """Read until ``need`` model-rate samples are buffered or EOF; returns input seconds read."""
        secs = 0.0
        while self.fifo_len < need and not self.eof:
            blk = self.reader.read(self.block)
            if blk.shape[1] == 0:
                self.eof = True
                if self.resampler is not None:
                    tail = self.resampler.resample_chunk(np.zeros((0, self.streams), np.float32), last=True)
                    self._push(np.ascontiguousarray(np.asarray(tail, np.float32).reshape(-1, self.streams).T))
                self.reader.close()
                break
            if not np.isfinite(blk).all():
                bad = int(np.argmax(~np.isfinite(blk).all(axis=0)))
                raise CodecError(
                    f"'{self.job.src}' contains NaN or infinite samples (first at sample {self.in_len + bad})."
                )
            a = np.abs(blk)
            self.peak = max(self.peak, float(a.max()))
            self.clipped += int((a >= CLIP_LEVEL).sum())
            self.in_len += blk.shape[1]
            secs += blk.shape[1] / self.in_sr
            x = blk if self.streams == self.in_channels else blk.mean(axis=0, keepdims=True, dtype=np.float32)
            if self.resampler is not None:
                y = self.resampler.resample_chunk(np.ascontiguousarray(x.T), last=False)
                x = np.ascontiguousarray(np.asarray(y, np.float32).reshape(-1, self.streams).T)
            self._push(x.astype(np.float32, copy=False))
        return secs

    def take(self, n: int) -> np.ndarray:
        """Pop up to ``n`` buffered samples -> ``[streams, n]`` (zero-padded)."""
        out = np.zeros((self.streams, n), np.float32)
        got = 0
        while got < n and self.fifo:
            head = self.fifo[0]
            k = min(n - got, head.shape[1])
            out[:, got: got + k] = head[:, :k]
            got += k
            if k == head.shape[1]:
                self.fifo.pop(0)
            else:
                self.fifo[0] = head[:, k:]
        self.fifo_len -= got
        return out

    def warnings(self) -> List[str]:
        w = []
        total = max(1, self.in_len * self.in_channels)
        if self.peak > 1.0:
            w.append(
                f"'{self.job.src}' peaks at {20 * math.log10(self.peak):+.1f} dBFS (above full scale); "
                "encoded as is, the decoded audio may clip."
            )
        elif self.clipped / total >= CLIP_WARN_FRACTION:
            w.append(
                f"'{self.job.src}' looks clipped ({100.0 * self.clipped / total:.1f}% of samples at full scale); "
                "encoded as is."
            )
        return w

    def close(self) -> None:
        self.reader.close()


def _release_memory() -> None:
    """Keep peak RSS flat on long streams (glibc only; a no-op elsewhere): return freed heap pages to the OS
    (``malloc_trim``), and on the first call pin glibc's mmap threshold at 128 KiB.  Without the pin, glibc raises
    the threshold after the first large buffers are freed, so later per-chunk buffers come from the heap and
    fragment it (measured: +30-45 MB peak RSS for a 10-minute encode versus a 1-minute one)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _codes_dtype(codebook_size: int):
    return np.int16 if codebook_size <= 32767 else np.int32


def _as_numpy_codes(codes, nq: int, dtype) -> np.ndarray:
    arr = codes.detach().to("cpu").numpy() if hasattr(codes, "detach") else np.asarray(codes)
    return arr[:, :nq].astype(dtype, copy=False)


def _open_group(pending: List[Tuple[int, EncodeJob]], batch_size: int, keep_channels: bool, sr: int, chunk: int,
                finish: Callable[[int, JobResult], None]) -> Tuple[List[Tuple[int, "_EncState"]], int]:
    """Open the next files of ``pending`` (popped in place) until ``batch_size`` code streams are filled
    (at least one file) -> ``(group of (job index, state), streams)``.  Files that cannot be opened are
    finished with their error; a file that would overflow the batch goes back to the front of ``pending``."""
    group: List[Tuple[int, _EncState]] = []
    streams = 0
    while pending and not (group and streams >= batch_size):
        i, job = pending.pop(0)
        try:
            check_not_same_file(job.src, job.dst)
            _check_output_dir(Path(job.dst))
            st = _EncState(job, keep_channels, sr, chunk)
        except CodecError as exc:
            finish(i, JobResult(job.src, job.dst, failure=exc))
            continue
        if group and streams + st.streams > batch_size:
            st.close()
            pending.insert(0, (i, job))
            break
        st.slot = streams
        streams += st.streams
        group.append((i, st))
    return group, streams


def _fill_group(group: List[Tuple[int, "_EncState"]], chunk: int, progress: Progress) -> None:
    """Buffer ``chunk`` model-rate samples for every live file of the group; a file that fails while being read
    keeps its error and stops taking part."""
    for _, st in group:
        if st.failure is not None:
            continue
        try:
            secs = st.fill(chunk)
        except CodecError as exc:
            st.failure, st.eof = exc, True
            st.fifo, st.fifo_len, secs = [], 0, 0.0
            st.close()
        if progress is not None and secs:
            progress(secs)


def _append_codes(group: List[Tuple[int, "_EncState"]], codes, nq: int, dtype) -> None:
    """Hand each live file its rows (its slots) of a ``[streams, nq, frames]`` block of codes."""
    c = _as_numpy_codes(codes, nq, dtype).copy()
    for _, st in group:
        if st.failure is None:
            st.codes.append(c[st.slot: st.slot + st.streams])


def _stream_encode_group(model, group: List[Tuple[int, "_EncState"]], streams: int, nq: int, chunk: int,
                         dtype, progress: Progress, precision: Optional[str] = None) -> None:
    """Feed the group's files through one batched stream encoder, ``chunk`` samples per step, until every file
    is drained; the codes collect in each file's state."""
    import torch

    device = _model_device(model)
    with torch.inference_mode():
        enc = model.stream_encoder(streams, nq=nq, precision=precision)
        steps = 0
        while True:
            _fill_group(group, chunk, progress)
            if all(st.eof and st.fifo_len == 0 for _, st in group):
                break
            x = np.zeros((streams, 1, chunk), np.float32)
            for _, st in group:
                if st.failure is None:
                    x[st.slot: st.slot + st.streams, 0] = st.take(chunk)
            _append_codes(group, enc.feed(torch.from_numpy(x).to(device)), nq, dtype)
            steps += 1
            if steps % 16 == 0:
                _release_memory()
        tail = enc.flush()
        if tail is not None and tail.shape[-1]:
            _append_codes(group, tail, nq, dtype)


def _write_encoded(model, model_name: str, st: "_EncState", nq: int, dtype) -> JobResult:
    """Write one drained file's codes (trimmed to its own frame count) with its header -> its result."""
    job, hop = st.job, int(model.hop_length)
    if st.failure is not None:
        return JobResult(job.src, job.dst, failure=st.failure)
    if st.in_len == 0:
        return JobResult(job.src, job.dst, failure=CodecError(f"'{job.src}' contains no audio samples."))
    frames = max(1, -(-st.model_len // hop))
    allc = np.concatenate(st.codes, axis=-1) if st.codes else np.zeros((st.streams, nq, 0), dtype)
    if allc.shape[-1] < frames:  # pragma: no cover - model emitted fewer frames than promised
        raise RuntimeError(f"stream encoder produced {allc.shape[-1]} frames, expected {frames}")
    allc = allc[..., :frames]
    if allc.size and allc.min() < 0:  # pragma: no cover
        raise RuntimeError("stream encoder produced padding codes inside the signal")
    header = codes_header(model, nq, frames, st.streams, st.in_channels, st.in_len, st.in_sr, model_name)
    try:
        write_codes(job.dst, header, allc)
    except CodecError as exc:
        return JobResult(job.src, job.dst, failure=exc)
    return JobResult(job.src, job.dst, header=header, warnings=st.warnings(), seconds=st.in_len / st.in_sr)


def encode_files(
    model,
    model_name: str,
    jobs: Sequence[EncodeJob],
    nq: int,
    keep_channels: bool = False,
    batch_size: int = 1,
    chunk_seconds: float = 1.0,
    progress: Progress = None,
    on_result: Optional[Callable[[JobResult], None]] = None,
    precision: Optional[str] = None,
) -> List[JobResult]:
    """Encode audio files to ``.codes`` files with the streaming encoder (memory flat in file length).

    Files are opened a group at a time (:func:`_open_group`), streamed through one batched encoder
    (:func:`_stream_encode_group`) and written one by one (:func:`_write_encoded`).

    Args:
        model: a ``CodecModel`` (eval mode).
        model_name: model name recorded in the header (a path is reduced to its last component).
        jobs: files to encode.
        nq: levels to store, ``1 <= nq <= model.num_quantizers``.
        keep_channels: keep each input channel as its own code stream (default: downmix to mono).
        batch_size: code streams encoded together (files are grouped, at least one file per group).
        chunk_seconds: model-rate audio fed per streaming step.
        progress: called with the input seconds consumed (for a progress bar).
        on_result: called after each file finishes (success or error).
        precision: the encoder's arithmetic, ``"float32"`` (default) or ``"float64"`` (see
            :meth:`codec.CodecModel.encode`).
    Returns:
        one :class:`JobResult` per job, in order.  Per-file problems are reported in ``result.error``;
        no output file is left for a failed job.
    """
    sr, hop, cb, max_nq = _model_facts(model)
    if not 1 <= nq <= max_nq:
        raise OptionError("nq", f"{nq} is out of range: this model has levels 1 to {max_nq}.")
    _release_memory()  # pins the mmap threshold before the first chunk
    model_fingerprint(model)  # hashed (and cached) before the first file is read
    dtype = _codes_dtype(cb)
    from .model import encode_dtype

    encode_dtype(precision)  # an unknown precision is refused before any file is opened
    chunk = hop * max(1, int(round(chunk_seconds * sr / hop)))
    results: Dict[int, JobResult] = {}

    def finish(i: int, res: JobResult) -> None:
        results[i] = res
        if on_result is not None:
            on_result(res)

    pending = list(enumerate(jobs))
    while pending:
        group, streams = _open_group(pending, batch_size, keep_channels, sr, chunk, finish)
        try:
            if group:
                _stream_encode_group(model, group, streams, nq, chunk, dtype, progress, precision)
            for i, st in group:
                finish(i, _write_encoded(model, model_name, st, nq, dtype))
        finally:
            for _, st in group:
                st.close()
    return [results[i] for i in range(len(jobs))]


def encode_file(model, model_name: str, src: PathLike, dst: PathLike, nq: int, keep_channels: bool = False) -> JobResult:
    """Encode one file (see :func:`encode_files`); raises :class:`CodecError` on failure."""
    res = encode_files(model, model_name, [EncodeJob(Path(src), Path(dst))], nq, keep_channels)[0]
    if res.failure is not None:
        raise res.failure
    return res


# ---------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------

_SF_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"),
               ".aiff": ("AIFF", "PCM_16"), ".aif": ("AIFF", "PCM_16")}
#: What each output format can take: (max sample rate in Hz, max channels).  libvorbis crashes the process
#: (SIGSEGV) above ~200 kHz and FLAC holds at most 8 channels, so these are checked before anything is written.
_FORMAT_LIMITS = {".wav": (MAX_SAMPLE_RATE, 255), ".flac": (MAX_SAMPLE_RATE, 8), ".ogg": (192000, 255),
                  ".aiff": (MAX_SAMPLE_RATE, 255), ".aif": (MAX_SAMPLE_RATE, 255)}


def check_output_format(dst: PathLike, sample_rate: int, channels: int, source: Optional[str] = None) -> None:
    """Raise :class:`CodecError` unless ``dst``'s format can hold ``channels`` channels at ``sample_rate`` Hz."""
    ext = Path(dst).suffix.lower()
    if ext not in _SF_FORMATS:
        raise CodecError(f"cannot write '{dst}': unsupported output extension '{Path(dst).suffix}' "
                         "(use .wav, .flac or .ogg).")
    max_sr, max_ch = _FORMAT_LIMITS[ext]
    if not MIN_SAMPLE_RATE <= sample_rate <= max_sr:
        raise OptionError("sample_rate", "or .wav).", lead=f"cannot write '{dst}': {ext} output supports sample rates "
                          f"{MIN_SAMPLE_RATE} to {max_sr} Hz, not {sample_rate} Hz (use ")
    if channels > max_ch:
        what = f"'{source}' has {channels} channels" if source else f"{channels} channels"
        raise CodecError(f"cannot write '{dst}': {ext} output holds at most {max_ch} channels and {what} "
                         "(use .wav).")


def check_codes_match_model(cf_header: CodesHeader, model, source: str, model_label: str) -> None:
    """Raise :class:`CodecError` unless the ``.codes`` header was produced by ``model`` (weights hash + shape facts)."""
    fp = model_fingerprint(model)
    if cf_header.weights_sha256 != fp:
        where = getattr(model, "model_dir", None)
        label = f"'{model_label}'"
        if model_label == cf_header.model_name and where:  # same name, other weights: say which directory
            label = f"'{model_label}' in '{where}'"
        raise CodecError(
            f"'{source}' was encoded with model '{cf_header.model_name}' "
            f"(weights {cf_header.weights_sha256.hex()[:12]}), not with {label} (weights {fp.hex()[:12]})."
        )
    sr, hop, cb, max_nq = _model_facts(model)
    if (cf_header.sample_rate, cf_header.hop_length, cf_header.codebook_size) != (sr, hop, cb):
        raise CodecError(f"'{source}' does not match the model's sample rate, hop length or codebook size.")
    if cf_header.num_levels > max_nq:
        raise CodecError(f"'{source}' stores {cf_header.num_levels} levels, but model '{model_label}' has only "
                         f"{max_nq}.")


class _DecState:
    def __init__(self, job: DecodeJob, cf: CodesFile, nq: int, out_sr: int, stack: ExitStack):
        import soundfile as sf
        import soxr

        self.job, self.cf, self.nq = job, cf, nq
        h = cf.header
        self.streams = h.channels
        self.frames = h.num_frames
        self.out_sr = out_sr
        self.target = h.orig_length if out_sr == h.orig_sample_rate else int(round(h.orig_length * out_sr / h.orig_sample_rate))
        self.resampler = (
            None if out_sr == h.sample_rate
            else soxr.ResampleStream(h.sample_rate, out_sr, self.streams, dtype="float32", quality="HQ")
        )
        check_output_format(job.dst, out_sr, self.streams, str(job.src))
        fmt, subtype = _SF_FORMATS[Path(job.dst).suffix.lower()]
        self.tmp = stack.enter_context(atomic_output(job.dst))
        try:
            handle = sf.SoundFile(str(self.tmp), "w", samplerate=out_sr, channels=self.streams, format=fmt,
                                  subtype=subtype)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CodecError(f"cannot write '{job.dst}': {first.rstrip('.')}.") from None
        self.sf = stack.enter_context(handle)
        self.written = 0
        self.slot = 0

    def write(self, y: np.ndarray) -> None:
        """Write model-rate audio ``[streams, t]`` (resampled), capped at the target length."""
        if self.resampler is not None:
            y = np.asarray(self.resampler.resample_chunk(np.ascontiguousarray(y.T), last=False), np.float32)
            y = y.reshape(-1, self.streams).T
        self._emit(y)

    def _emit(self, y: np.ndarray) -> None:
        k = min(y.shape[1], self.target - self.written)
        if k > 0:
            self.sf.write(np.clip(y[:, :k], -1.0, 1.0).T)
            self.written += k

    def finish(self) -> None:
        if self.resampler is not None:
            tail = np.asarray(self.resampler.resample_chunk(np.zeros((0, self.streams), np.float32), last=True), np.float32)
            self._emit(tail.reshape(-1, self.streams).T)
        while self.written < self.target:  # pad in bounded blocks
            self._emit(np.zeros((self.streams, min(1 << 16, self.target - self.written)), np.float32))
        self.sf.close()


def _plan_decode_job(job: DecodeJob, nq: Optional[int], sample_rate: Optional[int], model, model_spec: Optional[str],
                     get_model: Callable) -> Tuple[str, int, CodesFile]:
    """Check one decode job (paths, output format, levels, model match) and return its group key (model key,
    levels) and its opened ``.codes`` file; a CodecError says what is wrong with it."""
    check_not_same_file(job.src, job.dst)
    if Path(job.dst).suffix.lower() not in _SF_FORMATS:
        raise CodecError(
            f"cannot write '{job.dst}': unsupported output extension '{Path(job.dst).suffix}' (use .wav, .flac or .ogg)."
        )
    _check_output_dir(Path(job.dst))
    cf = read_codes(job.src)
    h = cf.header
    check_output_format(job.dst, sample_rate or h.orig_sample_rate, h.channels, str(job.src))
    use_nq = h.num_levels if nq is None else nq
    if not 1 <= use_nq <= h.num_levels:
        raise OptionError("nq", f"{nq} is out of range: '{job.src}' stores levels 1 to {h.num_levels}.")
    if model is not None or model_spec is not None:
        key = model_spec or ""
        m, label = get_model(model_spec)
    else:
        key = h.model_name
        if not key:
            raise OptionError("model", "DIR.", lead=f"'{job.src}' does not record which model made it; pass ")
        m, label = get_model(h.model_name)
        if isinstance(m, CodecError):
            raise OptionError("model", "DIR.", lead=f"'{job.src}' was made with model '{h.model_name}', which is not "
                                                    "available here; pass ")
    if isinstance(m, CodecError):
        raise m
    check_codes_match_model(h, m, str(job.src), label)
    return key, use_nq, cf


def _stream_decode_batch(m, batch: List[Tuple[int, DecodeJob, CodesFile]], use_nq: int, sample_rate: Optional[int],
                         chunk_seconds: float, progress: Progress) -> List[Tuple[int, "_DecState"]]:
    """Decode one batch of ``.codes`` files together with ``m``'s stream decoder (one stream slot per channel;
    shorter items are fed ``-1`` frames past their end) and write each to its destination; returns the states."""
    import torch

    dev = _model_device(m)
    sr, hop, _, _ = _model_facts(m)
    fchunk = max(1, int(round(chunk_seconds * sr / hop)))
    states: List[Tuple[int, _DecState]] = []
    with ExitStack() as stack:
        slot = 0
        for i, job, cf in batch:
            out_sr = sample_rate or cf.header.orig_sample_rate
            st = _DecState(job, cf, use_nq, out_sr, stack)
            st.slot = slot
            slot += st.streams
            states.append((i, st))
        streams = slot
        max_frames = max(st.frames for _, st in states)
        emitted = 0  # output samples so far (the same for every slot)

        def emit(audio: np.ndarray) -> None:
            for _, st in states:
                valid = min(audio.shape[-1], st.frames * hop - emitted)
                if valid > 0:
                    st.write(audio[st.slot: st.slot + st.streams, 0, :valid])
                    if progress is not None:
                        progress(valid / sr)

        with torch.inference_mode():
            dec = m.stream_decoder(streams)
            for pos in range(0, max_frames, fchunk):
                f = min(fchunk, max_frames - pos)
                codes = np.full((streams, use_nq, f), -1, np.int64)  # -1: past a shorter item's end
                for _, st in states:
                    seg = st.cf.codes[:, :use_nq, pos: pos + f]
                    codes[st.slot: st.slot + st.streams, :, : seg.shape[-1]] = seg
                audio = dec.feed(torch.from_numpy(codes).to(dev)).detach().to("cpu").float().numpy()
                if (pos // fchunk) % 16 == 15:
                    _release_memory()
                emit(audio)
                emitted += audio.shape[-1]
            emit(dec.flush().detach().to("cpu").float().numpy())
        for _, st in states:
            st.finish()
    return states


def decode_files(
    jobs: Sequence[DecodeJob],
    model_spec: Optional[str] = None,
    nq: Optional[int] = None,
    sample_rate: Optional[int] = None,
    batch_size: int = 1,
    device: Optional[str] = None,
    chunk_seconds: float = 1.0,
    progress: Progress = None,
    on_result: Optional[Callable[[JobResult], None]] = None,
    model=None,
) -> List[JobResult]:
    """Decode ``.codes`` files to audio with the streaming decoder.

    The model is ``model`` if given, else ``model_spec`` (``--model``), else the model each file names.
    ``nq`` decodes with only the first levels; ``sample_rate`` overrides the output rate (default: the
    original rate; the original length is restored, scaled if the rate changes).  Output files are written
    through a temporary file and renamed on success.
    """
    _release_memory()  # pins the mmap threshold before the first chunk
    results: Dict[int, JobResult] = {}
    models: Dict[str, Tuple[object, str]] = {}

    def finish(i: int, res: JobResult) -> None:
        results[i] = res
        if on_result is not None:
            on_result(res)

    def get_model(name: Optional[str]):
        key = name or ""
        if key not in models:
            if model is not None:
                models[key] = (model, model_spec or "given model")
            else:
                try:
                    models[key] = (resolve_model(name, device)[0], name or DEFAULT_MODEL)
                except CodecError as exc:
                    models[key] = (exc, name or DEFAULT_MODEL)
        return models[key]

    if sample_rate is not None and not 1000 <= sample_rate <= 384000:
        raise OptionError("sample_rate", f"{sample_rate} is out of range (1000 to 384000 Hz).")

    # validate and group: (model key, nq) -> list of (index, job, CodesFile)
    groups: Dict[Tuple[str, int], List[Tuple[int, DecodeJob, CodesFile]]] = {}
    for i, job in enumerate(jobs):
        try:
            key, use_nq, cf = _plan_decode_job(job, nq, sample_rate, model, model_spec, get_model)
            groups.setdefault((key, use_nq), []).append((i, job, cf))
        except CodecError as exc:
            finish(i, JobResult(job.src, job.dst, failure=exc))

    for (key, use_nq), items in groups.items():
        m = models[key][0]
        pos_items = list(items)
        while pos_items:
            batch: List[Tuple[int, DecodeJob, CodesFile]] = []
            streams = 0
            while pos_items and (not batch or streams + pos_items[0][2].header.channels <= batch_size):
                batch.append(pos_items.pop(0))
                streams += batch[-1][2].header.channels
            try:
                states = _stream_decode_batch(m, batch, use_nq, sample_rate, chunk_seconds, progress)
            except CodecError as exc:
                for i, job, _ in batch:
                    finish(i, JobResult(job.src, job.dst, failure=exc))
                continue
            except RuntimeError as exc:
                if type(exc).__name__ != "LibsndfileError":
                    raise
                msg = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else "write error"
                for i, job, _ in batch:
                    finish(i, JobResult(job.src, job.dst, failure=CodecError(f"cannot write '{job.dst}': {msg}.")))
                continue
            # ExitStack closed: temp files renamed onto their destinations
            for i, st in states:
                h = st.cf.header
                finish(i, JobResult(st.job.src, st.job.dst, header=h, seconds=h.duration))
    return [results[i] for i in range(len(jobs))]


def decode_file(model, src: PathLike, dst: PathLike, nq: Optional[int] = None,
                sample_rate: Optional[int] = None) -> JobResult:
    """Decode one ``.codes`` file with ``model`` (see :func:`decode_files`); raises :class:`CodecError`."""
    res = decode_files([DecodeJob(Path(src), Path(dst))], nq=nq, sample_rate=sample_rate, model=model)[0]
    if res.failure is not None:
        raise res.failure
    return res
