"""Export a codec model to ONNX graphs plus a JSON manifest, and to ``torch.export`` programs.

>>> from codec.deploy import export_onnx
>>> manifest = export_onnx(codec.load("speech-24k"), "speech-24k-onnx", nq=8)

``out_dir`` receives ``encoder.onnx``, ``decoder.onnx``, ``encoder_step.onnx``, ``decoder_step.onnx`` (see
:mod:`codec.deploy.graphs` for their inputs and outputs) and ``manifest.json`` (sample rate, hop, levels, decoder
delay, every graph's input / output names, dtypes and shapes, and the state tensors of the step graphs).
Dynamic axes: ``batch`` everywhere, ``samples`` (encoder), ``frames`` and ``levels`` (decoder, levels
1..num_quantizers); the step graphs process exactly one frame.  ``precision="float64"`` writes float64 encoder
graphs (see :mod:`codec.deploy.graphs`; recorded in the manifest).

The ONNX files are written without the exporter's graph optimizer (``optimize=False``): its constant folding
dropped the ``+ 1e-10`` under the STFT magnitude's square root (a constant "close to zero"), which changed the
encoder's features in silent frames and hence their codes.  ONNX Runtime optimises the graph when it loads it.

:func:`export_program` gives the same graphs as ``torch.export.ExportedProgram`` (the ONNX files are converted
from these programs).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.export import Dim

from ..errors import CodecError
from .graphs import GRAPHS, build_graph, graph_dtype

__all__ = ["export_onnx", "export_program", "export_graphs", "ExportedGraph",
           "graph_signature", "MANIFEST", "DEFAULT_OPSET", "FORMAT"]

MANIFEST = "manifest.json"
DEFAULT_OPSET = 18
MIN_OPSET = 18  # Col2Im: the Fourier decoder's overlap-add
FORMAT = "codec-onnx-1"
_EXAMPLE_FRAMES = 7  # frames of the example inputs (any value > 1: 0 and 1 would be specialised)


def _check_nq(model: nn.Module, nq: Optional[int]) -> int:
    top = int(model.num_quantizers)
    n = top if nq is None else int(nq)
    if not 1 <= n <= top:
        raise CodecError(f"nq {n} is out of range: this model has levels 1 to {top}.")
    return n


def graph_signature(graph: nn.Module, name: str) -> Tuple[Tuple[torch.Tensor, ...], List[Dict[str, Any]],
                                                         List[Dict[str, Any]]]:
    """Example inputs (batch 2) of graph ``name`` and its input / output specs ``{name, dtype, shape}`` (symbolic
    axes as names)."""
    hop, top = graph.hop, graph.num_quantizers
    f = _EXAMPLE_FRAMES
    if name == "encoder":
        ex = (torch.zeros(2, 1, f * hop + hop // 3),)
        ins = [("audio", "float32", ["batch", 1, "samples"])]
        outs = [("codes", "int64", ["batch", graph.nq, "frames"])]
    elif name == "decoder":
        ex = (torch.zeros(2, top, f, dtype=torch.long),)
        ins = [("codes", "int64", ["batch", "levels", "frames"])]
        outs = [("audio", "float32", ["batch", 1, f"frames*{hop}"])]
    else:
        if name == "encoder_step":
            ex = (torch.zeros(2, 1, hop),)
            ins = [("audio", "float32", ["batch", 1, hop])]
            outs = [("codes", "int64", ["batch", graph.nq, 1])]
        else:
            ex = (torch.zeros(2, top, 1, dtype=torch.long),)
            ins = [("codes", "int64", ["batch", "levels", 1])]
            outs = [("audio", "float32", ["batch", 1, hop])]
            if graph.delay:
                outs.append(("tail", "float32", ["batch", 1, graph.delay]))
        states = graph.initial_states(2)
        ex = ex + tuple(states)
        for k, v in zip(graph.state_names, states):
            shape = ["batch", *v.shape[1:]]
            dt = str(v.dtype).replace("torch.", "")
            ins.append((f"state.{k}", dt, shape))
            outs.append((f"next_state.{k}", dt, shape))
    spec = lambda items: [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in items]  # noqa: E731
    return ex, spec(ins), spec(outs)


def _dynamic_shapes(name: str, inputs: List[Dict[str, Any]], top: int):
    batch = Dim("batch")
    dims = {"samples": Dim.DYNAMIC, "frames": Dim("frames", min=1),
            "levels": Dim("levels", min=1, max=top)}
    out = []
    for spec in inputs:
        out.append({i: batch if a == "batch" else dims[a] for i, a in enumerate(spec["shape"]) if isinstance(a, str)})
    return (out[0], tuple(out[1:])) if name.endswith("_step") else tuple(out)  # step graphs: (x, *states)


def _prepare(model: nn.Module, name: str, nq: Optional[int], precision: Optional[str] = None):
    if name not in GRAPHS:
        raise CodecError(f"unknown graph '{name}' (use one of {', '.join(GRAPHS)}).")
    graph = build_graph(model, name, _check_nq(model, nq), precision)
    ex, ins, outs = graph_signature(graph, name)
    return graph, ex, ins, outs


def _export(graph: nn.Module, name: str, ex, ins) -> "torch.export.ExportedProgram":
    with torch.no_grad():
        return torch.export.export(graph, ex, dynamic_shapes=_dynamic_shapes(name, ins, graph.num_quantizers),
                                   strict=False)


@dataclass
class ExportedGraph:
    """One exported graph: its ``torch.export`` program, example inputs and input / output specs."""

    name: str
    program: "torch.export.ExportedProgram"
    example: Tuple[torch.Tensor, ...]
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]


def export_graphs(model: nn.Module, nq: Optional[int] = None, graphs: Sequence[str] = tuple(GRAPHS),
                  precision: Optional[str] = None) -> Dict[str, ExportedGraph]:
    """``torch.export`` the graphs ``graphs`` of ``model`` (see :mod:`codec.deploy.graphs`) with the dynamic axes
    of the ONNX export; ``nq`` sets the encoders' levels (default all), ``precision`` their arithmetic
    (float32 or float64)."""
    nq = _check_nq(model, nq)
    out = {}
    for name in graphs:
        graph, ex, ins, outs = _prepare(model, name, nq, precision)
        out[name] = ExportedGraph(name, _export(graph, name, ex, ins), ex, ins, outs)
    return out


def export_program(model: nn.Module, name: str = "encoder", nq: Optional[int] = None,
                   precision: Optional[str] = None) -> "torch.export.ExportedProgram":
    """``torch.export`` program of graph ``name`` (``encoder``, ``decoder``, ``encoder_step``, ``decoder_step``);
    ``program.module()(*inputs)`` runs it with the inputs listed in the manifest, in order."""
    return export_graphs(model, nq, (name,), precision)[name].program


def export_onnx(model: nn.Module, out_dir: Union[str, os.PathLike], nq: Optional[int] = None,
                opset: int = DEFAULT_OPSET, graphs: Sequence[str] = tuple(GRAPHS),
                model_name: Optional[str] = None, exported: Optional[Dict[str, ExportedGraph]] = None,
                precision: Optional[str] = None) -> Dict[str, Any]:
    """Write the ONNX graphs of ``model`` and ``manifest.json`` to ``out_dir``; returns the manifest.

    Args:
        model: a :class:`codec.CodecModel` (left unchanged; the export works on a folded copy).
        out_dir: directory (created).
        nq: levels the encoder graphs produce (default all); the decoder graphs take any 1..num_quantizers.
        opset: ONNX opset (default 18).
        graphs: which graphs to write (default all four).
        model_name: recorded in the manifest (default: the model's weights hash, if known).
        exported: programs from :func:`export_graphs` to convert (default: exported here, in ``precision``).
        precision: the encoder graphs' arithmetic, ``"float32"`` (default) or ``"float64"`` (codes equal to
            ``model.encode(..., precision="float64")`` in ONNX Runtime; Fourier encoders only).
    """
    import onnx  # noqa: F401  (a clear error below when the extra is missing)

    nq = _check_nq(model, nq)
    precision = precision or "float32"
    graph_dtype(model, precision)  # refuses an unknown or unsupported precision before anything is written
    if int(opset) < MIN_OPSET:
        raise CodecError(f"opset {opset} is too old: the graphs need ONNX opset {MIN_OPSET} or newer.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CodecError(f"the output '{out}' exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    manifest: Dict[str, Any] = {
        "format": FORMAT, "model": model_name or getattr(model, "weights_hash", None),
        "sample_rate": int(model.sample_rate), "hop_length": int(model.hop_length),
        "frame_rate": float(model.frame_rate), "nq": nq, "num_quantizers": int(model.num_quantizers),
        "codebook_size": int(model.codebook_size), "decoder_delay": int(model.decoder_delay),
        "precision": precision, "opset": int(opset), "torch": torch.__version__, "graphs": {},
    }
    for name in graphs:
        g = exported[name] if exported and name in exported else export_graphs(model, nq, (name,), precision)[name]
        path = out / f"{name}.onnx"
        torch.onnx.export(g.program, g.example, str(path), dynamo=True, optimize=False, opset_version=int(opset),
                          verbose=False,
                          external_data=False, input_names=[s["name"] for s in g.inputs],
                          output_names=[s["name"] for s in g.outputs])
        manifest["graphs"][name] = {"file": path.name, "inputs": g.inputs, "outputs": g.outputs}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
