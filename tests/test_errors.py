"""Library errors name parameters, the command line names flags (codec.errors.OptionError)."""
import numpy as np
import pytest
import soundfile as sf

from codec.cli import main
from codec.errors import CodecError, OptionError
from codec.pipeline import EncodeJob, encode_files
from test_cli_common import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import codec

    return codec.load(str(make_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny")))


def test_option_error_reads_as_python_in_the_library_and_as_a_flag_in_the_cli():
    err = OptionError("sample_rate", "7 is out of range (1000 to 384000 Hz).")
    assert isinstance(err, CodecError) and isinstance(err, ValueError)
    assert str(err) == "sample_rate 7 is out of range (1000 to 384000 Hz)."
    assert err.for_cli() == "--sample-rate 7 is out of range (1000 to 384000 Hz)."


def test_encode_files_names_nq_and_the_cli_names_the_flag(tiny_model, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(2400, np.float32), tiny_model.sample_rate)
    top = tiny_model.num_quantizers
    with pytest.raises(OptionError) as info:
        encode_files(tiny_model, "tiny", [EncodeJob(wav, tmp_path / "a.codes")], nq=top + 1)
    assert str(info.value) == f"nq {top + 1} is out of range: this model has levels 1 to {top}."
    assert not (tmp_path / "a.codes").exists()
    capsys.readouterr()
    assert main(["encode", str(wav), str(tmp_path / "a.codes"), "--nq", str(top + 1),
                 "--model", tiny_model.model_dir]) == 2
    err = capsys.readouterr().err
    assert err == f"codec: error: --nq {top + 1} is out of range: this model has levels 1 to {top}.\n"


def test_missing_default_model_names_the_parameter_in_python(tmp_path, monkeypatch):
    import codec.pretrained as pre

    monkeypatch.setenv("CODEC_PRETRAINED_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(pre, "repo_pretrained_dir", lambda: tmp_path / "pretrained")
    with pytest.raises(OptionError) as info:
        pre.resolve(None)
    assert "--" not in str(info.value) and str(info.value).endswith(
        "yet; pass model DIR (a directory written by save_pretrained).")
    assert info.value.for_cli().endswith("yet; pass --model DIR (a directory written by save_pretrained).")

