"""Validation of a training run: mel distance, SI-SDR (and PESQ / STOI when installed) per nq on whole
validation utterances, codebook usage and perplexity per level, spectrogram images for TensorBoard."""
from __future__ import annotations

import importlib.util
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from codec.errors import CodecError
from codec.eval.metrics import mel_filterbank, multiscale_mel_distance, si_sdr
from codec.quantization.vq import code_stats

__all__ = ["valid_nq", "check_best_metric", "selection_score", "codebook_stats", "perceptual_metric_fns", "spectrogram_image", "evaluate_items"]


def valid_nq(requested, num_quantizers: int) -> List[int]:
    """The nq values validated: ``requested`` (capped at ``num_quantizers``) or 1, 2, 4, ..., all."""
    n = int(num_quantizers)
    if requested:
        return sorted({min(int(q), n) for q in requested})
    out, q = [], 1
    while q < n:
        out.append(q)
        q *= 2
    return out + [n]


#: validation metrics where a higher value is better (``train.best_metric`` keeps their highest)
HIGHER_IS_BETTER = ("pesq", "stoi", "si_sdr")


def check_best_metric(name: str, nqs: Sequence[int], perceptual: bool) -> None:
    """Refuse a ``train.best_metric`` that validation will not produce: ``valid_loss`` (mel at the largest nq) or
    ``mel|si_sdr|pesq|stoi/nqN`` with N among the validated ``nqs`` (PESQ / STOI only with the eval extras)."""
    metric, _, q = str(name).partition("/nq")
    if name == "valid_loss":
        return
    if metric not in ("mel",) + HIGHER_IS_BETTER or not q.isdigit():
        raise CodecError(f"train.best_metric '{name}' is not a validation metric: use valid_loss or "
                         "mel/nqN, si_sdr/nqN, pesq/nqN, stoi/nqN.")
    if int(q) not in nqs:
        raise CodecError(f"train.best_metric '{name}' needs nq {q} in the validated nq values "
                         f"({', '.join(map(str, nqs))}): add it to train.valid_nq.")
    if metric in ("pesq", "stoi") and not perceptual:
        raise CodecError(f"train.best_metric '{name}' needs PESQ / STOI: install the eval extras "
                         "(pip install codec[eval]).")


def selection_score(name: str, metrics: Dict[str, float]) -> float:
    """The value the best checkpoint minimises: ``metrics[name]``, negated where higher is better."""
    v = float(metrics[name])
    return -v if name.split("/")[0] in HIGHER_IS_BETTER else v


def codebook_stats(codes: List[Tensor], codebook_size: int) -> Dict[str, float]:
    """Per-level usage (fraction of the codebook used) and perplexity over validation codes ``[nq, T]``."""
    if not codes:
        return {}
    c = torch.cat(codes, dim=-1)
    out: Dict[str, float] = {}
    usages = []
    for lvl in range(c.shape[0]):
        v = c[lvl][c[lvl] >= 0]
        if v.numel() == 0:
            continue
        ppl, usage = code_stats(v, codebook_size)
        out[f"codebook_usage/level{lvl:02d}"] = float(usage)
        out[f"codebook_perplexity/level{lvl:02d}"] = float(ppl)
        usages.append(float(usage))
    if usages:
        out["codebook_usage/mean"] = float(np.mean(usages))
    return out


def perceptual_metric_fns() -> Dict[str, Callable[[np.ndarray, np.ndarray, int], float]]:
    """``{"pesq": fn, "stoi": fn}`` when the ``eval`` extras (pesq, pystoi) are installed, else ``{}``."""
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


def spectrogram_image(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[T]`` -> log-mel image ``[1, 80, frames]`` in [0, 1], low frequencies at the bottom."""
    sig = torch.as_tensor(x, dtype=torch.float32)
    win = 1024 if sample_rate > 16000 else 512
    if sig.numel() < win:
        sig = torch.nn.functional.pad(sig, (0, win - sig.numel()))
    spec = torch.stft(sig, win, win // 4, window=torch.hann_window(win), return_complex=True).abs()
    fb = torch.as_tensor(mel_filterbank(sample_rate, win, 80), dtype=torch.float32)
    mel = torch.log10(fb @ spec + 1e-5)
    mel = (mel - mel.max() + 5.0).clamp_min(0) / 5.0
    return mel.flip(0)[None].numpy()


def _score(x: np.ndarray, y: np.ndarray, sample_rate: int, q: int, perceptual: Dict[str, Any],
           res: Dict[str, List[float]]) -> None:
    res.setdefault(f"mel/nq{q}", []).append(float(multiscale_mel_distance(x, y, sample_rate)))
    res.setdefault(f"si_sdr/nq{q}", []).append(float(si_sdr(x, y)))
    for name, fn in perceptual.items():
        v = float(fn(x, y, sample_rate))
        if np.isfinite(v):
            res.setdefault(f"{name}/nq{q}", []).append(v)


def evaluate_items(model, dataset, nqs: Sequence[int], device: torch.device, autocast, audio_samples: int
                   ) -> Tuple[Dict[str, float], List[Tuple[int, np.ndarray, np.ndarray]]]:
    """Encode / decode every ``dataset`` item (``(x [1, T] numpy, n valid samples)``) at each nq with ``model``
    (in eval mode) -> (metrics averaged over items, incl. ``valid_loss`` = mel at the largest nq and the codebook
    stats; the first ``audio_samples`` ``(index, reference, decoded)`` at the largest nq)."""
    perceptual = perceptual_metric_fns()
    sr = model.sample_rate
    res: Dict[str, List[float]] = {}
    samples, all_codes = [], []
    for i in range(len(dataset)):
        x, n = dataset[i]
        wav = torch.from_numpy(x)[None].to(device)
        for q in nqs:
            with autocast():
                codes = model.encode(wav, nq=q)
                y = model.decode(codes)
            y = y[0, 0, :n].float().cpu().numpy()
            _score(x[0], y, sr, q, perceptual, res)
            if q == nqs[-1]:
                all_codes.append(codes[0].cpu())
                if i < audio_samples:
                    samples.append((i, x[0], y))
    metrics = {k: float(np.mean(v)) for k, v in res.items()}
    metrics["valid_loss"] = metrics[f"mel/nq{nqs[-1]}"]
    metrics.update(codebook_stats(all_codes, model.codebook_size))
    return metrics, samples
