"""Tests for codec/codes_format.py: bit packing, header, CRC, truncation, corruption, and the spec in docs/."""
from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from codec.codes_format import (
    FORMAT_VERSION,
    MAGIC,
    CodesHeader,
    bits_for,
    decode_bytes,
    encode_bytes,
    pack_codes,
    read_codes,
    read_header,
    trim_bytes,
    trim_levels,
    unpack_codes,
    write_codes,
)
from codec.errors import CodecError

ROOT = Path(__file__).resolve().parent.parent


def make_header(channels=1, nq=8, frames=100, codebook=1024, name="speech-24k", **kw) -> CodesHeader:
    d = dict(sample_rate=24000, hop_length=320, frame_rate=75.0, codebook_size=codebook,
             bits_per_code=bits_for(codebook), channels=channels, orig_channels=channels, num_levels=nq,
             num_frames=frames, orig_length=frames * 320 - 17, orig_sample_rate=24000,
             weights_sha256=bytes(range(32)), model_name=name)
    d.update(kw)
    return CodesHeader(**d)


def rand_codes(h: CodesHeader, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, h.codebook_size, size=(h.channels, h.num_levels, h.num_frames))


@pytest.mark.parametrize("K", [2, 3, 255, 256, 1000, 1024, 1025, 4096, 65536])
def test_pack_unpack_roundtrip(K):
    b = bits_for(K)
    assert b == max(1, math.ceil(math.log2(K)))
    codes = np.random.default_rng(K).integers(0, K, size=3 * 7 * 131)
    buf = pack_codes(codes, b)
    assert len(buf) == (codes.size * b + 7) // 8
    assert np.array_equal(unpack_codes(buf, codes.size, b), codes)


def test_pack_is_msb_first():
    assert pack_codes(np.array([1, 2, 1023]), 10) == bytes([0x00, 0x40, 0x2F, 0xFC])
    assert pack_codes(np.array([1]), 1) == b"\x80"
    assert pack_codes(np.zeros(0, dtype=int), 10) == b""


def test_pack_large_chunked_matches_small():
    """Packing is chunked internally; chunk boundaries must not change the bytes."""
    codes = np.random.default_rng(1).integers(0, 1024, size=(1 << 18) + 12345)
    buf = pack_codes(codes, 10)
    assert buf[:1000] == pack_codes(codes[:800], 10)
    assert np.array_equal(unpack_codes(buf, codes.size, 10), codes)


def test_pack_rejects_out_of_range():
    with pytest.raises(CodecError):
        pack_codes(np.array([0, 1024]), 10)
    with pytest.raises(CodecError):
        pack_codes(np.array([-1, 3]), 10)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_encode_decode_roundtrip(channels):
    h = make_header(channels=channels, nq=5, frames=77, codebook=1000, name="modèle/ü")
    codes = rand_codes(h)
    buf = encode_bytes(h, codes)
    assert len(buf) == h.file_size
    assert buf[:8] == MAGIC
    cf = decode_bytes(buf)
    assert np.array_equal(cf.codes, codes)
    assert cf.header == h
    assert cf.header.version == FORMAT_VERSION


def test_file_roundtrip_and_no_temp_left(tmp_path):
    h = make_header(channels=2, nq=4, frames=50)
    codes = rand_codes(h, 3)
    out = tmp_path / "x.codes"
    write_codes(out, h, codes)
    assert sorted(os.listdir(tmp_path)) == ["x.codes"]
    cf = read_codes(out)
    assert np.array_equal(cf.codes, codes)
    assert read_header(out) == h


def test_level_major_trim_is_truncation():
    h = make_header(channels=2, nq=8, frames=93)
    codes = rand_codes(h, 5)
    full = encode_bytes(h, codes)
    for k in (1, 3, 8):
        hk = make_header(channels=2, nq=k, frames=93)
        direct = encode_bytes(hk, codes[:, :k])
        assert trim_bytes(full, k) == direct
        # the payload of the trimmed file is a prefix of the full payload
        assert full[h.header_size: h.header_size + k * h.level_bytes] == direct[hk.header_size:-4]


def test_trim_levels_files(tmp_path):
    h = make_header(nq=6)
    codes = rand_codes(h)
    src, dst = tmp_path / "a.codes", tmp_path / "b.codes"
    write_codes(src, h, codes)
    h2 = trim_levels(src, dst, 2)
    assert h2.num_levels == 2
    assert np.array_equal(read_codes(dst).codes, codes[:, :2])
    with pytest.raises(CodecError, match=r"^nq 7 is out of range: '.*a.codes' stores levels 1 to 6\."):
        trim_levels(src, tmp_path / "c.codes", 7)
    with pytest.raises(CodecError, match="out of range"):
        trim_levels(src, tmp_path / "c.codes", 0)
    assert not (tmp_path / "c.codes").exists()


@pytest.mark.parametrize("nq,seconds", [(1, 10), (8, 10), (32, 60)])
def test_size_matches_nominal_bitrate(nq, seconds):
    frames = int(seconds * 75)
    h = make_header(nq=nq, frames=frames)
    size = len(encode_bytes(h, rand_codes(h)))
    nominal = h.bitrate * seconds / 8
    assert h.bitrate == nq * 10 * 75
    assert 0 <= size - nominal <= h.header_size + 4 + nq


def test_header_layout_matches_spec():
    """Offsets documented in docs/codes-format.md."""
    h = make_header(channels=2, nq=3, frames=1234, name="abc", orig_sample_rate=44100, orig_length=99999)
    buf = encode_bytes(h, rand_codes(h))
    assert struct.unpack_from("<H", buf, 8)[0] == 1
    assert struct.unpack_from("<H", buf, 10)[0] == 94 + 3
    assert struct.unpack_from("<IId", buf, 12) == (24000, 320, 75.0)
    assert struct.unpack_from("<IBBHH", buf, 28) == (1024, 10, 2, 2, 3)
    assert struct.unpack_from("<QQI", buf, 40) == (1234, 99999, 44100)
    assert buf[60:92] == bytes(range(32))
    assert struct.unpack_from("<H", buf, 92)[0] == 3 and buf[94:97] == b"abc"
    assert struct.unpack("<I", buf[-4:])[0] == zlib.crc32(buf[:-4])


def test_spec_reader_in_docs_reads_our_files():
    doc = (ROOT / "docs" / "codes-format.md").read_text()
    code = doc.split("## 9.")[1].split("```python")[1].split("```")[0]
    ns: dict = {}
    exec(code, ns)
    h = make_header(channels=3, nq=4, frames=21, codebook=1000)
    codes = rand_codes(h, 9)
    got = np.array(ns["read_codes"](encode_bytes(h, codes)))  # [level][channel][frame]
    assert np.array_equal(got.transpose(1, 0, 2), codes)


def test_spec_worked_example_bytes():
    doc = (ROOT / "docs" / "codes-format.md").read_text()
    block = doc.split("## 8.")[1].split("```")[1]
    hexbytes = "".join(line.split(":")[1].split("  ")[0] for line in block.strip().splitlines())
    expected = bytes.fromhex(hexbytes.replace(" ", ""))
    h = make_header(nq=2, frames=3, name="demo", orig_length=960)
    assert encode_bytes(h, np.array([[[1, 2, 1023], [0, 512, 7]]])) == expected


# ---- corruption ---------------------------------------------------------------------------

@pytest.fixture()
def good() -> bytes:
    h = make_header(nq=4, frames=40)
    return encode_bytes(h, rand_codes(h))


def test_bad_magic(good):
    with pytest.raises(CodecError, match=r"^'f' is not a \.codes file \(bad magic bytes\)\.$"):
        decode_bytes(b"RIFF" + good[4:], "f")
    with pytest.raises(CodecError, match="bad magic"):
        decode_bytes(b"", "f")


def test_wrong_version(good):
    bad = good[:8] + struct.pack("<H", 7) + good[10:]
    with pytest.raises(CodecError, match=r"^'f' uses \.codes format version 7, but this codec reads only version 1\.$"):
        decode_bytes(bad, "f")


def test_crc_mismatch(good):
    bad = bytearray(good)
    bad[120] ^= 0x10
    with pytest.raises(CodecError, match=r"^'f' is corrupted \(CRC mismatch\)\.$"):
        decode_bytes(bytes(bad), "f")
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(CodecError, match=r"CRC mismatch"):
        decode_bytes(bytes(bad), "f")


def test_truncated(good):
    n = len(good)
    with pytest.raises(CodecError, match=rf"^'f' is truncated \({n - 10} bytes, the header promises {n}\)\.$"):
        decode_bytes(good[:-10], "f")
    with pytest.raises(CodecError, match=r"^'f' is truncated \(the header is incomplete\)\.$"):
        decode_bytes(good[:50], "f")


def test_trailing_bytes(good):
    with pytest.raises(CodecError, match=r"^'f' is corrupted \(3 unexpected bytes after the checksum\)\.$"):
        decode_bytes(good + b"abc", "f")


def test_inconsistent_header(good):
    bad = bytearray(good)
    bad[32] = 9  # bits_per_code no longer matches the codebook size
    with pytest.raises(CodecError, match=r"is corrupted \(inconsistent header fields\)"):
        decode_bytes(bytes(bad), "f")


def test_write_refuses_bad_codes(tmp_path):
    h = make_header(nq=2, frames=5)
    with pytest.raises(CodecError, match="does not match the header"):
        encode_bytes(h, np.zeros((1, 3, 5), dtype=int))
    c = np.zeros((1, 2, 5), dtype=int)
    c[0, 1, 4] = -1
    with pytest.raises(CodecError, match=r"codes must lie in \[0, 1024\)"):
        write_codes(tmp_path / "x.codes", h, c)
    assert os.listdir(tmp_path) == []


def test_missing_and_directory_inputs(tmp_path):
    with pytest.raises(CodecError, match=r"^input file '.*nope.codes' does not exist\.$"):
        read_codes(tmp_path / "nope.codes")
    with pytest.raises(CodecError, match="is a directory"):
        read_codes(tmp_path)


def test_write_into_missing_directory(tmp_path):
    h = make_header(nq=1, frames=2)
    with pytest.raises(CodecError, match=r"^cannot write '.*x.codes': directory '.*nodir' does not exist\.$"):
        write_codes(tmp_path / "nodir" / "x.codes", h, rand_codes(h))
