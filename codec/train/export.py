"""Export a training run as a ``save_pretrained`` model directory with a model card.

``python -m codec.train.export RUN_DIR OUT_DIR [--checkpoint best|latest|FILE]`` (or
``codec train --export RUN_DIR OUT_DIR``): loads the best checkpoint (by validation loss; the latest one
when no validation ran), takes the EMA weights when the run used EMA, writes the model with
``save_pretrained(model, OUT_DIR)`` (safetensors + config.json), the discriminators as
``discriminator.safetensors`` (for fine-tuning with ``model.init_from``) and a ``README.md`` model card
(data, steps, hours, metrics).

``--discriminators-only`` (:func:`export_discriminators`) adds a run's discriminators to an existing model directory
whose weights are the run's generator, e.g. after a ``train.freeze_generator`` warm-up of a shipped model.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from codec.errors import CodecError
from codec.pretrained import save_pretrained

__all__ = ["export_run", "export_discriminators", "model_card", "main"]


def _pick_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    from .trainer import find_latest_checkpoint

    if checkpoint not in ("best", "latest"):
        return Path(checkpoint)
    if checkpoint == "best" and (run_dir / "best.pt").is_file():
        return run_dir / "best.pt"
    latest = find_latest_checkpoint(run_dir)
    if latest is None:
        raise CodecError(f"no checkpoint found in '{run_dir}'.")
    return latest


def _portable(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The training config without this machine's paths: data manifests and out_dir by file name only."""
    out = json.loads(json.dumps(cfg, default=str))
    for section, key in (("data", "train"), ("data", "valid"), ("train", "out_dir"), ("train", "resume"),
                         ("model", "init_from")):
        v = out.get(section, {}).get(key)
        if isinstance(v, str) and ("/" in v or "\\" in v):
            out[section][key] = Path(v).name
        elif isinstance(v, list):
            out[section][key] = [Path(str(x)).name for x in v]
    return out


def _disc_note(cfg: Dict[str, Any], state: Dict[str, Any]) -> str:
    """One line on the discriminators the export ships (or why none)."""
    if state.get("disc") is None:
        return "none (trained without them)"
    d = cfg.get("discriminator", {})
    note = (f"`discriminator.safetensors` (MPD periods {d.get('periods')} x {d.get('mpd_channels')} ch, MS-STFT "
            f"windows {d.get('stft_windows')} x {d.get('stft_channels')} ch; fine-tune with the same "
            f"`discriminator` settings)")
    if cfg.get("train", {}).get("freeze_generator"):
        note += "; only they were trained here, against the frozen generator of init_from"
    return note


def _validation_of(state: Dict[str, Any]) -> Tuple[Optional[int], Dict[str, float], str]:
    """The validation a checkpoint's card reports -> (step or None, metrics, heading).

    The run's latest validation up to this checkpoint (``last_valid``): this checkpoint's own weights when its
    step is the checkpoint's, else the last score before it. Checkpoints written before runs kept
    ``last_valid`` only hold the run's best validation, which may be another step's weights."""
    last = state.get("last_valid") or {}
    if last.get("metrics"):
        vs, step = int(last["step"]), state.get("step")
        where = "these weights" if vs == step else f"the last validation before this step-{step} checkpoint"
        return vs, dict(last["metrics"]), f"Validation metrics (step {vs}, {where})"
    return state.get("best_step"), dict(state.get("best_metrics") or {}), "Validation metrics (best checkpoint)"


def model_card(state: Dict[str, Any], name: str, raw: bool = False) -> str:
    """Markdown model card from a checkpoint state (config, steps, hours, validation metrics); ``raw``: the
    exported weights are the raw ones although the run kept an EMA."""
    cfg = _portable(state.get("config") or {})
    data = cfg.get("data", {})
    mc = state.get("model_config") or {}
    valid_step, metrics, heading = _validation_of(state)
    lines = [f"# {name}", "", "Neural audio codec trained with `codec train` "
             f"(exported {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}).", "",
             "## Model", ""]
    keys = ["sample_rate", "strides", "latent_dim", "num_quantizers", "codebook_size", "codebook_dim",
            "encoder_type", "decoder_type"]
    if "fourier" in (mc.get("encoder_type"), mc.get("decoder_type")):
        keys += ["n_fft", "fourier_dim", "fourier_mlp", "fourier_kernel", "encoder_layers", "decoder_layers"]
    for k in keys:
        if k in mc:
            lines.append(f"- {k}: {mc[k]}")
    if mc:
        from codec.config import CodecConfig

        try:
            lines.append(f"- algorithmic latency: {CodecConfig.from_dict(mc).latency_ms:.1f} ms")
        except ValueError:
            pass
    lines += ["", "## Training", "",
              f"- steps: {state.get('step')}",
              f"- training time (wall clock of the training steps, validation excluded): "
              f"{float(state.get('elapsed', 0.0)) / 3600:.2f} h",
              f"- audio seen: {float(state.get('audio_seconds', 0.0)) / 3600:.2f} h",
              f"- initialised from: {cfg.get('model', {}).get('init_from') or 'random weights'}",
              f"- training data: {data.get('train')} ({float(state.get('train_hours', 0.0)):.2f} h in the manifest)",
              f"- validation data: {data.get('valid')}",
              f"- crop: {data.get('crop_seconds')} s, batch size {data.get('batch_size')}",
              f"- recipe: model preset `{cfg.get('model', {}).get('preset')}`, "
              f"lr {cfg.get('optim', {}).get('lr')}, adversarial from step {cfg.get('adversarial', {}).get('start_step')}"
              f" ({'on' if cfg.get('adversarial', {}).get('enabled') else 'off'})",
              f"- weights: {exported_weights(state, raw)[1]}",
              f"- discriminators: {_disc_note(cfg, state)}",
              "", f"## {heading}", ""]
    shown = {k: v for k, v in metrics.items() if not k.startswith(("codebook_usage/level", "codebook_perplexity/level"))}
    if shown:
        lines += ["| metric | value |", "|---|---|"]
        for k, v in sorted(shown.items()):
            lines.append(f"| {k} | {v:.3f} |")
    else:
        lines.append("No validation was run.")
    best_step = state.get("best_step")
    if best_step is not None and best_step != valid_step:
        lines += ["", f"The run's best validation by `{cfg.get('train', {}).get('best_metric')}` was at step "
                  f"{best_step} (`best.pt`, `--checkpoint best`)."]
    if shown and raw and state.get("ema") is not None:
        lines += ["", "Validation scored the EMA weights; this export holds the raw ones."]
    lines += ["", "Mel = multi-scale log-mel distance (lower is better); SI-SDR in dB (higher is better).", ""]
    return "\n".join(lines)


def exported_weights(state: Dict[str, Any], raw: bool = False) -> Tuple[Dict[str, Any], str]:
    """The weights an export of checkpoint ``state`` holds, and their kind: the EMA when the run kept one
    (``EMA``), unless ``raw`` (``raw (not the EMA)``); else the raw weights (``raw``)."""
    if state.get("ema") is None:
        return state["model"], "raw"
    return (state["model"], "raw (not the EMA)") if raw else (state["ema"], "EMA")


def export_run(run_dir: Union[str, Path], out_dir: Union[str, Path], checkpoint: str = "best",
               name: Optional[str] = None, half: bool = False, int8: bool = False, raw: bool = False) -> Path:
    """Export ``run_dir``'s best (or ``checkpoint``) state to ``out_dir`` (``half``: float16 weights; ``int8``:
    int8 weight matrices with a scale per row, the rest float16; see :func:`codec.pretrained.save_pretrained`);
    the EMA weights when the run kept them, unless ``raw``.  Returns ``out_dir``."""
    from .trainer import build_model, load_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise CodecError(f"run directory '{run_dir}' does not exist.")
    ck = _pick_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(ck)
    cfg = state["config"]
    model_cfg = dict(cfg["model"])
    model_cfg["init_from"] = None  # the architecture is in the checkpoint; no need for the original weights
    model = _model_from_state(state, model_cfg)
    weights, kind = exported_weights(state, raw)
    model.load_state_dict(weights)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, str(out_dir), half=half, int8=int8)
    if state.get("disc") is not None:
        from safetensors.torch import save_file

        from codec.audio import atomic_output

        with atomic_output(out_dir / "discriminator.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in state["disc"].items()}, str(tmp))
    (out_dir / "README.md").write_text(model_card(state, name or out_dir.name, raw))
    valid_step, metrics, _ = _validation_of(state)
    (out_dir / "training.json").write_text(json.dumps({
        "checkpoint": ck.name, "step": state.get("step"), "weights": kind,
        "validation": {"step": valid_step, "metrics": metrics},
        "best_step": state.get("best_step"), "best_metrics": state.get("best_metrics"),
        "elapsed_hours": float(state.get("elapsed", 0.0)) / 3600,
        "init_from": _portable(cfg)["model"].get("init_from"), "train_hours": float(state.get("train_hours", 0.0)),
        "audio_hours_seen": float(state.get("audio_seconds", 0.0)) / 3600,
        "discriminators": "discriminator.safetensors" if state.get("disc") is not None else None,
        "config": _portable(cfg)}, indent=2))
    return out_dir


def export_discriminators(run_dir: Union[str, Path], out_dir: Union[str, Path], checkpoint: str = "best") -> Path:
    """Write ``run_dir``'s discriminators as ``out_dir/discriminator.safetensors`` beside the model already there,
    and note them in its ``README.md`` and ``training.json``; returns the file.

    Raises:
        CodecError: the run has no discriminators, ``out_dir`` holds no model, or that model's weights are not
            the run's generator (the discriminators only fit the generator they were trained against).
    """
    import torch
    from safetensors.torch import save_file

    import codec
    from codec.audio import atomic_output

    from .trainer import load_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ck = _pick_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(ck)
    if state.get("disc") is None:
        raise CodecError(f"run '{run_dir}' trained no discriminators.")
    if not (out_dir / "config.json").is_file():
        raise CodecError(f"'{out_dir}' holds no model (config.json): export the whole run instead.")
    shipped = codec.load(str(out_dir)).state_dict()
    weights = exported_weights(state)[0]
    if set(shipped) != set(weights) or any(not torch.equal(shipped[k].cpu(), weights[k].cpu()) for k in shipped):
        raise CodecError(f"the generator of run '{run_dir}' is not the model in '{out_dir}': "
                         "discriminators only fit the generator they were trained against.")
    cfg = _portable(state.get("config") or {})
    meta = {"discriminator": json.dumps(cfg.get("discriminator", {})), "steps": str(state.get("step")),
            "adversarial_loss": str(cfg.get("adversarial", {}).get("loss"))}
    f = out_dir / "discriminator.safetensors"
    with atomic_output(f) as tmp:  # the usual file mode (safetensors alone writes 0600), never half-written
        save_file({k: v.contiguous() for k, v in state["disc"].items()}, str(tmp), metadata=meta)
    note = {"steps": state.get("step"), "run_config": cfg, "frozen_generator": bool(cfg.get("train", {}).get(
        "freeze_generator")), "hours": float(state.get("elapsed", 0.0)) / 3600}
    tj = out_dir / "training.json"
    info = json.loads(tj.read_text()) if tj.is_file() else {}
    info["discriminators"] = note
    tj.write_text(json.dumps(info, indent=2))
    card = out_dir / "README.md"
    text = card.read_text().split("\n## Discriminators\n")[0].rstrip("\n") if card.is_file() else f"# {out_dir.name}"
    card.write_text(text + "\n\n## Discriminators\n\n"
                    f"- {_disc_note(cfg, state)}\n"
                    f"- steps: {state.get('step')} ({note['hours']:.2f} h), data: {cfg.get('data', {}).get('train')}\n"
                    "- fine-tuning with `model.init_from` loads them (`model.init_discriminators`, default true)\n")
    return f


def _model_from_state(state: Dict[str, Any], model_cfg: Dict[str, Any]):
    mc = state.get("model_config")
    if mc:
        from codec.config import CodecConfig
        from codec.model import CodecModel

        try:
            ccfg = CodecConfig.from_dict(mc) if hasattr(CodecConfig, "from_dict") else CodecConfig(**mc)
            return CodecModel(ccfg)
        except Exception:  # noqa: BLE001 - fall back on preset + overrides
            pass
    from .trainer import build_model

    return build_model(model_cfg)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m codec.train.export RUN_DIR OUT_DIR [--checkpoint best|latest|FILE] [--half]``."""
    p = argparse.ArgumentParser(prog="python -m codec.train.export", description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--name", default=None)
    p.add_argument("--half", action="store_true", help="store float16 weights (loading upcasts them)")
    p.add_argument("--int8", action="store_true",
                   help="store the encoder's and decoder's weight matrices as int8 with a scale per row, the rest "
                   "float16 (loading upcasts them)")
    args = p.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.out_dir, args.checkpoint, args.name, half=args.half,
                         int8=args.int8)
    except CodecError as exc:
        print(f"codec: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
