"""Tests for the paired comparison of two `codec eval` runs (codec.eval.compare, `codec eval --against`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from codec.cli import main
from codec.errors import CodecError
from codec.eval import compare as C

SAMPLE = Path(__file__).resolve().parents[1] / "pretrained" / "samples" / "speech_it.wav"


def _record(model: str, files, per_system) -> dict:
    """A results record as `codec eval` writes it: files, metrics, systems with per-file values."""
    metrics = sorted({m for pf in per_system.values() for m in pf})
    return {"model": model, "files": list(files), "metrics": metrics,
            "systems": [{"name": n, "per_file": pf} for n, pf in per_system.items()]}


OLD_PESQ = [2.0, 2.5, 1.5, 3.0, 2.2, 1.8]
NEW_PESQ = [2.1, 2.6, 1.6, 1.0, 2.3, 1.9]   # five clips up by 0.1, one (d.wav) down by 2.0
FILES = [f"/x/{c}.wav" for c in "abcdef"]


def test_paired_counts_means_p_and_largest_setback():
    old = _record("old", FILES, {"ours nq=8": {"pesq": OLD_PESQ, "mel": [1.0] * 6}})
    new = _record("new", FILES, {"ours nq=8": {"pesq": NEW_PESQ, "mel": [0.9] * 5 + [1.2]}})
    cmp = C.compare(old, new)
    assert cmp["files"] == 6 and cmp["old"] == "old" and cmp["new"] == "new"
    rows = {r["metric"]: r for r in cmp["rows"]}
    p = rows["pesq"]
    assert (p["better"], p["worse"], p["n"]) == (5, 1, 6)
    assert p["old"] == pytest.approx(np.mean(OLD_PESQ)) and p["new"] == pytest.approx(np.mean(NEW_PESQ))
    assert p["diff"] == pytest.approx(np.mean(NEW_PESQ) - np.mean(OLD_PESQ))
    assert p["p"] == pytest.approx(scipy.stats.wilcoxon(np.subtract(NEW_PESQ, OLD_PESQ)).pvalue)
    assert p["worst_file"] == "/x/d.wav" and p["worst_diff"] == pytest.approx(-2.0)
    # the mel distance is better when it goes down: five clips better, the one that rose is the setback
    m = rows["mel"]
    assert (m["better"], m["worse"]) == (5, 1) and m["worst_file"] == "/x/f.wav"
    assert m["worst_diff"] == pytest.approx(0.2)


def test_files_are_matched_by_path_and_missing_values_left_out():
    old = _record("old", FILES, {"ours nq=2": {"pesq": OLD_PESQ}, "opus@6": {"pesq": OLD_PESQ}})
    new_files = ["/x/z.wav"] + FILES[::-1]           # another order and one clip only in the new run
    new_pesq = [9.0] + [v + 0.5 for v in OLD_PESQ[::-1]]
    new_pesq[1] = None                                # f.wav has no score in the new run (NaN written as null)
    new = _record("new", new_files, {"ours nq=2": {"pesq": new_pesq}, "ours nq=4": {"pesq": [1.0] * 7}})
    cmp = C.compare(old, new)
    assert (cmp["files"], cmp["only_old"], cmp["only_new"]) == (6, 0, 1)
    assert [r["system"] for r in cmp["rows"]] == ["ours nq=2"]  # only the systems both runs scored
    r = cmp["rows"][0]
    assert r["n"] == 5 and r["better"] == 5 and r["worse"] == 0 and r["worst_file"] is None
    assert r["diff"] == pytest.approx(0.5)
    text = C.format_comparison(cmp)
    assert "paired comparison on 6 clips: new (new) against old (old); left out: 0 clips only in old, 1 only in new" \
        in text
    assert "| ours nq=2 | PESQ-WB | " in text and "| +0.500 | 5 / 0 of 5 |" in text


def test_identical_runs_give_no_change_and_p_one():
    rec = _record("m", FILES, {"ours nq=8": {"pesq": OLD_PESQ}})
    r = C.compare(rec, rec)["rows"][0]
    assert (r["better"], r["worse"], r["diff"], r["p"]) == (0, 0, 0.0, 1.0)


def test_compare_errors():
    rec = _record("m", FILES, {"ours nq=8": {"pesq": OLD_PESQ}})
    with pytest.raises(CodecError, match="^the two runs share no file: compare runs made on the same input.$"):
        C.compare(rec, _record("m", ["/y/a.wav"], {"ours nq=8": {"pesq": [1.0]}}))
    with pytest.raises(CodecError, match="^the two runs share no system"):
        C.compare(rec, _record("m", FILES, {"opus@6": {"pesq": OLD_PESQ}}))
    with pytest.raises(CodecError, match="^the two runs share no metric"):
        C.compare(rec, _record("m", FILES, {"ours nq=8": {"stoi": OLD_PESQ}}))
    quiet = dict(_record("m", FILES, {"ours nq=8": {"pesq": NEW_PESQ}}), level_db=-40.0)
    with pytest.raises(CodecError) as e:
        C.compare(rec, quiet)
    assert str(e.value) == ("the two runs scored their input at different levels (as recorded and at -40 dBFS): "
                            "compare runs made with the same --level-db.")
    assert C.compare(dict(rec, level_db=-40.0), quiet)["files"] == len(FILES)  # the same level pairs


def test_load_results_errors(tmp_path):
    with pytest.raises(CodecError, match="does not exist: give a results.json written by 'codec eval --out DIR'"):
        C.load_results(tmp_path)
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    with pytest.raises(CodecError, match="is not a results file of 'codec eval' \\(no 'files' and 'systems'"):
        C.load_results(bad)
    bad.write_text("{not json")
    with pytest.raises(CodecError, match="is not a results file of 'codec eval' \\(JSONDecodeError\\)"):
        C.load_results(bad)


def test_cli_compares_two_results_files(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_record("old", FILES, {"ours nq=8": {"pesq": OLD_PESQ, "stoi": [0.8] * 6}})))
    new.write_text(json.dumps(_record("new", FILES, {"ours nq=8": {"pesq": NEW_PESQ, "stoi": [0.8] * 6}})))
    assert main(["eval", str(new), "--against", str(old)]) == 0
    out = capsys.readouterr().out
    assert "| ours nq=8 | PESQ-WB | 2.17 | 1.92 | -0.250 | 5 / 1 of 6 |" in out
    assert "| d.wav (-2.000) |" in out and "| ours nq=8 | STOI |" in out
    assert main(["eval", str(new), "--against", str(old), "--metrics", "stoi"]) == 0
    out = capsys.readouterr().out
    assert "| STOI |" in out and "PESQ-WB" not in out
    # a results file without --against, and an --against that is not there
    assert main(["eval", str(new)]) == 2
    assert capsys.readouterr().err.strip() == ("codec: error: --against OLD is needed with a results.json input: it "
                                               "names the run to compare with.")
    # an evaluation whose files the earlier run never scored is refused before any scoring
    assert main(["eval", str(SAMPLE), "--model", "tiny-missing", "--against", str(old)]) == 2
    assert capsys.readouterr().err.strip() == ("codec: error: the two runs share no file: compare runs made on the "
                                               "same input.")
    assert main(["eval", str(new), "--against", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == (f"codec: error: '{tmp_path / 'nope'}' does not exist: give a "
                                               "results.json written by 'codec eval --out DIR' (or that DIR).")


def test_cli_eval_against_an_earlier_run_writes_the_comparison(tmp_path, capsys):
    """End to end: the same tiny model evaluated twice; the second run is compared with the first."""
    import torch

    from codec import CodecConfig, CodecModel
    from codec.pretrained import save_pretrained

    torch.manual_seed(0)
    model = tmp_path / "model"
    save_pretrained(CodecModel(CodecConfig.preset("tiny", sample_rate=16000)), model)
    args = [str(SAMPLE), "--model", str(model), "--nq", "1,2", "--metrics", "stoi,mel", "--spectrograms", "0"]
    assert main(["eval", *args, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["eval", *args, "--out", str(tmp_path / "b"), "--against", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "paired comparison on 1 clip: " in out and "| ours nq=2 | mel-dist |" in out
    cmp = json.loads((tmp_path / "b" / "comparison.json").read_text())
    assert [(r["system"], r["metric"]) for r in cmp["rows"]] == [
        ("ours nq=1", "stoi"), ("ours nq=1", "mel"), ("ours nq=2", "stoi"), ("ours nq=2", "mel")]
    assert all(r["diff"] == 0.0 and r["better"] == r["worse"] == 0 and r["p"] == 1.0 for r in cmp["rows"])
    assert (tmp_path / "b" / "comparison.md").read_text().startswith("paired comparison on 1 clip: ")
