"""Classical speech/audio codecs as baselines for `codec eval`, run through the system's binaries/libraries.

- **Opus** (``opusenc``/``opusdec`` from opus-tools, or ``ffmpeg -c:a libopus``): 6..510 kbps, VBR,
  48 kHz internally. Opus cannot go below 6 kbps, so settings below that are rejected.
- **AMR-WB** (ITU-T G.722.2, 16 kHz; bitrate counted without the one-byte per-frame storage header): encoded with ``ffmpeg -c:a libvo_amrwbenc`` when ffmpeg has it,
  otherwise directly through the VisualOn encoder library ``libvo-amrwbenc.so.0`` (Debian package
  ``libvo-amrwbenc0``) with ctypes; decoded with ffmpeg's native AMR-WB decoder. Modes 6.6 .. 23.85 kbps.
- **Codec2** (``c2enc``/``c2dec``, Debian package ``codec2``): modes 3200, 2400, 1600, 1400, 1300, 1200,
  700C, 450 bit/s on 8 kHz input.

Every codec takes a mono float signal ``[T]`` at any sample rate, resamples it to the codec's rate with soxr,
encodes, decodes, resamples back, compensates any remaining delay by cross-correlation and pads/cuts to the
input length. The bitrate is measured from the encoded payload: for Opus the Ogg container is parsed and
only the audio packets are counted (headers/page overhead excluded; the full file size is also reported).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from codec.errors import CodecError

__all__ = [
    "BaselineResult",
    "BASELINE_CODECS",
    "DEFAULT_SETTINGS",
    "AMR_WB_MODES",
    "CODEC2_MODES",
    "parse_baselines",
    "check_available",
    "run_baseline",
    "opus",
    "amr_wb",
    "codec2",
    "align",
]

#: AMR-WB mode index -> nominal bit rate (kbps)
AMR_WB_MODES: Tuple[float, ...] = (6.60, 8.85, 12.65, 14.25, 15.85, 18.25, 19.85, 23.05, 23.85)
#: Codec2 mode name -> nominal bit rate (bit/s)
CODEC2_MODES: Dict[str, int] = {"3200": 3200, "2400": 2400, "1600": 1600, "1400": 1400, "1300": 1300,
                                "1200": 1200, "700C": 700, "450": 450}
BASELINE_CODECS: Tuple[str, ...] = ("opus", "amr-wb", "codec2")
#: settings used when only the codec name is given (kbps for opus/amr-wb, mode name for codec2)
DEFAULT_SETTINGS: Dict[str, List[str]] = {
    "opus": ["6", "12", "24"],
    "amr-wb": ["6.6", "12.65", "23.85"],
    "codec2": ["3200", "1600", "700C"],
}
_AMR_WB_FRAME_BYTES = (18, 24, 33, 37, 41, 47, 51, 59, 61)  # storage format, incl. the ToC byte


@dataclass
class BaselineResult:
    """Decoded output of one classical codec run.

    Attributes:
        audio: decoded signal ``[T]`` float32, aligned with and as long as the input.
        sample_rate: rate of ``audio`` (= input rate).
        codec: ``"opus"``, ``"amr-wb"`` or ``"codec2"``.
        setting: the requested setting (kbps or codec2 mode), as a string.
        nominal_kbps: nominal bitrate of the setting.
        kbps: measured payload bitrate (encoded audio bytes * 8 / input duration).
        file_kbps: bitrate of the whole encoded file including container headers.
        delay: samples (at ``sample_rate``) removed by the cross-correlation alignment.
    """

    audio: np.ndarray
    sample_rate: int
    codec: str
    setting: str
    nominal_kbps: float
    kbps: float
    file_kbps: float
    delay: int = 0
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Short label such as ``opus@6``."""
        return f"{self.codec}@{self.setting}"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x.astype(np.float32)
    import soxr

    return soxr.resample(x.astype(np.float32), sr_in, sr_out, quality="HQ").astype(np.float32)


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")


def _run(cmd: List[str], what: str) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise CodecError(f"{what} failed ({os.path.basename(cmd[0])}: {err[-1] if err else 'exit ' + str(r.returncode)})")
    return r


def _ffmpeg_has(kind: str, name: str) -> bool:
    ff = shutil.which("ffmpeg")
    if ff is None:
        return False
    r = subprocess.run([ff, "-hide_banner", f"-{kind}"], capture_output=True, text=True)
    return any(line.split()[1:2] == [name] for line in r.stdout.splitlines() if len(line.split()) > 1)


def _vo_amrwbenc() -> Optional[ctypes.CDLL]:
    for name in ("libvo-amrwbenc.so.0", ctypes.util.find_library("vo-amrwbenc") or ""):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.E_IF_init.restype = ctypes.c_void_p
        lib.E_IF_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                                    ctypes.POINTER(ctypes.c_ubyte), ctypes.c_int]
        lib.E_IF_encode.restype = ctypes.c_int
        lib.E_IF_exit.argtypes = [ctypes.c_void_p]
        return lib
    return None


def align(ref: np.ndarray, deg: np.ndarray, max_lag: int) -> Tuple[np.ndarray, int]:
    """Shift ``deg`` so that it best matches ``ref`` (cross-correlation peak within ``±max_lag`` samples)
    and pad / cut it to ``len(ref)``.

    Args:
        ref: reference ``[T]``.
        deg: degraded signal ``[T']``.
    Returns:
        (aligned ``[T]`` float32, lag) where a positive lag means ``deg`` was late by ``lag`` samples.
    """
    n = len(ref)
    m = min(len(deg), n + max_lag)
    d = deg[:m].astype(np.float64)
    r = ref.astype(np.float64)
    lag = 0
    if max_lag > 0 and n > 0 and m > 0 and np.any(r) and np.any(d):
        size = 1
        while size < n + m:
            size *= 2
        xc = np.fft.irfft(np.fft.rfft(d, size) * np.conj(np.fft.rfft(r, size)), size)
        lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
        vals = np.concatenate([xc[: max_lag + 1], xc[size - max_lag:]])
        lag = int(lags[int(np.argmax(vals))])
    if lag >= 0:
        out = deg[lag:]
    else:
        out = np.concatenate([np.zeros(-lag, dtype=deg.dtype), deg])
    out = out[:n]
    if len(out) < n:
        out = np.concatenate([out, np.zeros(n - len(out), dtype=out.dtype)])
    return out.astype(np.float32), lag


def _ogg_payload_bytes(data: bytes) -> Tuple[int, int]:
    """(audio payload bytes, number of audio packets) of an Ogg Opus stream (the first two packets,
    OpusHead and OpusTags, and all page headers are excluded)."""
    pos = 0
    packets: List[int] = []
    cur = 0
    while pos + 27 <= len(data):
        if data[pos:pos + 4] != b"OggS":
            raise CodecError("encoded Opus file is not a valid Ogg stream")
        nseg = data[pos + 26]
        lacing = data[pos + 27:pos + 27 + nseg]
        for lv in lacing:
            cur += lv
            if lv < 255:
                packets.append(cur)
                cur = 0
        pos += 27 + nseg + sum(lacing)
    audio = packets[2:]
    return int(sum(audio)), len(audio)


# ---------------------------------------------------------------------------------------------
# codecs
# ---------------------------------------------------------------------------------------------


def _count_amr_wb_frames(data: bytes) -> int:
    """Number of frames in an AMR-WB storage-format file (``#!AMR-WB\\n`` + ToC byte + speech bits per frame)."""
    pos, n = 9, 0
    sizes = {i: b for i, b in enumerate(_AMR_WB_FRAME_BYTES)}
    sizes.update({9: 6, 14: 1, 15: 1})  # SID, speech lost, no data
    while pos < len(data):
        ft = (data[pos] >> 3) & 0x0F
        pos += sizes.get(ft, 1)
        n += 1
    return n


def check_available(codec: str) -> str:
    """Return the backend that will be used for ``codec`` (e.g. ``"opusenc"``), or raise CodecError
    naming the missing binary and how to install it."""
    if codec == "opus":
        if shutil.which("opusenc") and shutil.which("opusdec"):
            return "opus-tools"
        if _ffmpeg_has("encoders", "libopus"):
            return "ffmpeg"
        raise CodecError("Opus baseline needs opusenc/opusdec or ffmpeg with libopus: apt-get install opus-tools")
    if codec == "amr-wb":
        if shutil.which("ffmpeg") is None or not _ffmpeg_has("decoders", "amrwb"):
            raise CodecError("AMR-WB baseline needs ffmpeg (with its amrwb decoder) on PATH: apt-get install ffmpeg")
        if _ffmpeg_has("encoders", "libvo_amrwbenc"):
            return "ffmpeg"
        if _vo_amrwbenc() is not None:
            return "libvo-amrwbenc"
        raise CodecError("AMR-WB baseline needs an AMR-WB encoder (ffmpeg's libvo_amrwbenc or the library "
                         "libvo-amrwbenc.so.0): apt-get install libvo-amrwbenc0")
    if codec == "codec2":
        if shutil.which("c2enc") and shutil.which("c2dec"):
            return "c2enc"
        raise CodecError("Codec2 baseline needs the c2enc and c2dec binaries: apt-get install codec2")
    raise CodecError(f"unknown baseline codec '{codec}' (choose from {', '.join(BASELINE_CODECS)})")


def opus(wav: np.ndarray, sample_rate: int, kbps: float, tmpdir: Optional[str] = None) -> BaselineResult:
    """Opus (VBR, ``kbps`` target, 20 ms frames) round trip of a mono signal ``[T]``."""
    kbps = float(kbps)
    if kbps < 6 or kbps > 510:
        raise CodecError(f"Opus supports 6..510 kbps, not {kbps:g}")
    backend = check_available("opus")
    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    sr_enc = 48000 if sample_rate > 24000 else (24000 if sample_rate > 16000 else (16000 if sample_rate > 12000 else 12000))
    y = _resample(x, sample_rate, sr_enc)
    import soundfile as sf

    with tempfile.TemporaryDirectory(dir=tmpdir) as td:
        src, enc, dec = (os.path.join(td, n) for n in ("in.wav", "enc.opus", "dec.wav"))
        sf.write(src, _to_pcm16(y), sr_enc, subtype="PCM_16")
        if backend == "opus-tools":
            _run(["opusenc", "--quiet", "--bitrate", f"{kbps:g}", "--vbr", "--framesize", "20", src, enc],
                 "opusenc")
            _run(["opusdec", "--quiet", "--rate", "48000", enc, dec], "opusdec")
        else:
            _run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", src, "-c:a", "libopus",
                  "-b:a", f"{int(kbps * 1000)}", "-vbr", "on", "-frame_duration", "20", enc], "ffmpeg libopus")
            _run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", enc, "-ar", "48000", dec], "ffmpeg opus")
        data = open(enc, "rb").read()
        out, sr_out = sf.read(dec, dtype="float32", always_2d=True)
    out = _resample(out.mean(axis=1), sr_out, sample_rate)
    aligned, lag = align(x, out, max_lag=int(0.05 * sample_rate))
    dur = len(x) / sample_rate
    payload, _ = _ogg_payload_bytes(data)
    return BaselineResult(aligned, sample_rate, "opus", f"{kbps:g}", kbps, payload * 8 / dur / 1000,
                          len(data) * 8 / dur / 1000, lag, {"backend": backend, "encoder_rate": sr_enc})


def _amr_wb_mode(kbps: float) -> int:
    diffs = [abs(m - float(kbps)) for m in AMR_WB_MODES]
    i = int(np.argmin(diffs))
    if diffs[i] > 0.05:
        raise CodecError(f"AMR-WB has no {kbps:g} kbps mode (modes: {', '.join(f'{m:g}' for m in AMR_WB_MODES)})")
    return i


def amr_wb(wav: np.ndarray, sample_rate: int, kbps: float, tmpdir: Optional[str] = None) -> BaselineResult:
    """AMR-WB round trip (16 kHz, the mode whose rate equals ``kbps``) of a mono signal ``[T]``."""
    mode = _amr_wb_mode(kbps)
    backend = check_available("amr-wb")
    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    y = _resample(x, sample_rate, 16000)
    import soundfile as sf

    with tempfile.TemporaryDirectory(dir=tmpdir) as td:
        enc, dec = os.path.join(td, "enc.awb"), os.path.join(td, "dec.wav")
        if backend == "ffmpeg":
            src = os.path.join(td, "in.wav")
            sf.write(src, _to_pcm16(y), 16000, subtype="PCM_16")
            _run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", src, "-c:a", "libvo_amrwbenc",
                  "-b:a", str(int(round(AMR_WB_MODES[mode] * 1000))), "-f", "amr", enc], "ffmpeg libvo_amrwbenc")
            data = open(enc, "rb").read()
        else:
            lib = _vo_amrwbenc()
            assert lib is not None
            pcm = _to_pcm16(y)
            nfr = (len(pcm) + 319) // 320
            pcm = np.concatenate([pcm, np.zeros(nfr * 320 - len(pcm), dtype="<i2")])
            st = lib.E_IF_init()
            buf = (ctypes.c_ubyte * 64)()
            chunks = [b"#!AMR-WB\n"]
            try:
                for i in range(nfr):
                    frame = np.ascontiguousarray(pcm[i * 320:(i + 1) * 320], dtype=np.int16)
                    nb = lib.E_IF_encode(st, mode, frame.ctypes.data_as(ctypes.POINTER(ctypes.c_short)), buf, 0)
                    chunks.append(bytes(buf[:nb]))
            finally:
                lib.E_IF_exit(st)
            data = b"".join(chunks)
            with open(enc, "wb") as f:
                f.write(data)
        _run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "amr", "-i", enc, "-ar", "16000", dec],
             "ffmpeg AMR-WB decode")
        out, _ = sf.read(dec, dtype="float32", always_2d=True)
    out = _resample(out.mean(axis=1), 16000, sample_rate)
    aligned, lag = align(x, out, max_lag=int(0.05 * sample_rate))
    dur = len(x) / sample_rate
    nframes = _count_amr_wb_frames(data)
    payload = len(data) - 9 - nframes  # minus the "#!AMR-WB\n" magic and one ToC byte per frame
    return BaselineResult(aligned, sample_rate, "amr-wb", f"{AMR_WB_MODES[mode]:g}", AMR_WB_MODES[mode],
                          payload * 8 / dur / 1000, len(data) * 8 / dur / 1000, lag, {"backend": backend})


def codec2(wav: np.ndarray, sample_rate: int, mode: Union[str, int], tmpdir: Optional[str] = None) -> BaselineResult:
    """Codec2 round trip (8 kHz narrow-band) of a mono signal ``[T]``; ``mode`` e.g. ``"3200"`` or ``"700C"``."""
    mode = str(mode).upper()
    if mode not in CODEC2_MODES:
        raise CodecError(f"unknown Codec2 mode '{mode}' (modes: {', '.join(CODEC2_MODES)})")
    check_available("codec2")
    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    y = _resample(x, sample_rate, 8000)
    with tempfile.TemporaryDirectory(dir=tmpdir) as td:
        src, enc, dec = (os.path.join(td, n) for n in ("in.raw", "enc.c2", "dec.raw"))
        _to_pcm16(y).tofile(src)
        _run(["c2enc", mode, src, enc], "c2enc")
        _run(["c2dec", mode, enc, dec], "c2dec")
        data = open(enc, "rb").read()
        out = np.fromfile(dec, dtype="<i2").astype(np.float32) / 32768.0
    out = _resample(out, 8000, sample_rate)
    aligned, lag = align(x, out, max_lag=int(0.05 * sample_rate))
    dur = len(x) / sample_rate
    # c2enc may write a small header (".c2" files of newer versions); raw frame bytes otherwise
    return BaselineResult(aligned, sample_rate, "codec2", mode, CODEC2_MODES[mode] / 1000,
                          len(data) * 8 / dur / 1000, len(data) * 8 / dur / 1000, lag, {"backend": "c2enc"})


def parse_baselines(spec: str, match_kbps: Sequence[float] = ()) -> List[Tuple[str, str]]:
    """Parse ``--baseline`` text into ``[(codec, setting)]``.

    ``"opus,amr-wb,codec2"`` uses :data:`DEFAULT_SETTINGS` (plus, for Opus, every ``match_kbps`` value
    in Opus's 6..510 kbps range); ``"opus@6,opus@12,amr-wb@6.6,codec2@700C"`` selects settings;
    ``"opus@6+12"`` is short for two settings.
    """
    out: List[Tuple[str, str]] = []
    for tok in [t.strip() for t in spec.split(",") if t.strip()]:
        name, _, sets = tok.partition("@")
        name = name.lower().replace("_", "-")
        if name in ("amrwb", "amr"):
            name = "amr-wb"
        if name not in BASELINE_CODECS:
            raise CodecError(f"unknown baseline codec '{name}' (choose from {', '.join(BASELINE_CODECS)})")
        if sets:
            settings = [s for s in sets.split("+") if s]
        else:
            settings = list(DEFAULT_SETTINGS[name])
            if name == "opus":
                for k in match_kbps:
                    if 6 <= k <= 510 and f"{k:g}" not in settings:
                        settings.append(f"{k:g}")
                settings.sort(key=float)
        for s in settings:
            if name == "codec2":
                s = s.upper()
                if s not in CODEC2_MODES:
                    raise CodecError(f"unknown Codec2 mode '{s}' (modes: {', '.join(CODEC2_MODES)})")
            else:
                try:
                    v = float(s)
                except ValueError:
                    raise CodecError(f"baseline setting '{tok}' is not a number of kbps") from None
                if name == "opus" and not 6 <= v <= 510:
                    raise CodecError(f"Opus supports 6..510 kbps, not {v:g}")
                if name == "amr-wb":
                    s = f"{AMR_WB_MODES[_amr_wb_mode(v)]:g}"
            if (name, s) not in out:
                out.append((name, s))
    return out


def run_baseline(codec: str, setting: str, wav: np.ndarray, sample_rate: int,
                 tmpdir: Optional[str] = None) -> BaselineResult:
    """Run one classical codec on a mono signal ``[T]``: ``codec`` in :data:`BASELINE_CODECS`,
    ``setting`` kbps (opus, amr-wb) or a Codec2 mode name."""
    if codec == "opus":
        return opus(wav, sample_rate, float(setting), tmpdir)
    if codec == "amr-wb":
        return amr_wb(wav, sample_rate, float(setting), tmpdir)
    if codec == "codec2":
        return codec2(wav, sample_rate, setting, tmpdir)
    raise CodecError(f"unknown baseline codec '{codec}' (choose from {', '.join(BASELINE_CODECS)})")
