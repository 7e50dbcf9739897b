"""Export (codec.deploy): ONNX graphs run in ONNX Runtime on real audio equal PyTorch (codes identical, audio
within 1e-4), offline and frame by frame, with dynamic batch, length and levels; torch.export programs of the
same wrappers; the manifest; ``codec export`` and its errors.

Two small random-weight models cover both layer families: the Fourier family (the shipped model's layers) is
exported with the Python API, the time-domain (seanet) family with the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import CodecConfig, CodecModel
from codec.bench.onnx import benchmark_onnx
from codec.cli import main
from codec.deploy import OnnxCodec, export_graphs, export_onnx
from codec.deploy.graphs import build_graph
from codec.errors import CodecError
from test_cli_common import make_tiny_model_dir

SAMPLE = Path(__file__).resolve().parents[1] / "pretrained" / "samples" / "speech_it.wav"
TINY_FOURIER = dict(sample_rate=24000, encoder_type="fourier", decoder_type="fourier", fourier_dim=32,
                    fourier_mlp=2, fourier_kernel=3, encoder_layers=1, decoder_layers=2, level_embedding=True)
TINY_SEANET = dict(sample_rate=24000, dilations=[3], strides=[8, 40])  # two stages: a quick export


def speech(seconds: float, offset: float = 0.0) -> np.ndarray:
    """A slice of the shipped speech sample (24 kHz) as float32 ``[T]``."""
    wav, sr = sf.read(str(SAMPLE), dtype="float32")
    a = int(offset * sr)
    return wav[a: a + int(seconds * sr)]


@pytest.fixture(scope="module")
def fourier(tmp_path_factory):
    torch.manual_seed(0)
    model = CodecModel(CodecConfig.preset("tiny", **TINY_FOURIER)).eval()
    with torch.no_grad():  # a trained level embedding: the graphs must tell the decoder each input's level count
        model.decoder.level_embedding.normal_(0.0, 0.5)
    exported = export_graphs(model)
    out = tmp_path_factory.mktemp("onnx-fourier")
    export_onnx(model, out, exported=exported)
    return model, exported, OnnxCodec(out), out


def cli_export(tmp_path_factory, name: str, config: dict, *flags: str):
    """A tiny model of ``config`` saved and exported by ``codec export ... --format onnx FLAGS`` ->
    ``(loaded model, model dir, OnnxCodec, export dir)``."""
    from codec import load

    d = make_tiny_model_dir(tmp_path_factory.mktemp(name) / "m", **config)
    out = tmp_path_factory.mktemp(f"onnx-{name}")
    assert main(["export", str(d), str(out), "--format", "onnx", *flags, "-q"]) == 0
    return load(str(d)), d, OnnxCodec(out), out


@pytest.fixture(scope="module")
def seanet(tmp_path_factory):
    return cli_export(tmp_path_factory, "seanet", TINY_SEANET, "--nq", "5")


@pytest.fixture(params=["fourier", "seanet"])
def family(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def fourier64(tmp_path_factory):
    """The tiny Fourier model saved and exported by the CLI with ``--precision float64``."""
    return cli_export(tmp_path_factory, "fourier64", TINY_FOURIER, "--precision", "float64")


#: fraction of frames whose codes (all levels) must equal PyTorch's in float32: the graphs run ONNX Runtime's
#: float kernels, not the encoders' bit-exact fixed-shape GEMM path, so a nearest-code decision within rounding
#: of a tie can differ (the float64 graphs give PyTorch's float64 codes exactly: see the float64 tests)
FRAME_AGREEMENT = 0.97


def agreement(codes, ref) -> float:
    """Fraction of frames whose codes are identical at every level."""
    return float((np.asarray(codes) == np.asarray(ref)).all(1).mean())


def batch(lengths_s, offsets_s) -> np.ndarray:
    """``[B, 1, T]``: items of the same length cut at different places of the sample."""
    return np.stack([speech(lengths_s, o) for o in offsets_s])[:, None]


@pytest.mark.parametrize("seconds,offsets", [(1.3, [0.0]), (2.0 + 77 / 24000, [0.2, 1.5])])
def test_offline_graphs_equal_pytorch(family, seconds, offsets):
    model, _, oc, _ = family
    x = batch(seconds, offsets)
    nq = oc.manifest["nq"]
    ref = model.encode(torch.from_numpy(x), nq=nq).numpy()
    codes = oc.encode(x)
    assert codes.shape == ref.shape == (len(offsets), nq, -(-x.shape[-1] // model.hop_length))
    assert agreement(codes, ref) >= FRAME_AGREEMENT
    for c in (ref, ref[:, :2]):  # all exported levels, and fewer
        assert np.abs(oc.decode(c) - model.decode(torch.from_numpy(c)).numpy()).max() < 1e-4


def test_float32_graphs_keep_the_stft_epsilon_in_digital_silence(fourier):
    """The exporter's graph optimizer folded ``mag = sqrt(re^2 + im^2 + 1e-10)`` into ``sqrt(re^2 + im^2)``
    (1e-10 is "close to zero"), so silent frames got ``0 * inf`` = NaN features and garbage codes in ONNX
    Runtime; the graphs are written unoptimised and silence codes as in PyTorch."""
    model, _, oc, _ = fourier
    x = np.concatenate([np.zeros(12000, np.float32), speech(1.0)])[None, None]
    ref = model.encode(torch.from_numpy(x)).numpy()
    codes = oc.encode(x)
    silent = 12000 // model.hop_length - 3  # frames whose whole STFT window is digital silence
    assert np.array_equal(codes[..., :silent], ref[..., :silent])
    assert agreement(codes, ref) >= FRAME_AGREEMENT


@pytest.mark.parametrize("seconds,offsets", [(1.3, [0.0]), (2.0 + 77 / 24000, [0.2, 1.5])])
def test_float64_graphs_give_pytorch_float64_codes_exactly(fourier64, seconds, offsets):
    """``codec export --precision float64``: the encoder graph in ONNX Runtime and the step graph frame by frame
    give ``model.encode(..., precision="float64")`` bit for bit on real speech, at every level."""
    model, _, oc, _ = fourier64
    x = batch(seconds, offsets)
    ref = model.encode(torch.from_numpy(x), precision="float64").numpy()
    assert np.array_equal(oc.encode(x), ref)
    assert np.array_equal(oc.stream_encode(x), ref)
    assert np.abs(oc.decode(ref) - model.decode(torch.from_numpy(ref)).numpy()).max() < 1e-4  # float32 decoder


def test_float64_encoding_is_exact_across_chunkings_and_batches(fourier64):
    """PyTorch's float64 path keeps the exactness guarantees: streamed in odd chunks and in a masked batch, every
    item gets its whole-file codes."""
    model = fourier64[0]
    x = torch.from_numpy(speech(1.5))[None, None]
    ref = model.encode(x, precision="float64")
    enc = model.stream_encoder(nq=model.num_quantizers, precision="float64")
    parts = [enc.feed(x[..., i:i + 777]) for i in range(0, x.shape[-1], 777)] + [enc.flush()]
    assert torch.equal(torch.cat(parts, -1), ref)
    other = torch.from_numpy(speech(2.0, 0.3))[None, None]
    padded = torch.cat([torch.nn.functional.pad(x, (0, other.shape[-1] - x.shape[-1])), other])
    both = model.encode(padded, lengths=[x.shape[-1], other.shape[-1]], precision="float64")
    assert torch.equal(both[0, :, : ref.shape[-1]], ref[0])
    assert torch.equal(both[1:], model.encode(other, precision="float64"))


def test_float64_manifest_and_cli_encode(fourier64, tmp_path):
    model, d, oc, out = fourier64
    man = json.loads((out / "manifest.json").read_text())
    assert man["precision"] == "float64"
    states = [s for s in man["graphs"]["encoder_step"]["inputs"] if s["name"].startswith("state.")]
    assert states and {s["dtype"] for s in states} == {"float64"}
    assert {s["dtype"] for s in man["graphs"]["decoder_step"]["inputs"] if s["name"].startswith("state.")} == \
        {"float32"}
    wav = tmp_path / "a.wav"
    sf.write(str(wav), speech(1.2, 0.4), 24000)
    assert main(["encode", str(wav), str(tmp_path / "a.codes"), "--model", str(d), "--nq", "8",
                 "--precision", "float64", "-q"]) == 0
    from codec import load_codes

    stored, _ = load_codes(tmp_path / "a.codes")  # [1, 8, F]
    assert np.array_equal(stored.numpy(), oc.encode(speech(1.2, 0.4)[None, None])[:, :8])


def test_precision_errors(seanet, fourier, tmp_path, capsys):
    model = fourier[0]
    with pytest.raises(CodecError, match=r"^precision 'half' is not known: use float32 or float64\.$"):
        model.encode(torch.zeros(1, 1, 640), precision="half")
    with pytest.raises(CodecError, match=r"^precision 'half' is not known: use float32 or float64\.$"):
        export_onnx(model, tmp_path / "h", precision="half")
    assert not (tmp_path / "h").exists()
    with pytest.raises(CodecError, match=r"^precision float64 export needs the Fourier encoder: ONNX Runtime has "
                                         r"no float64 convolution\.$"):
        export_onnx(seanet[0], tmp_path / "s", precision="float64")
    assert not (tmp_path / "s").exists()  # refused before the directory is made
    assert main(["export", str(seanet[1]), str(tmp_path / "c"), "--format", "onnx", "--precision", "float16"]) == 2
    assert "argument --precision: invalid choice: 'float16'" in capsys.readouterr().err


def test_decoder_takes_padding_frames_and_any_level_count(family):
    model, _, oc, _ = family
    c = model.encode(torch.from_numpy(batch(1.0, [0.0, 1.0]))).numpy()  # all the model's levels
    assert c.shape[1] == model.num_quantizers
    c[0, :, 40:] = -1  # item 0 ends early (a padded batch)
    c[1, 3:, 10:20] = -1  # levels dropped on some frames
    y, ref = oc.decode(c), model.decode(torch.from_numpy(c)).numpy()
    assert np.abs(y - ref).max() < 1e-4
    assert np.all(y[0, :, 40 * model.hop_length:] == 0)
    for n in (1, 3):  # fewer levels: the same graph decodes them as PyTorch does (a level embedding sees n)
        few = np.ascontiguousarray(c[:, :n])
        assert np.abs(oc.decode(few) - model.decode(torch.from_numpy(few)).numpy()).max() < 1e-4
        whole = few[1:]  # no padded frames: the stream decoder does not silence them
        assert np.abs(oc.stream_decode(whole) - model.decode(torch.from_numpy(whole)).numpy()).max() < 1e-4


def test_streaming_step_graphs_equal_offline(family):
    model, _, oc, _ = family
    x = batch(1.0 + 100 / 24000, [0.5, 2.0])
    nq = oc.manifest["nq"]
    ref = model.encode(torch.from_numpy(x), nq=nq).numpy()
    streamed = oc.stream_encode(x)
    assert np.array_equal(streamed, oc.encode(x))  # frame by frame == offline, bit for bit, in ONNX Runtime
    assert agreement(streamed, ref) >= FRAME_AGREEMENT
    y = oc.stream_decode(ref)
    assert y.shape == (2, 1, ref.shape[-1] * model.hop_length)
    assert np.abs(y - model.decode(torch.from_numpy(ref)).numpy()).max() < 1e-4


def test_manifest_describes_the_graphs(family):
    model, _, oc, out = family
    man = json.loads((out / "manifest.json").read_text())
    assert (man["sample_rate"], man["hop_length"], man["decoder_delay"], man["num_quantizers"]) == \
        (model.sample_rate, model.hop_length, model.decoder_delay, model.num_quantizers)
    assert set(man["graphs"]) == {"encoder", "decoder", "encoder_step", "decoder_step"}
    for name, g in man["graphs"].items():
        sess = oc.sessions[name]
        assert [i["name"] for i in g["inputs"]] == [i.name for i in sess.get_inputs()]
        assert [o["name"] for o in g["outputs"]] == [o.name for o in sess.get_outputs()]
        states = [s for s in g["inputs"] if s["name"].startswith("state.")]
        assert [o["name"] for o in g["outputs"] if o["name"].startswith("next_state.")] == \
            ["next_" + s["name"] for s in states]
        assert (len(states) > 0) == name.endswith("_step")
    tail = [o for o in man["graphs"]["decoder_step"]["outputs"] if o["name"] == "tail"]
    assert [o["shape"] for o in tail] == ([["batch", 1, model.decoder_delay]] if model.decoder_delay else [])


def test_torch_export_programs_run(fourier):
    model, exported, _, _ = fourier
    x = torch.from_numpy(batch(0.7, [0.0, 0.9, 1.8]))  # batch and length unlike the example inputs
    codes = exported["encoder"].program.module()(x)
    assert agreement(codes, model.encode(x)) >= FRAME_AGREEMENT
    y = exported["decoder"].program.module()(codes[:, :4])
    assert (y - model.decode(codes[:, :4])).abs().max() < 1e-4
    g = exported["decoder_step"]
    n = sum(1 for s in g.inputs if s["name"].startswith("state."))
    states = [torch.zeros(3, *t.shape[1:]) for t in g.example[1:]]
    step = g.program.module()
    out = []
    with torch.no_grad():
        with model.streaming(3):
            ref = [model.decode_step(codes[..., f:f + 1]) for f in range(5)]
        for f in range(5):
            o = step(codes[..., f:f + 1], *states)
            out.append(o[0])
            states = list(o[len(o) - n:])
    assert (torch.cat(out, -1) - torch.cat(ref, -1)).abs().max() < 1e-4


def test_export_folds_weight_norm_on_a_copy(seanet):
    model = seanet[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = build_graph(model, "decoder")
    keys = list(graph.state_dict())
    assert any(k.endswith("folded_weight") for k in keys)
    assert not any(k.endswith(("weight_v", "weight_g")) for k in keys)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_bench_times_onnx_runtime_beside_pytorch(seanet, tmp_path):
    model, model_dir, _, out = seanet
    assert main(["bench", "onnx", "--model", str(model_dir), "--onnx-dir", str(out), "--seconds", "0.5", "--nq", "5",
                 "-q", "--json", str(tmp_path / "b.json")]) == 0
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["onnx"]["nq"] == r["offline"]["nq"] == 5 and r["onnx"]["export_s"] == 0
    for k in ("encode", "decode"):
        assert r["onnxruntime_speedup_vs_pytorch"][k] == pytest.approx(
            r["onnx"][f"{k}_x_realtime"] / r["offline"][f"{k}_x_realtime"])
    other = CodecModel(CodecConfig.preset("tiny")).eval()  # 16 kHz
    with pytest.raises(CodecError, match=r"^the ONNX export in '.*' is for 24000 Hz / hop 320, not this model's "
                                         r"16000 Hz / hop 320\.$"):
        benchmark_onnx(other, seconds=0.5, onnx_dir=str(out))


def test_bench_parity_compares_codes_and_audio_on_recordings(seanet, fourier, tmp_path, capsys):
    """``codec bench onnx --parity MANIFEST``: the files it names (one at 8 kHz, resampled), the first
    ``--parity-files``; the conv graphs give PyTorch's codes exactly; counts agree with a direct comparison."""
    model, model_dir, _, out = seanet
    rec = tmp_path / "rec"
    rec.mkdir()
    sf.write(str(rec / "a.wav"), speech(1.0), 24000)
    sf.write(str(rec / "b.wav"), speech(0.7, 1.0)[::3].copy(), 8000)
    sf.write(str(rec / "c.wav"), speech(0.5, 2.0), 24000)
    (rec / "m.jsonl").write_text("".join(json.dumps({"path": f"{n}.wav"}) + "\n" for n in "abc"))
    assert main(["bench", "onnx", "--model", str(model_dir), "--onnx-dir", str(out), "--seconds", "0.3", "--nq", "3",
                 "--parity", str(rec / "m.jsonl"), "--parity-files", "2", "-q", "--json", str(tmp_path / "p.json")]) == 0
    r = json.loads((tmp_path / "p.json").read_text())["onnx_parity"]
    assert (r["files"], r["levels"], r["nq"]) == (2, 5, 3)
    assert r["frames"] == 75 + 53  # ceil(24000 / 320) + ceil(0.7 s at 24 kHz / 320)
    assert r["frames_identical_all_levels"] == r["codes_identical"] == 1.0 and r["codes_identical_per_level"] == [1.0] * 5
    assert 0 <= r["decode_max_abs_error"] < 1e-4

    from codec.bench.onnx import onnx_parity

    fmodel, _, oc, fout = fourier
    res = onnx_parity(fmodel, [str(rec / "a.wav"), str(rec / "c.wav")], nq=4, onnx_dir=str(fout))
    ref = [fmodel.encode(torch.from_numpy(speech(s, o))[None, None]).numpy() for s, o in ((1.0, 0.0), (0.5, 2.0))]
    got = [oc.encode(speech(s, o)[None, None]) for s, o in ((1.0, 0.0), (0.5, 2.0))]
    frames = sum(c.shape[-1] for c in ref)
    assert res["frames"] == frames
    assert res["frames_identical_at_nq"] == sum(int((g[:, :4] == c[:, :4]).all(1).sum()) for g, c in zip(got, ref)) / frames
    assert res["codes_identical"] == sum(int((g == c).sum()) for g, c in zip(got, ref)) / (frames * 8)
    assert res["frames_identical_all_levels"] >= FRAME_AGREEMENT and res["decode_max_abs_error"] < 1e-4
    with pytest.raises(CodecError, match=r"^nq 9 is more than the 8 levels this ONNX export's encoder gives\.$"):
        onnx_parity(fmodel, str(rec / "a.wav"), nq=9, onnx_dir=str(fout))
    assert main(["bench", "rvq", "--parity", str(rec / "m.jsonl")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--parity compares ONNX graphs with PyTorch: use it with 'codec bench onnx'.")


def test_export_errors(tmp_path, capsys, fourier):
    model = fourier[0]
    with pytest.raises(CodecError, match=r"^nq 9 is out of range: this model has levels 1 to 8\.$"):
        export_onnx(model, tmp_path / "a", nq=9)
    with pytest.raises(CodecError, match=r"^opset 17 is too old: the graphs need ONNX opset 18 or newer\.$"):
        export_onnx(model, tmp_path / "a", opset=17)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CodecError, match=r"^the output '.*file' exists and is not a directory\.$"):
        export_onnx(model, tmp_path / "file")
    with pytest.raises(CodecError, match=r"^'.*' is not an ONNX export directory \(no manifest\.json\)\.$"):
        OnnxCodec(tmp_path)
    d = make_tiny_model_dir(tmp_path / "m")
    for argv, msg in [
        ([str(d), str(tmp_path / "o"), "--format", "onnx", "--nq", "0"],
         "--nq 0 is out of range: this model has levels 1 to 8."),
        ([str(d), str(tmp_path / "o"), "--format", "tflite"],
         "argument --format: invalid choice: 'tflite' (choose from 'onnx') (see 'codec export -h')."),
        ([str(d), str(tmp_path / "o")], "the following arguments are required: --format (see 'codec export -h')."),
    ]:
        assert main(["export", *argv]) == 2
        assert capsys.readouterr().err == f"codec: error: {msg}\n"
    assert not (tmp_path / "o").exists()


def test_state_flattening_of_typed_states():
    from dataclasses import dataclass

    from codec.deploy.state import flat_states, install_states, rebuild_state, state_items
    from codec.nn.streaming import StreamState

    @dataclass
    class State(StreamState):
        ctx: torch.Tensor
        pending: torch.Tensor

    a, b, c = torch.zeros(2, 3), torch.ones(2, 1), torch.full((2, 3), 5.0)
    s = State(a, b)
    assert [(k, v is w) for (k, v), w in zip(state_items(s), (a, b))] == [("ctx", True), ("pending", True)]
    r = rebuild_state(s, {"ctx": c})
    assert type(r) is State and [v for _, v in state_items(r)][0] is c
    assert [v for _, v in state_items(s)][0] is a  # the template is not modified
    s.reset(1)
    assert b[0].item() == 1.0 and b[1].item() == 0.0  # one slot zeroed, the other kept
    torch.manual_seed(0)
    model = CodecModel(CodecConfig.preset("tiny", **TINY_FOURIER)).eval()
    install_states(model.decoder, 3, {"head.pending": torch.ones(3, model.decoder_delay)})
    names = dict(flat_states(model.decoder))
    assert names["head.pending"].sum() == 3 * model.decoder_delay and names["blocks.0.ctx"].shape[0] == 3
    from codec.nn import streaming as st

    st.stop_streaming(model.decoder)
    assert flat_states(model.decoder) == []
