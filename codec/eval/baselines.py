"""Classical speech/audio codecs as baselines for `codec eval`, run through the system's binaries/libraries.

- **Opus** (``opusenc``/``opusdec`` from opus-tools, or ``ffmpeg -c:a libopus``): 6..510 kbps, VBR,
  48 kHz internally. Opus cannot go below 6 kbps, so settings below that are rejected.
- **AMR-WB** (ITU-T G.722.2, 16 kHz; bitrate counted from each frame's speech bits, without the storage
  format's ToC byte and octet padding): encoded with ``ffmpeg -c:a libvo_amrwbenc`` when ffmpeg has it,
  otherwise directly through the VisualOn encoder library ``libvo-amrwbenc.so.0`` (Debian package
  ``libvo-amrwbenc0``) with ctypes; decoded with ffmpeg's native AMR-WB decoder. Modes 6.6 .. 23.85 kbps.
- **Codec2** (``c2enc``/``c2dec``, Debian package ``codec2``): modes 3200, 2400, 1600, 1400, 1300, 1200,
  700C, 450 bit/s on 8 kHz input.

Every codec takes a mono float signal ``[T]`` at any sample rate. The signal is scaled to a speech level of
-26 dBFS RMS (the level these codecs are designed for, ITU-T P.56 practice; the gain is limited so that the
peak stays below full scale, which also avoids clipping references that exceed ±1), resampled to the codec's
rate with soxr, encoded, decoded, resampled back, scaled back by the inverse gain, delay-compensated and
padded/cut to the input length. Opus and AMR-WB are waveform coders: their delay is found by
cross-correlation. Codec2 is parametric (synthetic phase), so cross-correlation is unreliable (it scattered
over 9..22 ms on real speech); its fixed algorithmic delay is used instead (20 ms, 30 ms for 700C/450;
measured with codec2 1.0.5 as the STOI-maximising shift, identical over files).

The bitrate is measured from the encoded payload: for Opus the Ogg container is parsed and only the audio
packets are counted (headers/page overhead excluded); the full file size is also reported.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from codec.audio import resample
from codec.errors import CodecError

__all__ = [
    "BaselineResult",
    "BASELINE_CODECS",
    "DEFAULT_SETTINGS",
    "AMR_WB_MODES",
    "CODEC2_MODES",
    "CODEC2_DELAY_MS",
    "CODEC2_FRAME_MS",
    "SPEECH_LEVEL_DB",
    "parse_baselines",
    "check_available",
    "run_baseline",
    "opus",
    "amr_wb",
    "codec2",
    "align",
    "level_gain",
]

#: AMR-WB mode index -> nominal bit rate (kbps)
AMR_WB_MODES: Tuple[float, ...] = (6.60, 8.85, 12.65, 14.25, 15.85, 18.25, 19.85, 23.05, 23.85)
#: Codec2 mode name -> nominal bit rate (bit/s)
CODEC2_MODES: Dict[str, int] = {"3200": 3200, "2400": 2400, "1600": 1600, "1400": 1400, "1300": 1300,
                                "1200": 1200, "700C": 700, "450": 450}
#: Codec2 mode name -> frame length in ms (each frame is packed into whole bytes by c2enc)
CODEC2_FRAME_MS: Dict[str, int] = {m: (20 if m in ("3200", "2400") else 40) for m in CODEC2_MODES}
#: Codec2 mode name -> algorithmic delay of c2enc + c2dec in ms (codec2 1.0.5)
CODEC2_DELAY_MS: Dict[str, float] = {m: (30.0 if m in ("700C", "450") else 20.0) for m in CODEC2_MODES}
BASELINE_CODECS: Tuple[str, ...] = ("opus", "amr-wb", "codec2")
#: settings used when only the codec name is given (kbps for opus/amr-wb, mode name for codec2)
DEFAULT_SETTINGS: Dict[str, List[str]] = {
    "opus": ["6", "12", "24"],
    "amr-wb": ["6.6", "12.65", "23.85"],
    "codec2": ["3200", "1600", "700C"],
}
#: RMS level (dBFS) the input is scaled to before a classical codec (undone after decoding)
SPEECH_LEVEL_DB = -26.0
_AMR_WB_FRAME_BYTES = (18, 24, 33, 37, 41, 47, 51, 59, 61)  # storage format, incl. the ToC byte
_AMR_WB_FRAME_BITS = (132, 177, 253, 285, 317, 365, 397, 461, 477)  # speech bits per 20 ms frame
_MAX_LAG_S = 0.05  # cross-correlation search range


@dataclass
class BaselineResult:
    """Decoded output of one classical codec run.

    Attributes:
        audio: decoded signal ``[T]`` float32, aligned with and as long as the input.
        sample_rate: rate of ``audio`` (= input rate).
        codec: ``"opus"``, ``"amr-wb"`` or ``"codec2"``.
        setting: the requested setting (kbps or codec2 mode), as a string.
        nominal_kbps: nominal bitrate of the setting.
        kbps: measured payload bitrate (encoded audio bytes * 8 / encoded duration).
        file_kbps: bitrate of the whole encoded file including container headers.
        delay: samples (at ``sample_rate``) removed by the delay compensation.
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


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")


def _run(cmd: List[str], what: str) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise CodecError(f"{what} failed ({os.path.basename(cmd[0])}: {err[-1] if err else 'exit ' + str(r.returncode)}).")
    return r


def _ffmpeg(args: List[str], what: str) -> None:
    _run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error"] + args, what)


def _fp(path: str) -> str:
    """A path for ffmpeg that can never be read as an option (``file:/abs/path``)."""
    from codec.audio import ffmpeg_path_arg

    return ffmpeg_path_arg(path)


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


def _shift(deg: np.ndarray, lag: int, n: int) -> np.ndarray:
    """``deg`` advanced by ``lag`` samples (delayed when negative), zero-padded / cut to ``n``: float32 ``[n]``."""
    out = deg[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, dtype=deg.dtype), deg])
    out = out[:n]
    if len(out) < n:
        out = np.concatenate([out, np.zeros(n - len(out), dtype=out.dtype)])
    return out.astype(np.float32)


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
    return _shift(deg, lag, n), lag


def level_gain(x: np.ndarray, level_db: Optional[float] = SPEECH_LEVEL_DB, peak: float = 0.99) -> float:
    """Gain that brings the RMS of ``x [T]`` to ``level_db`` dBFS, limited so that ``|x| * gain <= peak``.

    Returns 1.0 when ``level_db`` is None or ``x`` is silent.
    """
    x = np.asarray(x, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
    if level_db is None or rms <= 1e-9:
        return 1.0
    gain = 10.0 ** (level_db / 20.0) / rms
    top = float(np.max(np.abs(x))) * gain
    return gain * peak / top if top > peak else gain


def _ogg_payload_bytes(data: bytes) -> Tuple[int, int]:
    """(audio payload bytes, number of audio packets) of an Ogg Opus stream (the first two packets,
    OpusHead and OpusTags, and all page headers are excluded)."""
    pos = 0
    packets: List[int] = []
    cur = 0
    while pos + 27 <= len(data):
        if data[pos:pos + 4] != b"OggS":
            raise CodecError("the encoded Opus file is not a valid Ogg stream.")
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


def _amr_wb_frames(data: bytes) -> Tuple[int, int]:
    """(frames, speech bits) of an AMR-WB storage-format file (``#!AMR-WB\n`` + ToC byte + octet-padded
    speech bits per frame); the bits are the codec's own (132 per 6.6 kbps frame), without ToC and padding."""
    pos, n, bits = 9, 0, 0
    sizes = {i: b for i, b in enumerate(_AMR_WB_FRAME_BYTES)}
    sizes.update({9: 6, 14: 1, 15: 1})  # SID, speech lost, no data
    frame_bits = {i: b for i, b in enumerate(_AMR_WB_FRAME_BITS)}
    frame_bits[9] = 40
    while pos < len(data):
        ft = (data[pos] >> 3) & 0x0F
        pos += sizes.get(ft, 1)
        bits += frame_bits.get(ft, 0)
        n += 1
    return n, bits


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------


def _unknown_codec(name: str) -> CodecError:
    return CodecError(f"unknown baseline codec '{name}' (choose from {', '.join(BASELINE_CODECS)}).")


def _opus_kbps(kbps: Union[str, float]) -> float:
    v = float(kbps)
    if not 6 <= v <= 510:
        raise CodecError(f"Opus supports 6..510 kbps, not {v:g}.")
    return v


def _amr_wb_mode(kbps: Union[str, float]) -> int:
    diffs = [abs(m - float(kbps)) for m in AMR_WB_MODES]
    i = int(np.argmin(diffs))
    if diffs[i] > 0.05:
        raise CodecError(f"AMR-WB has no {float(kbps):g} kbps mode (modes: {', '.join(f'{m:g}' for m in AMR_WB_MODES)}).")
    return i


def _codec2_mode(mode: Union[str, int]) -> str:
    m = str(mode).upper()
    if m not in CODEC2_MODES:
        raise CodecError(f"unknown Codec2 mode '{mode}' (modes: {', '.join(CODEC2_MODES)}).")
    return m


def check_available(codec: str) -> str:
    """Return the backend that will be used for ``codec`` (e.g. ``"opus-tools"``), or raise CodecError
    naming the missing binary and how to install it."""
    if codec == "opus":
        if shutil.which("opusenc") and shutil.which("opusdec"):
            return "opus-tools"
        if _ffmpeg_has("encoders", "libopus"):
            return "ffmpeg"
        raise CodecError("the Opus baseline needs opusenc and opusdec (or ffmpeg with libopus) on PATH: "
                         "apt-get install opus-tools.")
    if codec == "amr-wb":
        if not _ffmpeg_has("decoders", "amrwb"):
            raise CodecError("the AMR-WB baseline needs ffmpeg (with its amrwb decoder) on PATH: "
                             "apt-get install ffmpeg.")
        if _ffmpeg_has("encoders", "libvo_amrwbenc"):
            return "ffmpeg"
        if _vo_amrwbenc() is not None:
            return "libvo-amrwbenc"
        raise CodecError("the AMR-WB baseline needs an AMR-WB encoder (ffmpeg's libvo_amrwbenc or the library "
                         "libvo-amrwbenc.so.0): apt-get install libvo-amrwbenc0.")
    if codec == "codec2":
        if shutil.which("c2enc") and shutil.which("c2dec"):
            return "c2enc"
        raise CodecError("the Codec2 baseline needs c2enc and c2dec on PATH: apt-get install codec2.")
    raise _unknown_codec(codec)


# ---------------------------------------------------------------------------------------------
# codecs
# ---------------------------------------------------------------------------------------------

# encode_decode(y [T] float32 at the codec rate, temp dir) ->
#     (decoded [T'] float32, decoded rate, payload bytes, file bytes, samples the payload covers at the codec rate)
_EncodeDecode = Callable[[np.ndarray, str], Tuple[np.ndarray, int, float, int, int]]


def _roundtrip(codec: str, setting: str, nominal_kbps: float, wav: np.ndarray, sample_rate: int, codec_rate: int,
               encode_decode: _EncodeDecode, fixed_delay_ms: Optional[float], tmpdir: Optional[str],
               level_db: Optional[float], extra: Dict[str, object]) -> BaselineResult:
    """Shared frame of every baseline: level, resample, encode + decode, resample back, undo level, align."""
    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    gain = level_gain(x, level_db)
    y = resample(x * np.float32(gain), sample_rate, codec_rate)
    base = None if tmpdir is None else os.path.abspath(tmpdir)  # absolute: a temp path is never read as an option
    with tempfile.TemporaryDirectory(dir=base) as td:
        out, out_rate, payload, total, coded = encode_decode(y, td)
    out = resample(out, out_rate, sample_rate) / np.float32(gain)
    if fixed_delay_ms is None:
        aligned, lag = align(x, out, max_lag=int(_MAX_LAG_S * sample_rate))
    else:
        lag = int(round(fixed_delay_ms * sample_rate / 1000.0))
        aligned = _shift(out, lag, len(x))
    secs = max(coded, 1) / codec_rate
    return BaselineResult(aligned, sample_rate, codec, setting, nominal_kbps, payload * 8 / secs / 1000,
                          total * 8 / secs / 1000, lag, dict(extra, gain_db=round(20 * float(np.log10(gain)), 2)))


def opus_encode(src: str, dst: str, kbps: float, backend: Optional[str] = None) -> None:
    """Encode the wav file ``src`` to the Ogg Opus file ``dst`` (VBR, ``kbps`` target, 20 ms frames) with
    opus-tools or ffmpeg (``backend`` as :func:`check_available` names it; found when ``None``)."""
    backend = backend or check_available("opus")
    if backend == "opus-tools":
        _run(["opusenc", "--quiet", "--bitrate", f"{kbps:g}", "--vbr", "--framesize", "20", src, dst], "opusenc")
    else:
        _ffmpeg(["-i", _fp(src), "-c:a", "libopus", "-b:a", f"{int(kbps * 1000)}", "-vbr", "on",
                 "-frame_duration", "20", _fp(dst)], "ffmpeg libopus")


def opus(wav: np.ndarray, sample_rate: int, kbps: float, tmpdir: Optional[str] = None,
         level_db: Optional[float] = SPEECH_LEVEL_DB) -> BaselineResult:
    """Opus (VBR, ``kbps`` target, 20 ms frames) round trip of a mono signal ``[T]``."""
    kbps = _opus_kbps(kbps)
    backend = check_available("opus")
    sr_enc = next(r for r in (12000, 16000, 24000, 48000) if sample_rate <= r or r == 48000)
    import soundfile as sf

    def encode_decode(y: np.ndarray, td: str) -> Tuple[np.ndarray, int, float, int, int]:
        src, enc, dec = (os.path.join(td, n) for n in ("in.wav", "enc.opus", "dec.wav"))
        sf.write(src, _to_pcm16(y), sr_enc, subtype="PCM_16")
        opus_encode(src, enc, kbps, backend)
        if backend == "opus-tools":
            _run(["opusdec", "--quiet", "--rate", "48000", enc, dec], "opusdec")
        else:
            _ffmpeg(["-i", _fp(enc), "-ar", "48000", _fp(dec)], "ffmpeg opus")
        with open(enc, "rb") as f:
            data = f.read()
        out, sr_out = sf.read(dec, dtype="float32", always_2d=True)
        return out.mean(axis=1), sr_out, _ogg_payload_bytes(data)[0], len(data), len(y)

    return _roundtrip("opus", f"{kbps:g}", kbps, wav, sample_rate, sr_enc, encode_decode, None, tmpdir, level_db,
                      {"backend": backend, "encoder_rate": sr_enc})


def _amr_wb_encode_ctypes(pcm: np.ndarray, mode: int) -> bytes:
    """AMR-WB storage-format bytes of 16 kHz int16 ``pcm [T]`` through libvo-amrwbenc (ctypes)."""
    lib = _vo_amrwbenc()
    assert lib is not None
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
    return b"".join(chunks)


def amr_wb(wav: np.ndarray, sample_rate: int, kbps: float, tmpdir: Optional[str] = None,
           level_db: Optional[float] = SPEECH_LEVEL_DB) -> BaselineResult:
    """AMR-WB round trip (16 kHz, the mode whose rate equals ``kbps``) of a mono signal ``[T]``."""
    mode = _amr_wb_mode(kbps)
    backend = check_available("amr-wb")
    import soundfile as sf

    def encode_decode(y: np.ndarray, td: str) -> Tuple[np.ndarray, int, float, int, int]:
        enc, dec = os.path.join(td, "enc.awb"), os.path.join(td, "dec.wav")
        if backend == "ffmpeg":
            src = os.path.join(td, "in.wav")
            sf.write(src, _to_pcm16(y), 16000, subtype="PCM_16")
            _ffmpeg(["-i", _fp(src), "-c:a", "libvo_amrwbenc", "-b:a", str(int(round(AMR_WB_MODES[mode] * 1000))),
                     "-f", "amr", _fp(enc)], "ffmpeg libvo_amrwbenc")
            with open(enc, "rb") as f:
                data = f.read()
        else:
            data = _amr_wb_encode_ctypes(_to_pcm16(y), mode)
            with open(enc, "wb") as f:
                f.write(data)
        _ffmpeg(["-f", "amr", "-i", _fp(enc), "-ar", "16000", _fp(dec)], "ffmpeg AMR-WB decode")
        out, _ = sf.read(dec, dtype="float32", always_2d=True)
        nframes, bits = _amr_wb_frames(data)  # frames cover 20 ms each
        return out.mean(axis=1), 16000, bits / 8, len(data), nframes * 320

    setting = f"{AMR_WB_MODES[mode]:g}"
    return _roundtrip("amr-wb", setting, AMR_WB_MODES[mode], wav, sample_rate, 16000, encode_decode, None, tmpdir,
                      level_db, {"backend": backend})


def codec2(wav: np.ndarray, sample_rate: int, mode: Union[str, int], tmpdir: Optional[str] = None,
           level_db: Optional[float] = SPEECH_LEVEL_DB) -> BaselineResult:
    """Codec2 round trip (8 kHz narrow-band) of a mono signal ``[T]``; ``mode`` e.g. ``"3200"`` or ``"700C"``."""
    mode = _codec2_mode(mode)
    check_available("codec2")
    delay_ms = CODEC2_DELAY_MS[mode]

    def encode_decode(y: np.ndarray, td: str) -> Tuple[np.ndarray, int, float, int, int]:
        src, enc, dec = (os.path.join(td, n) for n in ("in.raw", "enc.bin", "dec.raw"))
        # zero tail: the decoder delay plus up to one 40 ms frame would otherwise cut the end off
        pad = int(8 * (delay_ms + 40))
        _to_pcm16(np.concatenate([y, np.zeros(pad, np.float32)])).tofile(src)
        _run(["c2enc", mode, src, enc], "c2enc")  # ".bin": headerless, byte-packed frames
        _run(["c2dec", mode, enc, dec], "c2dec")
        nbytes = os.path.getsize(enc)
        frame_bits = CODEC2_MODES[mode] * CODEC2_FRAME_MS[mode] // 1000  # e.g. 28 for 700C (packed into 4 bytes)
        nframes = nbytes // ((frame_bits + 7) // 8)
        out = np.fromfile(dec, dtype="<i2").astype(np.float32) / 32768.0
        return out, 8000, nframes * frame_bits / 8, nbytes, nframes * 8 * CODEC2_FRAME_MS[mode]

    return _roundtrip("codec2", mode, CODEC2_MODES[mode] / 1000, wav, sample_rate, 8000, encode_decode, delay_ms,
                      tmpdir, level_db, {"backend": "c2enc"})


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
            raise _unknown_codec(name)
        if sets:
            settings = [s for s in sets.split("+") if s]
        else:
            settings = list(DEFAULT_SETTINGS[name])
            if name == "opus":
                settings += [f"{k:g}" for k in match_kbps if 6 <= k <= 510 and f"{k:g}" not in settings]
                settings.sort(key=float)
        for s in settings:
            if name == "codec2":
                s = _codec2_mode(s)
            else:
                try:
                    v = float(s)
                except ValueError:
                    raise CodecError(f"baseline setting '{tok}' is not a number of kbps.") from None
                s = f"{_opus_kbps(v):g}" if name == "opus" else f"{AMR_WB_MODES[_amr_wb_mode(v)]:g}"
            if (name, s) not in out:
                out.append((name, s))
    return out


def run_baseline(codec: str, setting: str, wav: np.ndarray, sample_rate: int,
                 tmpdir: Optional[str] = None, level_db: Optional[float] = SPEECH_LEVEL_DB) -> BaselineResult:
    """Run one classical codec on a mono signal ``[T]``: ``codec`` in :data:`BASELINE_CODECS`,
    ``setting`` kbps (opus, amr-wb) or a Codec2 mode name; ``level_db`` None disables level scaling."""
    fns = {"opus": opus, "amr-wb": amr_wb, "codec2": codec2}
    if codec not in fns:
        raise _unknown_codec(codec)
    return fns[codec](wav, sample_rate, setting, tmpdir, level_db)
