"""End-to-end training tests on CPU with the tiny model: loss falls, exact resume, DDP (gloo, 2 processes),
SIGTERM checkpointing, non-finite handling, export."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
import soundfile as sf
import torch

from codec.errors import CodecError
from codec.train.config import load_config

REPO = Path(__file__).resolve().parents[1]

# small, fast settings shared by the tests (generator-only unless a test switches the GAN on)
FAST = [
    "model.preset=tiny", "data.crop_seconds=0.25", "data.batch_size=4", "data.num_workers=0",
    "data.valid_items=2", "data.valid_max_seconds=1.0",
    "loss.mel_windows=[32,64,128,256,512]", "loss.mel_bands=[5,10,20,40,64]",
    "discriminator.periods=[2,3]", "discriminator.mpd_channels=4", "discriminator.stft_windows=[256,128]",
    "discriminator.stft_channels=4", "adversarial.start_step=3",
    "optim.lr=2e-3", "optim.warmup_steps=2", "optim.decay_steps=40", "optim.ema=0.9",
    "train.log_interval=1", "train.valid_interval=0", "train.ckpt_interval=1000", "train.progress=false",
    "train.tensorboard=false", "train.valid_nq=[1]", "train.threads=1",
]


def _write_tones(folder: Path, n: int = 6, sr: int = 16000) -> Path:
    """Harmonic tones + noise of different lengths and rates (some shorter than the crop)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        rate = sr if i % 3 else 22050
        T = int(rate * (0.15 + 0.2 * i))
        t = np.arange(T) / rate
        f0 = 110 + 35 * i
        x = 0.15 * sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 6)) + 0.01 * rng.standard_normal(T)
        sf.write(folder / f"tone{i}.wav", x.astype(np.float32), rate)
    return folder


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    return _write_tones(tmp_path_factory.mktemp("data") / "wavs")


def _cfg(wavs, out, *extra):
    return load_config(None, FAST + [f"data.train={wavs}", f"data.valid={wavs}", f"train.out_dir={out}", *extra])


def _metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_best_checkpoint_follows_the_chosen_metric(wavs, tmp_path):
    """``train.best_metric``: best.pt holds the step with the highest SI-SDR at nq 2 (higher is better) among the
    trained steps; names validation cannot produce are refused before a step."""
    from codec.train.trainer import Trainer

    out = tmp_path / "run"
    t = Trainer(_cfg(wavs, out, "train.steps=12", "adversarial.enabled=false", "optim.ema=0",
                     "train.valid_interval=3", "train.valid_nq=[1,2]", "train.best_metric=si_sdr/nq2"))
    t.fit()
    valid = [m for m in _metrics(out) if m["kind"] == "valid" and m["step"] > 0]
    assert [m["step"] for m in valid] == [3, 6, 9, 12]
    want = max(valid, key=lambda m: m["si_sdr/nq2"])
    best = torch.load(out / "best.pt", weights_only=True, map_location="cpu")
    assert best["step"] == want["step"] and best["best_metric"] == "si_sdr/nq2"
    assert best["best_valid"] == pytest.approx(-want["si_sdr/nq2"])
    for name, msg in (("pesq/8", r"^train\.best_metric 'pesq/8' is not a validation metric: use valid_loss or "
                                 r"mel/nqN, si_sdr/nqN, pesq/nqN, stoi/nqN\.$"),
                      ("mel/nq4", r"^train\.best_metric 'mel/nq4' needs nq 4 in the validated nq values \(1, 2\): "
                                  r"add it to train\.valid_nq\.$")):
        with pytest.raises(CodecError, match=msg):
            Trainer(_cfg(wavs, tmp_path / name.replace("/", "_"), "train.valid_nq=[1,2]", f"train.best_metric={name}"))


def test_tiny_run_mel_loss_falls(wavs, tmp_path):
    from codec.train.trainer import Trainer

    out = tmp_path / "run"
    t = Trainer(_cfg(wavs, out, "train.steps=40", "adversarial.enabled=false", "optim.ema=0",
                     "train.valid_interval=40", "train.valid_nq=[1,2]", "train.tensorboard=true"))
    s = t.fit()
    assert s["step"] == 40
    mel = [m["mel"] for m in _metrics(out) if m["kind"] == "train"]
    assert len(mel) == 40 and all(np.isfinite(mel))
    first, last = np.mean(mel[:5]), np.mean(mel[-5:])
    assert last < 0.8 * first, (first, last)
    valid = [m for m in _metrics(out) if m["kind"] == "valid"]
    assert valid and "si_sdr/nq1" in valid[-1] and "mel/nq2" in valid[-1]
    assert (out / "best.pt").is_file() and (out / "ckpt_00000040.pt").is_file()
    assert s["audio_seconds_per_second"] > 0
    assert "usage_per_level" in s["last"]
    assert list((out / "tb").glob("events.out.tfevents.*"))


def _params(t):
    sd = {f"model.{k}": v for k, v in t.model.state_dict().items()}
    sd.update({f"disc.{k}": v for k, v in t.disc.state_dict().items()})
    sd.update({f"ema.{k}": v for k, v in t.ema.state_dict().items()})
    return sd


def test_resume_equals_uninterrupted(wavs, tmp_path):
    """N+M steps in one go == N steps, checkpoint, new process state, resume, M steps (GAN + EMA on)."""
    from codec.train.trainer import Trainer

    n, m = 4, 3
    full = Trainer(_cfg(wavs, tmp_path / "a", f"train.steps={n + m}", "train.valid_interval=2"))
    full.fit()
    first = Trainer(_cfg(wavs, tmp_path / "b", f"train.steps={n}", "train.valid_interval=2"))
    first.fit()
    assert (tmp_path / "b" / f"ckpt_{n:08d}.pt").is_file()
    torch.manual_seed(1234)  # a different global RNG state must not matter after resume
    second = Trainer(_cfg(wavs, tmp_path / "b", f"train.steps={n + m}", "train.valid_interval=2",
                          "train.resume=auto"))
    assert second.step == n
    second.fit()
    pa, pb = _params(full), _params(second)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    for ga, gb in zip(full.opt_g.state_dict()["state"].values(), second.opt_g.state_dict()["state"].values()):
        assert torch.equal(ga["exp_avg"], gb["exp_avg"])


def _ddp_worker(rank, world, port, wavs, out, result_dir):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from codec.train.trainer import Trainer

    t = Trainer(_cfg(wavs, out, "train.steps=4", "optim.ema=0", "train.valid_interval=0"))
    t.fit()
    torch.save({k: v.detach().cpu().clone() for k, v in _params_noema(t).items()},
               Path(result_dir) / f"rank{rank}.pt")
    import torch.distributed as dist

    dist.destroy_process_group()


def _params_noema(t):
    sd = {f"model.{k}": v for k, v in t.model.state_dict().items()}
    sd.update({f"disc.{k}": v for k, v in t.disc.state_dict().items()})
    return sd


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_two_processes_stay_identical(wavs, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(wavs), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2,
             join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert any("quantizer" in k for k in a)           # codebooks / EMA statistics are compared too
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the run trained: parameters moved away from a fresh initialisation
    from codec.train.trainer import build_model

    torch.manual_seed(0)
    fresh = build_model({"preset": "tiny"}).state_dict()
    assert any(not torch.equal(fresh[k[6:]], a[k]) for k in a if k.startswith("model.") and k[6:] in fresh)
    assert (tmp_path / "ddp" / "ckpt_00000004.pt").is_file()


def test_nonfinite_loss_skips_then_stops(wavs, tmp_path, monkeypatch):
    from codec.train.trainer import Trainer

    t = Trainer(_cfg(wavs, tmp_path / "nf", "train.steps=10", "train.max_nonfinite=3"))
    calls = {"n": 0}
    orig = t.mel_loss.forward

    def flaky(x, y, lengths=None, reduction="mean"):
        calls["n"] += 1
        v = orig(x, y, lengths, reduction)
        return v * float("nan") if calls["n"] in (2,) or calls["n"] >= 5 else v

    monkeypatch.setattr(t.mel_loss, "forward", flaky)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    with pytest.warns(UserWarning, match="non-finite"):
        with pytest.raises(CodecError, match="non-finite losses in a row"):
            t.fit()
    assert t.nonfinite_total == 4 and t.step == 6
    after = t.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values() if v.dtype.is_floating_point)


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues_via_cli(wavs, tmp_path):
    out = tmp_path / "sig"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  steps: 100000\n")
    cmd = [sys.executable, "-m", "codec.train", str(cfg_file), *FAST, f"data.train={wavs}", f"train.out_dir={out}",
           "data.num_workers=1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped: signal" in err
    ckpts = sorted(out.glob("ckpt_*.pt"))
    assert ckpts
    step = int(ckpts[-1].stem.split("_")[1])
    assert step >= 3
    # --resume picks the latest checkpoint and continues from there
    res = subprocess.run([sys.executable, "-m", "codec.train", str(cfg_file), *FAST, f"data.train={wavs}",
                          f"train.out_dir={out}", f"train.steps={step + 2}", "--resume"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"resumed from" in res.stderr and f"at step {step}" in res.stderr
    assert (out / f"ckpt_{step + 2:08d}.pt").is_file()


def test_export_and_finetune(wavs, tmp_path):
    import codec
    from codec.train.export import export_run
    from codec.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(_cfg(wavs, run, "train.steps=3", "train.valid_interval=3")).fit()
    out = export_run(run, tmp_path / "model")
    out8 = export_run(run, tmp_path / "model8", int8=True)   # int8 weight matrices load back as float32
    assert any(k.endswith(".int8_scale") for k in load_file(str(out8 / "model.safetensors")))
    assert all(v.dtype == torch.float32 for v in codec.load(str(out8)).state_dict().values() if v.is_floating_point())
    raw = export_run(run, tmp_path / "raw", raw=True)   # the raw weights, not their EMA (FAST keeps optim.ema=0.9)
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    for name, want in (("model", raw), ("ema", out)):
        got = codec.load(str(want)).state_dict()
        assert all(torch.equal(got[k], v.float()) for k, v in state[name].items() if v.is_floating_point()), name
    assert "weights: raw (not the EMA)" in (raw / "README.md").read_text()
    assert json.loads((raw / "training.json").read_text())["weights"] == "raw (not the EMA)"
    assert json.loads((out / "training.json").read_text())["weights"] == "EMA"
    card = (out / "README.md").read_text()
    assert "steps: 3" in card and "mel/nq1" in card and "codebook_perplexity/level" not in card
    assert "## Validation metrics (step 3, these weights)" in card  # the exported checkpoint's own score
    assert json.loads((out / "training.json").read_text())["validation"]["step"] == 3
    assert "Validation scored the EMA weights; this export holds the raw ones." in (raw / "README.md").read_text()
    assert (out / "discriminator.safetensors").is_file()
    # the card and training.json name no path of this machine (data, run directory, checkpoint)
    for f in ("README.md", "training.json"):
        text = (out / f).read_text()
        assert str(tmp_path) not in text and str(wavs) not in text
    m = codec.load(str(out))
    x = torch.from_numpy(sf.read(next(iter(sorted(wavs.glob("*.wav")))), dtype="float32")[0])[None, None]
    codes = m.encode(x, sample_rate=m.sample_rate, nq=1)
    assert codes.shape[1] == 1
    # fine-tune from the exported directory (with its discriminators)
    t = Trainer(_cfg(wavs, tmp_path / "ft", "train.steps=2", f"model.init_from={out}"))
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in t.model.state_dict().items() if k in sd)
    t.fit()
    assert (tmp_path / "ft" / "ckpt_00000002.pt").is_file()


def test_model_card_names_the_validation_of_the_exported_step():
    """A card reports the latest validation up to the exported checkpoint and says whose weights it scored;
    the best step is named when it differs; a checkpoint from before ``last_valid`` shows its best metrics."""
    from codec.train.export import model_card

    state = {"step": 500, "config": {"train": {"best_metric": "pesq/nq8"}}, "model": {}, "ema": None,
             "best_step": 200, "best_metrics": {"pesq/nq8": 2.6},
             "last_valid": {"step": 400, "metrics": {"pesq/nq8": 2.4}}}
    card = model_card(state, "m")
    assert "## Validation metrics (step 400, the last validation before this step-500 checkpoint)" in card
    assert "| pesq/nq8 | 2.400 |" in card and "2.600" not in card
    assert "The run's best validation by `pesq/nq8` was at step 200 (`best.pt`, `--checkpoint best`)." in card
    state["last_valid"] = {"step": 500, "metrics": {"pesq/nq8": 2.5}}
    assert "## Validation metrics (step 500, these weights)" in model_card(state, "m")
    state["best_step"] = 500
    assert "best validation by" not in model_card(state, "m")
    old = {"step": 500, "config": {}, "model": {}, "best_metrics": {"pesq/nq8": 2.6}}
    card = model_card(old, "m")
    assert "## Validation metrics (best checkpoint)" in card and "| pesq/nq8 | 2.600 |" in card


def test_cli_errors_and_print_config(tmp_path, capsys, monkeypatch):
    from codec.cli import main

    monkeypatch.setenv("CODEC_DATA", str(tmp_path / "corpus"))

    assert main(["train", str(REPO / "recipes" / "tiny-cpu.yaml"), "train.steps=5", "--print-config"]) == 0
    assert "steps: 5" in capsys.readouterr().out
    assert main(["train", str(REPO / "recipes" / "tiny-cpu.yaml"), "train.nope=1"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    # overrides may also follow options; other unknown tokens stay usage errors
    assert main(["train", str(REPO / "recipes" / "tiny-cpu.yaml"), "--print-config", "train.steps=7",
                 "data.batch_size=3"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "batch_size: 3" in out
    assert main(["train", str(REPO / "recipes" / "tiny-cpu.yaml"), "--print-config", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_generator_losses_do_not_leak_into_discriminator_grads(wavs, tmp_path):
    from codec.train.losses import discriminator_adversarial_loss, sample_mask
    from codec.train.trainer import Trainer

    t = Trainer(_cfg(wavs, tmp_path / "g", "adversarial.start_step=0", "optim.grad_clip=0", "train.steps=1"))
    t.model.eval()  # no quantizer dropout / EMA updates: the two forward passes below are identical
    wav, lengths = next(iter(t._train_loader()))
    grads = {}
    t.opt_d.step = lambda *a, **k: grads.update({n: p.grad.clone() for n, p in t.disc.named_parameters()})
    t.opt_g.step = lambda *a, **k: None
    t.train_step(wav, lengths)
    t.disc.zero_grad()
    with torch.no_grad():
        y = t.model(wav, lengths=lengths).audio[..., : wav.shape[-1]]
    m = sample_mask(lengths, wav.shape[0], wav.shape[-1], wav.device).unsqueeze(1).float()
    rl, _ = t.disc(wav * m)
    fl, _ = t.disc(y * m)
    discriminator_adversarial_loss(rl, fl).backward()
    for n, p in t.disc.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)


def test_padding_in_batch_does_not_change_real_item_loss_through_the_model(wavs, tmp_path):
    """Mel loss of an item through the model (eval mode): alone == padded next to a longer item."""
    from codec.train.trainer import Trainer

    t = Trainer(_cfg(wavs, tmp_path / "p", "train.steps=1"))
    t.model.eval()
    hop = int(t.model.hop_length)
    n = hop * 9
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(1, 1, n, generator=g)
    other = 0.1 * torch.randn(1, 1, n + 7 * hop, generator=g)
    with torch.no_grad():
        alone = t.mel_loss(x, t.model(x, lengths=torch.tensor([n])).audio[..., :n], torch.tensor([n]))
        batch = torch.zeros(2, 1, n + 7 * hop)
        batch[0, :, :n] = x[0]
        batch[1] = other[0]
        lengths = torch.tensor([n, n + 7 * hop])
        y = t.model(batch, lengths=lengths).audio[..., : batch.shape[-1]]
        per_item = t.mel_loss(batch, y, lengths, reduction="none")
    torch.testing.assert_close(per_item[0], alone, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ frozen generator, step 0


def _disc_params(t):
    return {k: v.detach().clone() for k, v in t.disc.state_dict().items()}


def test_step0_validation_is_logged_before_the_first_step(wavs, tmp_path):
    from codec.train.trainer import Trainer

    out = tmp_path / "run"
    Trainer(_cfg(wavs, out, "train.steps=2", "adversarial.enabled=false", "train.valid_interval=2")).fit()
    recs = _metrics(out)
    assert [(r["step"], r["kind"]) for r in recs] == [(0, "valid"), (1, "train"), (2, "train"), (2, "valid")]
    assert np.isfinite(recs[0]["mel/nq1"]) and recs[0]["audio_hours_seen"] == 0.0
    assert not (out / "ckpt_00000000.pt").exists()  # the starting point is logged, not checkpointed


def test_frozen_generator_trains_only_discriminators_then_finetune_loads_them(wavs, tmp_path):
    import codec
    from codec.train.export import export_discriminators, export_run
    from codec.train.trainer import Trainer

    # a "shipped" model trained without discriminators
    base = tmp_path / "base_run"
    Trainer(_cfg(wavs, base, "train.steps=2", "adversarial.enabled=false", "optim.ema=0")).fit()
    shipped = export_run(base, tmp_path / "shipped")
    assert not (shipped / "discriminator.safetensors").exists()
    assert "discriminators: none (trained without them)" in (shipped / "README.md").read_text()

    warm = tmp_path / "warm"
    t = Trainer(_cfg(wavs, warm, "train.steps=3", f"model.init_from={shipped}", "train.freeze_generator=true",
                     "optim.ema=0", "adversarial.start_step=100", "model.overrides.quantizer_dropout=0.5"))
    g0 = {k: v.clone() for k, v in t.model.state_dict().items()}
    d0 = _disc_params(t)
    assert not t.model.training and not any(p.requires_grad for p in t.model.parameters())
    t.fit()
    g1, d1 = t.model.state_dict(), _disc_params(t)
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)  # bit-identical generator
    assert any(not torch.equal(d0[k], d1[k]) for k in d0)  # the discriminators trained (from step 0)
    train = [r for r in _metrics(warm) if r["kind"] == "train"]
    assert len(train) == 3 and all(np.isfinite(r["d_loss"]) and np.isfinite(r["mel"]) for r in train)
    assert not (warm / "best.pt").exists()

    # the warm discriminators go beside the shipped model; the card and training.json say so, without paths
    f = export_discriminators(warm, shipped)
    assert f == shipped / "discriminator.safetensors"
    from codec.audio import current_umask

    assert f.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # readable like any new file, not 0600
    assert sorted(p.name for p in shipped.iterdir() if p.name.startswith(".")) == []  # no temp file left
    card = (shipped / "README.md").read_text()
    assert "## Discriminators" in card and "against the frozen generator of init_from" in card
    info = json.loads((shipped / "training.json").read_text())
    assert info["discriminators"]["steps"] == 3 and info["discriminators"]["frozen_generator"] is True
    for text in (card, (shipped / "training.json").read_text()):
        assert str(tmp_path) not in text and str(wavs) not in text
    # ... and refuse a model that is not the run's generator
    other = export_run(base, tmp_path / "other")
    with torch.no_grad():
        m = codec.load(str(other))
        next(m.parameters()).add_(1.0)
        codec.save_pretrained(m, str(other))
    with pytest.raises(CodecError, match="is not the model in"):
        export_discriminators(warm, other)

    # a fine-tune with init_from starts from them
    ft = Trainer(_cfg(wavs, tmp_path / "ft", "train.steps=1", f"model.init_from={shipped}", "optim.ema=0"))
    assert all(torch.equal(d1[k], v) for k, v in ft.disc.state_dict().items())
    with pytest.raises(CodecError) as ei:
        Trainer(_cfg(wavs, tmp_path / "ft2", f"model.init_from={shipped}", "discriminator.mpd_channels=6"))
    assert str(ei.value) == (f"the discriminators in '{f}' have other sizes than this recipe's discriminator settings: "
                             "use the settings they were trained with (their training.json) or "
                             "model.init_discriminators=false.")


def test_export_of_frozen_run_writes_discriminators_and_records_init_from_and_hours(wavs, tmp_path):
    from codec.train.export import export_run
    from codec.train.trainer import Trainer

    base = tmp_path / "base"
    Trainer(_cfg(wavs, base, "train.steps=1", "adversarial.enabled=false", "optim.ema=0")).fit()
    shipped = export_run(base, tmp_path / "shipped")
    warm = tmp_path / "warm"
    Trainer(_cfg(wavs, warm, "train.steps=1", f"model.init_from={shipped}", "train.freeze_generator=true")).fit()
    out = export_run(warm, tmp_path / "out")
    assert (out / "discriminator.safetensors").is_file()
    card = (out / "README.md").read_text()
    info = json.loads((out / "training.json").read_text())
    assert info["init_from"] == "shipped" and "- initialised from: shipped" in card
    assert info["train_hours"] == 0.0 and info["audio_hours_seen"] > 0  # folder input: no manifest durations
    assert info["discriminators"] == "discriminator.safetensors"
    assert "mel/nq1" in card  # the frozen generator's step-0 validation is its metrics
    for text in (card, (out / "training.json").read_text()):
        assert str(tmp_path) not in text and str(wavs) not in text


def test_freeze_generator_without_discriminators_is_an_error(wavs, tmp_path):
    from codec.train.trainer import Trainer

    with pytest.raises(CodecError) as ei:
        Trainer(_cfg(wavs, tmp_path / "r", "train.freeze_generator=true", "adversarial.enabled=false"))
    assert str(ei.value) == ("train.freeze_generator trains only the discriminators: set adversarial.enabled=true "
                             "and give discriminator.periods or discriminator.stft_windows.")


# ------------------------------------------------------------------------------------------ recipes on a fresh machine


RECIPES = sorted((REPO / "recipes").glob("**/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_recipes_need_codec_data_and_name_no_local_path(recipe, tmp_path, monkeypatch):
    text = recipe.read_text()
    assert "/work/" not in text
    monkeypatch.delenv("CODEC_DATA", raising=False)
    with pytest.raises(CodecError) as ei:
        load_config(recipe)
    train = load_config(recipe, ["data.train=x.jsonl", "data.valid=y.jsonl"])["data"]["train"]
    assert train == "x.jsonl"  # explicit paths need no CODEC_DATA
    assert str(ei.value).startswith("data.train is '${CODEC_DATA}/")
    assert str(ei.value).endswith("but CODEC_DATA is not set: run e.g. 'CODEC_DATA=/path/to/corpus codec train ...' "
                                  "or give data.train=PATH.")
    monkeypatch.setenv("CODEC_DATA", str(tmp_path))
    cfg = load_config(recipe)
    assert cfg["data"]["train"].startswith(str(tmp_path) + "/") and not os.path.isabs(cfg["train"]["out_dir"])


def test_readme_training_commands_parse_with_the_users_paths(tmp_path, monkeypatch):
    """Every `codec train RECIPE ...` line in README.md names an existing recipe and loads with CODEC_DATA set
    (as the README shows it) or with the data paths it gives."""
    import argparse
    import shlex

    from codec.train.cli import add_arguments

    readme = (REPO / "README.md").read_text()
    lines = [l.strip() for l in readme.splitlines() if "codec train recipes/" in l or "codec.train recipes/" in l]
    assert len(lines) >= 5
    for line in lines:
        cmd = line.split("#")[0].strip().strip("`").split("`")[0]
        words = shlex.split(cmd)
        env = [w for w in words if "=" in w and w.split("=")[0].isupper()]
        assert "CODEC_DATA=/path/to/corpus" in env or any(w.startswith("data.train=") for w in words), line
        args = words[next(i for i, w in enumerate(words) if w.startswith("recipes/")):]
        p = argparse.ArgumentParser()
        add_arguments(p)
        ns = p.parse_args(args)
        monkeypatch.setenv("CODEC_DATA", str(tmp_path))
        cfg = load_config(REPO / ns.config, list(ns.overrides))
        assert cfg["data"]["train"]


def test_init_from_grows_mlp_width_and_depth_without_changing_the_output(tmp_path):
    """fourier_mlp 2 -> 3 adds hidden units with zero output weights and decoder_layers 1 -> 2 appends a block at
    layer scale 0.01: the grown model starts from the saved one (exactly for the width), and the new units learn."""
    from codec.config import CodecConfig
    from codec.model import CodecModel
    from codec.pretrained import save_pretrained
    from codec.train.build import build_model

    torch.manual_seed(0)
    cfg = CodecConfig.preset("24khz-fourier", fourier_dim=16, fourier_mlp=2, encoder_layers=1, decoder_layers=1,
                             latent_dim=8, num_quantizers=4, codebook_size=16)
    base = CodecModel(cfg).eval()
    save_pretrained(base, tmp_path / "base")
    x = torch.randn(1, 1, 4800) * 0.1
    with torch.no_grad():
        ref = base(x).audio
    with pytest.warns(UserWarning, match="0 missing / 0 unexpected / 6 grown"):
        wide = build_model({"init_from": str(tmp_path / "base"), "overrides": {"fourier_mlp": 3}}).eval()
    assert wide.decoder.blocks[0].pw1.weight.shape == (48, 16)
    with torch.no_grad():
        assert torch.equal(wide(x).audio, ref)
    deep = build_model({"init_from": str(tmp_path / "base"), "overrides": {"fourier_mlp": 3, "decoder_layers": 2}})
    with torch.no_grad():
        assert (deep.eval()(x).audio - ref).abs().max() < 0.05 * ref.abs().max()
    # the new hidden units get gradients through their (non-zero) activations
    deep.train()
    deep(x).audio.square().mean().backward()
    assert deep.decoder.blocks[0].pw2.weight.grad[:, 32:].abs().sum() > 0
    # fewer blocks than saved: the dropped block's 9 weights are reported, not silently lost
    with pytest.warns(UserWarning, match="0 missing / 9 unexpected / 0 grown"):
        build_model({"init_from": str(tmp_path / "base"), "overrides": {"decoder_layers": 0}})
    with pytest.raises(CodecError, match=r"can only be grown, not shrunk or reshaped\.$"):
        build_model({"init_from": str(tmp_path / "base"), "overrides": {"fourier_mlp": 1}})


def test_refit_quantizer_runs_on_a_fresh_start_only_and_the_residual_loss_is_logged(wavs, tmp_path, capsys):
    from codec.train.trainer import Trainer

    out = tmp_path / "run"
    extra = ("adversarial.enabled=false", "model.refit_quantizer=40", "model.overrides.residual_weight=1.0")
    t = Trainer(_cfg(wavs, out, "train.steps=3", *extra))
    assert "codec.train: quantizer re-fitted on" in capsys.readouterr().err
    rvq = t.model.quantizer
    assert all(abs(float(cb.cluster_size.mean()) - 1.0) < 1e-5 for cb in rvq.codebooks)  # the refit's EMA restart
    for k, v in t.model.state_dict().items():   # the weight EMA starts from the re-fitted weights
        assert torch.equal(t.ema.state_dict()[k], v), k
    t.fit()
    logged = [m for m in _metrics(out) if m["kind"] == "train"]
    assert logged and all(m["residual"] > 0 for m in logged)
    again = Trainer(_cfg(wavs, out, "train.steps=4", "train.resume=auto", *extra))
    assert again.step == 3 and "re-fitted" not in capsys.readouterr().err   # resuming never re-fits
