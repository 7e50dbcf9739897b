"""``codec train`` / ``python -m codec.train``: train from a YAML recipe, resume, or export a run.

Examples::

    CODEC_DATA=/path/to/corpus codec train recipes/tiny-cpu.yaml train.steps=200 data.batch_size=4
    CODEC_DATA=/path/to/corpus codec train recipes/tiny-cpu.yaml --resume   # latest checkpoint in train.out_dir
    CODEC_DATA=/path/to/corpus torchrun --nproc_per_node 4 -m codec.train recipes/speech-24k.yaml
    codec train --export runs/tiny pretrained/my-model      # best checkpoint -> save_pretrained dir
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from codec.errors import CodecError

__all__ = ["add_arguments", "run", "main", "parse_args"]

EPILOG = """examples (the recipes read their data from ${CODEC_DATA}, the corpus folder):
  CODEC_DATA=/path/to/corpus codec train recipes/tiny-cpu.yaml       # trains visibly in minutes on a CPU
  CODEC_DATA=/path/to/corpus codec train recipes/tiny-cpu.yaml train.steps=200 data.batch_size=4 train.out_dir=runs/t
  CODEC_DATA=/path/to/corpus codec train recipes/speech-24k.yaml --resume   # continue from the latest checkpoint
  CODEC_DATA=/path/to/corpus torchrun --nproc_per_node 4 -m codec.train recipes/speech-24k.yaml
  codec train recipes/speech-24k-finetune.yaml data.train=my.jsonl data.valid=my_valid.jsonl   # fine-tune
  codec train --export runs/speech-24k pretrained/my-model  # best checkpoint -> model dir + README.md
  codec train --export runs/speech-24k pretrained/my-model --half   # float16 weights
  codec train --export runs/speech-24k pretrained/my-model --int8   # int8 weight matrices, a quarter of float32
  codec train --export runs/speech-24k pretrained/my-model --raw-weights   # not the EMA of the weights
  codec train --export runs/speech-24k-disc-warmup pretrained/speech-24k --discriminators-only

Overrides are dotted section.key=value pairs (values parsed as YAML); CodecConfig fields go to
model.overrides.<field>=value.  SIGINT/SIGTERM save a checkpoint and stop cleanly."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``codec train`` arguments to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("config", nargs="?", default=None, help="training recipe (YAML), e.g. recipes/tiny-cpu.yaml")
    parser.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the latest checkpoint in train.out_dir (same as train.resume=auto)")
    parser.add_argument("--resume-from", default=None, metavar="CKPT", help="resume from this checkpoint file")
    parser.add_argument("--out-dir", default=None, help="shortcut for train.out_dir=...")
    parser.add_argument("--steps", type=int, default=None, help="shortcut for train.steps=...")
    parser.add_argument("--export", nargs=2, metavar=("RUN_DIR", "OUT_DIR"), default=None,
                        help="export the best checkpoint of RUN_DIR as a save_pretrained directory and exit")
    parser.add_argument("--checkpoint", default="best", help="with --export: 'best', 'latest' or a file")
    parser.add_argument("--half", action="store_true",
                        help="with --export: store float16 weights (half the file; loading upcasts them)")
    parser.add_argument("--int8", action="store_true",
                        help="with --export: store the encoder's and decoder's weight matrices as int8 with a float32 "
                        "scale per row and the rest as float16 (about a quarter of the file; loading upcasts them)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="with --export: the checkpoint's raw weights instead of their EMA (optim.ema)")
    parser.add_argument("--discriminators-only", action="store_true",
                        help="with --export: add the run's discriminator.safetensors to the model already in "
                        "OUT_DIR (its weights must be the run's generator, as after train.freeze_generator)")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")


def run(args: argparse.Namespace) -> int:
    """Run ``codec train`` with parsed ``args``; returns the exit status."""
    if args.export:
        from .export import export_discriminators, export_run

        if args.discriminators_only:
            out = export_discriminators(args.export[0], args.export[1], checkpoint=args.checkpoint)
        else:
            out = export_run(args.export[0], args.export[1], checkpoint=args.checkpoint, half=args.half,
                             int8=args.int8, raw=args.raw_weights)
        print(f"exported {out}")
        return 0
    if not args.config:
        raise CodecError("give a training config (e.g. recipes/tiny-cpu.yaml) or --export RUN_DIR OUT_DIR.")
    from .config import dump_config, load_config

    overrides: List[str] = list(args.overrides)
    if args.out_dir:
        overrides.append(f"train.out_dir={args.out_dir}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.resume_from:
        overrides.append(f"train.resume={args.resume_from}")
    elif args.resume:
        overrides.append("train.resume=auto")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(dump_config(cfg))
        return 0
    from .trainer import Trainer

    trainer = Trainer(cfg)
    trainer.fit()
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass
    return 0


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args`` that also accepts ``section.key=value`` overrides after options
    (``codec train R.yaml --out-dir X train.steps=10``); anything else unknown is a usage error."""
    args, extra = parser.parse_known_args(list(argv))
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(getattr(args, "overrides", None) or []) + extra
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m codec.train`` entry point; user errors print ``codec: error: ...`` and exit 2."""
    from codec.cli import _Parser, _UsageError

    parser = _Parser(prog="python -m codec.train", description="Train a codec model.")
    add_arguments(parser)
    try:
        args = parse_args(parser, list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    except _UsageError as exc:
        print(f"codec: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except CodecError as exc:
        print(f"codec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncodec: interrupted.", file=sys.stderr)
        return 130
