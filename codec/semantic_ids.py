"""Semantic IDs for generative retrieval: each item's embedding becomes a short tuple of codes.

One entry point, :func:`fit`, with three methods built on ``codec.quantization`` (one ``ResidualVQ`` inside
every fitted object):

- ``"rqkmeans"``: residual k-means, no network (``quantization.residual_kmeans``); optional balanced levels
  (``balance="size"`` / ``"sinkhorn"``), collision-free last level (``unique_last=True``) and joint codebook
  refinement (``refine_iters``);
- ``"rqvae"``: MLP encoder / ``ResidualVQ`` / MLP decoder (``quantization.rqvae``), codebooks k-means
  initialised at the start of epoch ``kmeans_init_epoch`` (``None`` = random codebooks), commitment (beta)
  warm-up;
- ``"rqkmeans+"``: residual encoder ``z = x + MLP(x)`` (zero-initialised last layer, the identity at step 0),
  codebooks warm-started from an RQ-KMeans fit, then trained.

Example::

    import torch
    from codec import semantic_ids

    emb = torch.randn(5000, 64)                                  # [N, D] item embeddings
    sid = semantic_ids.fit(emb, levels=3, codebook_size=64, method="rqkmeans",
                           unique_last=True, refine_iters=10)
    sid.codes                                                    # LongTensor [5000, 3]
    sid.report()["collision_rate"]                               # 1 - unique tuples / N
    sid.encode(torch.randn(10, 64))                              # [10, 3], nearest code per level
    sid.save("ids/"); sid2 = semantic_ids.load("ids/")           # JSON + safetensors, no pickle

The codes of the fitted items (``.codes``) are their assignment at fit time; with balancing or ``unique_last``
that is not always the nearest code, while :meth:`SemanticIds.encode` of new items gives the nearest code per
level (for plain ``rqkmeans`` the two agree exactly).  ``dedup=True`` appends one more column that counts the
items sharing the same tuple (0, 1, 2, ... in item order, as in TIGER), which makes every ID unique.

Everything runs on CPU in float32.  Bad input raises :class:`codec.errors.CodecError` with one sentence.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .errors import CodecError
from .quantization.residual_kmeans import assign_residual, residual_kmeans
from .quantization.rqvae import RQVAE, train_rqvae
from .quantization.rvq import ResidualVQ
from .quantization.vq import code_stats

__all__ = ["fit", "load", "SemanticIds", "METHODS", "DEFAULTS", "collision_stats", "dedup_column"]

METHODS = ("rqkmeans", "rqvae", "rqkmeans+")
FORMAT = "codec.semantic_ids"
FORMAT_VERSION = 1
CONFIG_NAME = "semantic_ids.json"
TENSORS_NAME = "semantic_ids.safetensors"

_ASSIGN = dict(normalize=None, dedup=False, balance=None, balance_levels=None, capacity_slack=1.0,
               unique_last=False, sinkhorn_iters=50, sinkhorn_temperature=0.05)
_RQK = dict(iters=50, balance_iters=10, refine_iters=0)
_NET = dict(epochs=150, batch_size=256, lr=1e-3, weight_decay=0.0, beta=0.25, beta_warmup_epochs=20,
            codebook_weight=1.0, recon_weight=1.0, use_ema=False, threshold_ema_dead_code=0.0,
            train_sinkhorn=False, kmeans_iters=50)

#: Options of each method and their defaults (``fit(..., **options)``).
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "rqkmeans": {**_ASSIGN, **_RQK},
    "rqvae": {**_ASSIGN, **_NET, "latent_dim": 32, "hidden": (256, 128), "kmeans_init_epoch": 1},
    "rqkmeans+": {**_ASSIGN, **_RQK, **_NET, "hidden": (256,), "epochs": 50, "beta_warmup_epochs": 0},
}


# ---------------------------------------------------------------------------------------------- statistics
def collision_stats(codes: torch.Tensor) -> Dict[str, Any]:
    """Collisions of ID tuples codes [N, L]: ``unique`` tuples, ``collision_rate`` = 1 - unique / N and
    ``max_bucket`` (most items on one tuple)."""
    if codes.shape[0] == 0:
        return {"unique": 0, "collision_rate": 0.0, "max_bucket": 0}
    _, counts = torch.unique(codes.long(), dim=0, return_counts=True)
    n = codes.shape[0]
    return {"unique": int(counts.numel()), "collision_rate": float(1.0 - counts.numel() / n),
            "max_bucket": int(counts.max())}


def dedup_column(codes: torch.Tensor) -> torch.Tensor:
    """De-duplication level for codes [N, L] -> LongTensor [N]: the rank of each item among the items with the
    same tuple, in item order (0 for the first), so ``cat([codes, dedup], 1)`` has no two equal rows."""
    n = codes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    _, inv = torch.unique(codes.long(), dim=0, return_inverse=True)
    order = torch.argsort(inv, stable=True)  # groups contiguous, item order kept inside a group
    sinv = inv[order]
    _, counts = torch.unique_consecutive(sinv, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - torch.repeat_interleave(starts, counts)
    out = torch.empty(n, dtype=torch.long)
    out[order] = rank
    return out


def _relative_mse(x: torch.Tensor, recon: torch.Tensor) -> float:
    energy = float((x - x.mean(0, keepdim=True)).pow(2).sum())
    return float((x - recon).pow(2).sum()) / max(energy, 1e-30)


# ---------------------------------------------------------------------------------------------- validation
def _rows(embeddings: Any, name: str = "embeddings") -> torch.Tensor:
    if isinstance(embeddings, torch.Tensor):
        t = embeddings.detach().cpu()
    else:
        try:
            arr = np.asarray(embeddings)
        except Exception:  # ragged lists etc.
            raise CodecError(f"{name} must be a numeric 2-D array of shape [N, D].") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise CodecError(f"{name} must be a numeric 2-D array of shape [N, D].")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if t.is_complex():
        raise CodecError(f"{name} must be a numeric 2-D array of shape [N, D].")
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise CodecError(f"{name} must be a 2-D array of shape [N, D] with N, D >= 1, got shape {tuple(t.shape)}.")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise CodecError(f"{name} contain NaN or infinite values.")
    return t.contiguous()


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise CodecError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def _options(method: str, options: Dict[str, Any]) -> Dict[str, Any]:
    if method not in METHODS:
        raise CodecError(f"unknown method {method!r}: use 'rqkmeans', 'rqvae' or 'rqkmeans+'.")
    allowed = DEFAULTS[method]
    bad = sorted(k for k in options if k not in allowed)
    if bad:
        raise CodecError(f"unknown option(s) for method {method!r}: {', '.join(bad)}.")
    opts = {**allowed, **options}
    if opts["balance"] not in (None, "size", "sinkhorn"):
        raise CodecError(f"balance must be None, 'size' or 'sinkhorn', got {opts['balance']!r}.")
    if opts["normalize"] not in (None, "standard", "l2"):
        raise CodecError(f"normalize must be None, 'standard' or 'l2', got {opts['normalize']!r}.")
    if method == "rqvae" and opts["kmeans_init_epoch"] is not None:
        _check_int(opts["kmeans_init_epoch"], "kmeans_init_epoch", 0)
    for k in ("epochs", "iters", "refine_iters"):
        if k in opts:
            _check_int(opts[k], k, 0)
    for k in ("hidden", "balance_levels"):  # JSON-friendly
        if opts.get(k) is not None:
            opts[k] = [int(v) for v in opts[k]]
    return opts


# ---------------------------------------------------------------------------------------------- the object
class SemanticIds:
    """Fitted semantic IDs (made by :func:`fit` or :func:`load`).

    Attributes:
        codes: LongTensor [N, levels] (``[N, levels + 1]`` with ``dedup``) IDs of the fitted items.
        method, levels, codebook_size, input_dim, options: how they were fitted.
        model: the ``ResidualVQ`` (``rqkmeans``) or ``RQVAE`` (``rqvae`` / ``rqkmeans+``) that encodes new rows.
    """

    def __init__(self, method: str, levels: int, codebook_size: int, input_dim: int, options: Dict[str, Any],
                 codes: torch.Tensor, model: torch.nn.Module, norm_shift: torch.Tensor, norm_scale: torch.Tensor,
                 fit_report: Dict[str, Any]) -> None:
        self.method, self.levels, self.codebook_size = method, int(levels), int(codebook_size)
        self.input_dim = int(input_dim)
        self.options = dict(options)
        self.codes = codes.long()
        self.model = model.eval()
        self.norm_shift, self.norm_scale = norm_shift.float(), norm_scale.float()
        self._report = dict(fit_report)

    # ------------------------------------------------------------------ transforms
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Input normalisation of the fit (identity unless ``normalize`` was set): [N, D] -> [N, D]."""
        mode = self.options.get("normalize")
        if mode == "l2":
            return torch.nn.functional.normalize(x, dim=1)
        if mode == "standard":
            return (x - self.norm_shift) / self.norm_scale
        return x

    def _space_codes(self, xn: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode(xn).long()

    def encode(self, embeddings: Any) -> torch.Tensor:
        """Semantic IDs of (new) rows embeddings [M, input_dim] -> LongTensor [M, levels]: nearest code per level
        (no balancing, no de-dup column: that index only exists within the fitted catalogue)."""
        x = _rows(embeddings)
        if x.shape[1] != self.input_dim:
            raise CodecError(f"embeddings must have {self.input_dim} columns like the fitted ones, got {x.shape[1]}.")
        return self._space_codes(self.normalize(x))

    def decode(self, codes: Any) -> torch.Tensor:
        """Reconstruction [M, input_dim] of codes [M, levels] (a de-dup column, if present, is ignored); in the
        normalised space with ``normalize="l2"``, else in the input space."""
        c = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes).long()
        if c.dim() != 2 or c.shape[1] < self.levels:
            raise CodecError(f"codes must be a 2-D array with at least {self.levels} columns, got shape "
                             f"{tuple(c.shape)}.")
        c = c[:, :self.levels]
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.codebook_size):
            raise CodecError(f"codes must be in 0..{self.codebook_size - 1}.")
        with torch.no_grad():
            y = self.model.decode(c).float()
        if self.options.get("normalize") == "standard":
            y = y * self.norm_scale + self.norm_shift
        return y

    # ------------------------------------------------------------------ report
    def report(self, embeddings: Optional[Any] = None) -> Dict[str, Any]:
        """Quality of the IDs as a dict.

        Without ``embeddings``: the fitted catalogue (``.codes``).  With embeddings [M, input_dim] (e.g. held-out
        items): their :meth:`encode` codes.  Keys: ``n_items``, ``collision_rate`` (1 - unique tuples / N, over the
        ``levels`` semantic columns), ``unique``, ``max_bucket``, ``relative_mse`` (squared reconstruction error /
        sum of squared deviations from the mean, in the quantiser's input space), ``usage`` and ``perplexity``
        (per level), ``mean_usage``, ``unique_ids`` (over all columns, incl. de-dup), and ``fit_seconds``.
        """
        if embeddings is None:
            return dict(self._report)
        x = _rows(embeddings)
        if x.shape[1] != self.input_dim:
            raise CodecError(f"embeddings must have {self.input_dim} columns like the fitted ones, got {x.shape[1]}.")
        xn = self.normalize(x)
        codes = self._space_codes(xn)
        with torch.no_grad():
            recon = self.model.decode(codes).float()
        rep = _report(codes, codes, xn, recon, self.codebook_size)
        rep.update(method=self.method, levels=self.levels, codebook_size=self.codebook_size,
                   fit_seconds=self._report.get("fit_seconds"))
        return rep

    # ------------------------------------------------------------------ files
    def save(self, directory: Union[str, os.PathLike]) -> None:
        """Write ``semantic_ids.json`` (settings, report) and ``semantic_ids.safetensors`` (codes, normalisation,
        model tensors) into ``directory`` (created).  Never pickle."""
        from safetensors.torch import save_file

        from .audio import atomic_output

        d = os.fspath(directory)
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise CodecError(f"cannot create directory '{d}': {exc.strerror or exc}.") from exc
        tensors = {"codes": self.codes.contiguous(), "norm.shift": self.norm_shift.contiguous(),
                   "norm.scale": self.norm_scale.contiguous()}
        for k, v in self.model.state_dict().items():
            tensors["model." + k] = v.detach().cpu().contiguous().clone()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "method": self.method, "levels": self.levels,
                "codebook_size": self.codebook_size, "input_dim": self.input_dim, "options": self.options,
                "model_config": self.model.config() if isinstance(self.model, RQVAE) else None,
                "report": self._report}
        with atomic_output(os.path.join(d, TENSORS_NAME)) as tmp:  # never half-written, the usual file mode
            save_file(tensors, str(tmp))
        with atomic_output(os.path.join(d, CONFIG_NAME)) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        r = self._report
        return (f"SemanticIds(method={self.method!r}, items={self.codes.shape[0]}, levels={self.levels}, "
                f"codebook_size={self.codebook_size}, collision_rate={r.get('collision_rate', float('nan')):.4f})")


def _report(sem_codes: torch.Tensor, all_codes: torch.Tensor, x: torch.Tensor, recon: torch.Tensor,
            K: int) -> Dict[str, Any]:
    col = collision_stats(sem_codes)
    stats = [code_stats(sem_codes[:, l], K) for l in range(sem_codes.shape[1])]
    usage = [float(s[1]) for s in stats]
    return {"n_items": int(sem_codes.shape[0]), "collision_rate": col["collision_rate"], "unique": col["unique"],
            "max_bucket": col["max_bucket"], "relative_mse": _relative_mse(x, recon), "usage": usage,
            "perplexity": [float(s[0]) for s in stats], "mean_usage": float(np.mean(usage)),
            "unique_ids": collision_stats(all_codes)["unique"]}


def _quantizer(dim: int, levels: int, K: int) -> ResidualVQ:
    """``ResidualVQ`` with identity projections for codebooks [levels, K, dim] (loaded afterwards)."""
    with torch.random.fork_rng(devices=[]):  # its random placeholder codebooks must not move the caller's RNG
        return ResidualVQ(input_dim=dim, num_quantizers=levels, codebook_size=K, codebook_dim=dim,
                          kmeans_init=False, threshold_ema_dead_code=0.0).eval()


# ---------------------------------------------------------------------------------------------- entry points
def _normalized(x: torch.Tensor, normalize: Optional[str]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [N, D]`` normalised as the ``normalize`` option says -> ``(xn, shift, scale)`` (the per-dimension
    shift and scale that :class:`SemanticIds` applies to new items; identity for ``l2`` and ``None``)."""
    D = x.shape[1]
    if normalize == "standard":
        shift, scale = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-8)
        return (x - shift) / scale, shift, scale
    xn = torch.nn.functional.normalize(x, dim=1) if normalize == "l2" else x
    return xn, torch.zeros(D), torch.ones(D)


def _fit_network(method: str, xn: torch.Tensor, L: int, K: int, seed: int, opts: Dict[str, Any],
                 assign: Dict[str, Any], rk: Any) -> Tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Train the RQ-VAE (``rqvae``) or the residual network warm-started from RQ-KMeans ``rk`` (``rqkmeans+``)
    -> ``(network, codes [N, L], reconstruction [N, D])``."""
    D = xn.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # network and codebook initialisation
        net = RQVAE(D, latent_dim=int(opts.get("latent_dim", D)), hidden=opts["hidden"], levels=L,
                    codebook_size=K, residual=(method == "rqkmeans+"), use_ema=bool(opts["use_ema"]),
                    threshold_ema_dead_code=float(opts["threshold_ema_dead_code"]),
                    sinkhorn=bool(opts["train_sinkhorn"]), kmeans_iters=int(opts["kmeans_iters"]))
    if method == "rqkmeans+":
        net.warm_start(rk)
        init_epoch = None
    else:
        init_epoch = opts["kmeans_init_epoch"]
    if int(opts["epochs"]) > 0:
        train_rqvae(net, xn, epochs=int(opts["epochs"]), batch_size=int(opts["batch_size"]), lr=float(opts["lr"]),
                    weight_decay=float(opts["weight_decay"]), beta=float(opts["beta"]),
                    beta_warmup_epochs=int(opts["beta_warmup_epochs"]),
                    codebook_weight=float(opts["codebook_weight"]), recon_weight=float(opts["recon_weight"]),
                    kmeans_init_epoch=init_epoch, seed=seed)
    net.eval()
    with torch.no_grad():
        if method == "rqkmeans+" and int(opts["epochs"]) == 0:
            codes = rk.codes  # untrained: exactly the RQ-KMeans codes
        else:
            codes = assign_residual(net.latent(xn), net.codebooks(), **assign)
        recon = net.decode(codes)
    return net, codes, recon


def _fit_method(method: str, xn: torch.Tensor, L: int, K: int, seed: int, opts: Dict[str, Any],
                assign: Dict[str, Any]) -> Tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Fit one method on normalised items ``xn [N, D]`` -> ``(model, codes [N, L], reconstruction [N, D])``."""
    D = xn.shape[1]
    rk = None
    if method in ("rqkmeans", "rqkmeans+"):
        rk = residual_kmeans(xn, L, K, iters=int(opts["iters"]), balance_iters=int(opts["balance_iters"]),
                             refine_iters=int(opts["refine_iters"]), seed=seed, **assign)
    if method == "rqkmeans":
        model = _quantizer(D, L, K)
        model.load_codebooks(rk.codebooks)
        codes = rk.codes
        with torch.no_grad():
            return model, codes, model.decode(codes)
    return _fit_network(method, xn, L, K, seed, opts, assign, rk)


def fit(embeddings: Any, levels: int = 3, codebook_size: int = 64, method: str = "rqkmeans", seed: int = 0,
        **options: Any) -> SemanticIds:
    """Fit semantic IDs on item embeddings [N, D] (N >= codebook_size).

    Args:
        embeddings: [N, D] float array / tensor, finite.
        levels: code levels L; codebook_size: codes per level K (e.g. 3 x 64, 3 x 256).
        method: ``"rqkmeans"``, ``"rqvae"`` or ``"rqkmeans+"``.
        seed: seed of every random choice (the caller's global RNG state is left alone).
        **options: see ``DEFAULTS[method]``.  All methods: ``normalize`` (None / "standard" / "l2", default None),
            ``dedup`` (append the de-dup column), final assignment of the catalogue ``balance`` (None / "size" /
            "sinkhorn"), ``balance_levels``, ``capacity_slack``, ``unique_last``, ``sinkhorn_iters``,
            ``sinkhorn_temperature``.  ``rqkmeans`` / ``rqkmeans+`` warm start: ``iters``, ``balance_iters``,
            ``refine_iters``.  Networks: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``beta``,
            ``beta_warmup_epochs``, ``codebook_weight``, ``recon_weight``, ``use_ema``,
            ``threshold_ema_dead_code``, ``train_sinkhorn``, ``kmeans_iters``, ``hidden``; ``rqvae`` also
            ``latent_dim`` and ``kmeans_init_epoch`` (None = random codebooks).
    Returns:
        :class:`SemanticIds` with ``.codes`` LongTensor [N, L] ([N, L + 1] with ``dedup``).
    Raises:
        CodecError: NaN / infinite values, wrong shape, fewer items than codes, unknown method or option.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise CodecError(f"unknown method {method!r}: use 'rqkmeans', 'rqvae' or 'rqkmeans+'.")
    L = _check_int(levels, "levels", 1)
    K = _check_int(codebook_size, "codebook_size", 2)
    seed = _check_int(seed, "seed", 0)
    opts = _options(method, options)
    x = _rows(embeddings)
    N, D = x.shape
    if N < K:
        raise CodecError(f"fitting {K} codes per level needs at least {K} items, got {N}.")
    t0 = time.perf_counter()
    xn, shift, scale = _normalized(x, opts["normalize"])
    assign = dict(balance=opts["balance"], balance_levels=opts["balance_levels"],
                  capacity_slack=float(opts["capacity_slack"]), unique_last=bool(opts["unique_last"]),
                  sinkhorn_iters=int(opts["sinkhorn_iters"]), sinkhorn_temperature=float(opts["sinkhorn_temperature"]))
    model, codes, recon = _fit_method(method, xn, L, K, seed, opts, assign)
    codes = codes.long().cpu()
    all_codes = torch.cat([codes, dedup_column(codes)[:, None]], 1) if opts["dedup"] else codes
    rep = _report(codes, all_codes, xn, recon.float(), K)
    rep.update(method=method, levels=L, codebook_size=K, fit_seconds=time.perf_counter() - t0)
    return SemanticIds(method, L, K, D, opts, all_codes, model, shift, scale, rep)


def load(directory: Union[str, os.PathLike]) -> SemanticIds:
    """Read a directory written by :meth:`SemanticIds.save` (JSON + safetensors only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    d = os.fspath(directory)
    cfg_path, t_path = os.path.join(d, CONFIG_NAME), os.path.join(d, TENSORS_NAME)
    if not os.path.isfile(cfg_path) or not os.path.isfile(t_path):
        raise CodecError(f"'{d}' is not a saved SemanticIds directory (no {CONFIG_NAME} or {TENSORS_NAME}).")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            meta = json.load(f)
        tensors = load_file(t_path)
    except (OSError, ValueError, SafetensorError) as exc:
        raise CodecError(f"cannot read the SemanticIds files in '{d}': {exc}.") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("method") not in METHODS:
        raise CodecError(f"'{cfg_path}' is not a SemanticIds file.")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise CodecError(f"'{cfg_path}' has format version {meta.get('version')}; this codec reads up to "
                         f"version {FORMAT_VERSION}.")
    method, L, K, D = meta["method"], int(meta["levels"]), int(meta["codebook_size"]), int(meta["input_dim"])
    if method == "rqkmeans":
        model: torch.nn.Module = _quantizer(D, L, K)
    else:
        with torch.random.fork_rng(devices=[]):
            model = RQVAE(**meta["model_config"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
        codes = tensors["codes"]
        shift, scale = tensors["norm.shift"], tensors["norm.scale"]
    except (KeyError, RuntimeError) as exc:
        raise CodecError(f"'{t_path}' does not match its {CONFIG_NAME}.") from exc
    return SemanticIds(method, L, K, D, meta["options"], codes, model, shift, scale, meta["report"])
