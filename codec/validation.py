"""Checks of what the Python API is handed (``CodecModel.encode`` / ``decode`` and the stream objects).

Each check raises :class:`InputError` -- both a :class:`codec.errors.CodecError` and a :class:`ValueError`, so
``except ValueError`` and ``except CodecError`` both catch it -- with one sentence, instead of returning garbage
(NaN input silently gives all-zero codes; float codes are truncated) or failing deep inside torch.

For example ``check_audio(torch.zeros(1, 1, 0))`` raises ``InputError("wav is empty (0 samples); give at least
one sample.")``.

Intended call sites in :mod:`codec.model` (see the module of each function)::

    x = check_audio(x)                       # CodecModel._prepare, after the tensor conversion
    c = check_codes(codes, self.codebook_size, self.num_quantizers)   # CodecModel.decode, StreamDecoder.feed
    check_audio(chunk, name="chunk", allow_empty=True)                 # StreamEncoder.feed
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import CodecError

__all__ = ["InputError", "check_audio", "check_codes"]


class InputError(CodecError, ValueError):
    """Bad input to the Python API (one sentence); a ``CodecError`` and a ``ValueError``."""


def _tensor(x, name: str):
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise InputError(f"{name} must be a numeric array, got dtype object.")
        return torch.from_numpy(np.ascontiguousarray(x))
    if torch.is_tensor(x):
        return x
    if isinstance(x, (list, tuple)):
        try:
            return torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{name} must be a torch.Tensor or numpy.ndarray.") from None
    raise InputError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")


def check_audio(wav, name: str = "wav", allow_empty: bool = False):
    """Return ``wav`` (as a tensor) if it is real-valued audio with finite samples; raise :class:`InputError`
    for complex, boolean or non-numeric dtypes, NaN / infinite samples (naming the first one) and, unless
    ``allow_empty``, zero samples or an empty batch."""
    import torch

    x = _tensor(wav, name)
    if x.is_complex() or x.dtype == torch.bool or not (x.is_floating_point() or _is_integer(x)):
        raise InputError(f"{name} must hold real audio samples, got dtype {str(x.dtype).replace('torch.', '')}.")
    if not allow_empty and (x.numel() == 0 or (x.dim() >= 1 and x.shape[-1] == 0)):
        raise InputError(f"{name} is empty ({0 if x.dim() == 0 else x.shape[-1]} samples); "
                         "give at least one sample.")
    if x.is_floating_point() and x.numel():
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            flat = (~finite).reshape(-1, x.shape[-1]) if x.dim() >= 1 else (~finite).reshape(1, 1)
            first = int(flat.any(0).nonzero()[0, 0])
            raise InputError(f"{name} contains NaN or infinite samples (first at sample {first}).")
    return x


def _is_integer(x) -> bool:
    import torch

    return x.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def check_codes(codes, codebook_size: int, num_quantizers: Optional[int] = None, name: str = "codes"):
    """Return ``codes`` as a ``LongTensor`` if they are integers in ``[-1, codebook_size)`` (``-1`` = padded frame)
    with at most ``num_quantizers`` levels (``[B, nq, F]`` or ``[nq, F]``); raise :class:`InputError` for float or
    boolean dtypes (never silently truncated), codes out of range and too many levels."""
    import torch

    c = _tensor(codes, name)
    if not _is_integer(c):
        raise InputError(f"{name} must be integers (got dtype {str(c.dtype).replace('torch.', '')}); "
                         "float codes are not rounded.")
    if c.dim() not in (2, 3):
        raise InputError(f"{name} must be [B, nq, F] or [nq, F], got {tuple(c.shape)}.")
    if num_quantizers is not None and c.shape[-2] > num_quantizers:
        raise InputError(f"{name} have {c.shape[-2]} levels, but the model has only {num_quantizers}.")
    if c.numel():
        lo, hi = int(c.min()), int(c.max())
        if lo < -1 or hi >= codebook_size:
            bad = lo if lo < -1 else hi
            raise InputError(f"{name} must lie in [0, {codebook_size}) (or -1 for a padded frame), got {bad}.")
    return c.long()
