"""``.codes`` files from Python in one call each: :func:`save_codes` and :func:`load_codes`.

>>> codes = model.encode(wav, sample_rate=sr, nq=8)                  # [1, 8, F]
>>> codec.save_codes("speech.codes", codes, model, orig_length=wav.shape[-1], orig_sample_rate=sr)
>>> codes, header = codec.load_codes("speech.codes")                  # LongTensor [1, 8, F], CodesHeader
>>> audio = model.decode(codes, sample_rate=header.orig_sample_rate, lengths=[header.orig_length])

The header comes from :func:`codec.pipeline.codes_header`, the builder ``codec encode`` uses, so for the same codes
and facts the bytes are identical to the CLI's (for input at the model rate ``model.encode`` gives the CLI's codes;
at other rates ``model.stream_encoder(sample_rate=...)`` resamples exactly as the CLI does).  The header records
the model by name (``model.model_name``: the pretrained name or the model directory's name), never by path.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import numpy as np

from .codes_format import CodesHeader, read_codes, write_codes
from .errors import CodecError

__all__ = ["save_codes", "load_codes"]

PathLike = Union[str, os.PathLike]


def _valid_frames(arr: np.ndarray) -> np.ndarray:
    """``[C, nq, F]`` with trailing all ``-1`` frames (batch padding) cut off; other ``-1`` codes are refused."""
    pad = (arr < 0).all(axis=(0, 1))
    frames = int(pad.size - np.argmin(pad[::-1])) if not pad.all() else 0
    arr = arr[..., :frames]
    if arr.size and arr.min() < 0:
        raise CodecError("codes hold -1 (padded) frames inside the signal: a .codes file stores one item, so save "
                         "each batch item's valid frames, e.g. codes[i, :, :frames[i]].")
    return arr


def save_codes(path: PathLike, codes, model, orig_length: Optional[int] = None,
               orig_sample_rate: Optional[int] = None, orig_channels: Optional[int] = None,
               model_name: Optional[str] = None) -> CodesHeader:
    """Write ``codes`` made by ``model`` to a ``.codes`` file (atomically) and return its header.

    Args:
        path: the file to write.
        codes: integer tensor or array ``[nq, F]`` (one stream) or ``[C, nq, F]`` (one file's ``C`` channel
            streams, as ``codec encode --channels keep`` stores them; a batch of separate items is saved item by
            item).  Trailing frames that are ``-1`` everywhere (batch padding) are dropped.
        model: the :class:`codec.CodecModel` that made them (its weights fingerprint goes into the header).
        orig_length: samples of the original audio at ``orig_sample_rate`` (default: the frames' samples at that
            rate), so decoding restores the exact length.
        orig_sample_rate: rate of the original audio (default: the model's).
        orig_channels: channels of the original audio (default: ``C``; codes downmixed from stereo: ``2``).
        model_name: name recorded for ``codec decode`` (default ``model.model_name``; a path is reduced to its
            last component).

    Raises :class:`codec.errors.CodecError` (one sentence) for codes the model cannot have made or facts that do
    not fit them.
    """
    from .pipeline import codes_header

    arr = codes.detach().cpu().numpy() if hasattr(codes, "detach") else np.asarray(codes)
    if not np.issubdtype(arr.dtype, np.integer):
        raise CodecError(f"codes must be integers, got dtype {arr.dtype}.")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise CodecError(f"codes must be [nq, F] or [C, nq, F], got shape {tuple(arr.shape)}.")
    if arr.shape[1] > int(model.num_quantizers):
        raise CodecError(f"codes have {arr.shape[1]} levels, but the model has only {model.num_quantizers}.")
    arr = _valid_frames(arr.astype(np.int64, copy=False))
    sr, hop = int(model.sample_rate), int(model.hop_length)
    osr = sr if orig_sample_rate is None else int(orig_sample_rate)
    n = arr.shape[-1] * hop
    length = (n if osr == sr else int(round(n * osr / sr))) if orig_length is None else int(orig_length)
    chans = arr.shape[0] if orig_channels is None else int(orig_channels)
    header = codes_header(model, arr.shape[1], arr.shape[-1], arr.shape[0], chans, length, osr, model_name)
    write_codes(path, header, arr)
    return header


def load_codes(path: PathLike) -> Tuple["torch.Tensor", CodesHeader]:  # noqa: F821
    """Read and verify a ``.codes`` file -> ``(codes LongTensor [C, nq, F], header)``.

    ``header`` (:class:`codec.codes_format.CodesHeader`) holds the model name and weights fingerprint, the
    model rate and hop, and the original audio's ``orig_length`` / ``orig_sample_rate`` / ``orig_channels``;
    ``header.to_dict()`` gives them as JSON-friendly values.  Raises :class:`codec.errors.CodecError` for a
    missing, truncated or corrupted file."""
    import torch

    cf = read_codes(path)
    return torch.from_numpy(np.ascontiguousarray(cf.codes, dtype=np.int64)), cf.header
