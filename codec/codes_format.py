"""The ``.codes`` file format (version 1): a versioned, self-describing container for codec tokens.

Never a pickle.  The layout is documented byte by byte in ``docs/codes-format.md``; in short::

    [fixed header, little-endian]  magic "\\x89CODES\\r\\n", version, header size, model/audio facts
    [model name]                   UTF-8, length given in the header
    [payload]                      codes bit-packed at ``bits_per_code`` bits each, MSB first,
                                   LEVEL-MAJOR: level 0 of every channel, then level 1, ...;
                                   each level block is padded to a whole byte
    [CRC-32]                       zlib/IEEE CRC-32 of every byte before it (header + payload)

Level-major order makes dropping the finest levels a truncation of the payload
(:func:`trim_levels` needs no model and no re-encoding).

Public API: :class:`CodesHeader`, :class:`CodesFile`, :func:`pack_codes`, :func:`unpack_codes`,
:func:`write_codes`, :func:`read_codes`, :func:`read_header`, :func:`trim_levels`,
:func:`encode_bytes`, :func:`decode_bytes`.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from .errors import CodecError, OptionError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "CodesHeader",
    "CodesFile",
    "bits_for",
    "pack_codes",
    "unpack_codes",
    "encode_bytes",
    "decode_bytes",
    "write_codes",
    "read_codes",
    "read_header",
    "trim_levels",
    "check_code_values",
]

PathLike = Union[str, os.PathLike]

#: 8 magic bytes (PNG-style: a non-ASCII byte, a name, and CR LF to detect text-mode mangling).
MAGIC = b"\x89CODES\r\n"
#: The only format version this module writes and reads.
FORMAT_VERSION = 1
#: Fixed part of the header (see docs/codes-format.md for the field table).
_FIXED = struct.Struct("<8sHHIIdIBBHHHQQI32sH")
_CRC = struct.Struct("<I")
MAX_MODEL_NAME_BYTES = 4096
MAX_CHANNELS = 255
#: Bounds a reader enforces on the header (a file outside them is refused as corrupted, never allocated):
#: model and original sample rates in Hz (the same range ``codec decode --sample-rate`` accepts) ...
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
#: ... codebook entries (16-bit codes) and residual levels (the bounds of ``CodecConfig.validate``).
MAX_CODEBOOK_SIZE = 1 << 16
MAX_LEVELS = 64


def bits_for(codebook_size: int) -> int:
    """Bits per code for a codebook of ``codebook_size`` entries: ``ceil(log2(codebook_size))`` (at least 1)."""
    if codebook_size < 2:
        return 1
    return max(1, int(math.ceil(math.log2(codebook_size))))


@dataclass
class CodesHeader:
    """Everything in a ``.codes`` header.

    Attributes:
        sample_rate: the model's sample rate (Hz).
        hop_length: audio samples (at ``sample_rate``) per code frame.
        frame_rate: code frames per second (= sample_rate / hop_length, stored for readers).
        codebook_size: entries per codebook (codes are in ``[0, codebook_size)``).
        bits_per_code: packed width of one code, ``ceil(log2(codebook_size))``.
        channels: number of code streams (1 when downmixed; C when channels are kept).
        orig_channels: channel count of the original input file.
        num_levels: RVQ levels stored (nq).
        num_frames: code frames per stream.
        orig_length: length of the original audio in samples (per channel) at ``orig_sample_rate``.
        orig_sample_rate: sample rate of the original input file.
        weights_sha256: 32-byte SHA-256 fingerprint of the model weights (see ``codec.pipeline.model_fingerprint``).
        model_name: the model's name, never a path (the pretrained name or the model directory's name; ``""``
            when unknown); ``codec decode`` resolves it as a pretrained name when no ``--model`` is given.
        version: format version (1).
    """

    sample_rate: int
    hop_length: int
    frame_rate: float
    codebook_size: int
    bits_per_code: int
    channels: int
    orig_channels: int
    num_levels: int
    num_frames: int
    orig_length: int
    orig_sample_rate: int
    weights_sha256: bytes
    model_name: str
    version: int = FORMAT_VERSION

    # ---- derived quantities -------------------------------------------------
    @property
    def header_size(self) -> int:
        """Bytes before the payload (fixed header + model name)."""
        return _FIXED.size + len(self.model_name.encode("utf-8"))

    @property
    def level_bytes(self) -> int:
        """Bytes of one level block: ``ceil(channels * num_frames * bits_per_code / 8)``."""
        return (self.channels * self.num_frames * self.bits_per_code + 7) // 8

    @property
    def payload_size(self) -> int:
        """Bytes of the payload (all level blocks)."""
        return self.num_levels * self.level_bytes

    @property
    def file_size(self) -> int:
        """Expected total file size in bytes (header + payload + 4-byte CRC)."""
        return self.header_size + self.payload_size + _CRC.size

    @property
    def duration(self) -> float:
        """Duration of the original audio in seconds."""
        return self.orig_length / float(self.orig_sample_rate) if self.orig_sample_rate else 0.0

    @property
    def bitrate(self) -> float:
        """Nominal bitrate in bits/s: ``num_levels * bits_per_code * frame_rate * channels``."""
        return self.num_levels * self.bits_per_code * self.frame_rate * self.channels

    def to_dict(self) -> dict:
        """JSON-friendly dict of the header (hash as hex) plus derived figures (non-finite numbers as ``None``)."""
        d = asdict(self)
        d["weights_sha256"] = self.weights_sha256.hex()
        d.update(
            header_size=self.header_size,
            payload_size=self.payload_size,
            file_size=self.file_size,
            duration=self.duration,
            bitrate=self.bitrate,
        )
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    # ---- (de)serialisation --------------------------------------------------
    def problem(self) -> Optional[str]:
        """The first inconsistency of the fields as a sentence fragment, or ``None`` when the header is valid.

        Beyond the basic checks (positive sizes, ``bits_per_code == ceil(log2(codebook_size))``) this bounds every
        field a decoder allocates from: rates in ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` Hz, ``1 <= hop_length <=
        sample_rate``, ``frame_rate == sample_rate / hop_length``, ``2 <= codebook_size <= MAX_CODEBOOK_SIZE``,
        ``1 <= num_levels <= MAX_LEVELS``, ``channels`` 1 (downmixed) or ``orig_channels`` (kept), and
        ``1 <= orig_length`` with ``orig_length`` at the model rate at most ``num_frames * hop_length`` (+1 for
        resampler rounding): the decoded length is bounded by the codes actually stored (no decompression bomb).
        """
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("sample_rate", "hop_length", "codebook_size", "bits_per_code", "channels", "orig_channels",
                     "num_levels", "num_frames", "orig_length", "orig_sample_rate", "version"):
            if not is_int(getattr(self, name)):
                return f"{name} must be an integer"
        if not isinstance(self.frame_rate, (int, float)) or isinstance(self.frame_rate, bool):
            return "frame_rate must be a number"
        lo, hi = MIN_SAMPLE_RATE, MAX_SAMPLE_RATE
        if not lo <= self.sample_rate <= hi:
            return f"the model sample rate {self.sample_rate} Hz is outside {lo} to {hi} Hz"
        if not lo <= self.orig_sample_rate <= hi:
            return f"the original sample rate {self.orig_sample_rate} Hz is outside {lo} to {hi} Hz"
        if not 1 <= self.hop_length <= self.sample_rate:
            return f"the hop length {self.hop_length} is outside 1 to {self.sample_rate} samples"
        expected_rate = self.sample_rate / self.hop_length
        if not math.isfinite(self.frame_rate) or abs(self.frame_rate - expected_rate) > 1e-9 * expected_rate:
            return (f"the frame rate {self.frame_rate!r} is not sample_rate / hop_length = "
                    f"{self.sample_rate} / {self.hop_length}")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK_SIZE:
            return f"the codebook size {self.codebook_size} is outside 2 to {MAX_CODEBOOK_SIZE}"
        if self.bits_per_code != bits_for(self.codebook_size):
            return f"{self.bits_per_code} bits per code does not match codebook size {self.codebook_size}"
        if not 1 <= self.orig_channels <= 0xFFFF:
            return f"{self.orig_channels} original channels is out of range"
        if not 1 <= self.channels <= MAX_CHANNELS or self.channels not in (1, self.orig_channels):
            return (f"{self.channels} code streams is neither 1 (downmixed) nor the {self.orig_channels} "
                    "original channels")
        if not 1 <= self.num_levels <= MAX_LEVELS:
            return f"{self.num_levels} levels is outside 1 to {MAX_LEVELS}"
        if not 0 <= self.num_frames < 1 << 64:
            return f"{self.num_frames} frames is out of range"
        if not 1 <= self.orig_length < 1 << 64:
            return f"the original length {self.orig_length} samples is out of range"
        # orig_length at the model rate must fit in the frames stored (exact rational arithmetic)
        if self.orig_length * self.sample_rate > (self.num_frames * self.hop_length + 1) * self.orig_sample_rate:
            return (f"the original length {self.orig_length} samples at {self.orig_sample_rate} Hz is longer than "
                    f"the {self.num_frames} frames stored")
        if not isinstance(self.weights_sha256, (bytes, bytearray)) or len(self.weights_sha256) != 32:
            return "the weights hash must be 32 bytes"
        if not isinstance(self.model_name, str):
            return "the model name must be a string"
        if len(self.model_name.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES:
            return f"the model name is longer than {MAX_MODEL_NAME_BYTES} bytes"
        if any(ord(ch) < 32 or 127 <= ord(ch) < 160 or 0xD800 <= ord(ch) < 0xE000 for ch in self.model_name):
            return "the model name contains control characters"
        return None

    def validate(self) -> None:
        """Raise :class:`CodecError` if fields are inconsistent or out of bounds (used on write and read)."""
        why = self.problem()
        if why is not None:
            raise CodecError(f"invalid .codes header: {why}.")

    def pack(self) -> bytes:
        """Serialise the header (fixed part + model name) to bytes."""
        self.validate()
        name = self.model_name.encode("utf-8")
        return _FIXED.pack(
            MAGIC, self.version, _FIXED.size + len(name), self.sample_rate, self.hop_length, float(self.frame_rate),
            self.codebook_size, self.bits_per_code, self.channels, self.orig_channels, self.num_levels, 0,
            self.num_frames, self.orig_length, self.orig_sample_rate, self.weights_sha256, len(name),
        ) + name

    @classmethod
    def unpack(cls, buf: bytes, source: str = "input") -> "CodesHeader":
        """Parse a header from the start of ``buf``; raises :class:`CodecError` naming ``source``."""
        if len(buf) < len(MAGIC) or buf[: len(MAGIC)] != MAGIC:
            raise CodecError(f"'{source}' is not a .codes file (bad magic bytes).")
        if len(buf) < 10:
            raise CodecError(f"'{source}' is truncated (the header is incomplete).")
        (version,) = struct.unpack_from("<H", buf, 8)
        if version != FORMAT_VERSION:
            raise CodecError(
                f"'{source}' uses .codes format version {version}, but this codec reads only version {FORMAT_VERSION}."
            )
        if len(buf) < _FIXED.size:
            raise CodecError(f"'{source}' is truncated (the header is incomplete).")
        (_, version, header_size, sr, hop, frame_rate, cb, bits, ch, och, nq, _reserved,
         frames, orig_len, orig_sr, sha, name_len) = _FIXED.unpack_from(buf, 0)
        if header_size != _FIXED.size + name_len or name_len > MAX_MODEL_NAME_BYTES:
            raise CodecError(f"'{source}' is corrupted (inconsistent header size).")
        if len(buf) < header_size:
            raise CodecError(f"'{source}' is truncated (the header is incomplete).")
        try:
            name = bytes(buf[_FIXED.size: header_size]).decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError(f"'{source}' is corrupted (the model name is not valid UTF-8).") from None
        hdr = cls(sample_rate=sr, hop_length=hop, frame_rate=frame_rate, codebook_size=cb, bits_per_code=bits,
                  channels=ch, orig_channels=och, num_levels=nq, num_frames=frames, orig_length=orig_len,
                  orig_sample_rate=orig_sr, weights_sha256=bytes(sha), model_name=name, version=version)
        why = hdr.problem()
        if why is not None:
            raise CodecError(f"'{source}' is corrupted (inconsistent header fields): {why}.")
        return hdr


@dataclass
class CodesFile:
    """A decoded ``.codes`` file: ``header`` and ``codes`` (``np.int64 [channels, num_levels, num_frames]``)."""

    header: CodesHeader
    codes: np.ndarray


# ---------------------------------------------------------------------------------------------
# bit packing (vectorised numpy; MSB-first within each code and each byte)
# ---------------------------------------------------------------------------------------------

def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integer ``codes`` (any shape, flattened C-order) at ``bits`` bits each, MSB first.

    The result is ``ceil(codes.size * bits / 8)`` bytes; the last byte is zero-padded.
    """
    flat = np.ascontiguousarray(codes, dtype=np.int64).reshape(-1)
    if flat.size == 0:
        return b""
    if flat.min() < 0 or flat.max() >= (1 << bits):
        raise CodecError(f"codes out of range for {bits}-bit packing.")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    out = bytearray()
    step = 1 << 18  # bound temporary memory: 256k codes -> <= 4 MiB of bits at a time; step*bits is a multiple of 8
    for i in range(0, flat.size, step):
        chunk = flat[i: i + step]
        bitarr = ((chunk[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
        out += np.packbits(bitarr.reshape(-1)).tobytes()
    return bytes(out)


def unpack_codes(buf: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: read ``count`` codes of ``bits`` bits from ``buf`` -> ``np.int64 [count]``."""
    need = (count * bits + 7) // 8
    if len(buf) < need:
        raise CodecError("the code payload is shorter than the header says.")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(buf, dtype=np.uint8, count=need)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    step = 1 << 18  # codes per chunk; step*bits/8 is whole bytes
    for i in range(0, count, step):
        n = min(step, count - i)
        b0 = i * bits // 8
        b1 = (i * bits + n * bits + 7) // 8
        bitarr = np.unpackbits(raw[b0:b1])[: n * bits].reshape(n, bits).astype(np.int64)
        out[i: i + n] = bitarr @ weights
    return out


# ---------------------------------------------------------------------------------------------
# whole-file encode / decode
# ---------------------------------------------------------------------------------------------

def _check_codes(codes: np.ndarray, header: CodesHeader) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise CodecError(f"codes must be shaped [channels, levels, frames], got {tuple(arr.shape)}.")
    if arr.shape != (header.channels, header.num_levels, header.num_frames):
        raise CodecError(
            f"codes shape {tuple(arr.shape)} does not match the header "
            f"({header.channels}, {header.num_levels}, {header.num_frames})."
        )
    if arr.size and (arr.min() < 0 or arr.max() >= header.codebook_size):
        raise CodecError(f"codes must lie in [0, {header.codebook_size}) (padded -1 frames cannot be stored).")
    return arr


def encode_bytes(header: CodesHeader, codes: np.ndarray) -> bytes:
    """Serialise ``header`` and ``codes`` (``[channels, num_levels, num_frames]`` ints) to ``.codes`` bytes."""
    arr = _check_codes(codes, header)
    parts = [header.pack()]
    for lvl in range(header.num_levels):
        parts.append(pack_codes(arr[:, lvl, :], header.bits_per_code))
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


def _check_integrity(buf: bytes, source: str) -> CodesHeader:
    hdr = CodesHeader.unpack(buf, source)
    expected = hdr.file_size
    if len(buf) < expected:
        raise CodecError(f"'{source}' is truncated ({len(buf)} bytes, the header promises {expected}).")
    if len(buf) > expected:
        raise CodecError(f"'{source}' is corrupted ({len(buf) - expected} unexpected bytes after the checksum).")
    (stored,) = _CRC.unpack_from(buf, expected - _CRC.size)
    actual = zlib.crc32(memoryview(buf)[: expected - _CRC.size]) & 0xFFFFFFFF
    if stored != actual:
        raise CodecError(f"'{source}' is corrupted (CRC mismatch).")
    return hdr


def check_code_values(buf: bytes, hdr: CodesHeader, source: str = "input") -> None:
    """Raise :class:`CodecError` if a code of the (integrity-checked) ``buf`` is ``>= codebook_size``.

    Scans the payload level by level in chunks (memory bounded); free when the codebook size is a power of two.
    """
    if hdr.codebook_size >= 1 << hdr.bits_per_code:
        return
    count = hdr.channels * hdr.num_frames
    step = 1 << 18
    for lvl in range(hdr.num_levels):
        base = hdr.header_size + lvl * hdr.level_bytes
        for i in range(0, count, step):
            n = min(step, count - i)
            b0 = base + i * hdr.bits_per_code // 8  # i * bits is a multiple of 8 (step * bits is)
            b1 = base + (i * hdr.bits_per_code + n * hdr.bits_per_code + 7) // 8
            vals = unpack_codes(bytes(buf[b0:b1]), n, hdr.bits_per_code)
            if vals.size and int(vals.max()) >= hdr.codebook_size:
                raise CodecError(f"'{source}' is corrupted (a code exceeds the codebook size {hdr.codebook_size}).")


def decode_bytes(buf: bytes, source: str = "input") -> CodesFile:
    """Parse and verify ``.codes`` bytes (magic, version, size, CRC) -> :class:`CodesFile`."""
    hdr = _check_integrity(buf, source)
    c, nq, f = hdr.channels, hdr.num_levels, hdr.num_frames
    codes = np.empty((c, nq, f), dtype=np.int64)
    off = hdr.header_size
    for lvl in range(nq):
        block = buf[off: off + hdr.level_bytes]
        codes[:, lvl, :] = unpack_codes(block, c * f, hdr.bits_per_code).reshape(c, f)
        off += hdr.level_bytes
    if codes.size and codes.max() >= hdr.codebook_size:
        raise CodecError(f"'{source}' is corrupted (a code exceeds the codebook size {hdr.codebook_size}).")
    return CodesFile(hdr, codes)


def _read_file(path: PathLike) -> bytes:
    p = Path(path)
    if not p.exists():
        raise CodecError(f"input file '{p}' does not exist.")
    if p.is_dir():
        raise CodecError(f"input '{p}' is a directory, not a .codes file.")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise CodecError(f"cannot read '{p}': {exc.strerror or exc}.") from exc


def read_codes(path: PathLike) -> CodesFile:
    """Read and verify a ``.codes`` file -> :class:`CodesFile` (codes ``np.int64 [C, nq, frames]``)."""
    return decode_bytes(_read_file(path), str(path))


def read_header(path: PathLike, verify: bool = True) -> CodesHeader:
    """Read the header of a ``.codes`` file; with ``verify`` also check size, CRC and that every code is
    ``< codebook_size``."""
    buf = _read_file(path)
    if verify:
        hdr = _check_integrity(buf, str(path))
        check_code_values(buf, hdr, str(path))
        return hdr
    return CodesHeader.unpack(buf, str(path))


def write_codes(path: PathLike, header: CodesHeader, codes: np.ndarray) -> None:
    """Write a ``.codes`` file atomically (temp file in the same directory, then ``os.replace``)."""
    from .audio import atomic_output

    data = encode_bytes(header, codes)
    with atomic_output(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise CodecError(f"cannot write '{path}': {exc.strerror or exc}.") from exc


def trim_bytes(buf: bytes, nq: int, source: str = "input") -> bytes:
    """Return ``.codes`` bytes keeping only the first ``nq`` levels (payload truncation + new header/CRC)."""
    hdr = _check_integrity(buf, source)
    check_code_values(buf, hdr, source)
    if not 1 <= nq <= hdr.num_levels:
        raise OptionError("nq", f"{nq} is out of range: '{source}' stores levels 1 to {hdr.num_levels}.")
    old_header_size = hdr.header_size
    hdr.num_levels = nq
    body = hdr.pack() + bytes(buf[old_header_size: old_header_size + nq * hdr.level_bytes])
    return body + _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


def trim_levels(src: PathLike, dst: PathLike, nq: int) -> CodesHeader:
    """Cut ``src`` to its first ``nq`` levels and write ``dst`` atomically, without re-encoding. Returns the new header."""
    from .audio import atomic_output

    out = trim_bytes(_read_file(src), nq, str(src))
    with atomic_output(dst) as tmp:
        try:
            Path(tmp).write_bytes(out)
        except OSError as exc:
            raise CodecError(f"cannot write '{dst}': {exc.strerror or exc}.") from exc
    return CodesHeader.unpack(out, str(dst))
