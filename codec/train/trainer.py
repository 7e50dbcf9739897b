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

The parts live in their own modules: :mod:`.build` (the model), :mod:`.optim` (optimisers, schedules, EMA),
:mod:`.checkpoint` (checkpoint files, RNG states), :mod:`.ddp` (torch.distributed helpers) and
:mod:`.validation` (metrics).  The config is read as given: :func:`codec.train.config.load_config` has filled
every key with its default (:data:`codec.train.config.DEFAULTS`).
"""
from __future__ import annotations

import dataclasses
import json
import random
import signal
import sys
import threading
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from codec.errors import CodecError
from codec.quantization import draw_level_counts

from . import ddp
from .build import build_model
from .checkpoint import (CKPT_PATTERN, find_latest_checkpoint, load_checkpoint, rng_state, set_rng_state,
                         write_checkpoint)
from .config import dump_config
from .data import CropDataset, StepBatchSampler, ValidDataset, collate, read_items, worker_init_fn
from .ddp import setup_distributed
from .discriminators import Discriminators
from .losses import (MultiResolutionSTFTLoss, MultiScaleMelLoss, PhaseAwareSTFTLoss, discriminator_adversarial_loss,
                     feature_matching_loss, generator_adversarial_loss, masked_l1, sample_mask)
from .optim import LRSchedule, build_optimizers
from .validation import (check_best_metric, evaluate_items, perceptual_metric_fns, selection_score,
                         spectrogram_image, valid_nq)

__all__ = ["Trainer", "build_model", "find_latest_checkpoint", "load_checkpoint", "LRSchedule",
           "setup_distributed", "CKPT_PATTERN"]


@dataclasses.dataclass
class _Window:
    """Losses and throughput accumulated since the last log line."""

    sums: Dict[str, float] = dataclasses.field(default_factory=dict)
    steps: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0

    def add(self, logs: Dict[str, Any], audio_s: float, wall_s: float) -> None:
        for k, v in logs.items():
            if isinstance(v, float):
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.audio_s += audio_s
        self.wall_s += wall_s

    def means(self) -> Dict[str, float]:
        return {k: v / max(1, self.steps) for k, v in self.sums.items()}

    def throughput(self) -> float:
        return self.audio_s / max(self.wall_s, 1e-9)


@dataclasses.dataclass
class _Run:
    """State of one ``fit`` call: the batch iterator, the progress bar and how the run ended."""

    batches: Any
    pbar: Any = None
    window: _Window = dataclasses.field(default_factory=_Window)
    throughput: float = 0.0
    stopped: Optional[str] = None
    saved_at: int = -1
    start: float = dataclasses.field(default_factory=time.time)


class Trainer:
    """Train a CodecModel from a config dict (see :mod:`codec.train.config`).

    ``fit()`` runs until ``train.steps`` (or a stop signal / ``train.max_hours``) and returns a summary dict
    (``step``, ``stopped``, ``audio_seconds_per_second``, ``last``: last logged losses, ``best_valid``: the best
    score of ``train.best_metric``, negated where higher is better).
    """

    def __init__(self, cfg: Dict[str, Dict[str, Any]], resume: Optional[str] = None):
        self.cfg = cfg
        tc = cfg["train"]
        self.rank, self.world, self.local_rank, self.device = setup_distributed(str(tc["device"]))
        self.is_main = self.rank == 0
        if int(tc["threads"] or 0) > 0:
            torch.set_num_threads(int(tc["threads"]))
        self.out_dir = Path(tc["out_dir"])
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._seed_everything(int(tc["seed"]))
        self._build_networks()
        self._build_losses()
        self.opt_g, self.opt_d, self.sched, self.dsched, self.ema = build_optimizers(
            cfg["optim"], int(tc["steps"]), self.model, self.disc)
        self.freeze_generator = bool(tc["freeze_generator"])
        if self.freeze_generator:
            self._freeze_generator()
        amp = str(tc["amp"]).lower()
        self.amp_dtype = torch.bfloat16 if (self.device.type == "cuda" and amp in ("auto", "bf16")) else None
        self._reset_counters()
        self._read_items()
        if self.valid_items:  # every rank checks, so a bad name stops them all before a step
            check_best_metric(tc["best_metric"], self._valid_nq(), bool(perceptual_metric_fns()))
        self._maybe_resume(resume if resume is not None else tc["resume"])

    # -------------------------------------------------------------------------------- setup
    def _seed_everything(self, seed: int) -> None:
        self.seed = seed
        torch.manual_seed(seed)
        np.random.seed((seed + self.rank) % (2 ** 32))
        random.seed(seed + self.rank)

    def _build_networks(self) -> None:
        cfg = self.cfg
        self.model = build_model(cfg["model"]).to(self.device)
        self.model.train()
        self.sample_rate = int(self.model.sample_rate)
        dc = cfg["discriminator"]
        self.adv_enabled = bool(cfg["adversarial"]["enabled"]) and (bool(dc["periods"]) or bool(dc["stft_windows"]))
        self.disc = Discriminators(dc["periods"], int(dc["mpd_channels"]), dc["stft_windows"],
                                   int(dc["stft_channels"]), int(dc["mpd_max_channels"])
                                   ).to(self.device) if self.adv_enabled else None
        mc = cfg["model"]
        if mc["init_from"] and self.disc is not None and mc["init_discriminators"]:
            self._init_disc_from(mc["init_from"])
        ddp.broadcast_parameters([self.model, self.disc])

    def _build_losses(self) -> None:
        lo = self.cfg["loss"]
        self.mel_loss = MultiScaleMelLoss(self.sample_rate, lo["mel_windows"], lo["mel_bands"]).to(self.device)
        self.stft_loss = MultiResolutionSTFTLoss(lo["stft_windows"]).to(self.device) if lo["stft"] else None
        self.phase_loss = PhaseAwareSTFTLoss(lo["phase_windows"]).to(self.device) \
            if (float(lo["complex"]) or float(lo["phase"])) else None

    def _reset_counters(self) -> None:
        self.step = 0
        self.best_valid: Optional[float] = None
        self.best_metrics: Dict[str, float] = {}
        self.best_step: Optional[int] = None
        # the latest validation: {"step": ..., "metrics": {...}}; an export names it beside the weights it scored
        self.last_valid: Dict[str, Any] = {}
        self.elapsed = 0.0
        self.audio_seconds = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self._stop_signal: Optional[int] = None
        self._resume_rng: Optional[Dict[str, Any]] = None
        self._ref_logged = False
        self.writer = None
        self.last: Dict[str, float] = {}

    def _read_items(self) -> None:
        dcfg = self.cfg["data"]
        self.train_items = read_items(dcfg["train"], float(dcfg["min_seconds"] or 0.0))
        self.valid_items = read_items(dcfg["valid"]) if dcfg["valid"] else None
        self.train_hours = sum(float(it.get("duration", 0.0) or 0.0) for it in self.train_items) / 3600.0

    def _maybe_resume(self, resume: Optional[str]) -> None:
        if resume:
            ck = find_latest_checkpoint(self.out_dir) if str(resume) == "auto" else Path(resume)
            if ck is not None:
                self._load(ck)
                return
            if self.is_main:
                print(f"codec.train: no checkpoint in {self.out_dir}; starting from scratch", file=sys.stderr)
        self._refit_quantizer(int(self.cfg["model"]["refit_quantizer"] or 0))

    def _refit_quantizer(self, crops: int) -> None:
        """``model.refit_quantizer`` on a fresh start: every quantizer level is fitted again (codebook by k-means,
        output projection by least squares: :meth:`ResidualVQ.init_codebooks_from_data`) on the latents of
        ``crops`` training crops (rank 0's decide; EMA counts restart at one use per code), and the weight EMA
        starts from the result."""
        if crops <= 0:
            return
        ds = self._crop_dataset(self.seed + 1)
        hop = self.model.hop_length
        lat, lens = [], []
        with torch.no_grad():
            for s in range(0, crops, 32):
                got = [ds[k] for k in range(s, min(crops, s + 32))]
                lat.append(self.model.encoder(torch.from_numpy(np.stack([g[0] for g in got])).to(self.device)))
                lens += [-(-g[1] // hop) for g in got]
        errors = self.model.quantizer.init_codebooks_from_data(torch.cat(lat), torch.tensor(lens, device=self.device),
                                                               ema_count=1.0)
        if self.is_main:
            shown = ", ".join(f"nq {n}: {float(errors[n - 1]):.3f}" for n in (1, 2, 4, 8, 16, 32) if n <= len(errors))
            print(f"codec.train: quantizer re-fitted on {sum(lens)} frames of {crops} crops; relative latent error "
                  f"{shown}", file=sys.stderr)
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())

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
        return {
            "format": "codec-train-ckpt-1",
            "step": self.step,
            "model": self.model.state_dict(),
            "model_config": json.loads(json.dumps(dataclasses.asdict(self.model.config))),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "sched_g": self.sched.state_dict(),
            "sched_d": self.dsched.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(),
            "data": {"next_step": self.step, "world": self.world, "batch_size": int(self.cfg["data"]["batch_size"])},
            "best_valid": self.best_valid,
            "best_metric": self.cfg["train"]["best_metric"],
            "best_metrics": self.best_metrics,
            "best_step": self.best_step,
            "last_valid": self.last_valid,
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
        return write_checkpoint(self.checkpoint_state(), self.out_dir, self.step,
                                int(self.cfg["train"]["keep_last"]), best)

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
        same = st.get("best_metric", "valid_loss") == self.cfg["train"]["best_metric"]
        self.best_valid = st.get("best_valid") if same else None  # another criterion: the next validation is best
        self.best_metrics = dict(st.get("best_metrics") or {})
        self.best_step = st.get("best_step")
        self.last_valid = dict(st.get("last_valid") or {})
        self.elapsed = float(st.get("elapsed", 0.0))
        self.audio_seconds = float(st.get("audio_seconds", 0.0))
        self.nonfinite_total = int(st.get("nonfinite_total", 0))
        self._resume_rng = st["rng"]
        if self.is_main:
            print(f"codec.train: resumed from {path} at step {self.step}", file=sys.stderr)

    # -------------------------------------------------------------------------------- logging
    def _open_writer(self) -> None:
        if not self.is_main or not self.cfg["train"]["tensorboard"]:
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
    def _crop_dataset(self, seed: int) -> CropDataset:
        """The training crops (``data`` section: crop length, level range, gain, speed) drawn with ``seed``."""
        dc = self.cfg["data"]
        return CropDataset(self.train_items, self.sample_rate, float(dc["crop_seconds"]), seed,
                           dc["rms_db"], float(dc["max_gain_db"]), dc["speed"])

    def _train_loader(self) -> DataLoader:
        dc = self.cfg["data"]
        ds = self._crop_dataset(self.seed)
        sampler = StepBatchSampler(int(dc["batch_size"]), self.step, self.rank, self.world)
        nw = int(dc["num_workers"])
        kw: Dict[str, Any] = {}
        if nw > 0:
            kw = {"prefetch_factor": int(dc["prefetch_factor"] or 2), "persistent_workers": False}
        return DataLoader(ds, batch_sampler=sampler, num_workers=nw, collate_fn=collate,
                          worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(self.seed),
                          pin_memory=self.device.type == "cuda", **kw)

    # -------------------------------------------------------------------------------- training step
    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _adversarial_active(self) -> bool:
        """Whether this step trains with the discriminators (present and past ``adversarial.start_step``)."""
        return self.disc is not None and self.step >= int(self.cfg["adversarial"]["start_step"])

    def _zero_grads(self) -> None:
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)

    def train_step(self, wav: Tensor, lengths: Tensor) -> Optional[Dict[str, float]]:
        """One optimisation step on ``wav [B, 1, T]`` with ``lengths [B]``; None when skipped (non-finite)."""
        if self.freeze_generator:
            return self._disc_step(wav, lengths)
        wav, lengths = wav.to(self.device, non_blocking=True), lengths.to(self.device)
        self.sched.apply(self.opt_g, self.step)
        use_adv = self._adversarial_active()
        out, y, x_masked, y_masked = self._generate(wav, lengths)
        logs: Dict[str, float] = {}
        d_loss, real_f = self._discriminator_loss(x_masked, y_masked, logs) if use_adv else (None, None)
        total = self._reconstruction_loss(wav, y, lengths, out.rvq, logs)
        if use_adv:
            total = total + self._generator_adversarial_loss(y_masked, real_f, logs)
        logs["loss"] = float(total.detach())
        d_ok = d_loss is None or bool(torch.isfinite(d_loss))
        if not ddp.all_true(bool(torch.isfinite(total)) and d_ok, self.device):
            self._zero_grads()
            return None
        if not self._backward_and_step(total, d_loss, logs):
            return None
        logs["lr"] = self.opt_g.param_groups[0]["lr"]
        logs.update(self._codebook_logs(out.rvq))
        return logs

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
        discriminator loss; the generator's mel loss is logged, not used).  A batch decodes with a random number
        of levels with the model's ``quantizer_dropout`` probability, as the quantizer does per item in training;
        None when the loss or gradient is not finite."""
        wav, lengths = wav.to(self.device, non_blocking=True), lengths.to(self.device)
        nq_max = int(self.model.num_quantizers)
        drop = float(self.model.config.quantizer_dropout or 0.0)
        n_q = (int(draw_level_counts(1, 1, nq_max, self.model.config.quantizer_dropout_exponent))
               if drop > 0 and float(torch.rand(())) < drop else None)
        T = wav.shape[-1]
        smask = sample_mask(lengths, wav.shape[0], T, self.device).unsqueeze(1).to(wav.dtype)
        with torch.no_grad(), self._autocast():
            y = self.model(wav, lengths=lengths, n_q=n_q).audio[..., :T].float()
        y = torch.nn.functional.pad(y, (0, T - y.shape[-1])) * smask
        logs: Dict[str, float] = {"nq": float(n_q or nq_max)}
        d_loss, _ = self._discriminator_loss(wav * smask, y, logs)
        with torch.no_grad():
            logs["mel"] = float(self.mel_loss(wav, y, (lengths - self.model.decoder_delay).clamp_min(0)))
        logs["loss"] = logs["d_loss"]
        if not ddp.all_true(bool(torch.isfinite(d_loss)), self.device):
            self._zero_grads()
            return None
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        dparams = [p for p in self.disc.parameters() if p.requires_grad]
        ddp.allreduce_grads(dparams)
        clip = float(self.cfg["optim"]["grad_clip"] or 0.0)
        gn = torch.nn.utils.clip_grad_norm_(dparams, clip if clip > 0 else float("inf"))
        logs["d_grad_norm"] = float(gn)
        if not ddp.all_true(bool(torch.isfinite(gn)), self.device):
            self._zero_grads()
            return None
        self.opt_d.step()
        logs["lr"] = self.opt_d.param_groups[0]["lr"]
        return logs

    def _generate(self, wav: Tensor, lengths: Tensor):
        """Model forward -> (output, decoded ``y [B, 1, T]``, masked input, masked decoded audio)."""
        T = wav.shape[-1]
        smask = sample_mask(lengths, wav.shape[0], T, self.device).unsqueeze(1).to(wav.dtype)
        with self._autocast():
            out = self.model(wav, lengths=lengths)
        y = out.audio[..., :T].float()
        if y.shape[-1] < T:
            y = torch.nn.functional.pad(y, (0, T - y.shape[-1]))
        return out, y, wav * smask, y * smask

    def _discriminator_loss(self, x_masked: Tensor, y_masked: Tensor, logs: Dict[str, float]):
        """Discriminator loss on real / detached fake audio -> (d_loss, detached real features)."""
        self.dsched.apply(self.opt_d, self.step)
        with self._autocast():
            real_l, real_f = self.disc(x_masked)
            fake_l, _ = self.disc(y_masked.detach())
        real_f = [[t.detach() for t in r] for r in real_f]  # reused (detached) for feature matching
        d_loss = discriminator_adversarial_loss([r.float() for r in real_l], [f.float() for f in fake_l],
                                                self.cfg["adversarial"]["loss"])
        logs["d_loss"] = float(d_loss.detach())
        return d_loss, real_f

    def _reconstruction_loss(self, wav: Tensor, y: Tensor, lengths: Tensor, rvq, logs: Dict[str, float]) -> Tensor:
        """Weighted mel (+ STFT, phase, L1) and quantizer losses.  The decoder's last ``delay`` samples lack the
        frames after the crop: they are not scored."""
        lo = self.cfg["loss"]
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
        commit, cb = rvq.commit_loss.float(), rvq.codebook_loss.float()
        logs["commit"], logs["codebook"] = float(commit.detach()), float(cb.detach())
        total = total + float(lo["commitment"]) * commit + float(lo["codebook"]) * cb.to(total.device)
        if rvq.residual_loss is not None and self.model.quantizer.residual_weight > 0:
            logs["residual"] = float(rvq.residual_loss.detach())  # weighted inside the quantizer
            total = total + rvq.residual_loss.float().to(total.device)
        return total

    def _generator_adversarial_loss(self, y_masked: Tensor, real_f, logs: Dict[str, float]) -> Tensor:
        """Weighted adversarial + feature-matching loss of the generator (discriminator weights frozen)."""
        lo = self.cfg["loss"]
        for p in self.disc.parameters():   # generator losses must not reach the discriminator's grads
            p.requires_grad_(False)
        try:
            with self._autocast():
                fake_l, fake_f = self.disc(y_masked)
        finally:
            for p in self.disc.parameters():
                p.requires_grad_(True)
        g_adv = generator_adversarial_loss([f.float() for f in fake_l], self.cfg["adversarial"]["loss"])
        fm = feature_matching_loss([[t.float() for t in r] for r in real_f], [[t.float() for t in f] for f in fake_f])
        logs["g_adv"], logs["fm"] = float(g_adv.detach()), float(fm.detach())
        return float(lo["adversarial"]) * g_adv + float(lo["feature_matching"]) * fm

    def _backward_and_step(self, total: Tensor, d_loss: Optional[Tensor], logs: Dict[str, float]) -> bool:
        """Backward, all-reduce, clip and step (discriminator first: its graph has no generator parameters);
        False (nothing stepped) when the generator's gradient norm is not finite on some rank."""
        clip = float(self.cfg["optim"]["grad_clip"] or 0.0)
        if d_loss is not None:
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            dparams = [p for p in self.disc.parameters() if p.requires_grad]
            ddp.allreduce_grads(dparams)
            if clip > 0:
                logs["d_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(dparams, clip))
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        gparams = [p for p in self.model.parameters() if p.requires_grad]
        ddp.allreduce_grads(gparams)
        gn = torch.nn.utils.clip_grad_norm_(gparams, clip if clip > 0 else float("inf"))
        logs["grad_norm"] = float(gn)
        if not ddp.all_true(bool(torch.isfinite(gn)), self.device):
            self._zero_grads()
            return False
        if d_loss is not None:
            self.opt_d.step()
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return True

    @staticmethod
    def _codebook_logs(rvq) -> Dict[str, List[float]]:
        return {f"{name}_per_level": [round(float(a), 4) for a in getattr(rvq, name).detach().float().cpu()]
                for name in ("usage", "perplexity") if getattr(rvq, name).numel()}

    # -------------------------------------------------------------------------------- validation
    def _valid_nq(self) -> List[int]:
        return valid_nq(self.cfg["train"]["valid_nq"], self.model.num_quantizers)

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Mel distance and SI-SDR per nq on the validation utterances (rank 0, EMA weights if enabled).

        Does not touch the global RNG streams (so validation never changes a resumed run)."""
        if not self.valid_items or not self.is_main:
            return {}
        dc = self.cfg["data"]
        ds = ValidDataset(self.valid_items, self.sample_rate, int(dc["valid_items"]),
                          float(dc["valid_max_seconds"]), dc["valid_rms_db"], float(dc["max_gain_db"]))
        model = self.model
        backup = None
        if self.ema is not None:
            backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(self.ema.state_dict())
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            np_state = np.random.get_state()
            metrics, samples = evaluate_items(model, ds, self._valid_nq(), self.device, self._autocast,
                                              int(self.cfg["train"]["audio_samples"]))
            np.random.set_state(np_state)
        if backup is not None:
            model.load_state_dict(backup)
        if was_training:
            model.train()
        self._write_valid(metrics, samples)
        return metrics

    def _write_valid(self, metrics: Dict[str, float], samples) -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(f"valid/{k}", v, self.step)
        for i, ref, est in samples:
            self.writer.add_audio(f"audio/{i}_decoded", torch.from_numpy(est)[None], self.step, self.sample_rate)
            self.writer.add_image(f"spec/{i}_decoded", spectrogram_image(est, self.sample_rate), self.step)
            if self.step == 0 or not self._ref_logged:
                self.writer.add_audio(f"audio/{i}_reference", torch.from_numpy(ref)[None], self.step,
                                      self.sample_rate)
                self.writer.add_image(f"spec/{i}_reference", spectrogram_image(ref, self.sample_rate), self.step)
        self._ref_logged = True

    # -------------------------------------------------------------------------------- main loop
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.is_main:
            print(f"\ncodec.train: received signal {signum}; saving a checkpoint and stopping", file=sys.stderr)

    def _install_signal_handlers(self, stack: ExitStack) -> None:
        """SIGINT / SIGTERM / SIGHUP save a checkpoint and stop (main thread only; an ignored SIGHUP stays
        ignored, as under nohup); the old handlers come back when ``stack`` closes."""
        if threading.current_thread() is not threading.main_thread():
            return
        hup = getattr(signal, "SIGHUP", None)
        for s in (signal.SIGINT, signal.SIGTERM, hup):
            if s is None or (s == hup and signal.getsignal(s) is signal.SIG_IGN):
                continue
            stack.callback(signal.signal, s, signal.signal(s, self._on_signal))

    def _start_run(self, stack: ExitStack) -> _Run:
        """Write config.yaml, open the writer and the data, restore resumed RNG states, install handlers."""
        if self.is_main:
            (self.out_dir / "config.yaml").write_text(dump_config(self.cfg))
        self._open_writer()
        batches = iter(self._train_loader())  # created before restoring RNG: exact resume
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        self._install_signal_handlers(stack)
        run = _Run(batches=batches)
        if self.is_main and self.cfg["train"]["progress"]:
            from tqdm import tqdm

            run.pbar = tqdm(total=int(self.cfg["train"]["steps"]), initial=self.step, dynamic_ncols=True,
                            desc="train", file=sys.stderr)
            stack.callback(run.pbar.close)
        return run

    def _skip_nonfinite(self) -> None:
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        warnings.warn(f"non-finite loss at step {self.step}; step skipped ({self.nonfinite_in_row} in a row)")
        if self.nonfinite_in_row >= int(self.cfg["train"]["max_nonfinite"]):
            raise CodecError(f"training diverged: {self.nonfinite_in_row} non-finite losses in a row "
                             f"at step {self.step} (lower optim.lr or check the data).")
        self.step += 1

    def _one_step(self, run: _Run) -> Optional[Dict[str, Any]]:
        """Train on the next batch; updates counters -> the step's logs (None: skipped as non-finite)."""
        t0 = time.perf_counter()
        wav, lengths = next(run.batches)
        logs = self.train_step(wav, lengths)
        dt = time.perf_counter() - t0
        if logs is None:
            self._skip_nonfinite()
            return None
        self.nonfinite_in_row = 0
        self.step += 1
        audio_s = float(lengths.sum()) * self.world / self.sample_rate
        self.audio_seconds += audio_s
        self.elapsed += dt
        run.window.add(logs, audio_s, dt)
        if run.pbar is not None:
            run.pbar.update(1)
        return logs

    def _log_train(self, run: _Run, logs: Dict[str, Any]) -> None:
        """Averages of the window -> ``self.last``, progress bar, TensorBoard, metrics.jsonl; opens a new window."""
        run.throughput = run.window.throughput()
        avg = run.window.means()
        self.last = dict(avg, audio_s_per_s=run.throughput)
        per_level = {k: v for k, v in logs.items() if k.endswith("_per_level")}
        self.last.update(per_level)
        if run.pbar is not None:
            run.pbar.set_postfix(loss=f"{avg['loss']:.3f}", mel=f"{avg['mel']:.3f}", aps=f"{run.throughput:.1f}")
        if self.writer is not None:
            for k, v in avg.items():
                self.writer.add_scalar(f"train/{k}", v, self.step)
            self.writer.add_scalar("train/audio_seconds_per_second", run.throughput, self.step)
            for name, values in per_level.items():
                for lvl, v in enumerate(values):
                    self.writer.add_scalar(f"codebook/{name.split('_')[0]}/level{lvl:02d}", v, self.step)
        self._log_jsonl({"step": self.step, "kind": "train", **self.last})
        run.window = _Window()

    def _validate_and_record(self, run: _Run) -> bool:
        """Run validation; log it, keep the best -> True when this step is the best so far."""
        m = self.validate()
        if not (self.is_main and m):
            return False
        self.last_valid = {"step": self.step, "metrics": dict(m)}
        score = selection_score(self.cfg["train"]["best_metric"], m)
        is_best = not self.freeze_generator and (  # a frozen generator has no best checkpoint
            self.best_valid is None or score < self.best_valid)
        if is_best:
            self.best_valid = score
            self.best_metrics = dict(m)
            self.best_step = self.step
        cpu_h = self.elapsed * self.world * torch.get_num_threads() / 3600.0
        self._log_jsonl({"step": self.step, "kind": "valid", "train_seconds": self.elapsed, "cpu_hours": cpu_h,
                         "audio_hours_seen": self.audio_seconds / 3600.0, **m})
        if run.pbar is not None:
            run.pbar.write(f"step {self.step}: valid mel {m['valid_loss']:.3f} "
                           f"si-sdr {m.get(f'si_sdr/nq{self._valid_nq()[-1]}', float('nan')):.2f} dB")
        return is_best

    def _validate_at_start(self) -> Dict[str, float]:
        """Validation before the first step (logged as step 0): the starting point, e.g. the init_from model.
        Not a best checkpoint candidate: ``best.pt`` only ever holds trained weights."""
        m = self.validate()
        if self.is_main and m:
            self.last_valid = {"step": 0, "metrics": dict(m)}
            if self.freeze_generator:  # the generator's metrics stay these: the card reports them
                self.best_metrics = dict(m)
            self._log_jsonl({"step": 0, "kind": "valid", "train_seconds": 0.0, "cpu_hours": 0.0,
                             "audio_hours_seen": 0.0, **m})
            print(f"codec.train: step 0: valid mel {m['valid_loss']:.3f}", file=sys.stderr)
        return m

    def _should_stop(self, run: _Run) -> bool:
        max_s = float(self.cfg["train"]["max_hours"] or 0.0) * 3600.0
        over_time = max_s > 0 and time.time() - run.start > max_s
        return ddp.any_true(self._stop_signal is not None or over_time, self.device)

    def _after_step(self, run: _Run, logs: Dict[str, Any]) -> bool:
        """Log, validate and checkpoint as the intervals say -> True when the run must stop now."""
        tc = self.cfg["train"]
        total, valid_int, ckpt_int = int(tc["steps"]), int(tc["valid_interval"]), int(tc["ckpt_interval"])
        final = self.step >= total
        if self.step % max(1, int(tc["log_interval"])) == 0 or final:
            self._log_train(run, logs)
        stop = self._should_stop(run)
        due = (valid_int > 0 and self.step % valid_int == 0) or final
        is_best = bool(self.valid_items) and due and not stop and self._validate_and_record(run)
        if (ckpt_int > 0 and self.step % ckpt_int == 0) or final or stop or is_best:
            self.save_checkpoint(best=is_best)
            run.saved_at = self.step
        if stop:
            run.stopped = "signal" if self._stop_signal is not None else "max_hours"
        return stop

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()

    def fit(self) -> Dict[str, Any]:
        """Train until ``train.steps``; returns a summary dict."""
        total_steps = int(self.cfg["train"]["steps"])
        with ExitStack() as stack:
            stack.callback(self._close_writer)
            run = self._start_run(stack)
            if self.step == 0 and self.valid_items:
                self._validate_at_start()
            try:
                while self.step < total_steps:
                    logs = self._one_step(run)
                    if logs is not None and self._after_step(run, logs):
                        break
            except KeyboardInterrupt:
                run.stopped = "interrupt"
                if run.saved_at != self.step:
                    self.save_checkpoint()
            finally:
                run.batches = None  # ends the loader's workers
        if self.world > 1:
            dist.barrier()
        return self._summary(run)

    def _summary(self, run: _Run) -> Dict[str, Any]:
        summary = {"step": self.step, "stopped": run.stopped, "audio_seconds_per_second": run.throughput,
                   "last": self.last, "best_valid": self.best_valid, "best_metrics": self.best_metrics,
                   "out_dir": str(self.out_dir)}
        if self.is_main:
            print(f"codec.train: step {self.step}, {run.throughput:.2f} audio s/s, checkpoints in {self.out_dir}"
                  + (f" (stopped: {run.stopped})" if run.stopped else ""), file=sys.stderr)
        return summary
