"""The codec trainer: GAN + reconstruction training of :class:`codec.model.CodecModel`.

Usage::

    from codec.train.config import load_config
    from codec.train.trainer import Trainer
    Trainer(load_config("recipes/tiny-cpu.yaml", ["train.steps=50"])).fit()

Features: random-crop data in worker processes, mask-aware losses, multi-period + multi-scale STFT
discriminators (after ``adversarial.start_step``), AdamW with warm-up and cosine/exponential decay,
gradient clipping, optional weight EMA, bf16 autocast on CUDA, DDP via torchrun (gradients all-reduced
here; the quantizer synchronises its own EMA statistics), atomic checkpoints every N steps and on
exit (SIGINT/SIGTERM save and stop cleanly), exact resume (RNG states + data position), TensorBoard
and ``metrics.jsonl`` logging, validation mel distance / SI-SDR per nq.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import re
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from codec.errors import CodecError

from .config import dump_config
from .data import CropDataset, StepBatchSampler, ValidDataset, collate, read_items, worker_init_fn
from .discriminators import Discriminators
from .losses import (MultiResolutionSTFTLoss, MultiScaleMelLoss, PhaseAwareSTFTLoss, discriminator_adversarial_loss,
                     feature_matching_loss, generator_adversarial_loss, masked_l1, mel_filterbank,
                     sample_mask)

__all__ = ["Trainer", "build_model", "find_latest_checkpoint", "load_checkpoint", "LRSchedule",
           "setup_distributed", "CKPT_PATTERN"]

CKPT_PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def setup_distributed(device_pref: str = "auto") -> Tuple[int, int, int, torch.device]:
    """Initialise torch.distributed from torchrun env vars (RANK, WORLD_SIZE, LOCAL_RANK) when WORLD_SIZE > 1.

    Returns ``(rank, world_size, local_rank, device)``; backend nccl on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise CodecError("train.device is 'cuda' but no CUDA device is available.")
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world, local, device


def build_model(model_cfg: Dict[str, Any]):
    """CodecModel from a ``model`` config section (preset + CodecConfig field overrides, optional init_from)."""
    from codec.config import CodecConfig
    from codec.model import CodecModel

    init_from = model_cfg.get("init_from")
    overrides = dict(model_cfg.get("overrides") or {})
    if init_from:
        from codec import pretrained

        base = pretrained.load(init_from, device="cpu")  # names and paths resolved by codec.pretrained.resolve
        ccfg = base.config if hasattr(base, "config") else base.cfg
        if overrides:
            ccfg = _replace_config(ccfg, overrides)
            model = CodecModel(ccfg)
            missing = model.load_state_dict(base.state_dict(), strict=False)
            if missing.missing_keys or missing.unexpected_keys:
                warnings.warn(f"init_from: {len(missing.missing_keys)} missing / "
                              f"{len(missing.unexpected_keys)} unexpected weights after overrides")
        else:
            model = base
        model.train()
        return model
    try:
        ccfg = CodecConfig.preset(model_cfg.get("preset") or "tiny")
    except (KeyError, ValueError) as exc:
        raise CodecError(f"unknown model preset '{model_cfg.get('preset')}' ({exc}).") from None
    if overrides:
        ccfg = _replace_config(ccfg, overrides)
    return CodecModel(ccfg)


def _replace_config(ccfg, overrides: Dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(ccfg)}
    clean = {}
    for k, v in overrides.items():
        if k not in fields:
            raise CodecError(f"unknown model override '{k}' (not a CodecConfig field).")
        cur = getattr(ccfg, k)
        if isinstance(cur, tuple) and isinstance(v, list):
            v = tuple(v)
        clean[k] = v
    return dataclasses.replace(ccfg, **clean)


def _model_config(model) -> Any:
    return getattr(model, "config", None) or getattr(model, "cfg", None)


class LRSchedule:
    """Linear warm-up to ``lr`` then cosine (to ``min_lr_ratio * lr``), exponential or constant."""

    def __init__(self, lr: float, total_steps: int, warmup: int = 0, decay: str = "cosine",
                 min_ratio: float = 0.05, gamma: float = 0.999996):
        self.lr, self.total, self.warmup = float(lr), max(1, int(total_steps)), int(warmup)
        self.decay, self.min_ratio, self.gamma = decay, float(min_ratio), float(gamma)

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        s = step - self.warmup
        if self.decay == "cosine":
            frac = min(1.0, s / max(1, self.total - self.warmup))
            return self.lr * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
        if self.decay == "exponential":
            return self.lr * self.gamma ** s
        return self.lr

    def state_dict(self) -> Dict[str, Any]:
        return {"lr": self.lr, "total": self.total, "warmup": self.warmup, "decay": self.decay,
                "min_ratio": self.min_ratio, "gamma": self.gamma}


class WeightEMA:
    """Exponential moving average of a model's parameters (buffers are copied), kept on the model device."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average parameters; copy buffers (e.g. EMA codebooks and their statistics) as they are."""
        params = {k for k, _ in model.named_parameters()}
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point and k in params:
                s.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                s.copy_(v)

    def state_dict(self) -> Dict[str, Tensor]:
        return self.shadow

    def load_state_dict(self, sd: Dict[str, Tensor]) -> None:
        for k, v in sd.items():
            if k in self.shadow:
                self.shadow[k].copy_(v)


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    st = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def find_latest_checkpoint(out_dir: Path) -> Optional[Path]:
    """Newest ``ckpt_XXXXXXXX.pt`` in ``out_dir`` (by step), or None."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    best = None
    for f in out_dir.iterdir():
        m = CKPT_PATTERN.match(f.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), f)
    return best[1] if best else None


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load a training checkpoint (``weights_only=True``: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"checkpoint '{path}' does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CodecError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}).") from None


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _local_si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    n = min(len(ref), len(est))
    r, e = ref[:n].astype(np.float64), est[:n].astype(np.float64)
    r, e = r - r.mean(), e - e.mean()
    a = np.dot(e, r) / (np.dot(r, r) + 1e-12)
    t = a * r
    return float(10 * np.log10((np.dot(t, t) + 1e-12) / (np.dot(t - e, t - e) + 1e-12)))


def _metric_fns():
    try:
        from codec.eval.metrics import multiscale_mel_distance, si_sdr
        return si_sdr, multiscale_mel_distance
    except Exception:  # noqa: BLE001 - metrics module not available
        mel = MultiScaleMelLoss(24000)

        def _mel(ref, est, sample_rate):
            m = MultiScaleMelLoss(sample_rate)
            r = torch.as_tensor(ref, dtype=torch.float32)[None, None]
            e = torch.as_tensor(est, dtype=torch.float32)[None, None]
            n = min(r.shape[-1], e.shape[-1])
            return float(m(r[..., :n], e[..., :n]))
        del mel
        return _local_si_sdr, _mel


def _perceptual_metric_fns() -> Dict[str, Any]:
    """``{"pesq": fn, "stoi": fn}`` for validation when the ``eval`` extras (pesq, pystoi) are installed."""
    import importlib.util

    if importlib.util.find_spec("pesq") is None or importlib.util.find_spec("pystoi") is None:
        return {}
    from codec.eval.metrics import pesq_wb, stoi

    def guarded(fn):
        def run(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
            if len(ref) < sample_rate // 4:  # PESQ and STOI need at least 0.25 s: no value for a shorter clip
                return float("nan")
            return float(fn(ref, est, sample_rate))
        return run
    return {"pesq": guarded(pesq_wb), "stoi": guarded(stoi)}


def _spectrogram_image(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[T]`` -> log-mel image ``[1, 80, frames]`` in [0, 1], low frequencies at the bottom."""
    sig = torch.as_tensor(x, dtype=torch.float32)
    win = 1024 if sample_rate > 16000 else 512
    if sig.numel() < win:
        sig = torch.nn.functional.pad(sig, (0, win - sig.numel()))
    spec = torch.stft(sig, win, win // 4, window=torch.hann_window(win), return_complex=True).abs()
    mel = torch.log10(mel_filterbank(sample_rate, win, 80) @ spec + 1e-5)
    mel = (mel - mel.max() + 5.0).clamp_min(0) / 5.0
    return mel.flip(0)[None].numpy()


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------

class Trainer:
    """Train a CodecModel from a config dict (see :mod:`codec.train.config`).

    ``fit()`` runs until ``train.steps`` (or a stop signal / ``train.max_hours``) and returns a summary dict
    (``step``, ``stopped``, ``audio_seconds_per_second``, ``last``: last logged losses, ``best_valid``).
    """

    def __init__(self, cfg: Dict[str, Dict[str, Any]], resume: Optional[str] = None):
        self.cfg = cfg
        tc = cfg["train"]
        self.rank, self.world, self.local_rank, self.device = setup_distributed(str(tc.get("device", "auto")))
        self.is_main = self.rank == 0
        if int(tc.get("threads") or 0) > 0:
            torch.set_num_threads(int(tc["threads"]))
        self.out_dir = Path(tc["out_dir"])
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seed = int(tc["seed"])
        torch.manual_seed(self.seed)
        np.random.seed((self.seed + self.rank) % (2 ** 32))
        random.seed(self.seed + self.rank)

        self.model = build_model(cfg["model"]).to(self.device)
        self.model.train()
        self.sample_rate = int(self.model.sample_rate)
        dc = cfg["discriminator"]
        self.adv_enabled = bool(cfg["adversarial"]["enabled"]) and (bool(dc["periods"]) or bool(dc["stft_windows"]))
        self.disc = Discriminators(dc["periods"], int(dc["mpd_channels"]), dc["stft_windows"],
                                   int(dc["stft_channels"]), int(dc["mpd_max_channels"])
                                   ).to(self.device) if self.adv_enabled else None
        if cfg["model"].get("init_from") and self.disc is not None and cfg["model"].get("init_discriminators", True):
            self._init_disc_from(cfg["model"]["init_from"])
        self._broadcast_parameters()

        lo = cfg["loss"]
        self.mel_loss = MultiScaleMelLoss(self.sample_rate, lo["mel_windows"], lo["mel_bands"]).to(self.device)
        self.stft_loss = MultiResolutionSTFTLoss(lo["stft_windows"]).to(self.device) if lo["stft"] else None
        self.phase_loss = PhaseAwareSTFTLoss(lo["phase_windows"]).to(self.device) \
            if (float(lo["complex"]) or float(lo["phase"])) else None

        oc = cfg["optim"]
        steps = int(oc.get("decay_steps") or tc["steps"])
        self.sched = LRSchedule(float(oc["lr"]), steps, int(oc["warmup_steps"]), oc["decay"],
                                float(oc["min_lr_ratio"]), float(oc["gamma"]))
        self.dsched = LRSchedule(float(oc["disc_lr"] or oc["lr"]), steps, int(oc["warmup_steps"]), oc["decay"],
                                 float(oc["min_lr_ratio"]), float(oc["gamma"]))
        betas = tuple(float(b) for b in oc["betas"])
        self.opt_g = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.sched(0),
                                       betas=betas, weight_decay=float(oc["weight_decay"]))
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=self.dsched(0), betas=betas,
                                       weight_decay=float(oc["weight_decay"])) if self.disc is not None else None
        self.ema = WeightEMA(self.model, float(oc["ema"])) if float(oc["ema"] or 0) > 0 else None
        self.freeze_generator = bool(tc.get("freeze_generator"))
        if self.freeze_generator:
            self._freeze_generator()

        amp = str(tc.get("amp", "auto")).lower()
        self.amp_dtype = torch.bfloat16 if (self.device.type == "cuda" and amp in ("auto", "bf16")) else None

        self.step = 0
        self.best_valid: Optional[float] = None
        self.best_metrics: Dict[str, float] = {}
        self.elapsed = 0.0
        self.audio_seconds = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self._stop_signal: Optional[int] = None
        self.writer = None
        self.last: Dict[str, float] = {}

        dcfg = cfg["data"]
        self.train_items = read_items(dcfg["train"], float(dcfg.get("min_seconds") or 0.0))
        self.valid_items = read_items(dcfg["valid"]) if dcfg.get("valid") else None
        self.train_hours = sum(float(it.get("duration", 0.0) or 0.0) for it in self.train_items) / 3600.0

        resume = resume if resume is not None else tc.get("resume")
        if resume:
            ck = find_latest_checkpoint(self.out_dir) if str(resume) == "auto" else Path(resume)
            if ck is not None:
                self._load(ck)
            elif self.is_main:
                print(f"codec.train: no checkpoint in {self.out_dir}; starting from scratch", file=sys.stderr)

    # -------------------------------------------------------------------------------- distributed
    def _broadcast_parameters(self) -> None:
        if self.world <= 1:
            return
        for mod in (self.model, self.disc):
            if mod is None:
                continue
            for t in list(mod.parameters()) + list(mod.buffers()):
                dist.broadcast(t.data, 0)

    def _allreduce_grads(self, params: List[nn.Parameter]) -> None:
        if self.world <= 1:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n

    def _all_true(self, flag: bool) -> bool:
        if self.world <= 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0.5)

    def _any_true(self, flag: bool) -> bool:
        if self.world <= 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0.5)

    # -------------------------------------------------------------------------------- frozen generator
    def _freeze_generator(self) -> None:
        """``train.freeze_generator``: the generator stays in eval mode (no quantizer dropout or codebook
        updates) without gradients; only the discriminators train (from step 0, whatever adversarial.start_step)."""
        if self.disc is None:
            raise CodecError("train.freeze_generator trains only the discriminators: set adversarial.enabled=true "
                             "and give discriminator.periods or discriminator.stft_windows.")
        self.model.eval()
        self.model.requires_grad_(False)

    def _disc_step(self, wav: Tensor, lengths: Tensor) -> Optional[Dict[str, float]]:
        """One discriminator update against the frozen generator's output of ``wav [B, 1, T]`` (the usual
        discriminator loss; the generator's mel / adversarial / feature-matching losses are logged, not used).
        A batch decodes with a random number of levels with the model's ``quantizer_dropout`` probability, as the
        quantizer does per item in training; None when the loss or gradient is not finite."""
        wav, lengths = wav.to(self.device, non_blocking=True), lengths.to(self.device)
        for g in self.opt_d.param_groups:
            g["lr"] = self.dsched(self.step)
        nq_max = int(self.model.num_quantizers)
        drop = float(getattr(_model_config(self.model), "quantizer_dropout", 0.0) or 0.0)
        n_q = int(torch.randint(1, nq_max + 1, ())) if drop > 0 and float(torch.rand(())) < drop else None
        T = wav.shape[-1]
        smask = sample_mask(lengths, wav.shape[0], T, self.device).unsqueeze(1).to(wav.dtype)
        with torch.no_grad(), self._autocast():
            y = self.model(wav, lengths=lengths, n_q=n_q).audio[..., :T].float()
        y = torch.nn.functional.pad(y, (0, T - y.shape[-1])) * smask
        x = wav * smask
        kind = self.cfg["adversarial"]["loss"]
        with self._autocast():
            real_l, real_f = self.disc(x)
            fake_l, fake_f = self.disc(y)
        d_loss = discriminator_adversarial_loss([r.float() for r in real_l], [f.float() for f in fake_l], kind)
        with torch.no_grad():
            mel = self.mel_loss(wav, y, (lengths - self.model.decoder_delay).clamp_min(0))
            g_adv = generator_adversarial_loss([f.float() for f in fake_l], kind)
            fm = feature_matching_loss([[t.float() for t in r] for r in real_f],
                                       [[t.float() for t in f] for f in fake_f])
        logs = {"d_loss": float(d_loss.detach()), "loss": float(d_loss.detach()), "mel": float(mel),
                "g_adv": float(g_adv), "fm": float(fm), "nq": float(n_q or nq_max)}
        self.opt_d.zero_grad(set_to_none=True)
        if not self._all_true(bool(torch.isfinite(d_loss))):
            return None
        d_loss.backward()
        dparams = [p for p in self.disc.parameters() if p.requires_grad]
        self._allreduce_grads(dparams)
        clip = float(self.cfg["optim"]["grad_clip"] or 0.0)
        gn = torch.nn.utils.clip_grad_norm_(dparams, clip if clip > 0 else float("inf"))
        logs["d_grad_norm"] = float(gn)
        if not self._all_true(bool(torch.isfinite(gn))):
            self.opt_d.zero_grad(set_to_none=True)
            return None
        self.opt_d.step()
        logs["lr"] = self.opt_d.param_groups[0]["lr"]
        return logs

    # -------------------------------------------------------------------------------- checkpoints
    def _init_disc_from(self, init_from: str) -> None:
        from codec import pretrained

        d = pretrained.resolve(init_from)  # the one resolver: names in the pretrained dirs, paths as given
        f = d / "discriminator.safetensors"
        if f.is_file():
            from safetensors.torch import load_file

            try:
                res = self.disc.load_state_dict(load_file(str(f)), strict=False)
            except RuntimeError:  # same names, other sizes
                raise CodecError(f"the discriminators in '{f}' have other sizes than this recipe's discriminator "
                                 "settings: use the settings they were trained with (their training.json) or "
                                 "model.init_discriminators=false.") from None
            if self.is_main:
                print(f"codec.train: discriminators initialised from {f} "
                      f"({len(res.missing_keys)} missing keys)", file=sys.stderr)
        elif self.is_main:
            print(f"codec.train: {d} has no discriminator.safetensors; discriminators start fresh", file=sys.stderr)

    def checkpoint_state(self) -> Dict[str, Any]:
        """Everything needed to resume: weights, optimisers, schedules, EMA, step, RNG, data position."""
        ccfg = _model_config(self.model)
        return {
            "format": "codec-train-ckpt-1",
            "step": self.step,
            "model": self.model.state_dict(),
            "model_config": json.loads(json.dumps(dataclasses.asdict(ccfg))) if ccfg is not None else None,
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "sched_g": self.sched.state_dict(),
            "sched_d": self.dsched.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": _rng_state(),
            "data": {"next_step": self.step, "world": self.world, "batch_size": int(self.cfg["data"]["batch_size"])},
            "best_valid": self.best_valid,
            "best_metrics": self.best_metrics,
            "elapsed": self.elapsed,
            "audio_seconds": self.audio_seconds,
            "train_hours": self.train_hours,
            "nonfinite_total": self.nonfinite_total,
            "config": json.loads(json.dumps(self.cfg)),
        }

    def save_checkpoint(self, best: bool = False) -> Optional[Path]:
        """Write ``ckpt_<step>.pt`` atomically (rank 0), prune to ``keep_last``, and ``best.pt`` when ``best``."""
        if not self.is_main:
            return None
        state = self.checkpoint_state()
        path = self.out_dir / f"ckpt_{self.step:08d}.pt"
        _atomic_torch_save(state, path)
        if best:
            _atomic_torch_save(state, self.out_dir / "best.pt")
        keep = int(self.cfg["train"]["keep_last"])
        ckpts = sorted(f for f in self.out_dir.iterdir() if CKPT_PATTERN.match(f.name))
        for f in ckpts[:-keep] if keep > 0 else []:
            try:
                f.unlink()
            except OSError:
                pass
        return path

    def _load(self, path: Path) -> None:
        st = load_checkpoint(path)
        self.model.load_state_dict(st["model"])
        if self.disc is not None and st.get("disc") is not None:
            self.disc.load_state_dict(st["disc"])
        self.opt_g.load_state_dict(st["opt_g"])
        if self.opt_d is not None and st.get("opt_d") is not None:
            self.opt_d.load_state_dict(st["opt_d"])
        if self.ema is not None and st.get("ema") is not None:
            self.ema.load_state_dict(st["ema"])
        self.step = int(st["step"])
        self.best_valid = st.get("best_valid")
        self.best_metrics = dict(st.get("best_metrics") or {})
        self.elapsed = float(st.get("elapsed", 0.0))
        self.audio_seconds = float(st.get("audio_seconds", 0.0))
        self.nonfinite_total = int(st.get("nonfinite_total", 0))
        self._resume_rng = st["rng"]
        if self.is_main:
            print(f"codec.train: resumed from {path} at step {self.step}", file=sys.stderr)

    # -------------------------------------------------------------------------------- logging
    def _open_writer(self) -> None:
        if not self.is_main or not self.cfg["train"].get("tensorboard", True):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
        except Exception as exc:  # noqa: BLE001 - tensorboard is an optional extra
            warnings.warn(f"TensorBoard logging disabled ({exc}); pip install 'codec[train]'")
            self.writer = None

    def _log_jsonl(self, rec: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")

    # -------------------------------------------------------------------------------- data
    def _train_loader(self) -> DataLoader:
        dc = self.cfg["data"]
        ds = CropDataset(self.train_items, self.sample_rate, float(dc["crop_seconds"]), self.seed,
                         dc.get("rms_db"), float(dc.get("max_gain_db", 20.0)))
        sampler = StepBatchSampler(int(dc["batch_size"]), self.step, self.rank, self.world)
        nw = int(dc["num_workers"])
        kw: Dict[str, Any] = {}
        if nw > 0:
            kw = {"prefetch_factor": int(dc.get("prefetch_factor") or 2), "persistent_workers": False}
        return DataLoader(ds, batch_sampler=sampler, num_workers=nw, collate_fn=collate,
                          worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(self.seed),
                          pin_memory=self.device.type == "cuda", **kw)

    # -------------------------------------------------------------------------------- training step
    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, wav: Tensor, lengths: Tensor) -> Optional[Dict[str, float]]:
        """One optimisation step on ``wav [B, 1, T]`` with ``lengths [B]``; None when skipped (non-finite)."""
        if self.freeze_generator:
            return self._disc_step(wav, lengths)
        lo, adv = self.cfg["loss"], self.cfg["adversarial"]
        wav, lengths = wav.to(self.device, non_blocking=True), lengths.to(self.device)
        for g in self.opt_g.param_groups:
            g["lr"] = self.sched(self.step)
        use_adv = self.disc is not None and self.step >= int(adv["start_step"])
        kind = adv["loss"]
        T = wav.shape[-1]
        smask = sample_mask(lengths, wav.shape[0], T, self.device).unsqueeze(1).to(wav.dtype)

        with self._autocast():
            out = self.model(wav, lengths=lengths)
        y = out.audio[..., :T].float()
        if y.shape[-1] < T:
            y = torch.nn.functional.pad(y, (0, T - y.shape[-1]))
        y_masked = y * smask
        x_masked = wav * smask
        logs: Dict[str, float] = {}

        # --- discriminator update
        d_ok = True
        if use_adv:
            for g in self.opt_d.param_groups:
                g["lr"] = self.dsched(self.step)
            with self._autocast():
                real_l, real_f = self.disc(x_masked)
                fake_l, _ = self.disc(y_masked.detach())
            real_f = [[t.detach() for t in r] for r in real_f]  # reused (detached) for feature matching
            d_loss = discriminator_adversarial_loss([r.float() for r in real_l], [f.float() for f in fake_l], kind)
            d_ok = bool(torch.isfinite(d_loss))
            logs["d_loss"] = float(d_loss.detach())

        # --- generator losses (the decoder's last `delay` samples lack the frames after the crop: not scored)
        rvq = out.rvq
        lengths = (lengths - self.model.decoder_delay).clamp_min(0)
        mel = self.mel_loss(wav, y, lengths)
        total = float(lo["mel"]) * mel
        logs["mel"] = float(mel.detach())
        if self.stft_loss is not None:
            st = self.stft_loss(wav, y, lengths)
            total = total + float(lo["stft"]) * st
            logs["stft"] = float(st.detach())
        if self.phase_loss is not None:
            cx, ph = self.phase_loss(wav, y, lengths)
            total = total + float(lo["complex"]) * cx + float(lo["phase"]) * ph
            logs["complex"], logs["phase"] = float(cx.detach()), float(ph.detach())
        if float(lo["l1"]):
            l1 = masked_l1(wav, y, lengths)
            total = total + float(lo["l1"]) * l1
            logs["l1"] = float(l1.detach())
        commit = rvq.commit_loss.float()
        cb = rvq.codebook_loss.float() if torch.is_tensor(rvq.codebook_loss) else torch.tensor(float(rvq.codebook_loss))
        total = total + float(lo["commitment"]) * commit + float(lo["codebook"]) * cb.to(total.device)
        logs["commit"] = float(commit.detach())
        logs["codebook"] = float(cb.detach())
        if use_adv:
            for p in self.disc.parameters():   # generator losses must not reach the discriminator's grads
                p.requires_grad_(False)
            try:
                with self._autocast():
                    fake_l, fake_f = self.disc(y_masked)
            finally:
                for p in self.disc.parameters():
                    p.requires_grad_(True)
            g_adv = generator_adversarial_loss([f.float() for f in fake_l], kind)
            fm = feature_matching_loss([[t.float() for t in r] for r in real_f], [[t.float() for t in f] for f in fake_f])
            total = total + float(lo["adversarial"]) * g_adv + float(lo["feature_matching"]) * fm
            logs["g_adv"] = float(g_adv.detach())
            logs["fm"] = float(fm.detach())
        logs["loss"] = float(total.detach())

        finite = self._all_true(bool(torch.isfinite(total)) and d_ok)
        if not finite:
            self.opt_g.zero_grad(set_to_none=True)
            if self.opt_d is not None:
                self.opt_d.zero_grad(set_to_none=True)
            return None

        # discriminator backward/step first (its graph does not involve generator parameters)
        clip = float(self.cfg["optim"]["grad_clip"] or 0.0)
        if use_adv:
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            dparams = [p for p in self.disc.parameters() if p.requires_grad]
            self._allreduce_grads(dparams)
            if clip > 0:
                logs["d_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(dparams, clip))
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        gparams = [p for p in self.model.parameters() if p.requires_grad]
        self._allreduce_grads(gparams)
        gn = torch.nn.utils.clip_grad_norm_(gparams, clip if clip > 0 else float("inf"))
        logs["grad_norm"] = float(gn)
        if not self._all_true(bool(torch.isfinite(gn))):
            self.opt_g.zero_grad(set_to_none=True)
            if self.opt_d is not None:
                self.opt_d.zero_grad(set_to_none=True)
            return None
        if use_adv:
            self.opt_d.step()
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.model)

        logs["lr"] = self.opt_g.param_groups[0]["lr"]
        for name in ("usage", "perplexity"):
            v = getattr(rvq, name, None)
            if torch.is_tensor(v) and v.numel():
                logs[f"{name}_per_level"] = [round(float(a), 4) for a in v.detach().float().cpu()]
        return logs

    # -------------------------------------------------------------------------------- validation
    def _valid_nq(self) -> List[int]:
        nqs = self.cfg["train"].get("valid_nq")
        n = int(self.model.num_quantizers)
        if nqs:
            return sorted({min(int(q), n) for q in nqs})
        out, q = [], 1
        while q < n:
            out.append(q)
            q *= 2
        return out + [n]

    def _codebook_stats(self, codes: List[Tensor]) -> Dict[str, float]:
        """Per-level usage (fraction of the codebook used) and perplexity over validation codes ``[nq, T]``."""
        if not codes:
            return {}
        c = torch.cat(codes, dim=-1)
        size = int(getattr(_model_config(self.model), "codebook_size", 0) or int(c.max()) + 1)
        out: Dict[str, float] = {}
        usages = []
        for lvl in range(c.shape[0]):
            v = c[lvl][c[lvl] >= 0]
            if v.numel() == 0:
                continue
            h = torch.bincount(v, minlength=size).double()
            p = h / h.sum()
            ppl = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
            out[f"codebook_usage/level{lvl:02d}"] = float((h > 0).double().mean())
            out[f"codebook_perplexity/level{lvl:02d}"] = ppl
            usages.append(out[f"codebook_usage/level{lvl:02d}"])
        if usages:
            out["codebook_usage/mean"] = float(np.mean(usages))
        return out

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Mel distance and SI-SDR per nq on the validation utterances (rank 0, EMA weights if enabled).

        Does not touch the global RNG streams (so validation never changes a resumed run)."""
        if not self.valid_items or not self.is_main:
            return {}
        si_sdr, mel_dist = _metric_fns()
        perceptual = _perceptual_metric_fns()
        dc = self.cfg["data"]
        ds = ValidDataset(self.valid_items, self.sample_rate, int(dc["valid_items"]),
                          float(dc["valid_max_seconds"]), dc.get("rms_db"), float(dc.get("max_gain_db", 20.0)))
        model = self.model
        backup = None
        if self.ema is not None:
            backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(self.ema.state_dict())
        was_training = model.training
        model.eval()
        nqs = self._valid_nq()
        res: Dict[str, List[float]] = {}
        samples = []
        all_codes: List[Tensor] = []
        with torch.random.fork_rng(devices=[]):
            np_state = np.random.get_state()
            for i in range(len(ds)):
                x, n = ds[i]
                wav = torch.from_numpy(x)[None].to(self.device)
                for q in nqs:
                    with self._autocast():
                        codes = model.encode(wav, nq=q)
                        y = model.decode(codes)
                    if q == nqs[-1]:
                        all_codes.append(codes[0].cpu())
                    y = y[0, 0, :n].float().cpu().numpy()
                    res.setdefault(f"mel/nq{q}", []).append(float(mel_dist(x[0], y, self.sample_rate)))
                    res.setdefault(f"si_sdr/nq{q}", []).append(float(si_sdr(x[0], y)))
                    for name, fn in perceptual.items():
                        v = float(fn(x[0], y, self.sample_rate))
                        if np.isfinite(v):
                            res.setdefault(f"{name}/nq{q}", []).append(v)
                    if i < int(self.cfg["train"].get("audio_samples", 2)) and q == nqs[-1]:
                        samples.append((i, x[0], y))
            np.random.set_state(np_state)
        if backup is not None:
            model.load_state_dict(backup)
        if was_training:
            model.train()
        metrics = {k: float(np.mean(v)) for k, v in res.items()}
        metrics["valid_loss"] = metrics[f"mel/nq{nqs[-1]}"]
        metrics.update(self._codebook_stats(all_codes))
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"valid/{k}", v, self.step)
            for i, ref, est in samples:
                self.writer.add_audio(f"audio/{i}_decoded", torch.from_numpy(est)[None], self.step, self.sample_rate)
                self.writer.add_image(f"spec/{i}_decoded", _spectrogram_image(est, self.sample_rate), self.step)
                if self.step == 0 or not getattr(self, "_ref_logged", False):
                    self.writer.add_audio(f"audio/{i}_reference", torch.from_numpy(ref)[None], self.step,
                                          self.sample_rate)
                    self.writer.add_image(f"spec/{i}_reference", _spectrogram_image(ref, self.sample_rate), self.step)
            self._ref_logged = True
        return metrics

    def _validate_at_start(self) -> Dict[str, float]:
        """Validation before the first step (logged as step 0): the starting point, e.g. the init_from model.
        Not a best checkpoint candidate: ``best.pt`` only ever holds trained weights."""
        m = self.validate()
        if self.is_main and m:
            if self.freeze_generator:  # the generator's metrics stay these: the card reports them
                self.best_metrics = dict(m)
            self._log_jsonl({"step": 0, "kind": "valid", "train_seconds": 0.0, "cpu_hours": 0.0,
                             "audio_hours_seen": 0.0, **m})
            print(f"codec.train: step 0: valid mel {m['valid_loss']:.3f}", file=sys.stderr)
        return m

    # -------------------------------------------------------------------------------- main loop
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.is_main:
            print(f"\ncodec.train: received signal {signum}; saving a checkpoint and stopping", file=sys.stderr)

    def fit(self) -> Dict[str, Any]:
        """Train until ``train.steps``; returns a summary dict."""
        tc = self.cfg["train"]
        total_steps = int(tc["steps"])
        if self.is_main:
            (self.out_dir / "config.yaml").write_text(dump_config(self.cfg))
        self._open_writer()
        loader = self._train_loader()
        it = iter(loader)  # created before restoring RNG: exact resume
        if getattr(self, "_resume_rng", None) is not None:
            _set_rng_state(self._resume_rng)
            self._resume_rng = None
        old = {}
        import threading
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if s is None or (s == getattr(signal, "SIGHUP", None) and signal.getsignal(s) is signal.SIG_IGN):
                    continue  # nohup: an ignored SIGHUP stays ignored
                old[s] = signal.signal(s, self._on_signal)
        pbar = None
        if self.is_main and tc.get("progress", True):
            from tqdm import tqdm

            pbar = tqdm(total=total_steps, initial=self.step, dynamic_ncols=True, desc="train", file=sys.stderr)
        log_int = max(1, int(tc["log_interval"]))
        valid_int, ckpt_int = int(tc["valid_interval"]), int(tc["ckpt_interval"])
        max_nonfinite = int(tc["max_nonfinite"])
        max_s = float(tc.get("max_hours") or 0.0) * 3600.0
        acc: Dict[str, float] = {}
        acc_n, win_audio, win_time = 0, 0.0, 0.0
        throughput = 0.0
        stopped = None
        session_start = time.time()
        saved_at = -1
        if self.step == 0 and self.valid_items:
            self._validate_at_start()
        try:
            while self.step < total_steps:
                t0 = time.perf_counter()
                wav, lengths = next(it)
                logs = self.train_step(wav, lengths)
                dt = time.perf_counter() - t0
                if logs is None:
                    self.nonfinite_in_row += 1
                    self.nonfinite_total += 1
                    warnings.warn(f"non-finite loss at step {self.step}; step skipped "
                                  f"({self.nonfinite_in_row} in a row)")
                    if self.nonfinite_in_row >= max_nonfinite:
                        raise CodecError(f"training diverged: {self.nonfinite_in_row} non-finite losses in a row "
                                         f"at step {self.step} (lower optim.lr or check the data).")
                    self.step += 1
                    continue
                self.nonfinite_in_row = 0
                self.step += 1
                audio_s = float(lengths.sum()) * self.world / self.sample_rate
                self.audio_seconds += audio_s
                self.elapsed += dt
                win_audio += audio_s
                win_time += dt
                for k, v in logs.items():
                    if isinstance(v, float):
                        acc[k] = acc.get(k, 0.0) + v
                acc_n += 1
                if pbar is not None:
                    pbar.update(1)
                if self.step % log_int == 0 or self.step == total_steps:
                    throughput = win_audio / max(win_time, 1e-9)
                    avg = {k: v / acc_n for k, v in acc.items()}
                    self.last = dict(avg)
                    self.last["audio_s_per_s"] = throughput
                    for name in ("usage_per_level", "perplexity_per_level"):
                        if name in logs:
                            self.last[name] = logs[name]
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{avg['loss']:.3f}", mel=f"{avg['mel']:.3f}",
                                         aps=f"{throughput:.1f}")
                    if self.writer is not None:
                        for k, v in avg.items():
                            self.writer.add_scalar(f"train/{k}", v, self.step)
                        self.writer.add_scalar("train/audio_seconds_per_second", throughput, self.step)
                        for name in ("usage_per_level", "perplexity_per_level"):
                            for lvl, v in enumerate(logs.get(name, [])):
                                self.writer.add_scalar(f"codebook/{name.split('_')[0]}/level{lvl:02d}", v, self.step)
                    self._log_jsonl({"step": self.step, "kind": "train", **self.last})
                    acc, acc_n, win_audio, win_time = {}, 0, 0.0, 0.0
                final = self.step >= total_steps
                stop = self._any_true(self._stop_signal is not None)
                if max_s > 0 and time.time() - session_start > max_s:
                    stop = self._any_true(True)
                do_valid = self.valid_items and ((valid_int > 0 and self.step % valid_int == 0) or final)
                is_best = False
                if do_valid and not stop:
                    m = self.validate()
                    if self.is_main and m:
                        is_best = not self.freeze_generator and (  # a frozen generator has no best checkpoint
                            self.best_valid is None or m["valid_loss"] < self.best_valid)
                        if is_best:
                            self.best_valid = m["valid_loss"]
                            self.best_metrics = dict(m)
                        cpu_h = self.elapsed * self.world * torch.get_num_threads() / 3600.0
                        self._log_jsonl({"step": self.step, "kind": "valid", "train_seconds": self.elapsed,
                                         "cpu_hours": cpu_h, "audio_hours_seen": self.audio_seconds / 3600.0, **m})
                        if pbar is not None:
                            pbar.write(f"step {self.step}: valid mel {m['valid_loss']:.3f} "
                                       f"si-sdr {m.get(f'si_sdr/nq{self._valid_nq()[-1]}', float('nan')):.2f} dB")
                if (ckpt_int > 0 and self.step % ckpt_int == 0) or final or stop or is_best:
                    self.save_checkpoint(best=is_best)
                    saved_at = self.step
                if stop:
                    stopped = "signal" if self._stop_signal is not None else "max_hours"
                    break
        except KeyboardInterrupt:
            stopped = "interrupt"
            if saved_at != self.step:
                self.save_checkpoint()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if pbar is not None:
                pbar.close()
            if self.writer is not None:
                self.writer.flush()
                self.writer.close()
            del it
        if self.world > 1:
            dist.barrier()
        summary = {"step": self.step, "stopped": stopped, "audio_seconds_per_second": throughput,
                   "last": self.last, "best_valid": self.best_valid, "best_metrics": self.best_metrics,
                   "out_dir": str(self.out_dir)}
        if self.is_main:
            print(f"codec.train: step {self.step}, {throughput:.2f} audio s/s, "
                  f"checkpoints in {self.out_dir}" + (f" (stopped: {stopped})" if stopped else ""), file=sys.stderr)
        return summary
