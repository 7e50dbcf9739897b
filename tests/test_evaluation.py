"""Tests for `codec eval` (codec.eval.harness): inputs, end-to-end CLI run with a tiny model and Opus, user errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from codec.eval import harness as E
from codec.audio import load_audio, save_audio
from codec.cli import main
from codec.errors import CodecError
from codec.pretrained import save_pretrained

SAMPLE = Path(__file__).resolve().parents[1] / "pretrained" / "samples" / "speech_it.wav"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two short real-speech clips in nested folders: 1.2 s mono 24 kHz and 1.0 s stereo 16 kHz."""
    from codec.audio import resample

    wav, sr = load_audio(SAMPLE)
    d = tmp_path_factory.mktemp("clips")
    (d / "b").mkdir()
    save_audio(d / "a.wav", wav[:, : int(1.2 * sr)], sr)
    part = resample(wav[0, int(1.5 * sr): int(2.5 * sr)], sr, 16000)
    save_audio(d / "b" / "c.flac", np.stack([part, 0.5 * part]), 16000)
    (d / "notes.txt").write_text("not audio")
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random 16 kHz model saved with save_pretrained."""
    import torch

    from codec import CodecConfig, CodecModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    save_pretrained(CodecModel(CodecConfig.preset("tiny", sample_rate=16000)), d)
    return d


def _run_cli(capsys, *argv: str) -> tuple:
    code = main(["eval", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------ inputs


def test_list_inputs_directory_manifest_and_file(clips, tmp_path):
    files = E.list_inputs(str(clips))
    assert files == [str(clips / "a.wav"), str(clips / "b" / "c.flac")]
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"path": str(clips / "b" / "c.flac")}) + "\n\n"
                   + json.dumps({"path": "a.wav", "duration": 1.2}) + "\n")
    (tmp_path / "a.wav").write_bytes((clips / "a.wav").read_bytes())
    assert E.list_inputs(str(man)) == [str(clips / "b" / "c.flac"), str(tmp_path / "a.wav")]
    assert E.list_inputs(str(man), max_files=1) == [str(clips / "b" / "c.flac")]
    assert E.list_inputs(str(clips / "a.wav")) == [str(clips / "a.wav")]


def test_list_inputs_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"duration": 1}\n')
    with pytest.raises(CodecError) as ei:
        E.list_inputs(str(bad))
    assert str(ei.value) == f"manifest '{bad}' line 1 is not a JSON object with a 'path'."
    gone = tmp_path / "gone.jsonl"
    gone.write_text('{"path": "nothere.wav"}\n')
    with pytest.raises(CodecError) as ei:
        E.list_inputs(str(gone))
    assert str(ei.value) == f"audio file '{tmp_path / 'nothere.wav'}' does not exist."


# ------------------------------------------------------------------------------------------ end to end


def test_cli_eval_end_to_end(clips, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run_cli(capsys, clips, "--model", model_dir, "--nq", "2,1", "--baseline", "opus@6+12",
                                 "--out", out, "--spectrograms", "1")
    assert code == 0, err
    rows = {line.split("  ")[0].strip(): line for line in stdout.splitlines()}
    assert {"ours nq=1", "ours nq=2", "opus@6", "opus@12"} <= set(rows)
    assert "± = 95 % t-interval over files" in stdout and "2 files" in stdout
    assert "[eval] 2/2 c.flac" in err

    res = json.loads((out / "results.json").read_text())
    assert res["sample_rate"] == 16000 and res["confidence"] == 0.95
    assert res["metrics"] == ["pesq", "stoi", "mel", "sisdr"]
    assert res["files"] == [str(clips / "a.wav"), str(clips / "b" / "c.flac")]
    assert [round(d, 2) for d in res["durations"]] == [1.2, 1.0]
    systems = {s["name"]: s for s in res["systems"]}
    assert [s["name"] for s in res["systems"]] == ["ours nq=1", "ours nq=2", "opus@6", "opus@12"]
    for q in (1, 2):
        s = systems[f"ours nq={q}"]
        assert s["kind"] == "model" and s["nq"] == q
        assert s["kbps"] == pytest.approx(0.4 * q)  # tiny preset: 50 frames/s x 8 bits per level
        for m in res["metrics"]:
            summ = s["metrics"][m]
            vals = s["per_file"][m]
            assert summ["n"] == 2 and len(vals) == 2
            assert summ["mean"] == pytest.approx(np.mean(vals))
            assert summ["ci95"] == pytest.approx(12.7062047 * np.std(vals, ddof=1) / math.sqrt(2), rel=1e-6)
    opus12 = systems["opus@12"]
    assert opus12["kind"] == "baseline" and opus12["codec"] == "opus" and opus12["nominal_kbps"] == 12.0
    assert 8 < opus12["kbps"] < 16
    assert opus12["metrics"]["pesq"]["mean"] > 2.5 and opus12["metrics"]["stoi"]["mean"] > 0.9
    # a random model is far worse than Opus at 12 kbps
    assert systems["ours nq=2"]["metrics"]["stoi"]["mean"] < opus12["metrics"]["stoi"]["mean"]
    assert systems["ours nq=2"]["metrics"]["mel"]["mean"] > opus12["metrics"]["mel"]["mean"]

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["metrics_vs_kbps.png", "spectrogram_0.png"]
    import matplotlib.image as mpimg

    for p in pngs:
        data = (out / p).read_bytes()
        assert data[:8] == PNG_MAGIC
        img = mpimg.imread(str(out / p))
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
        assert float(img[..., :3].std()) > 0.05  # not a blank canvas
    assert f"wrote {out / 'results.json'} and 2 PNG files" in stdout


def test_evaluate_baselines_only_without_model(clips):
    res = E.evaluate(str(clips / "a.wav"), model=None, baselines="codec2@3200,amr-wb@6.6", sample_rate=16000,
                     metrics=["sisdr", "mel"], verbose=False)
    names = [s["name"] for s in res["systems"]]
    assert names == ["codec2@3200", "amr-wb@6.6"] and res["model"] is None
    assert [s["kbps"] for s in res["systems"]] == [pytest.approx(3.2), pytest.approx(6.6)]
    assert res["systems"][1]["metrics"]["mel"]["n"] == 1 and math.isnan(res["systems"][1]["metrics"]["mel"]["ci95"])
    table = E.format_table(res)
    assert "codec2@3200" in table and "SI-SDR" in table and "PESQ-WB" not in table


def test_spectrogram_panels_pick_ours_by_kind_not_name():
    systems = [{"name": f"ours nq={q}", "kind": "model"} for q in (1, 2, 4, 8, 16, 32)]
    systems += [{"name": f"{c}@{s}", "kind": "baseline", "codec": c}
                for c, s in [("codec2", "3200"), ("codec2", "700C"), ("opus", "6"), ("opus", "12")]]
    assert E._spectrogram_panels(systems) == ["ours nq=1", "ours nq=8", "ours nq=32", "codec2@3200", "opus@6"]


def test_cli_help_lists_flags_and_examples(capsys):
    assert main(["eval", "-h"]) == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--nq", "--baseline", "--out", "--max-files", "--metrics", "--spectrograms"):
        assert flag in out
    assert "examples:\n  codec eval refs/ --model speech-24k" in out


# ------------------------------------------------------------------------------------------ user errors


@pytest.mark.parametrize("argv,msg", [
    (["{missing}", "--model", "{model}"], "evaluation input '{missing}' does not exist."),
    (["{empty}", "--model", "{model}"], "no audio files found in '{empty}'."),
    (["{clips}", "--model", "{model}", "--nq", "0"], "--nq values must be positive integers, not '0'."),
    (["{clips}", "--model", "{model}", "--nq", "1,x"], "--nq must be a comma-separated list of integers, not '1,x'."),
    (["{clips}", "--model", "{model}", "--nq", "1,16"], "--nq 16 exceeds the model's 8 quantizers."),
    (["{clips}"], "nothing to evaluate: give --model and/or --baseline."),
    (["{clips}", "--model", "{model}", "--metrics", "pesq,mos"],
     "unknown metric 'mos' (choose from pesq, stoi, mel, sisdr, visqol)."),
    (["{clips}", "--baseline", "opus@3"], "Opus supports 6..510 kbps, not 3."),
])
def test_cli_user_errors(clips, model_dir, tmp_path, capsys, argv, msg):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio here")
    names = {"missing": tmp_path / "nope", "empty": empty, "model": model_dir, "clips": clips}
    code, stdout, err = _run_cli(capsys, *[a.format(**names) for a in argv])
    assert code == 2
    assert err.strip().splitlines()[-1] == "codec: error: " + msg.format(**names)
    assert stdout == ""


def test_cli_missing_tool_for_baseline(clips, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = _run_cli(capsys, clips, "--baseline", "codec2")
    assert code == 2
    assert err.strip() == "codec: error: the Codec2 baseline needs c2enc and c2dec on PATH: apt-get install codec2."


def test_too_short_file_is_an_error(tmp_path, capsys):
    save_audio(tmp_path / "blip.wav", np.zeros(1000, np.float32), 16000)
    code, _, err = _run_cli(capsys, tmp_path, "--baseline", "opus@12")
    assert code == 2
    assert err.strip().splitlines()[-1] == f"codec: error: '{tmp_path / 'blip.wav'}' is shorter than 0.25 s, too short to evaluate."
