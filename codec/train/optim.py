"""Optimisers, learning-rate schedules and the weight EMA of the trainer (all read from the ``optim`` section)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["LRSchedule", "WeightEMA", "build_optimizers"]


class LRSchedule:
    """Linear warm-up to ``lr`` then cosine (to ``min_lr_ratio * lr``), exponential or constant."""

    def __init__(self, lr: float, total_steps: int, warmup: int = 0, decay: str = "cosine",
                 min_ratio: float = 0.05, gamma: float = 0.999996):
        self.lr, self.total, self.warmup = float(lr), max(1, int(total_steps)), int(warmup)
        self.decay, self.min_ratio, self.gamma = decay, float(min_ratio), float(gamma)

    @classmethod
    def from_config(cls, oc: Dict[str, Any], lr: float, train_steps: int) -> "LRSchedule":
        """Schedule for peak ``lr`` from an ``optim`` section (``decay_steps`` defaults to ``train_steps``)."""
        return cls(float(lr), int(oc["decay_steps"] or train_steps), int(oc["warmup_steps"]), oc["decay"],
                   float(oc["min_lr_ratio"]), float(oc["gamma"]))

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

    def apply(self, opt: torch.optim.Optimizer, step: int) -> None:
        """Set the learning rate of every parameter group of ``opt`` for ``step``."""
        for g in opt.param_groups:
            g["lr"] = self(step)

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


def build_optimizers(oc: Dict[str, Any], train_steps: int, model: nn.Module, disc: Optional[nn.Module]
                     ) -> Tuple[torch.optim.Optimizer, Optional[torch.optim.Optimizer], LRSchedule, LRSchedule,
                                Optional[WeightEMA]]:
    """AdamW for the generator (and the discriminators when given), their schedules and the weight EMA (None
    when ``optim.ema`` is 0) -> ``(opt_g, opt_d, sched_g, sched_d, ema)``."""
    sched_g = LRSchedule.from_config(oc, oc["lr"], train_steps)
    sched_d = LRSchedule.from_config(oc, oc["disc_lr"] or oc["lr"], train_steps)
    betas = tuple(float(b) for b in oc["betas"])
    wd = float(oc["weight_decay"])
    opt_g = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=sched_g(0), betas=betas,
                              weight_decay=wd)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=sched_d(0), betas=betas, weight_decay=wd) \
        if disc is not None else None
    ema = WeightEMA(model, float(oc["ema"])) if float(oc["ema"] or 0) > 0 else None
    return opt_g, opt_d, sched_g, sched_d, ema
