"""Training data: manifests / audio folders, deterministic random crops, validation utterances.

* :func:`read_items` reads a jsonl manifest (one JSON object per line with at least ``path``; ``duration``,
  ``speaker``, ``sample_rate``... optional; relative paths are relative to the manifest) or scans a folder
  of audio files.  Several sources may be given as a list.
* :class:`CropDataset` returns fixed-length random crops ``[1, crop]`` at the model rate (resampled when the
  file rate differs, RMS-normalised, mono), zero-padded with ``length < crop`` when the item is
  shorter.  The crop for global sample index ``k`` depends only on ``(seed, k)``: the sampler position is
  the whole data state, which makes resume exact and workers deterministic.
* :class:`StepBatchSampler` yields, for step ``s``, the indices ``(s * world + rank) * B + j``: each DDP
  rank gets disjoint crops, and starting at ``start_step`` resumes the stream exactly.
* :class:`ValidDataset` returns whole utterances (cut to ``max_seconds``); :func:`collate` pads a batch
  and returns ``(wav [B, 1, T], lengths [B])``.
"""
from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from codec.audio import find_files, rms_normalize
from codec.errors import CodecError

__all__ = ["read_items", "CropDataset", "ValidDataset", "StepBatchSampler", "collate", "worker_init_fn",
           "rms_normalize", "load_segment"]



def read_items(source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
               min_seconds: float = 0.0) -> List[Dict]:
    """Items (dicts with ``path`` and, when known, ``duration``/``speaker``/``sample_rate``) from a jsonl
    manifest, a folder of audio (scanned recursively) or a list of those."""
    if source is None:
        raise CodecError("no training data given (set data.train to a manifest .jsonl or a folder of audio).")
    if isinstance(source, (list, tuple)):
        items: List[Dict] = []
        for s in source:
            items += read_items(s, min_seconds)
        return items
    p = Path(source)
    if not p.exists():
        raise CodecError(f"data source '{p}' does not exist.")
    items = []
    if p.is_dir():
        items = [{"path": str(f)} for f in find_files(p)]
        if not items:
            raise CodecError(f"data folder '{p}' contains no audio files.")
    else:
        with open(p, "r", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    it = json.loads(line)
                except json.JSONDecodeError:
                    raise CodecError(f"manifest '{p}' line {n} is not valid JSON.") from None
                if not isinstance(it, dict) or "path" not in it:
                    raise CodecError(f"manifest '{p}' line {n} has no 'path' field.")
                ap = Path(it["path"])
                if not ap.is_absolute():
                    it["path"] = str((p.parent / ap))
                items.append(it)
        if not items:
            raise CodecError(f"manifest '{p}' is empty.")
    if min_seconds > 0:
        items = [it for it in items if float(it.get("duration", 1e9)) >= min_seconds]
        if not items:
            raise CodecError(f"no item of '{p}' is at least {min_seconds} s long.")
    return items


def load_segment(path: str, sr_out: int, start_s: float = 0.0, dur_s: Optional[float] = None) -> np.ndarray:
    """Mono float32 ``[T]`` from ``path`` at ``sr_out``, starting at ``start_s`` seconds, at most ``dur_s``."""
    import soundfile as sf

    try:
        info = sf.info(path)
        sr = int(info.samplerate)
        start = int(round(start_s * sr))
        frames = -1 if dur_s is None else int(np.ceil(dur_s * sr)) + (0 if sr == sr_out else 64)
        x, sr = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
        x = x.T
    except Exception:  # noqa: BLE001 - fall back on the project's reader (ffmpeg formats)
        from codec.audio import load_audio

        x, sr = load_audio(path)
        s = int(round(start_s * sr))
        x = x[:, s:] if dur_s is None else x[:, s:s + int(np.ceil(dur_s * sr)) + 64]
    x = x.mean(axis=0) if x.shape[0] > 1 else x[0]
    if sr != sr_out:
        from codec.audio import resample

        x = resample(x, sr, sr_out)
    if dur_s is not None:
        x = x[: int(round(dur_s * sr_out))]
    return np.ascontiguousarray(x, dtype=np.float32)


def _duration(item: Dict) -> float:
    d = item.get("duration")
    if d is None:
        import soundfile as sf

        try:
            info = sf.info(item["path"])
            d = info.frames / info.samplerate
        except Exception:  # noqa: BLE001
            from codec.audio import load_audio

            x, sr = load_audio(item["path"])
            d = x.shape[-1] / sr
        item["duration"] = d
    return float(d)


class CropDataset(Dataset):
    """Random fixed-length crops. ``ds[k] -> (wav float32 [1, crop], length int)``.

    Item ``perm_e[k % N]`` with ``e = k // N`` (a seeded permutation per epoch) and a crop offset drawn
    from ``np.random.default_rng([seed, k])``: deterministic in ``k`` whatever the worker.  ``rms_db``: every
    crop's RMS level in dBFS, or ``(low, high)``: a level drawn uniformly in dB per crop from the same generator
    (so the model meets quiet and loud input, not one level), or None (as recorded).  ``speed``: None, or
    ``(low, high)``: each crop is played faster by a factor drawn uniformly from that range (tempo and pitch
    together, as ``sox speed`` does: ``crop * factor`` samples read and resampled to ``crop``), so that a small
    corpus shows the model more voices.
    """

    def __init__(self, items: List[Dict], sample_rate: int, crop_seconds: float, seed: int = 0,
                 rms_db: Union[None, float, Sequence[float]] = -20.0, max_gain_db: float = 20.0,
                 speed: Optional[Sequence[float]] = None):
        self.items = items
        self.speed = None if speed is None else (float(speed[0]), float(speed[1]))
        self.sample_rate = int(sample_rate)
        self.crop = int(round(crop_seconds * sample_rate))
        self.seed = int(seed)
        self.rms_db, self.max_gain_db = rms_db, float(max_gain_db)
        self._perm_cache: Dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 1 << 62  # infinite stream indexed by global sample number

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perm_cache.get(epoch)
        if p is None:
            p = np.random.default_rng([self.seed, 7919, epoch]).permutation(len(self.items))
            self._perm_cache = {epoch: p}
        return p

    def item_index(self, k: int) -> int:
        """Index into ``items`` of global sample ``k``."""
        n = len(self.items)
        return int(self._perm(k // n)[k % n])

    def __getitem__(self, k: int) -> Tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, int(k)])
        factor = 1.0 if self.speed is None else float(rng.uniform(*self.speed))
        crop_s = self.crop * factor / self.sample_rate  # seconds of the recording this crop plays
        for attempt in range(5):
            item = self.items[self.item_index(int(k) + attempt * 104729)]
            dur = _duration(item)
            start = float(rng.uniform(0.0, dur - crop_s)) if dur > crop_s else 0.0
            try:
                x = load_segment(item["path"], self.sample_rate, start, crop_s)
            except CodecError:
                continue
            if x.size > 0:
                break
        else:
            raise CodecError(f"could not read any audio around training item {item['path']}.")
        if factor != 1.0:
            from codec.audio import resample

            x = resample(x, int(round(self.sample_rate * factor)), self.sample_rate)
        level = self.rms_db
        if isinstance(level, (list, tuple)):
            level = float(rng.uniform(float(level[0]), float(level[1])))
        x = rms_normalize(x, level, self.max_gain_db)
        n = min(len(x), self.crop)
        out = np.zeros((1, self.crop), dtype=np.float32)
        out[0, :n] = x[:n]
        return out, n


class ValidDataset(Dataset):
    """Whole utterances (first ``max_items`` items, each cut to ``max_seconds``). ``ds[i] -> ([1, T], T)``."""

    def __init__(self, items: List[Dict], sample_rate: int, max_items: int = 16, max_seconds: float = 10.0,
                 rms_db: Optional[float] = -20.0, max_gain_db: float = 20.0):
        if max_items and len(items) > max_items:
            # spread the selection over the manifest (sources are usually grouped)
            idx = np.linspace(0, len(items) - 1, int(max_items)).round().astype(int)
            items = [items[i] for i in idx]
        self.items = items
        self.sample_rate = int(sample_rate)
        self.max_seconds = float(max_seconds)
        self.rms_db, self.max_gain_db = rms_db, float(max_gain_db)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, int]:
        x = load_segment(self.items[i]["path"], self.sample_rate, 0.0, self.max_seconds or None)
        x = rms_normalize(x, self.rms_db, self.max_gain_db)
        return x[None, :], len(x)


class StepBatchSampler(Sampler):
    """Yields batches of global sample indices for steps ``start_step, start_step + 1, ...`` (forever).

    Step ``s`` on ``rank`` of ``world`` gets ``[(s * world + rank) * B + j for j < B]``.
    """

    def __init__(self, batch_size: int, start_step: int = 0, rank: int = 0, world: int = 1):
        self.batch_size, self.start_step, self.rank, self.world = int(batch_size), int(start_step), int(rank), int(world)

    def __iter__(self) -> Iterator[List[int]]:
        s = self.start_step
        while True:
            base = (s * self.world + self.rank) * self.batch_size
            yield list(range(base, base + self.batch_size))
            s += 1

    def __len__(self) -> int:
        return 1 << 62


def collate(batch: List[Tuple[np.ndarray, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pad a list of ``([1, T_i], len_i)`` to ``(wav [B, 1, max T], lengths LongTensor [B])``."""
    t = max(x.shape[-1] for x, _ in batch)
    out = torch.zeros(len(batch), 1, t)
    for i, (x, _) in enumerate(batch):
        out[i, :, : x.shape[-1]] = torch.from_numpy(x)
    lengths = torch.tensor([int(n) for _, n in batch], dtype=torch.long)
    return out, lengths


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker setup: seed numpy/random from torch's per-worker seed, one thread per worker, and
    ignore SIGINT, SIGTERM and SIGHUP: a signal sent to the whole process group (Ctrl-C, ``timeout``, a
    scheduler, a closed terminal) must not kill the workers under the main process, which saves a checkpoint
    and then shuts them down itself (a worker also exits when the main process dies)."""
    seed = torch.initial_seed() % (2 ** 32)
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):  # pragma: no cover
            pass
