"""Tests for `codec eval` (codec.eval.harness): inputs, end-to-end CLI run with a tiny model and Opus (JSON, Markdown,
CSV, plots), rates per metric, opt-in metrics, user errors."""
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
    assert res["metrics"] == ["pesq", "stoi", "mel", "sisdr", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"]
    assert res["metric_rates"] == {"pesq": 16000, "stoi": 10000, "mel": 16000, "sisdr": 16000, "dnsmos_sig": 16000,
                                   "dnsmos_bak": 16000, "dnsmos_ovrl": 16000}
    assert "rates: PESQ-WB, mel-dist, SI-SDR, DNSMOS at 16 kHz (the evaluation rate); STOI at 10 kHz" in stdout
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
    assert systems["ours nq=2"]["metrics"]["dnsmos_ovrl"]["mean"] < opus12["metrics"]["dnsmos_ovrl"]["mean"]
    # the references' non-intrusive scores: a row of their own, above the random model
    ref = res["reference"]
    assert sorted(ref["metrics"]) == ["dnsmos_bak", "dnsmos_ovrl", "dnsmos_sig"]
    assert len(ref["per_file"]["dnsmos_ovrl"]) == 2
    assert ref["metrics"]["dnsmos_ovrl"]["mean"] > systems["ours nq=2"]["metrics"]["dnsmos_ovrl"]["mean"]
    assert rows["reference"].split()[1] == "-"

    # the same table as Markdown and CSV beside the JSON
    md = (out / "results.md").read_text().splitlines()
    assert md[0] == ("| system | kbps | PESQ-WB ↑ | STOI ↑ | mel-dist ↓ | SI-SDR ↑ | DNSMOS-SIG ↑ | DNSMOS-BAK ↑ "
                     "| DNSMOS-OVRL ↑ |")
    assert md[1] == "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert [line.split(" | ")[0] for line in md[2:7]] == ["| ours nq=1", "| ours nq=2", "| opus@6", "| opus@12",
                                                          "| reference"]
    o12 = opus12["metrics"]["pesq"]
    assert f"| {opus12['kbps']:.2f} | {o12['mean']:.2f}±{o12['ci95']:.2f} |" in md[5]
    assert md[6].startswith("| reference | - |  |  |  |  | ")
    assert "95 % t-interval over files; rates: " in md[-1]
    import csv

    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["system"] for r in table] == ["ours nq=1", "ours nq=2", "opus@6", "opus@12", "reference"]
    assert [r["kind"] for r in table] == ["model", "model", "baseline", "baseline", "reference"]
    assert float(table[3]["pesq_mean"]) == pytest.approx(o12["mean"], rel=1e-5)
    assert float(table[3]["pesq_ci95"]) == pytest.approx(o12["ci95"], rel=1e-5) and table[3]["pesq_n"] == "2"
    assert table[4]["pesq_mean"] == "" and float(table[4]["dnsmos_ovrl_mean"]) == pytest.approx(
        ref["metrics"]["dnsmos_ovrl"]["mean"], rel=1e-5)

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["metrics_vs_kbps.png", "spectrogram_0.png"]
    import matplotlib.image as mpimg

    for p in pngs:
        data = (out / p).read_bytes()
        assert data[:8] == PNG_MAGIC
        img = mpimg.imread(str(out / p))
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
        assert float(img[..., :3].std()) > 0.05  # not a blank canvas
    assert f"wrote {out / 'results.json'}, results.md, results.csv and 2 PNG files" in stdout


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
    for flag in ("--model", "--nq", "--baseline", "--out", "--max-files", "--metrics", "--spectrograms", "--against"):
        assert flag in out
    assert "examples:\n  codec eval refs/ --model speech-24k" in out


# ------------------------------------------------------------------------------------------ user errors


@pytest.mark.parametrize("argv,msg", [
    (["{missing}", "--model", "{model}"], "evaluation input '{missing}' does not exist."),
    (["{empty}", "--model", "{model}"], "no audio files found in '{empty}'."),
    (["{clips}", "--model", "{model}", "--nq", "0"], "--nq values must be positive integers, not '0'."),
    (["{clips}", "--model", "{model}", "--nq", "1,x"], "--nq must be a comma-separated list of integers, not '1,x'."),
    (["{clips}", "--model", "{model}", "--nq", "1,16"], "--nq 16 exceeds the model's 8 quantizers."),
    (["{clips}"], "nothing to evaluate: give a --model and/or baselines."),
    (["{clips}", "--model", "{model}", "--metrics", "pesq,mos"],
     "unknown metric 'mos' (choose from pesq, stoi, mel, sisdr, dnsmos, distillmos, spk_sim, visqol)."),
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


# ------------------------------------------------------------------------------------------ rates, plots


def test_references_keep_their_own_rate_above_the_model_rate(clips):
    """An 8 kHz system: PESQ/DNSMOS get the 16 kHz reference made from the 24 kHz file (its 4-8 kHz band kept),
    not the 8 kHz one upsampled; the mel distance scores at 8 kHz."""
    import torch

    refs = E._references(str(clips / "a.wav"), 8000, [16000, 10000])
    assert sorted(refs) == [8000, 10000, 16000]
    spec = torch.stft(torch.from_numpy(refs[16000]), 512, window=torch.hann_window(512), return_complex=True).abs()
    high = float(spec[129:].pow(2).sum() / spec.pow(2).sum())  # energy above 4 kHz
    assert high > 1e-3
    res = E.evaluate(str(clips / "a.wav"), baselines="codec2@3200", sample_rate=8000,
                     metrics=["pesq", "mel", "stoi"], verbose=False)
    assert res["metric_rates"] == {"pesq": 16000, "mel": 8000, "stoi": 10000}
    from codec.eval import baselines as BL
    from codec.eval.metrics import multiscale_mel_distance, pesq_wb
    from codec.audio import resample

    est = BL.run_baseline("codec2", "3200", refs[8000], 8000).audio
    pf = res["systems"][0]["per_file"]
    assert pf["pesq"][0] == pytest.approx(pesq_wb(refs[16000], resample(est, 8000, 16000), 16000), abs=1e-9)
    assert pf["mel"][0] == pytest.approx(multiscale_mel_distance(refs[8000], est, 8000), abs=1e-9)
    assert "rates: PESQ-WB at 16 kHz; STOI at 10 kHz; mel-dist at 8 kHz (the evaluation rate)" in E.format_table(res)


def test_level_db_scales_every_reference_before_coding_and_scoring(clips, capsys):
    """--level-db: the references (at every rate) are scaled to the level, the codec codes that, the record and
    the table say so; a level above 0 dBFS is refused in one sentence."""
    def level(x):
        return 20 * math.log10(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))

    recorded = E._references(str(clips / "a.wav"), 24000, [16000])
    quiet = E._references(str(clips / "a.wav"), 24000, [16000], level_db=-40.0)
    assert level(quiet[24000]) == pytest.approx(-40.0, abs=0.05)
    assert level(recorded[24000]) > -35.0
    for r in (16000, 24000):  # the same waveform, only quieter
        assert np.allclose(quiet[r] / np.abs(quiet[r]).max(), recorded[r] / np.abs(recorded[r]).max(), atol=1e-5)
    res = E.evaluate(str(clips / "a.wav"), baselines="opus@12", sample_rate=24000, metrics=["mel"], verbose=False,
                     level_db=-40.0)
    assert res["level_db"] == -40.0
    assert "1 files scaled to -40 dBFS RMS, " in E.format_table(res)
    code, stdout, err = _run_cli(capsys, clips / "a.wav", "--baseline", "opus@12", "--level-db", "3")
    assert code == 2 and stdout == ""
    assert err.strip() == "codec: error: --level-db must be a level at or below 0 dBFS, not 3."


def test_expand_metrics_groups_and_errors():
    assert E.expand_metrics(["dnsmos", "pesq", "dnsmos_ovrl"]) == ["dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "pesq"]
    with pytest.raises(CodecError) as ei:
        E.expand_metrics(["mos"])
    assert str(ei.value) == ("unknown metric 'mos' (choose from pesq, stoi, mel, sisdr, dnsmos, distillmos, spk_sim, "
                             "visqol).")


def test_opt_in_metrics_score_speaker_similarity_and_distillmos(clips):
    res = E.evaluate(str(clips / "a.wav"), baselines="opus@12", sample_rate=24000,
                     metrics=["spk_sim", "distillmos"], verbose=False)
    assert res["metrics"] == ["spk_sim", "distillmos"]
    assert res["metric_rates"] == {"spk_sim": 16000, "distillmos": 16000}
    m = res["systems"][0]["metrics"]
    assert 0.8 < m["spk_sim"]["mean"] <= 1.0 and 1.0 <= m["distillmos"]["mean"] <= 5.0
    assert list(res["reference"]["metrics"]) == ["distillmos"]  # speaker similarity needs two signals


def test_kbps_axis_has_plain_number_ticks():
    plt = E._pyplot()
    fig, ax = plt.subplots()
    ax.plot([0.4, 1.6, 6.4, 12.8], [1, 2, 3, 4])
    E._kbps_axis(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if 0.4 <= t.get_position()[0] <= 12.8]
    plt.close(fig)
    assert labels == ["0.5", "1", "2", "5", "10"]


def test_spectrograms_have_db_colour_bars_on_one_scale():
    sr = 16000
    t = np.arange(sr) / sr
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    ex = {"path": "x.wav", "ref": sine, "outs": {"ours nq=1": 0.1 * sine}}
    fig = E._spectrogram_figure(ex, [{"name": "ours nq=1", "kind": "model"}], sr)
    images = [im for ax in fig.axes for im in ax.get_images()]
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "dBFS"]
    E._pyplot().close(fig)
    assert len(images) == 2 and len(bars) == 2
    assert {im.get_clim() for im in images} == {images[0].get_clim()}  # one colour scale for every panel
    vmin, vmax = images[0].get_clim()
    assert vmax == pytest.approx(0.0, abs=0.01) and vmax - vmin == pytest.approx(80.0)  # full-scale sine: 0 dBFS
    assert float(images[1].get_array().max()) == pytest.approx(-20.0, abs=0.01)  # a tenth of it: -20 dBFS
