"""Tests for recipes/data/build_corpus.py on a tiny fake extracted package tree (no network, no apt)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from recipe_modules import load_recipe

bc = load_recipe("data/build_corpus.py", "build_corpus")


def speechlike(sr: int, dur: float, f0: float = 140.0, fmax: float = 3500.0, seed: int = 0) -> np.ndarray:
    """Harmonic 'voiced' signal (f0 with vibrato, harmonics up to fmax) with a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * dur)) / sr
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    ph = 2 * np.pi * np.cumsum(f) / sr
    x = sum(np.sin(k * ph + rng.uniform(0, 6)) / k for k in range(1, int(fmax // f0)))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t - np.pi / 2)
    return (0.3 * x / np.abs(x).max() * (0.2 + 0.8 * env)).astype(np.float32)


def silence(sr: int, dur: float) -> np.ndarray:
    return (np.random.default_rng(1).standard_normal(int(sr * dur)) * 1e-5).astype(np.float32)


def _write(path: str, x: np.ndarray, sr: int, **kw) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, sr, **kw)


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("pkgs")
    roots = {}
    # tuxpaint: two descriptions (fr train, el valid), a byte-duplicate, a sound effect (skipped)
    r = base / "tuxpaint-stamps-default"
    d = r / "usr/share/tuxpaint/stamps/animals"
    sr = 44100
    sig = np.concatenate([silence(sr, 1.0), speechlike(sr, 0.8), silence(sr, 1.5), speechlike(sr, 0.8, 180),
                          silence(sr, 1.0)])
    _write(str(d / "cat_desc_fr.ogg"), sig, sr, format="OGG", subtype="VORBIS")
    shutil.copy(d / "cat_desc_fr.ogg", d / "dog_desc_fr.ogg")  # identical bytes -> dropped
    _write(str(d / "cat_desc_el.ogg"), speechlike(sr, 2.5, 120, seed=3), sr, format="OGG", subtype="VORBIS")
    _write(str(d / "cat.ogg"), speechlike(sr, 1.0, seed=4), sr, format="OGG", subtype="VORBIS")
    _write(str(d / "cat_en_GB.ogg"), speechlike(sr, 0.9, 200, seed=5), sr, format="OGG", subtype="VORBIS")
    roots["tuxpaint-stamps-default"] = str(r)
    # ktuberling: the same recording as WAV (gl) and FLAC (sl) -> identical decoded PCM -> one dropped
    r = base / "ktuberling-data"
    x = (speechlike(22050, 1.2, 160, seed=6) * 32767).astype(np.int16)
    _write(str(r / "usr/share/ktuberling/sounds/de/hat.wav"), x, 22050, subtype="PCM_16")
    _write(str(r / "usr/share/ktuberling/sounds/de2/hat.flac"), x, 22050, subtype="PCM_16")
    _write(str(r / "usr/share/ktuberling/sounds/sl/nose.wav"), speechlike(48000, 1.0, 150, seed=7), 48000)
    roots["ktuberling-data"] = str(r)
    # hedgewars: Robot pack is skipped
    r = base / "hedgewars-data"
    _write(str(r / "usr/share/games/hedgewars/Data/Sounds/voices/Pirate/Ahoy.ogg"), speechlike(44100, 1.0, seed=8),
           44100, format="OGG", subtype="VORBIS")
    _write(str(r / "usr/share/games/hedgewars/Data/Sounds/voices/Robot/Beep.ogg"), speechlike(44100, 1.0, seed=9),
           44100, format="OGG", subtype="VORBIS")
    _write(str(r / "usr/share/games/hedgewars/Data/Sounds/voices/Default_es/Hola.ogg"),
           speechlike(44100, 1.0, 210, seed=10), 44100, format="OGG", subtype="VORBIS")
    roots["hedgewars-data"] = str(r)
    # alsa-utils: Noise.wav skipped; a silent clip is dropped by the RMS level check
    r = base / "alsa-utils"
    _write(str(r / "usr/share/sounds/alsa/Front_Left.wav"), speechlike(48000, 1.3, 130, seed=11), 48000)
    _write(str(r / "usr/share/sounds/alsa/Noise.wav"), np.random.default_rng(0).standard_normal(48000).astype(
        np.float32) * 0.1, 48000)
    _write(str(r / "usr/share/sounds/alsa/Rear_Left.wav"), np.zeros(48000, np.float32), 48000)
    roots["alsa-utils"] = str(r)
    # asterisk G.722 (encoded with ffmpeg)
    r = base / "asterisk-core-sounds-it-g722"
    p = r / "usr/share/asterisk/sounds/it_IT_m_Carlo/hello.g722"
    os.makedirs(p.parent, exist_ok=True)
    pcm = (speechlike(16000, 2.2, 110, seed=12) * 32767).astype("<i2").tobytes()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "s16le", "-ar", "16000", "-ac", "1",
                    "-i", "-", "-c:a", "g722", "-f", "g722", str(p)], input=pcm, check=True)
    os.makedirs(r / "usr/share/asterisk/sounds/it_IT_m_Carlo/silence", exist_ok=True)
    shutil.copy(p, r / "usr/share/asterisk/sounds/it_IT_m_Carlo/silence/1.g722")  # skipped dir
    roots["asterisk-core-sounds-it-g722"] = str(r)
    out = base / "corpus"
    stats = bc.build(str(out), list(roots), debs=str(base / "debs"), extract=str(base / "ex"), workers=2,
                     roots=roots, eval_count=5)
    return {"out": str(out), "stats": stats, "roots": roots}


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_manifests_and_fields(fake_tree):
    out = fake_tree["out"]
    for name in ("train_16k", "valid_16k", "train_24k", "valid_24k"):
        assert os.path.isfile(os.path.join(out, name + ".jsonl"))
    rows = _read(os.path.join(out, "train_24k.jsonl")) + _read(os.path.join(out, "valid_24k.jsonl"))
    need = {"path", "duration", "source", "speaker", "language", "orig_sample_rate", "bandwidth_hz", "sample_rate",
            "split", "orig_path", "rms_db", "cutoff_hz"}
    for r in rows:
        assert need <= set(r), set(r)
        assert os.path.isabs(r["path"]) and os.path.isfile(r["path"])
        info = sf.info(r["path"])
        assert info.samplerate == 24000 and info.channels == 1 and info.subtype == "PCM_16"
        assert abs(info.frames / 24000 - r["duration"]) < 1e-3
    names = sorted(os.path.basename(r["orig_path"]) for r in rows)
    # skipped: sound effect cat.ogg, Robot pack, Noise.wav, silence/ dir; dropped: silent Rear_Left, duplicates
    assert names == sorted(["cat_desc_fr.ogg", "cat_desc_el.ogg", "cat_en_GB.ogg", "hat.wav", "nose.wav", "Ahoy.ogg",
                            "Hola.ogg", "Front_Left.wav", "hello.g722"]), names
    by = {os.path.basename(r["orig_path"]): r for r in rows}
    assert by["cat_desc_fr.ogg"]["language"] == "fr" and by["cat_desc_fr.ogg"]["speaker"] == "tuxpaint-fr"
    assert by["cat_en_GB.ogg"]["language"] == "en"
    assert by["Hola.ogg"]["language"] == "es" and by["Hola.ogg"]["speaker"] == "hedgewars-Default_es"
    assert by["hello.g722"]["speaker"] == "asterisk-Carlo" and by["hello.g722"]["orig_sample_rate"] == 16000
    assert by["hat.wav"]["orig_sample_rate"] == 22050 and by["nose.wav"]["orig_sample_rate"] == 48000
    # harmonics stop at 3.5 kHz: the 99 % roll-off estimate is below that, the G.722 clip below 8 kHz
    assert 100 < by["Hola.ogg"]["bandwidth_hz"] < 3600
    assert by["hello.g722"]["bandwidth_hz"] < 8000


def test_16k_copies_match(fake_tree):
    out = fake_tree["out"]
    a = _read(os.path.join(out, "train_16k.jsonl"))
    b = _read(os.path.join(out, "train_24k.jsonl"))
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for r in a:
        info = sf.info(r["path"])
        assert info.samplerate == 16000
        assert abs(info.frames / 16000 - r["duration"]) < 2e-3


def test_dedup_counts(fake_tree):
    st = fake_tree["stats"]
    assert st["duplicates_bytes"] == 1  # dog_desc_fr.ogg (copy of cat_desc_fr.ogg); silence/ is skipped earlier
    assert st["duplicates_pcm"] == 1  # hat.flac decodes to the same samples as hat.wav
    assert sum(v for k, v in st["dropped"].items() if k.startswith("alsa-utils")) == 1  # the silent clip


def test_silence_trimmed(fake_tree):
    rows = _read(os.path.join(fake_tree["out"], "train_24k.jsonl"))
    r = next(r for r in rows if r["orig_path"].endswith("cat_desc_fr.ogg"))
    # 1 s + 0.8 s speech + 1.5 s gap + 0.8 s speech + 1 s: ends cut to 0.15 s, inner gap to 0.3 s
    assert 1.9 < r["duration"] < 2.6, r["duration"]
    x, sr = sf.read(r["path"])
    db, n = bc.frame_energy_db(x, sr)
    assert db[: int(0.05 * sr / n)].max() < -40  # still a little silence at the start


def test_split_by_speaker(fake_tree):
    out = fake_tree["out"]
    tr = _read(os.path.join(out, "train_24k.jsonl"))
    va = _read(os.path.join(out, "valid_24k.jsonl"))
    assert tr and va
    assert not ({r["speaker"] for r in tr} & {r["speaker"] for r in va})
    for r in va:
        assert r["split"] == "valid"
        assert r["speaker"] in bc.VALID_RULES["speakers"] or r["source"] in bc.VALID_RULES["sources"]
    assert {r["speaker"] for r in va} == {"tuxpaint-el", "ktuberling-sl", "hedgewars-Pirate", "alsa-utils-voice",
                                          "asterisk-Carlo"}
    ev = _read(os.path.join(out, "valid_eval.jsonl"))
    assert ev and all(r["split"] == "valid" and r["duration"] >= 2.0 for r in ev)
    assert {r["speaker"] for r in ev} == {"tuxpaint-el", "asterisk-Carlo"}


def test_trim_silence_unit():
    sr = 16000
    x = np.concatenate([np.zeros(sr), speechlike(sr, 0.5), np.zeros(2 * sr), speechlike(sr, 0.5), np.zeros(sr)])
    y = bc.trim_silence(x, sr, max_silence=0.5, keep=0.15)
    assert abs(len(y) / sr - (0.15 + 0.5 + 0.3 + 0.5 + 0.15)) < 0.1
    short = np.concatenate([speechlike(sr, 0.5), np.zeros(int(0.3 * sr)), speechlike(sr, 0.5)])
    assert len(bc.trim_silence(short, sr)) == len(short)  # 0.3 s gap is kept
    assert len(bc.trim_silence(np.zeros(sr, np.float32), sr)) == 0


def test_classify_rules():
    c = bc.classify
    assert c("tuxpaint-stamps-default", "usr/share/tuxpaint/stamps/a/lion_desc.ogg")[1] == "en"
    assert c("tuxpaint-stamps-default", "usr/share/tuxpaint/stamps/a/lion_desc_pt_BR.ogg")[:2] == ("tuxpaint-pt", "pt")
    assert c("tuxpaint-stamps-default", "usr/share/tuxpaint/stamps/a/lion.ogg") is None
    assert c("tuxpaint-stamps-default", "usr/share/tuxpaint/stamps/a/apple_red.ogg") is None
    assert c("fillets-ng-data-cs", "usr/share/games/fillets-ng/sound/city/cs/vit-m-hlava.ogg")[0] == "fillets-m"
    assert c("hedgewars-data", "usr/share/games/hedgewars/Data/Sounds/voices/Robot/x.ogg") is None
    assert c("hedgewars-data", "usr/share/games/hedgewars/Data/Music/main.ogg") is None
    assert c("hedgewars-data", "usr/share/games/hedgewars/Data/Music/main.ogg", include_music=True)[2] == "music"
    assert c("klettres-data", "usr/share/klettres/pt_BR/alpha/a.ogg")[:2] == ("klettres-pt_BR", "pt-BR")
    assert c("asterisk-core-sounds-es-g722", "usr/share/asterisk/sounds/es_MX_f_Allison/a.g722")[:2] == (
        "asterisk-Allison", "es")
    assert c("alsa-utils", "usr/share/sounds/alsa/Noise.wav") is None
    assert c("klettres-data", "usr/share/klettres/fr/alpha/a.png") is None


def test_fetch_and_extract_skip_when_present(tmp_path):
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "foo_1.0_all.deb").write_bytes(b"x")
    assert bc.fetch_package("foo", str(debs)).endswith("foo_1.0_all.deb")  # no apt-get call
    ex = tmp_path / "ex" / "foo"
    ex.mkdir(parents=True)
    (ex / ".extracted").write_text("foo_1.0_all.deb\n")
    assert bc.extract_package(str(debs / "foo_1.0_all.deb"), "foo", str(tmp_path / "ex")) == str(ex)
