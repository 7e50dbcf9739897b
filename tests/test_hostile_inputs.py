"""Hostile inputs (issue 15): every .codes file, config.json, weights file, model name and path a user can hand
codec gets one sentence (``codec: error: ...``, exit 2) or a correct result: never a traceback, a crash, an
unbounded allocation or output, or a leftover file.

Two seeded fuzzers (no extra dependency): every header field of a valid ``.codes`` file is set to boundary and
random values (CRC recomputed, with the payload as is and resized to what the header promises) and run through
``codec info``, ``codec trim`` and ``codec decode`` in-process; every ``config.json`` field is set to boundary,
random and wrongly typed values and loaded with ``codec.load`` (and a part through ``codec encode``).
"""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import codec
from codec.cli import main
from codec.codes_format import CodesHeader, read_codes, read_header, write_codes
from codec.errors import CodecError
from test_cli_common import listing, make_tiny_model_dir, models_by_name, write_wav

ROOT = Path(__file__).resolve().parent.parent
FIXED = struct.Struct("<8sHHIIdIBBHHHQQI32sH")
#: (field, index in FIXED, struct code) of every fixed-header field
FIELDS = [("magic", 0, "8s"), ("version", 1, "H"), ("header_size", 2, "H"), ("sample_rate", 3, "I"),
          ("hop_length", 4, "I"), ("frame_rate", 5, "d"), ("codebook_size", 6, "I"), ("bits_per_code", 7, "B"),
          ("channels", 8, "B"), ("orig_channels", 9, "H"), ("num_levels", 10, "H"), ("reserved", 11, "H"),
          ("num_frames", 12, "Q"), ("orig_length", 13, "Q"), ("orig_sample_rate", 14, "I"),
          ("weights_sha256", 15, "32s"), ("model_name_len", 16, "H")]
MAX_OUT = 1 << 16  # bytes of stdout + stderr one command may print


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with models_by_name(tmp_path_factory.mktemp("hostile")) as d:  # .codes files name their model
        tiny = make_tiny_model_dir(d / "tiny", seed=0)
        wav = write_wav(d / "good.wav", 16000, 0.3)
        assert main(["encode", str(wav), str(d / "good.codes"), "--nq", "2", "--model", str(tiny), "-q"]) == 0
        yield {"dir": d, "tiny": tiny, "wav": wav, "codes": d / "good.codes", "model": codec.load(tiny)}


@pytest.fixture()
def cached_models(env, monkeypatch):
    """Load each model once per test (the fuzzers decode hundreds of files; loading is tested elsewhere)."""
    import codec.pipeline as tc

    real, cache = tc.resolve_model, {}

    def resolve_model(spec=None, device=None):
        key = (spec, device)
        if key not in cache:
            try:
                cache[key] = real(spec, device)
            except CodecError as exc:
                cache[key] = exc
        if isinstance(cache[key], CodecError):
            raise CodecError(str(cache[key]))
        return cache[key]

    monkeypatch.setattr(tc, "resolve_model", resolve_model)


def split(buf: bytes):
    fields = list(FIXED.unpack_from(buf, 0))
    name = buf[FIXED.size: fields[2]]
    return fields, name, buf[fields[2]:-4]


def assemble(fields, name: bytes, payload: bytes) -> bytes:
    body = FIXED.pack(*fields) + name + payload
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def promised_payload(fields) -> int:
    """Payload bytes the (possibly mutated) header promises; -1 if the formula makes no sense."""
    bits, ch, nq, frames = fields[7], fields[8], fields[10], fields[12]
    return nq * ((ch * frames * bits + 7) // 8)


def check_one_line(rc: int, out: str, err: str) -> None:
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err and len(out) + len(err) <= MAX_OUT
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("codec: error: ") and lines[0].endswith("."), err
    else:
        assert err == "", err


# ---- the .codes header fuzzer ---------------------------------------------------------------------------------

def _int_values(rng: random.Random, code: str, orig: int):
    top = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF, "Q": (1 << 64) - 1}[code]
    vals = {0, 1, 2, 3, top, top - 1, top // 2, orig, orig + 1, max(0, orig - 1), orig * 2, orig // 2, 7, 33,
            64, 65, 255, 256, 1000, 999, 384000, 384001, 1 << 16, (1 << 16) + 1, 10 ** 10, 2 * 10 ** 8,
            4 * 10 ** 9, 1 << 63}
    vals |= {rng.randrange(0, top + 1) for _ in range(3)} | {rng.randrange(0, 1 << 12) for _ in range(3)}
    return sorted(v for v in vals if 0 <= v <= top)


def _mutations(good: bytes, rng: random.Random):
    fields, name, payload = split(good)
    for fname, idx, code in FIELDS:
        if code == "d":
            vals = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 5e-324, 1.7976931348623157e308, -50.0,
                    fields[idx] * (1 + 1e-12), fields[idx] * (1 + 1e-6), fields[idx] + 1, fields[idx] / 2,
                    rng.uniform(-1e6, 1e6), struct.unpack("<d", rng.randbytes(8))[0]]
        elif code in ("8s", "32s"):
            n = int(code[:-1])
            vals = [bytes(n), b"\xff" * n, rng.randbytes(n), fields[idx][:-1] + bytes([fields[idx][-1] ^ 1])]
        else:
            vals = _int_values(rng, code, fields[idx])
        for v in vals:
            f = list(fields)
            f[idx] = v
            yield f"{fname}={v!r}", f, name, payload
    # model names (header_size and name length kept consistent)
    for nm in [b"", b"\n", b"a\nb", b"speech-24k", b"../../etc", b"/", b"/nonexistent/x", b"\xff\xfe", b"\x00",
               b"x" * 4096, b"-report", "mod\u00e8le".encode(), b"\x1b[31mred", b"./tiny"]:
        f = list(fields)
        f[2], f[16] = FIXED.size + len(nm), len(nm)
        yield f"model_name={nm[:20]!r}", f, nm, payload
    # a few multi-field mutations: the consistent frame rate of another rate / hop, more levels with payload
    for _ in range(12):
        f = list(fields)
        f[3] = rng.choice([8000, 16000, 24000, 1000, 384000, rng.randrange(1, 1 << 20)])
        f[4] = rng.choice([1, 160, 320, 512, rng.randrange(1, 1 << 16)])
        f[5] = f[3] / f[4]
        yield f"sample_rate={f[3]},hop={f[4]}", f, name, payload
    for nq in (1, 3, 8, 9, 33, 64, 65):
        f = list(fields)
        f[10] = nq
        yield f"num_levels={nq}+payload", f, name, None


def _resized(fields, payload: bytes, rng: random.Random):
    """Payload of the promised size when it is small (else None): the original bytes, then random ones."""
    n = promised_payload(fields)
    if n > 4096 or fields[12] * max(1, fields[8]) > 200:
        return None
    return (payload + rng.randbytes(max(0, n - len(payload))))[:n]


def _expected_wav_frames(h: CodesHeader) -> int:
    return h.orig_length  # decoded at the original rate


def test_codes_header_fuzzer(env, tmp_path, capsys, cached_models):
    rng = random.Random(15)
    good = env["codes"].read_bytes()
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    stats = {"files": 0, "runs": 0, "ok": {"info": 0, "trim": 0, "decode": 0}, "refused": 0}
    messages = set()
    t0 = time.time()
    for i, (label, fields, name, payload) in enumerate(_mutations(good, rng)):
        variants = []
        if payload is not None:
            variants.append(payload)
        resized = _resized(fields, split(good)[2], rng)
        if resized is not None and resized != payload:
            variants.append(resized)
        for j, pl in enumerate(variants):
            data = assemble(fields, name, pl)
            src = src_dir / f"m{i}_{j}.codes"
            src.write_bytes(data)
            stats["files"] += 1
            try:
                truth = CodesHeader.unpack(data, "x")
            except CodecError:
                truth = None
            for cmd in ("info", "trim", "decode"):
                out_dir = tmp_path / f"o_{cmd}"
                out_dir.mkdir(exist_ok=True)
                if cmd == "info":
                    rc = run("info", src, "--json")
                elif cmd == "trim":
                    rc = run("trim", src, out_dir / "t.codes", "--nq", 1, "-q")
                else:
                    rc = run("decode", src, out_dir / "d.wav", "-q")
                out, err = capsys.readouterr()
                stats["runs"] += 1
                check_one_line(rc, out, err)
                where = f"{label} (payload {len(pl)} B): {cmd}"
                if rc == 2:
                    stats["refused"] += 1
                    messages.add(err.split(": ", 2)[2].replace(str(src), "F").split(" (")[0][:60])
                    assert listing(out_dir) == [], where
                    continue
                stats["ok"][cmd] += 1
                assert truth is not None, where  # accepted only what the reader itself accepts
                if cmd == "info":
                    d = json.loads(out, parse_constant=lambda c: pytest.fail(f"{where}: {c} in JSON"))
                    for fname, idx, _ in FIELDS:
                        if fname in d:
                            assert d[fname] == (fields[idx].hex() if isinstance(fields[idx], bytes) else fields[idx])
                elif cmd == "trim":
                    assert listing(out_dir) == ["t.codes"], where
                    a, b = read_codes(src), read_codes(out_dir / "t.codes")
                    assert np.array_equal(b.codes, a.codes[:, :1]), where
                    assert b.header.num_levels == 1 and b.header.orig_length == a.header.orig_length
                    (out_dir / "t.codes").unlink()
                else:
                    assert listing(out_dir) == ["d.wav"], where
                    info = sf.info(str(out_dir / "d.wav"))
                    assert (info.samplerate, info.channels) == (truth.orig_sample_rate, truth.channels), where
                    assert info.frames == _expected_wav_frames(truth), where
                    # bounded by the codes stored: at most num_frames * hop samples (+1) at the model rate
                    assert info.frames <= (truth.num_frames * truth.hop_length + 1) * truth.orig_sample_rate \
                        / truth.sample_rate + 1, where
                    (out_dir / "d.wav").unlink()
            src.unlink()
    elapsed = time.time() - t0
    print(f"\n.codes fuzzer: {stats['files']} mutated files, {stats['runs']} runs in {elapsed:.1f} s; "
          f"accepted {stats['ok']}, refused {stats['refused']}; {len(messages)} distinct messages")
    assert stats["files"] >= 300 and stats["ok"]["decode"] >= 10 and stats["refused"] >= 500
    with capsys.disabled():
        print(f".codes fuzzer: {stats['files']} files, {stats['runs']} runs, {elapsed:.1f} s, ok={stats['ok']}")


# ---- the config.json fuzzer ---------------------------------------------------------------------------------

def _config_values(rng: random.Random, key: str, orig):
    vals = [None, True, "x", [], {}, -1, 0, 1, 2, 1.5, 1e308, 10 ** 30, 2 ** 63, 65537, 4097, 1e8, 1024.5,
            rng.randrange(0, 1 << 20), rng.uniform(-10, 10)]
    if isinstance(orig, list):
        vals += [[0], [2.5], [True], [1] * 9, [65], [10 ** 9], orig[:-1], orig + [2], "1,2"]
    elif isinstance(orig, bool):
        vals += [not orig, 0, "true"]
    elif isinstance(orig, (int, float)):
        vals += [orig + 1, orig * 2, float(orig) + 0.5]
    elif isinstance(orig, str):
        vals += ["elu", "snake", "seanet", "fourier", "ELU", "\n"]
    return vals


def _load_outcome(d: Path):
    try:
        m = codec.load(d)
    except CodecError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.endswith("."), msg
        return "refused", msg
    return "ok", m


def test_config_json_fuzzer(env, tmp_path, capsys):
    rng = random.Random(1515)
    base = json.loads((env["tiny"] / "config.json").read_text())
    weights = env["tiny"] / "model.safetensors"
    mutations = []
    for key in [k for k in base if k != "format"]:
        for v in _config_values(rng, key, base[key]):
            mutations.append((f"{key}={v!r}"[:60], {**base, key: v}))
        mutations.append((f"-{key}", {k: v for k, v in base.items() if k != key}))
    mutations += [("unknown", {**base, "wobble": 1}), ("format", {**base, "format": "x"}),
                  ("not-object", [1, 2]), ("nan", None), ("deep", None), ("huge", None)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts = {"ok": 0, "refused": 0, "cli": 0}
    t0 = time.time()
    slowest = 0.0
    for i, (label, cfg) in enumerate(mutations):
        d = tmp_path / f"c{i}"
        d.mkdir()
        os.link(weights, d / "model.safetensors")
        if label == "nan":
            text = json.dumps(base)[:-1] + ', "decay": NaN}'
        elif label == "deep":
            text = "[" * 100000 + "]" * 100000
        elif label == "huge":
            text = json.dumps({**base, "activation": "x" * (2 << 20)})
        else:
            text = json.dumps(cfg)
        (d / "config.json").write_text(text)
        t = time.time()
        kind, res = _load_outcome(d)
        slowest = max(slowest, time.time() - t)
        counts[kind] += 1
        if kind == "ok":
            # accepted: a valid config whose tensors are exactly the stored ones
            assert res.config == codec.CodecConfig.from_dict({k: v for k, v in cfg.items() if k != "format"}), label
        if i % 10 == 0:  # the CLI path too: one line, exit 2 (or a successful encode)
            out = tmp_path / "o"
            out.mkdir(exist_ok=True)
            rc = run("encode", env["wav"], out / "x.codes", "--model", d, "-q")
            o, e = capsys.readouterr()
            check_one_line(rc, o, e)
            assert (rc == 0) == (kind == "ok"), (label, e)
            assert listing(out) == (["x.codes"] if rc == 0 else [])
            if rc == 0:
                (out / "x.codes").unlink()
            counts["cli"] += 1
        shutil.rmtree(d)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    elapsed = time.time() - t0
    with capsys.disabled():
        print(f"\nconfig.json fuzzer: {len(mutations)} configs ({counts}), {elapsed:.1f} s, slowest load "
              f"{slowest:.2f} s, peak RSS +{grown_mb:.0f} MB")
    assert counts["ok"] >= 5 and counts["refused"] >= 300
    assert slowest < 10 and grown_mb < 400


@pytest.mark.parametrize("key,value,message", [
    ("codebook_size", 10 ** 8, "codebook_size must be in 2..65536, got 100000000"),
    ("num_quantizers", 10 ** 6, "num_quantizers must be in 1..64, got 1000000"),
    ("base_channels", 10 ** 6, "base_channels must be in 1..4096, got 1000000"),
    ("codebook_size", 1024.5, "codebook_size must be an integer, got 1024.5"),
    ("strides", [2, 2.5], "strides must be a list of integers, got [2, 2.5]"),
    ("use_ema", 1, "use_ema must be true or false, got 1"),
    ("quantizer_focus_levels", [2, 8.5], "quantizer_focus_levels must be a list of integers, got [2, 8.5]"),
    ("quantizer_focus_levels", 2.5, "quantizer_focus_levels must be a list of integers, got 2.5"),
])
def test_config_sizes_bounded_before_allocating(env, tmp_path, key, value, message):
    d = tmp_path / "m"
    shutil.copytree(env["tiny"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, key: value}))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.time()
    with pytest.raises(CodecError) as ei:
        codec.load(d)
    assert str(ei.value) == f"'{d / 'config.json'}' is not a valid model config: {message}."
    assert time.time() - t < 5 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200 * 1024


def test_focus_levels_load_as_one_integer_or_a_list(env, tmp_path):
    """``quantizer_focus_levels`` was one integer in the config.json files of 2026-12-07 (the shipped model's
    among them); those and the list form both load, to the same tuple."""
    d = tmp_path / "m"
    shutil.copytree(env["tiny"], d)
    cfg = json.loads((d / "config.json").read_text())
    def write(focus, levels):
        (d / "config.json").write_text(json.dumps({**cfg, "quantizer_focus": focus, "quantizer_focus_levels": levels}))

    for focus, levels, want in ((0.0, 0, ()), (0.5, 2, (2,)), (0.5, [2, 1, 2], (2, 1, 2))):
        write(focus, levels)
        assert codec.load(d).config.quantizer_focus_levels == want
    write(0.5, 0)  # a focus with no level count is refused with the config's own sentence
    with pytest.raises(CodecError, match="quantizer_focus_levels must be in 1..num_quantizers when"):
        codec.load(d)


def test_model_too_large_is_refused_before_allocating(env, tmp_path):
    d = tmp_path / "big"
    shutil.copytree(env["tiny"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_quantizers": 64, "codebook_size": 65536,
                                               "codebook_dim": 4096}))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CodecError, match=r"describes a model of about [\d,]+ parameters, above the limit of "
                                         r"268,435,456\.$"):
        codec.load(d)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100 * 1024


def test_size_estimate_tracks_the_real_model():
    """The pre-allocation bound of codec.load counts what CodecModel really allocates (within 20 %)."""
    from codec.config import CodecConfig
    from codec.model import CodecModel
    from codec.pretrained import estimated_elements

    rng = random.Random(7)
    cfgs = [CodecConfig.preset(p) for p in ("24khz", "24khz-fourier", "tiny")]
    big = dict(decoder_type="fourier", fourier_dim=16, decoder_layers=64, num_quantizers=64)
    cfgs.append(CodecConfig.preset("tiny", level_embedding=True, **big))
    grown = estimated_elements(cfgs[-1]) - estimated_elements(CodecConfig.preset("tiny", **big))
    assert grown == CodecModel(cfgs[-1]).decoder.level_embedding.numel() == 65 * 64 * 16
    while len(cfgs) < 10:
        strides = tuple(rng.choice([2, 4, 5]) for _ in range(rng.randint(1, 3)))
        try:
            cfgs.append(CodecConfig.preset(
                "tiny", strides=strides, base_channels=rng.choice([2, 8]), max_channels=rng.choice([16, 64]),
                dilations=tuple(rng.sample([1, 3, 9], rng.randint(0, 3))), compress=rng.choice([1, 2, 64]),
                activation=rng.choice(["elu", "snake"]), num_quantizers=rng.randint(1, 4),
                codebook_size=rng.choice([2, 100]), codebook_dim=rng.choice([2, 8, 32]), rvq_dim=rng.choice([0, 8]),
                encoder_type=rng.choice(["seanet", "fourier"]), decoder_type=rng.choice(["seanet", "fourier"]),
                n_fft=int(np.prod(strides)) * rng.choice([3, 4]), fourier_dim=rng.choice([8, 16]),
                encoder_layers=rng.randint(0, 2), decoder_layers=rng.randint(0, 2)))
        except ValueError:
            continue
    for cfg in cfgs:
        m = CodecModel(cfg)
        real = sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers())
        assert 0.8 <= estimated_elements(cfg) / real <= 1.25, cfg


@pytest.mark.parametrize("dtype,ok", [(torch.float64, False), (torch.int64, False), (torch.int32, False),
                                      (torch.float16, True), (torch.bfloat16, True)])
def test_weight_dtypes(env, tmp_path, dtype, ok):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(env["tiny"], d)
    sd = load_file(str(d / "model.safetensors"))
    k = "encoder.conv_in.weight_v" if "encoder.conv_in.weight_v" in sd else sorted(sd)[0]
    sd[k] = sd[k].to(dtype)
    save_file(sd, str(d / "model.safetensors"))
    if ok:
        m = codec.load(d)
        assert m.state_dict()[k].dtype == torch.float32
        torch.testing.assert_close(m.state_dict()[k], sd[k].float())
    else:
        with pytest.raises(CodecError) as ei:
            codec.load(d)
        assert str(ei.value) == (f"weights '{d / 'model.safetensors'}' do not match config.json: tensor '{k}' is "
                                 f"stored as {str(dtype)[6:]}, expected float32.")


def test_nonfinite_weights_are_refused(env, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(env["tiny"], d)
    sd = load_file(str(d / "model.safetensors"))
    k = sorted(k for k, v in sd.items() if v.is_floating_point())[0]
    sd[k] = sd[k].clone()
    sd[k].view(-1)[0] = float("nan")
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CodecError, match=rf"tensor '{k}' contains NaN or infinite values\.$"):
        codec.load(d)


# ---- specific .codes cases of the issue ------------------------------------------------------------------------

def _crafted(env, **changes) -> bytes:
    """The good file with header fields changed (and the payload sized to the header), CRC recomputed."""
    fields, name, payload = split(env["codes"].read_bytes())
    idx = {n: i for n, i, _ in FIELDS}
    for k, v in changes.items():
        fields[idx[k]] = v
    n = promised_payload(fields)
    if n <= 1 << 20:
        payload = (payload * (n // max(1, len(payload)) + 1))[:n]
    return assemble(fields, name, payload)


@pytest.mark.parametrize("changes,message", [
    ({"num_levels": 65535}, "65535 levels is outside 1 to 64"),
    ({"frame_rate": 0.0}, "the frame rate 0.0 is not sample_rate / hop_length = 16000 / 320"),
    ({"frame_rate": float("nan")}, "the frame rate nan is not sample_rate / hop_length = 16000 / 320"),
    ({"frame_rate": 49.0}, "the frame rate 49.0 is not sample_rate / hop_length = 16000 / 320"),
    ({"orig_length": 10 ** 10}, "the original length 10000000000 samples at 16000 Hz is longer than the 15 frames "
                                "stored"),
    ({"orig_length": 2 * 10 ** 8}, "the original length 200000000 samples at 16000 Hz is longer than the 15 "
                                   "frames stored"),
    ({"orig_length": 0}, "the original length 0 samples is out of range"),
    ({"orig_sample_rate": 4 * 10 ** 9}, "the original sample rate 4000000000 Hz is outside 1000 to 384000 Hz"),
    ({"orig_sample_rate": 1}, "the original sample rate 1 Hz is outside 1000 to 384000 Hz"),
    ({"channels": 2}, "2 code streams is neither 1 (downmixed) nor the 1 original channels"),
])
def test_crafted_header_fields_are_refused_everywhere(env, tmp_path, capsys, changes, message):
    p = tmp_path / "bad.codes"
    p.write_bytes(_crafted(env, **changes))
    want = f"codec: error: '{p}' is corrupted (inconsistent header fields): {message}.\n"
    out = tmp_path / "out"
    out.mkdir()
    for argv in (["info", p], ["info", p, "--json"], ["trim", p, out / "t.codes", "--nq", 1],
                 ["decode", p, out / "x.wav"], ["decode", p, out / "x.wav", "--model", env["tiny"]]):
        assert run(*argv) == 2
        assert capsys.readouterr().err == want, argv
    assert listing(out) == []


def test_more_levels_than_the_model_is_one_sentence(env, tmp_path, capsys):
    p = tmp_path / "l33.codes"
    p.write_bytes(_crafted(env, num_levels=33))
    assert run("info", p) == 0 and "levels:       33" in capsys.readouterr().out  # a valid file in itself
    assert run("decode", p, tmp_path / "x.wav") == 2
    assert capsys.readouterr().err == f"codec: error: '{p}' stores 33 levels, but model 'tiny' " \
                                      "has only 8.\n"
    assert listing(tmp_path) == ["l33.codes"]


def test_codes_above_codebook_size_refused_by_info_and_trim(env, tmp_path, capsys):
    cf = read_codes(env["codes"])
    codes = cf.codes.copy()
    codes[0, 1, 3] = 250
    write_codes(tmp_path / "a.codes", cf.header, codes)
    fields, name, payload = split((tmp_path / "a.codes").read_bytes())
    fields[6] = 200  # codebook 200 still needs 8 bits: only the values tell
    p = tmp_path / "b.codes"
    p.write_bytes(assemble(fields, name, payload))
    msg = f"codec: error: '{p}' is corrupted (a code exceeds the codebook size 200).\n"
    for argv in (["info", p], ["trim", p, tmp_path / "t.codes", "--nq", 1], ["decode", p, tmp_path / "x.wav"]):
        assert run(*argv) == 2
        assert capsys.readouterr().err == msg
    assert listing(tmp_path) == ["a.codes", "b.codes"]


def test_directory_decode_survives_bad_files(env, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(env["codes"], src / "a.codes")
    (src / "b.codes").write_bytes(_crafted(env, frame_rate=0.0))
    (src / "c.codes").write_bytes(_crafted(env, num_levels=33))
    (src / "d.codes").write_bytes(_crafted(env, orig_length=10 ** 10))
    shutil.copy(env["codes"], src / "e.codes")
    assert run("decode", src, tmp_path / "out", "-q", "--batch-size", 2) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(e.startswith("codec: error: ") for e in err)
    assert listing(tmp_path / "out") == ["a.wav", "e.wav"]


def test_info_json_is_strict_json(env, tmp_path, capsys):
    p = tmp_path / "z.codes"
    p.write_bytes(_crafted(env, frame_rate=0.0))
    assert run("info", env["codes"], p, "--json") == 2
    out, err = capsys.readouterr()
    json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert "NaN" not in out and "Infinity" not in out and len(err.splitlines()) == 1


def test_model_name_with_newline_is_refused(env, tmp_path, capsys):
    fields, _, payload = split(env["codes"].read_bytes())
    nm = b"evil\nname"
    fields[2], fields[16] = FIXED.size + len(nm), len(nm)
    p = tmp_path / "n.codes"
    p.write_bytes(assemble(fields, nm, payload))
    assert run("decode", p, tmp_path / "x.wav") == 2
    assert capsys.readouterr().err == (f"codec: error: '{p}' is corrupted (inconsistent header fields): the model "
                                       "name contains control characters.\n")


@pytest.mark.parametrize("sr", [500, 400000])
def test_encode_refuses_rates_a_codes_file_cannot_record(env, tmp_path, capsys, sr):
    p = tmp_path / "odd.wav"
    sf.write(str(p), np.zeros((sr // 10, 1), np.float32), sr)
    assert run("encode", p, tmp_path / "x.codes", "--model", env["tiny"], "-q") == 2
    assert capsys.readouterr().err == (f"codec: error: '{p}' has sample rate {sr} Hz; codec supports 1000 to "
                                       "384000 Hz.\n")
    assert listing(tmp_path) == ["odd.wav"]


# ---- decoding: output formats, signals, umask -------------------------------------------------------------------

def test_ogg_rate_too_high_is_refused_before_writing(env, tmp_path):
    """libvorbis segfaults above ~200 kHz: refused before anything is written (a subprocess, so a regression
    cannot take the test run down)."""
    hi = tmp_path / "hi.codes"
    hi.write_bytes(_crafted(env, orig_sample_rate=256000, orig_length=4800 * 16))
    cases = [(["decode", str(env["codes"]), str(tmp_path / "x.ogg"), "--sample-rate", "256000"],
              f"codec: error: cannot write '{tmp_path / 'x.ogg'}': .ogg output supports sample rates 1000 to "
              "192000 Hz, not 256000 Hz (use --sample-rate or .wav)."),
             (["decode", str(hi), str(tmp_path / "y.ogg")],
              f"codec: error: cannot write '{tmp_path / 'y.ogg'}': .ogg output supports sample rates 1000 to "
              "192000 Hz, not 256000 Hz (use --sample-rate or .wav).")]
    code = "import sys\nfrom codec.cli import main\nfor a in %r:\n    print(main(a), file=sys.stderr)\n" % (
        [c[0] for c in cases],)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 0 and lines == [cases[0][1], "2", cases[1][1], "2"], p.stderr
    assert listing(tmp_path) == ["hi.codes"]
    assert run("decode", hi, tmp_path / "y.wav", "-q") == 0  # .wav takes 256 kHz
    assert sf.info(str(tmp_path / "y.wav")).samplerate == 256000


@pytest.mark.parametrize("sig,rc", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
@pytest.mark.parametrize("cmd", ["decode", "encode"])
def test_sigterm_sighup_clean_up_like_ctrl_c(env, tmp_path, capsys, monkeypatch, sig, rc, cmd):
    import codec.pipeline as tc

    if signal.getsignal(sig) is signal.SIG_IGN:
        pytest.skip("the test runs with this signal ignored (nohup): codec keeps it ignored")
    if cmd == "decode":
        real = tc._DecState.write

        def write(self, y):
            real(self, y)
            os.kill(os.getpid(), sig)
            time.sleep(1)  # the handler runs before this returns

        monkeypatch.setattr(tc._DecState, "write", write)
        argv = ["decode", env["codes"], tmp_path / "x.wav", "-q"]
    else:
        real = tc._EncState.fill

        def fill(self, need):
            os.kill(os.getpid(), sig)
            time.sleep(1)
            return real(self, need)

        monkeypatch.setattr(tc._EncState, "fill", fill)
        argv = ["encode", env["wav"], tmp_path / "x.codes", "--model", env["tiny"], "-q"]
    before = signal.getsignal(sig)
    assert run(*argv) == rc
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGHUP"
    assert capsys.readouterr().err.strip() == f"codec: terminated by {name}; no partial output was kept."
    assert listing(tmp_path) == []
    assert signal.getsignal(sig) == before  # handlers restored after main()


def test_sigterm_subprocess_decode_leaves_no_part_file(env, tmp_path):
    """A real SIGTERM (as `timeout` sends it) while a long decode is writing its .part file."""
    cf = read_codes(env["codes"])
    frames = 50 * 600  # ten minutes of codes
    codes = np.tile(cf.codes, (1, 1, frames // cf.codes.shape[-1] + 1))[..., :frames]
    h = cf.header
    h.num_frames, h.orig_length = frames, frames * h.hop_length
    write_codes(tmp_path / "long.codes", h, codes)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "codec", "decode", str(tmp_path / "long.codes"),
                             str(out / "x.wav"), "-q"], cwd=str(ROOT), stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not any(out.glob(".x.wav.*.part.wav")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip() == "codec: terminated by SIGTERM; no partial output was kept."
    assert listing(out) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(env, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert run("encode", env["wav"], tmp_path / "a.codes", "--nq", 2, "--model", env["tiny"], "-q") == 0
        assert run("decode", tmp_path / "a.codes", tmp_path / "a.wav", "-q") == 0
        assert run("trim", tmp_path / "a.codes", tmp_path / "b.codes", "--nq", 1, "-q") == 0
    finally:
        os.umask(old)
    for f in ("a.codes", "a.wav", "b.codes"):
        assert (tmp_path / f).stat().st_mode & 0o777 == mode, f


# ---- argparse -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: COMMAND (see 'codec -h')."),
    (["decode"], "the following arguments are required: IN, OUT (see 'codec decode -h')."),
    (["encode", "a.wav", "b.codes", "--nq", "x"], "argument --nq: expected an integer, got 'x' (see 'codec encode -h')."),
    (["bogus"], "argument COMMAND: invalid choice: 'bogus' (choose from 'encode', 'decode', 'info', 'trim', 'demo', 'export', "
                "'bench', 'train', 'eval') (see 'codec -h')."),
    (["info", "x.codes", "--wat"], "unrecognized arguments: --wat (see 'codec -h')."),
    (["trim", "a.codes", "b.codes"], "the following arguments are required: --nq (see 'codec trim -h')."),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"codec: error: {message}\n"


# ---- names and paths ------------------------------------------------------------------------------------------

def _resolved_everywhere(spec):
    """The directory each part of codec resolves ``spec`` to (or the CodecError message)."""
    from codec import pretrained
    from codec.train import trainer as tr
    from codec.pipeline import resolve_model

    def attempt(fn):
        try:
            return fn()
        except CodecError as exc:
            return f"error: {exc}"

    class FakeDisc:  # takes any weights: only the directory they come from matters here
        def load_state_dict(self, sd, strict=True):
            return types.SimpleNamespace(missing_keys=[])

    class FakeTrainer:
        is_main = True
        disc = FakeDisc()

    def trainer_disc():
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            tr.Trainer._init_disc_from(FakeTrainer(), spec)
        said = buf.getvalue().split("codec.train: ")[1]
        if said.startswith("discriminators initialised from "):  # a model shipped with its discriminators
            return str(Path(said.split(" from ", 1)[1].split(" (")[0]).parent.resolve())
        return str(Path(said.split(" has no discriminator")[0]).resolve())

    return {
        "pretrained.resolve": attempt(lambda: str(pretrained.resolve(spec).resolve())),
        "codec.load": attempt(lambda: codec.load(spec).model_dir),
        "cli (pipeline.resolve_model)": attempt(lambda: resolve_model(spec)[0].model_dir),
        "trainer build_model": attempt(lambda: tr.build_model({"init_from": spec}).model_dir),
        "trainer _init_disc_from": attempt(trainer_disc),
    }


def test_one_resolver_for_cli_library_and_trainer(env, tmp_path, monkeypatch):
    """Every name resolves to the same directory (or the same error) everywhere; a folder in the current
    directory named like a model never replaces it; names are looked up only in $CODEC_PRETRAINED_DIR then
    <repo>/pretrained."""
    envdir = tmp_path / "envdir"
    make_tiny_model_dir(envdir / "m-env", seed=2)
    make_tiny_model_dir(envdir / "speech-24k-copy", seed=3)
    cwd = tmp_path / "cwd"
    make_tiny_model_dir(cwd / "speech-24k", seed=4)  # the trap: a folder named like the shipped model
    make_tiny_model_dir(cwd / "m-env", seed=5)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CODEC_PRETRAINED_DIR", str(envdir))
    shipped = str((ROOT / "pretrained" / "speech-24k").resolve())
    expect = {"speech-24k": shipped, "m-env": str((envdir / "m-env").resolve()),
              "./speech-24k": str((cwd / "speech-24k").resolve()), str(env["tiny"]): str(env["tiny"].resolve()),
              "no-such-model": None, "./nowhere": None}
    for spec, want in expect.items():
        got = _resolved_everywhere(spec)
        assert len(set(got.values())) == 1, (spec, got)
        value = next(iter(got.values()))
        if want is None:
            assert value.startswith("error: "), (spec, value)
        else:
            assert value == want, (spec, got)
    # CODEC_PRETRAINED_DIR pointing at an empty folder: the shipped default is still found, by the CLI too
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("CODEC_PRETRAINED_DIR", str(tmp_path / "empty"))
    assert len(set(_resolved_everywhere("speech-24k").values())) == 1
    write_wav(tmp_path / "s.wav", 24000, 0.2)
    assert main([str(a) for a in ("encode", tmp_path / "s.wav", tmp_path / "s.codes", "--nq", 1, "-q")]) == 0
    h = read_header(tmp_path / "s.codes")
    from codec.pipeline import model_fingerprint

    assert h.model_name == "speech-24k" and h.weights_sha256 == model_fingerprint(codec.load("speech-24k"))


def test_name_error_hints_at_the_path(env, tmp_path, monkeypatch):
    make_tiny_model_dir(tmp_path / "my-model")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CodecError) as ei:
        codec.load("my-model")
    msg = str(ei.value)
    assert msg.startswith("model 'my-model' is neither a directory path nor a pretrained model name in ")
    assert msg.endswith("(a directory is given as a path, e.g. './my-model').")
    assert codec.load("./my-model").model_dir == str((tmp_path / "my-model").resolve())


# ---- ffmpeg / ffprobe arguments -------------------------------------------------------------------------------

def test_ffmpeg_paths_cannot_be_options(env, tmp_path, monkeypatch, capsys):
    import codec.audio as au

    calls = []
    real_run, real_popen = subprocess.run, subprocess.Popen
    monkeypatch.setattr(au.subprocess, "run", lambda cmd, *a, **k: calls.append(cmd) or real_run(cmd, *a, **k))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-report").write_bytes(b"\x00garbage that no decoder reads" * 50)
    rc = run("encode", "--model", env["tiny"], "-q", "--", "-report", "out.codes")
    assert rc == 2
    assert capsys.readouterr().err == ("codec: error: '-report' is not an audio file (neither soundfile nor ffmpeg "
                                       "can read it).\n")
    here = os.getcwd()
    if shutil.which("ffprobe"):
        assert calls and calls[0][-1] == "file:" + os.path.join(here, "-report")
    assert sorted(os.listdir(tmp_path)) == ["-report"]  # no ffprobe-*.log report written
    assert au.ffmpeg_path_arg("-i") == "file:" + os.path.join(here, "-i")


# ---- the Python API -----------------------------------------------------------------------------------------

def test_validation_helpers():
    from codec.validation import InputError, check_audio, check_codes

    cases = [
        (lambda: check_audio(torch.zeros(1, 1, 0)), "wav is empty (0 samples); give at least one sample."),
        (lambda: check_audio(np.zeros((2, 0), np.float32)), "wav is empty (0 samples); give at least one sample."),
        (lambda: check_audio(torch.tensor([0.0, 1.0, float("nan")])),
         "wav contains NaN or infinite samples (first at sample 2)."),
        (lambda: check_audio(torch.tensor([[0.0, float("-inf")]])),
         "wav contains NaN or infinite samples (first at sample 1)."),
        (lambda: check_audio(torch.zeros(3, dtype=torch.complex64)), "wav must hold real audio samples, got dtype "
                                                                     "complex64."),
        (lambda: check_audio("x"), "wav must be a torch.Tensor or numpy.ndarray, got str."),
        (lambda: check_codes(torch.zeros(2, 5), 256), "codes must be integers (got dtype float32); float codes "
                                                      "are not rounded."),
        (lambda: check_codes(torch.full((1, 2, 5), 256), 256),
         "codes must lie in [0, 256) (or -1 for a padded frame), got 256."),
        (lambda: check_codes(torch.full((2, 5), -2), 256),
         "codes must lie in [0, 256) (or -1 for a padded frame), got -2."),
        (lambda: check_codes(torch.zeros(1, 9, 5, dtype=torch.long), 256, 8),
         "codes have 9 levels, but the model has only 8."),
        (lambda: check_codes(torch.zeros(5, dtype=torch.long), 256), "codes must be [B, nq, F] or [nq, F], got (5,)."),
    ]
    for fn, msg in cases:
        with pytest.raises(InputError) as ei:
            fn()
        assert str(ei.value) == msg and isinstance(ei.value, ValueError) and isinstance(ei.value, CodecError)
    c = check_codes(np.array([[1, -1, 3]], np.int16), 256)
    assert c.dtype == torch.long and c.tolist() == [[1, -1, 3]]
    x = torch.randn(1, 1, 10)
    assert check_audio(x) is x


@pytest.mark.parametrize("bad", ["nan", "inf", "empty", "empty-batch"])
def test_model_encode_refuses_bad_audio(env, bad):
    x = {"nan": torch.tensor([0.0, float("nan")] * 200), "inf": torch.tensor([0.0, float("inf")] * 200),
         "empty": torch.zeros(1, 1, 0), "empty-batch": torch.zeros(0, 1, 400)}[bad]
    with pytest.raises(ValueError) as ei:
        env["model"].encode(x)
    assert isinstance(ei.value, CodecError) and str(ei.value).endswith(".") and "\n" not in str(ei.value)


def test_model_decode_refuses_float_and_out_of_range_codes(env):
    m = env["model"]
    codes = m.encode(torch.zeros(1, 1, 800), nq=2)
    with pytest.raises(ValueError, match="must be integers"):
        m.decode(codes.float() + 0.7)
    with pytest.raises(ValueError, match=r"must lie in \[0, 256\)"):
        m.decode(codes + 1000)
    with pytest.raises(ValueError, match="must be integers"):
        m.stream_decoder(1).feed(codes.float())
