"""Model benchmarks called by ``codec bench``: offline speed, streaming per-chunk cost, streaming peak memory.

All functions take extra keyword arguments and ignore the ones they do not use (the CLI passes a common set).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, Optional

import torch


def _threads(threads: Optional[int]):
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    return old


def _time_round_trip(encode, decode, x: torch.Tensor, sample_rate: int, repeats: int):
    """Best-of-``repeats`` wall seconds of ``encode(x)`` and of ``decode(codes)`` under inference mode, after a
    one-second warm-up (weight-folding caches).  Returns ``(encode_s, decode_s, codes)``."""
    with torch.inference_mode():
        decode(encode(x[..., : min(x.shape[-1], sample_rate)]))
        te, td = [], []
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            codes = encode(x)
            te.append(time.perf_counter() - t)
            t = time.perf_counter()
            decode(codes)
            td.append(time.perf_counter() - t)
    return min(te), min(td), codes


def benchmark_model(model, seconds: float = 10.0, nq: int = 8, threads: int = 2, repeats: int = 3,
                    device: Optional[str] = None, **_: Any) -> Dict[str, Any]:
    """Offline encode / decode speed on ``seconds`` of noise-like audio (best of ``repeats``).

    Returns ``{"seconds", "nq", "threads", "encode_x_realtime", "decode_x_realtime", "encode_s", "decode_s",
    "params", "macs_per_frame", "latency_ms"}``.  ``x_realtime`` = audio seconds / wall seconds."""
    old = _threads(threads)
    try:
        model.eval()
        dev = model.device
        sr = model.sample_rate
        nq = min(int(nq), model.num_quantizers)
        g = torch.Generator().manual_seed(0)
        x = (0.1 * torch.randn(1, 1, int(seconds * sr), generator=g)).to(dev)
        e, d, _ = _time_round_trip(lambda a: model.encode(a, nq=nq), model.decode, x, sr, repeats)
        return {"seconds": float(seconds), "nq": nq, "threads": torch.get_num_threads(),
                "encode_x_realtime": seconds / e, "decode_x_realtime": seconds / d,
                "encode_s": e, "decode_s": d, "params": model.num_parameters(),
                "macs_per_frame": codec_macs_per_frame(model), "latency_ms": model.latency_ms}
    finally:
        torch.set_num_threads(old)


def load_encodec_reference(nq: int = 8):
    """EnCodec 24 kHz (the ``encodec`` package: causal, weight norm, ``nq`` levels = ``0.75 * nq`` kbps) with
    random weights, built locally (nothing is downloaded): the speed reference of ``codec bench encodec``.

    Returns ``(model, sample_rate)``; ``model.encode(x [B, 1, T])`` / ``model.decode(frames)`` are EnCodec's own."""
    from codec.errors import CodecError

    try:
        from encodec.model import EncodecModel
    except ImportError as exc:
        raise CodecError(f"codec bench encodec needs the 'encodec' package and torchaudio "
                         f"(pip install encodec torchaudio==2.11.0): {exc}.") from None
    kbps = 0.75 * int(nq)
    model = EncodecModel._get_model([kbps], 24000, 1, causal=True, model_norm="weight_norm",
                                    audio_normalize=False, segment=None, name="encodec_24khz_random")
    model.set_target_bandwidth(kbps)
    return model.eval(), 24000


def benchmark_encodec(seconds: float = 10.0, nq: int = 8, threads: int = 2, repeats: int = 3,
                      **_: Any) -> Dict[str, Any]:
    """EnCodec 24 kHz offline encode / decode speed, timed exactly like :func:`benchmark_model` (best of
    ``repeats`` on the same noise-like input) so that the two figures compare like with like.

    Returns ``{"seconds", "nq", "threads", "encode_x_realtime", "decode_x_realtime", "encode_s", "decode_s",
    "params", "macs_per_frame"}`` (MACs counted by :func:`macs_per_frame`)."""
    model, sr = load_encodec_reference(nq)
    old = _threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        x = 0.1 * torch.randn(1, 1, int(seconds * sr), generator=g)
        e, d, frames = _time_round_trip(model.encode, model.decode, x, sr, repeats)
        levels = int(frames[0][0].shape[1])
        return {"seconds": float(seconds), "nq": levels, "threads": torch.get_num_threads(),
                "encode_x_realtime": seconds / e, "decode_x_realtime": seconds / d, "encode_s": e, "decode_s": d,
                "params": sum(p.numel() for p in model.parameters()),
                "macs_per_frame": macs_per_frame(model, sr)}
    finally:
        torch.set_num_threads(old)


def _layer_macs(mod: torch.nn.Module, inp, out) -> int:
    """Multiply-accumulates of one call of a counted layer (0 for other modules; children count themselves)."""
    from codec.nn.conv import StreamingConv1d, StreamingConvTranspose1d
    from codec.nn.fourier import CausalSTFT, ConvNeXtBlock, ISTFTHead

    if isinstance(mod, (torch.nn.Conv1d, StreamingConv1d)):  # per output position
        groups = mod.groups if isinstance(mod, torch.nn.Conv1d) else 1
        k = mod.kernel_size[0] if isinstance(mod, torch.nn.Conv1d) else mod.kernel_size
        return out.shape[-1] * mod.out_channels * mod.in_channels // groups * k
    if isinstance(mod, (torch.nn.ConvTranspose1d, StreamingConvTranspose1d)):  # per input position
        groups = mod.groups if isinstance(mod, torch.nn.ConvTranspose1d) else 1
        k = mod.kernel_size[0] if isinstance(mod, torch.nn.ConvTranspose1d) else mod.kernel_size
        return inp[0].shape[-1] * mod.out_channels * mod.in_channels // groups * k
    if isinstance(mod, torch.nn.LSTM):
        steps = inp[0].shape[1 if mod.batch_first else 0]
        return steps * mod.num_layers * 4 * mod.hidden_size * (mod.hidden_size + mod.input_size)
    if isinstance(mod, torch.nn.Linear):  # per row
        return out.numel() // out.shape[-1] * mod.in_features * mod.out_features
    if isinstance(mod, CausalSTFT):  # the DFT basis GEMM per frame
        return out.shape[1] * mod.n_fft * 2 * mod.bins
    if isinstance(mod, ConvNeXtBlock):  # the depthwise conv (its linears count themselves)
        return out.shape[1] * mod.kernel_size * mod.dim
    if isinstance(mod, ISTFTHead):  # the inverse DFT per frame (its projection counts itself)
        return inp[0].shape[1] * mod.n_fft * mod.bins * 2
    return 0


def macs_per_frame(model: torch.nn.Module, samples: int) -> Dict[str, float]:
    """Multiply-accumulates per frame of ``model.encoder`` and ``model.decoder``, counted with forward hooks on
    every layer while ``samples`` of silence ``[1, 1, samples]`` are encoded and decoded (convolutions,
    transposed convolutions, LSTMs, linears, and the STFT / depthwise conv / inverse STFT of the Fourier
    layers; element-wise ops and norms are not counted).  Works for :class:`codec.model.CodecModel` and for
    EnCodec.  ``samples`` must be a whole number of frames."""
    counts = {"encoder": 0, "decoder": 0}

    def hook(part: str):
        def count(mod, inp, out):
            counts[part] += _layer_macs(mod, inp, out)
        return count

    hooks = [mod.register_forward_hook(hook(part)) for part in counts for mod in getattr(model, part).modules()]
    try:
        with torch.inference_mode():
            latent = model.encoder(torch.zeros(1, 1, int(samples)))
            model.decoder(latent)
    finally:
        for h in hooks:
            h.remove()
    frames = latent.shape[-1]
    return {part: n / frames for part, n in counts.items()}


def codec_macs_per_frame(model) -> Dict[str, int]:
    """MACs per frame of a :class:`codec.model.CodecModel`: encoder, decoder (:func:`macs_per_frame` on 8 frames)
    and the quantizer with all levels (input projection and distance GEMM of every level)."""
    c = model.config
    counted = macs_per_frame(model, 8 * model.hop_length)
    rvq_dim = c.rvq_dim or c.latent_dim
    rvq = c.num_quantizers * (rvq_dim * c.codebook_dim + c.codebook_dim * c.codebook_size)
    return {"encoder": int(counted["encoder"]), "decoder": int(counted["decoder"]), "rvq_all_levels": int(rvq)}


def benchmark_streaming(model, chunk_frames: int = 1, seconds: float = 5.0, nq: int = 8,
                        threads: int = 2, batch_size: int = 1, **_: Any) -> Dict[str, Any]:
    """Streaming per-chunk wall time (encoder feed and decoder feed), ``chunk_frames`` frames per chunk.

    Returns mean / median / p95 / max milliseconds per chunk for encoder and decoder, the chunk length in ms
    and the real-time factor (chunk duration / mean time)."""
    old = _threads(threads)
    try:
        model.eval()
        sr, hop = model.sample_rate, model.hop_length
        nq = min(int(nq), model.num_quantizers)
        chunk = hop * int(chunk_frames)
        g = torch.Generator().manual_seed(0)
        x = (0.1 * torch.randn(batch_size, 1, int(seconds * sr), generator=g)).to(model.device)
        et, dt, nfr = [], [], 0
        with torch.inference_mode():
            enc = model.stream_encoder(batch_size, nq=nq)
            dec = model.stream_decoder(batch_size)
            enc.feed(x[..., :chunk])
            enc.reset()
            for i in range(0, x.shape[-1] - chunk + 1, chunk):
                t = time.perf_counter()
                c = enc.feed(x[..., i:i + chunk])
                et.append(time.perf_counter() - t)
                if c.shape[-1]:
                    t = time.perf_counter()
                    dec.feed(c)
                    dt.append(time.perf_counter() - t)
                    nfr += c.shape[-1]

        def stats(v):
            v = sorted(1000.0 * a for a in v) or [0.0]
            return {"mean_ms": statistics.fmean(v), "median_ms": v[len(v) // 2],
                    "p95_ms": v[int(0.95 * (len(v) - 1))], "max_ms": v[-1], "n": len(v)}

        chunk_dur = 1000.0 * chunk / sr
        es, ds = stats(et), stats(dt)
        return {"chunk_samples": chunk, "chunk_ms": chunk_dur, "batch_size": batch_size, "nq": nq,
                "threads": torch.get_num_threads(), "latency_ms": model.latency_ms,
                "encoder": es, "decoder": ds,
                "encoder_x_realtime": chunk_dur / max(es["mean_ms"], 1e-9),
                "decoder_x_realtime": (hop / sr) * nfr / max(sum(dt), 1e-9) if dt else None}
    finally:
        torch.set_num_threads(old)


_CHILD = r"""
import json, resource, sys, time, torch
import codec
from codec.config import CodecConfig
from codec.model import CodecModel
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
model = codec.load(args["model"]) if args["model"] else CodecModel(CodecConfig.from_dict(args["config"])).eval()
sr, hop = model.sample_rate, model.hop_length
chunk = hop * args["chunk_frames"]
n = int(args["seconds"] * sr) // chunk
g = torch.Generator().manual_seed(0)
base = 0.1 * torch.randn(1, 1, chunk * 50, generator=g)
t0 = time.perf_counter()
with torch.inference_mode():
    enc = model.stream_encoder(1, nq=args["nq"])
    dec = model.stream_decoder(1)
    for i in range(n):
        c = enc.feed(base[..., (i % 50) * chunk:(i % 50 + 1) * chunk])
        if args["decode"] and c.shape[-1]:
            dec.feed(c)
    enc.flush()
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "wall_s": time.perf_counter() - t0}))
"""


def peak_memory_streaming(model=None, seconds_list=(60.0, 600.0), nq: int = 8, threads: int = 2,
                          chunk_frames: int = 75, decode: bool = True, model_path: Optional[str] = None,
                          **_: Any) -> Dict[str, Any]:
    """Peak RSS (ru_maxrss, MB) of a fresh subprocess that streams ``seconds`` of audio through the encoder (and
    decoder), for each duration in ``seconds_list``.  Flat numbers mean constant memory.

    ``model``: a CodecModel (its config is rebuilt with random weights in the child, same sizes) or
    ``model_path`` (a directory loaded in the child)."""
    if model is None and model_path is None:
        raise ValueError("pass model or model_path")
    cfg = model.config.to_dict() if model is not None else None
    out: Dict[str, Any] = {"nq": nq, "threads": threads, "chunk_frames": chunk_frames, "decode": decode,
                           "runs": []}
    for s in seconds_list:
        args = {"model": model_path, "config": cfg, "seconds": float(s), "nq": int(nq), "threads": int(threads),
                "chunk_frames": int(chunk_frames), "decode": bool(decode)}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.pathsep + \
            env.get("PYTHONPATH", "")
        r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                           env=env, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"memory benchmark child failed: {r.stderr.strip().splitlines()[-1:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["audio_seconds"] = float(s)
        out["runs"].append(res)
    return out
