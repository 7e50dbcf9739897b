"""Input layout of :meth:`codec.model.CodecModel.encode` and per-item output of ``decode`` (one job: turning what a
user hands the Python API into a padded mono batch, and back).

Accepted layouts (anything else raises :class:`codec.validation.InputError` with one sentence):

- ``[B, C, T]`` tensor / array: a batch of ``B`` items with ``C`` channels each (channels are averaged: the models
  are mono);
- ``[T]``: one mono item;
- ``[C, T]`` with ``C <= 2`` (:data:`MAX_ITEM_CHANNELS`): one mono or stereo item.  Any other 2-D shape is
  ambiguous (``[4, 24000]`` could be 4 items or 4 channels) and is refused;
- a list (or tuple) of ``[T]`` / ``[C, T]`` arrays or tensors of any lengths: one item each (a 2-D item is
  ``[C, T]``: the list already says where items end).  A list of numbers is one ``[T]`` item.

``sample_rate`` is ``None`` (the model's rate), one rate for every item, or a list with one rate per item (as
Hugging Face feature extractors take it).  Items at another rate are resampled **one by one** (soxr, HQ) before
padding, so every item of a batch gets exactly the codes it gets alone.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .validation import InputError, check_audio

__all__ = ["MAX_ITEM_CHANNELS", "prepare_batch", "item_rates", "per_item_audio"]

#: Largest ``C`` of a 2-D ``[C, T]`` input read as one item (mono or stereo); larger 2-D inputs are ambiguous.
MAX_ITEM_CHANNELS = 2

Rates = Union[None, int, Sequence[int]]


def _is_item_list(wav) -> bool:
    return isinstance(wav, (list, tuple)) and len(wav) > 0 and \
        not all(isinstance(v, (int, float, np.number)) for v in wav)


def item_rates(sample_rate: Rates, count: int, model_rate: int) -> List[int]:
    """One positive integer rate per item from ``None`` (the model's), an int, or a list of ``count`` ints."""
    if sample_rate is None:
        return [int(model_rate)] * count
    if isinstance(sample_rate, (list, tuple, np.ndarray, torch.Tensor)):
        rates = [int(r) for r in (sample_rate.tolist() if hasattr(sample_rate, "tolist") else sample_rate)]
        if len(rates) != count:
            raise InputError(f"sample_rate has {len(rates)} entries for {count} items; give one rate per item "
                             "or a single rate.")
    else:
        rates = [int(sample_rate)] * count
    bad = [r for r in rates if r <= 0]
    if bad:
        raise InputError(f"sample_rate must be a positive number of Hz, got {bad[0]}.")
    return rates


def _layout(x: torch.Tensor, name: str) -> torch.Tensor:
    """A checked tensor in the documented layouts -> ``[B, C, T]``."""
    if x.dim() == 1:
        return x[None, None]
    if x.dim() == 2:
        if x.shape[0] > MAX_ITEM_CHANNELS:
            raise InputError(
                f"{name} of shape {tuple(x.shape)} is ambiguous: pass one item as [T] or [C, T] with C <= "
                f"{MAX_ITEM_CHANNELS}, a batch as [B, C, T] (e.g. {name}[:, None] for {x.shape[0]} mono items) "
                "or a list of items.")
        return x[None]
    if x.dim() == 3:
        return x
    raise InputError(f"{name} must be [T], [C, T] with C <= {MAX_ITEM_CHANNELS} or [B, C, T], got shape "
                     f"{tuple(x.shape)}.")


def _mono(x: torch.Tensor) -> torch.Tensor:
    """``[..., C, T]`` -> float32 ``[..., 1, T]`` (channels averaged)."""
    x = x.float()
    return x if x.shape[-2] == 1 else x.mean(dim=-2, keepdim=True)


def _resample_item(x: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """One mono item ``[T]`` -> ``[T']`` at ``sr_out`` (soxr on CPU; returned on the input's device)."""
    if sr_in == sr_out:
        return x
    from .audio import resample

    return torch.from_numpy(resample(x.detach().cpu().numpy(), sr_in, sr_out)).to(x.device)


def _pad(items: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mono items ``[T_i]`` -> zero-padded ``[B, 1, max T_i]`` and lengths ``[B]``."""
    lengths = torch.tensor([int(v.shape[-1]) for v in items], dtype=torch.long)
    x = torch.zeros(len(items), 1, int(lengths.max()), device=items[0].device)
    for i, v in enumerate(items):
        x[i, 0, : v.shape[-1]] = v
    return x, lengths


def prepare_batch(wav, sample_rate: Rates, lengths, model_rate: int, name: str = "wav"
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Any accepted input (module docstring) -> float32 mono batch ``[B, 1, T]`` at ``model_rate`` and the valid
    samples per item ``[B]`` (``None``: every item fills ``T``).

    ``lengths`` (valid samples per item at the input rate) is for ``[B, C, T]`` tensors only; a list gives each
    item's length itself.  Items are resampled one by one, after cutting them to their length."""
    from .model import _to_tensor

    if _is_item_list(wav):
        if lengths is not None:
            raise InputError("lengths is only for a padded [B, C, T] tensor; a list gives each item's length.")
        items = []
        for i, w in enumerate(wav):
            v = check_audio(_to_tensor(w) if isinstance(w, (np.ndarray, torch.Tensor)) else w, name=f"{name}[{i}]")
            if v.dim() not in (1, 2):
                raise InputError(f"{name}[{i}] must be [T] or [C, T], got shape {tuple(v.shape)}.")
            items.append(_mono(v if v.dim() == 2 else v[None])[0])
        rates = item_rates(sample_rate, len(items), model_rate)
        return _pad([_resample_item(v, r, model_rate) for v, r in zip(items, rates)])
    x = _mono(_layout(check_audio(_to_tensor(wav) if isinstance(wav, (np.ndarray, torch.Tensor)) else wav,
                                  name=name), name))
    B, _, T = x.shape
    if lengths is not None:
        lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1).cpu()
        if lengths.numel() != B:
            raise InputError(f"lengths has {lengths.numel()} entries for {B} items; give one per item.")
        lengths = lengths.clamp(0, T)
    rates = item_rates(sample_rate, B, model_rate)
    if all(r == model_rate for r in rates):
        return x, lengths
    n = lengths.tolist() if lengths is not None else [T] * B
    x, new = _pad([_resample_item(x[i, 0, : n[i]], r, model_rate) for i, r in enumerate(rates)])
    return x, (new if lengths is not None or len(set(rates)) > 1 else None)


def per_item_audio(y: torch.Tensor, valid: torch.Tensor, model_rate: int, sample_rate: Rates,
                   lengths) -> List[torch.Tensor]:
    """Decoded batch ``[B, 1, T]`` with valid samples ``valid [B]`` -> one float32 CPU tensor ``[1, n_i]`` per
    item: resampled to its ``sample_rate`` (per item, as for :func:`prepare_batch`) and cut or zero-padded to
    ``lengths[i]`` samples at that rate (default: the valid samples at that rate)."""
    B = y.shape[0]
    rates = item_rates(sample_rate, B, model_rate)
    if lengths is not None:
        want = [int(v) for v in torch.as_tensor(lengths).reshape(-1).tolist()]
        if len(want) != B:
            raise InputError(f"lengths has {len(want)} entries for {B} items; give one per item.")
    out = []
    for i, r in enumerate(rates):
        v = _resample_item(y[i, 0, : int(valid[i])].detach().cpu().float(), model_rate, r)
        n = v.shape[-1] if lengths is None else max(0, want[i])
        item = torch.zeros(1, n)
        item[0, : min(n, v.shape[-1])] = v[:n]
        out.append(item)
    return out
