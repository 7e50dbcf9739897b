"""Run exported graphs with ONNX Runtime: :class:`OnnxCodec` (offline and frame-by-frame streaming).

>>> onnx_codec = OnnxCodec("speech-24k-onnx")
>>> codes = onnx_codec.encode(audio)            # float32 [B, 1, T] -> int64 [B, nq, F]
>>> audio = onnx_codec.decode(codes)            # -> float32 [B, 1, F * hop]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Union

import numpy as np

from ..errors import CodecError
from .onnx import MANIFEST

__all__ = ["OnnxCodec"]


class OnnxCodec:
    """The graphs of an export directory in ONNX Runtime sessions (``threads`` intra-op threads, CPU)."""

    def __init__(self, directory: Union[str, os.PathLike], threads: int = 1) -> None:
        import onnxruntime as ort

        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise CodecError(f"'{self.dir}' is not an ONNX export directory (no {MANIFEST}).")
        self.manifest = json.loads(path.read_text())
        self.hop = int(self.manifest["hop_length"])
        self.delay = int(self.manifest["decoder_delay"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self.sessions = {name: ort.InferenceSession(str(self.dir / g["file"]), opts, providers=["CPUExecutionProvider"])
                         for name, g in self.manifest["graphs"].items()}

    def _graph(self, name: str):
        if name not in self.sessions:
            raise CodecError(f"this export has no {name} graph.")
        return self.sessions[name], self.manifest["graphs"][name]

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """audio float32 ``[B, 1, T]`` -> codes int64 ``[B, nq, ceil(T / hop)]``."""
        sess, _ = self._graph("encoder")
        return sess.run(None, {"audio": np.ascontiguousarray(audio, dtype=np.float32)})[0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes int64 ``[B, n, F]`` (``-1`` = unused) -> audio float32 ``[B, 1, F * hop]``."""
        sess, _ = self._graph("decoder")
        return sess.run(None, {"codes": np.ascontiguousarray(codes, dtype=np.int64)})[0]

    def initial_states(self, name: str, batch_size: int = 1) -> Dict[str, np.ndarray]:
        """Zero states of step graph ``name`` for ``batch_size`` streams ``{input name: array}``."""
        _, g = self._graph(name)
        return {s["name"]: np.zeros([batch_size, *s["shape"][1:]], dtype=np.dtype(s["dtype"]))
                for s in g["inputs"] if s["name"].startswith("state.")}

    def _step(self, name: str, key: str, x: np.ndarray, states: Dict[str, np.ndarray]):
        sess, g = self._graph(name)
        outs = sess.run(None, {key: x, **states})
        named = dict(zip([o["name"] for o in g["outputs"]], outs))
        new = {k: named["next_" + k] for k in states}
        return named, new

    def stream_encode(self, audio: np.ndarray) -> np.ndarray:
        """Encode ``[B, 1, T]`` one frame at a time with the step graph (zero-padded to whole frames) ->
        codes ``[B, nq, F]``."""
        x = np.asarray(audio, dtype=np.float32)
        x = np.pad(x, ((0, 0), (0, 0), (0, (-x.shape[-1]) % self.hop)))
        states = self.initial_states("encoder_step", x.shape[0])
        out: List[np.ndarray] = []
        for f in range(x.shape[-1] // self.hop):
            named, states = self._step("encoder_step", "audio", x[..., f * self.hop:(f + 1) * self.hop], states)
            out.append(named["codes"])
        return np.concatenate(out, -1)

    def stream_decode(self, codes: np.ndarray) -> np.ndarray:
        """Decode ``[B, n, F]`` one frame at a time with the step graph; the stream's delay is compensated (the
        first ``decoder_delay`` samples dropped, the last step's ``tail`` appended) -> audio ``[B, 1, F * hop]``
        as :meth:`decode` (without silencing ``-1`` frames' overlap, as the PyTorch stream decoder)."""
        c = np.asarray(codes, dtype=np.int64)
        states = self.initial_states("decoder_step", c.shape[0])
        out: List[np.ndarray] = []
        named: Dict[str, np.ndarray] = {}
        for f in range(c.shape[-1]):
            named, states = self._step("decoder_step", "codes", c[..., f:f + 1], states)
            out.append(named["audio"])
        if "tail" in named:
            out.append(named["tail"])
        return np.concatenate(out, -1)[..., self.delay: self.delay + c.shape[-1] * self.hop]
