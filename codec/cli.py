"""``codec`` command line: argument parsing and dispatch only.

File work lives in :mod:`codec.pipeline` (encode/decode pipelines), :mod:`codec.codes_format`
(the ``.codes`` format), :mod:`codec.bench` and :mod:`codec.demo`; ``train`` and ``eval`` are
delegated to ``codec.train.cli`` and ``codec.eval.harness`` (imported only when used).

Errors caused by the user (argparse usage errors included) print the single line
``codec: error: <one sentence>`` on stderr and exit with status 2; Ctrl-C exits with 130, SIGTERM with 143
and SIGHUP with 129, each after removing its partial output: no partial output file is ever left behind.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import CodecError, OptionError

__all__ = ["main", "build_parser", "plan_jobs"]

PROG = "codec"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

_LAZY = {
    "train": ("codec.train.cli", "train a model (delegates to codec.train.cli)"),
    "eval": ("codec.eval.harness", "evaluate a model and classical baselines (delegates to codec.eval.harness)"),
}

_EPILOGS = {
    "encode": """examples:
  codec encode speech.wav speech.codes --nq 8
  codec encode music.flac music.codes --nq 16 --channels keep
  codec encode recordings/ codes/ --nq 4 --batch-size 8       # a directory, names and sub-folders kept
  codec encode a.mp3 b.ogg c.wav out/ --model runs/my-model    # several files into a directory

Inputs: wav, flac, ogg, mp3 (soundfile) and anything ffmpeg reads (m4a, opus, G.722, .sln) when ffmpeg is
installed; any sample rate (resampled to the model's).  Stereo/multi-channel is downmixed to mono by
default; --channels keep stores each channel (up to 8) as its own code stream.  Inputs shorter than one
frame are zero-padded to one frame (decoding restores the exact length); empty inputs and NaN/inf samples
are refused; clipped or louder-than-full-scale input gives a warning and is encoded as is.""",
    "decode": """examples:
  codec decode speech.codes speech.wav                 # the model named in the file, original rate and length
  codec decode speech.codes speech-2lv.wav --nq 2      # fewer levels than stored
  codec decode speech.codes speech16k.flac --sample-rate 16000
  codec decode codes/ decoded/ --model runs/my-model   # a directory""",
    "info": """examples:
  codec info speech.codes
  codec info codes/*.codes --json""",
    "trim": """examples:
  codec trim speech.codes speech-4.codes --nq 4        # keep the 4 coarsest levels, no re-encoding""",
    "demo": """examples:
  codec demo                                      # shipped model + pretrained/samples/*.wav -> ./demo-out
  codec demo --nq 1,2,4,8 --out-dir /tmp/demo --model runs/my-model""",
    "bench": """examples:
  codec bench                      # model + streaming + quantizer, table on stdout
  codec bench --json bench.json    # also write JSON
  codec bench rvq                  # quantizer only
  codec bench model --chunk-frames 4   # stream 4 frames (53 ms at 24 kHz) per chunk
  codec bench encodec --preset 24khz --nq 32   # speed beside EnCodec 24 kHz (pip install encodec)
  codec bench model --onnx         # also ONNX Runtime speed beside PyTorch's (pip install codec[deploy])""",
    "export": """examples:
  codec export speech-24k speech-24k-onnx --format onnx          # all levels
  codec export runs/my-model my-model-onnx --format onnx --nq 8  # the encoder graphs give 8 levels

Writes encoder.onnx (audio [B, 1, T] -> codes [B, nq, F]), decoder.onnx (codes [B, n, F], any n up to the
model's levels, -1 = unused -> audio [B, 1, F * hop]), encoder_step.onnx / decoder_step.onnx (one frame, state
tensors in and out) and manifest.json (rates, delay, input/output names, state shapes).  Needs the 'deploy'
extra (pip install codec[deploy]).""",
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

class _UsageError(Exception):
    """An argparse usage error, printed as one ``codec: error:`` line (no usage text)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors raise :class:`_UsageError` instead of printing usage + error."""

    def error(self, message: str):  # type: ignore[override]
        msg = " ".join(str(message).split()).rstrip(".")
        raise _UsageError(f"{msg} (see '{self.prog} -h').")


class _Terminated(BaseException):
    """Raised by the SIGTERM / SIGHUP handler so that partial outputs are removed as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_terminate(signum, frame) -> None:  # noqa: ARG001
    raise _Terminated(signum)


def _install_signal_handlers() -> dict:
    """SIGTERM / SIGHUP -> :class:`_Terminated` (main thread only; an ignored SIGHUP, e.g. nohup, stays ignored)."""
    import signal
    import threading

    old = {}
    if threading.current_thread() is not threading.main_thread():
        return old
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            cur = signal.getsignal(sig)
            if cur is signal.SIG_IGN:
                continue
            old[sig] = signal.signal(sig, _on_terminate)
        except (ValueError, OSError):  # pragma: no cover
            pass
    return old


def _restore_signal_handlers(old: dict) -> None:
    import signal

    for sig, handler in old.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except (ValueError, OSError, TypeError):  # pragma: no cover
            pass


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def _bar_shown(args: argparse.Namespace) -> bool:
    """Whether a progress bar is drawn: stdout is a terminal and --quiet is not given."""
    return not getattr(args, "quiet", False) and sys.stdout.isatty()


def _progress_bar(args: argparse.Namespace, total: Optional[float], desc: str):
    """A tqdm bar in seconds of audio; disabled with --quiet or when stdout is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, unit="s", desc=desc, disable=not _bar_shown(args), leave=False,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]" if total else None)


def _cli_message(exc: CodecError) -> str:
    """A user error as the command line says it: a bad parameter is named by its flag (``--nq``)."""
    return exc.for_cli() if isinstance(exc, OptionError) else str(exc)


def plan_jobs(inputs: Sequence[str], out: str, in_exts: Optional[set], out_ext: str) -> List[Tuple[Path, Path]]:
    """Map CLI inputs to ``(src, dst)`` pairs.

    One input file -> ``out`` is the output file (or, if ``out`` is an existing directory, ``out/<stem><out_ext>``).
    Several inputs or a directory -> ``out`` is a directory (created); directory inputs are scanned
    recursively for files with an extension in ``in_exts`` and their relative paths are kept.
    """
    from .audio import find_files

    outp = Path(out)
    if len(inputs) == 1 and not Path(inputs[0]).is_dir():
        src = Path(inputs[0])
        if outp.is_dir():
            return [(src, outp / (src.stem + out_ext))]
        return [(src, outp)]
    if outp.exists() and not outp.is_dir():
        raise CodecError(f"with several inputs or a directory, the output '{out}' must be a directory.")
    pairs: List[Tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = find_files(p, in_exts)
            if not found:
                raise CodecError(f"no input files found in directory '{p}'.")
            for f in found:
                pairs.append((f, outp / f.relative_to(p).with_suffix(out_ext)))
        else:
            pairs.append((p, outp / (p.stem + out_ext)))
    seen = {}
    for src, dst in pairs:
        key = str(dst.resolve()) if dst.parent.exists() else str(dst)
        if key in seen:
            raise CodecError(f"inputs '{seen[key]}' and '{src}' would both be written to '{dst}'.")
        seen[key] = src
    try:
        for _, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CodecError(f"cannot create output directory '{out}': {exc.strerror or exc}.") from exc
    return pairs


def _run_file_jobs(args: argparse.Namespace, pairs: Sequence[Tuple[Path, Path]], desc: str,
                   seconds: Callable[[Path], float], describe: Callable[[object], str],
                   work: Callable[[Callable, Callable], None]) -> int:
    """Run a batch of file jobs under one progress bar (in seconds of audio) and report each result.

    ``seconds(src)`` gives an input's duration for the bar (inputs that raise :class:`CodecError` count 0);
    ``work(progress, on_result)`` runs the jobs, calling ``on_result(JobResult)`` once per file.
    Warnings and errors go to stderr, ``describe(result)`` of each success to stdout (unless --quiet).
    Returns 0, or 2 when any file failed.
    """
    total = 0.0
    for src, _ in pairs if _bar_shown(args) else ():  # only an interactive bar reads headers ahead of the jobs
        try:
            total += seconds(src)
        except CodecError:
            pass
    failed = 0
    with _progress_bar(args, total or None, desc) as bar:
        def on_result(r) -> None:
            nonlocal failed
            for w in r.warnings:
                bar.clear()
                _warn(w)
            if r.failure is not None:
                failed += 1
                bar.clear()
                _err(_cli_message(r.failure))
            elif not args.quiet:
                bar.write(describe(r))

        work(bar.update, on_result)
    return EXIT_USER_ERROR if failed else 0


def _human_bytes(n: int) -> str:
    return f"{n} B" if n < 1024 else (f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB")


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

def _checked_nq(nq: Optional[int], model, default: int) -> int:
    """``--nq`` (``default`` when not given), refused with one sentence outside the model's levels."""
    max_nq = int(model.num_quantizers)
    nq = default if nq is None else nq
    if not 1 <= nq <= max_nq:
        raise OptionError("nq", f"{nq} is out of range: this model has levels 1 to {max_nq}.")
    return nq


def _cmd_encode(args: argparse.Namespace) -> int:
    from .audio import AUDIO_EXTENSIONS, audio_info
    from .pipeline import EncodeJob, encode_files, resolve_model

    pairs = plan_jobs(args.inputs, args.output, AUDIO_EXTENSIONS, ".codes")
    model, name = resolve_model(args.model, args.device)
    nq = _checked_nq(args.nq, model, default=min(8, int(model.num_quantizers)))

    def seconds(src: Path) -> float:
        i = audio_info(src)
        return i.frames / i.sample_rate if i.frames > 0 else 0.0

    def describe(r) -> str:
        h = r.header
        return (f"{r.src} -> {r.dst}: {h.duration:.2f} s, {h.num_levels} levels, "
                f"{h.bitrate / 1000:.2f} kbps, {_human_bytes(h.file_size)}")

    def work(progress, on_result) -> None:
        encode_files(model, name, [EncodeJob(s, d) for s, d in pairs], nq, keep_channels=args.channels == "keep",
                     batch_size=args.batch_size, progress=progress, on_result=on_result, precision=args.precision)

    return _run_file_jobs(args, pairs, "encode", seconds, describe, work)


def _cmd_decode(args: argparse.Namespace) -> int:
    from .pipeline import DecodeJob, decode_files

    from .codes_format import read_header

    pairs = plan_jobs(args.inputs, args.output, {".codes"}, ".wav")

    def seconds(src: Path) -> float:
        h = read_header(src, verify=False)  # CodecError (counted as 0 s) for a bad header
        return h.num_frames / h.frame_rate if h.frame_rate > 0 else 0.0

    def describe(r) -> str:
        h = r.header
        return (f"{r.src} -> {r.dst}: {h.duration:.2f} s at {args.sample_rate or h.orig_sample_rate} Hz, "
                f"{args.nq or h.num_levels} of {h.num_levels} levels")

    def work(progress, on_result) -> None:
        decode_files([DecodeJob(s, d) for s, d in pairs], model_spec=args.model, nq=args.nq,
                     sample_rate=args.sample_rate, batch_size=args.batch_size, device=args.device,
                     progress=progress, on_result=on_result)

    return _run_file_jobs(args, pairs, "decode", seconds, describe, work)


def format_info(path: str, header, file_size: int) -> str:
    """Human-readable description of a ``.codes`` header (used by ``codec info``)."""
    h = header
    actual = file_size * 8 / h.duration if h.duration > 0 else 0.0
    ch = f"{h.channels}" + (" (downmixed from %d)" % h.orig_channels if h.channels != h.orig_channels else "")
    lines = [
        f"file:         {path}",
        f"format:       .codes version {h.version}",
        f"model:        {h.model_name} (weights sha256 {h.weights_sha256.hex()[:16]})",
        f"sample rate:  {h.sample_rate} Hz (model), {h.orig_sample_rate} Hz (original)",
        f"frame rate:   {h.frame_rate:g} Hz (hop {h.hop_length} samples)",
        f"codebook:     {h.codebook_size} entries, {h.bits_per_code} bits per code",
        f"levels:       {h.num_levels}",
        f"channels:     {ch}",
        f"frames:       {h.num_frames}",
        f"duration:     {h.duration:.3f} s ({h.orig_length} samples)",
        f"bitrate:      {h.bitrate / 1000:.3f} kbps nominal, {actual / 1000:.3f} kbps with header "
        f"({file_size} bytes, header {h.header_size} + CRC 4)",
    ]
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from .codes_format import read_header

    out, failed = [], 0
    for i, f in enumerate(args.files):
        try:
            h = read_header(f, verify=True)
        except CodecError as exc:
            _err(str(exc))
            failed += 1
            continue
        size = os.path.getsize(f)
        if args.json:
            d = h.to_dict()
            d["file"] = str(f)
            out.append(d)
        else:
            if i:
                print()
            print(format_info(f, h, size))
    if args.json:
        print(json.dumps(out if len(args.files) > 1 else (out[0] if out else None), indent=2, allow_nan=False))
    return EXIT_USER_ERROR if failed else 0


def _cmd_trim(args: argparse.Namespace) -> int:
    from .codes_format import trim_levels
    from .pipeline import check_not_same_file

    check_not_same_file(args.input, args.output)
    h = trim_levels(args.input, args.output, args.nq)
    if not args.quiet:
        print(f"{args.input} -> {args.output}: {h.num_levels} levels, {h.bitrate / 1000:.2f} kbps, "
              f"{_human_bytes(h.file_size)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .pipeline import resolve_model

    try:
        from .deploy.onnx import export_onnx
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise CodecError(f"'codec export' needs the package '{exc.name}' (pip install codec[deploy]).") from None
    model, name = resolve_model(args.model)
    nq = _checked_nq(args.nq, model, default=int(model.num_quantizers))
    man = export_onnx(model, args.output, nq=nq, opset=args.opset, model_name=name, precision=args.precision)
    if not args.quiet:
        print(f"{name} -> {args.output}: {', '.join(g['file'] for g in man['graphs'].values())}, manifest.json "
              f"({man['nq']} levels, {man['precision']} encoder, {man['sample_rate']} Hz, decoder delay "
              f"{man['decoder_delay']} samples)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------

def _threads_arg(p: argparse.ArgumentParser) -> None:
    from .threads import THREADS_HELP

    p.add_argument("--threads", type=_positive_int, default=None, metavar="N", help=THREADS_HELP)


def _common(p: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
        _threads_arg(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-file lines")


def build_parser(lazy: Optional[str] = None) -> argparse.ArgumentParser:
    """Build the argument parser; ``lazy`` names the one delegated subcommand whose module is imported."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG, formatter_class=fmt,
        description="Neural audio codec: audio files <-> compact .codes files at a chosen bitrate.",
        epilog="examples:\n  codec encode in.wav out.codes --nq 8\n  codec decode out.codes back.wav\n"
               "  codec info out.codes\n  codec demo\n\nRun 'codec COMMAND -h' for details.",
    )
    try:
        from importlib.metadata import version as _v

        ver = _v("codec")
    except Exception:  # pragma: no cover
        ver = "unknown"
    parser.add_argument("--version", action="version", version=f"codec {ver}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    _add_codes_commands(sub, fmt)
    _add_model_commands(sub, fmt)

    p = sub.add_parser("bench", help="speed, streaming cost, quantizer throughput, memory", formatter_class=fmt,
                       epilog=_EPILOGS["bench"], add_help=lazy == "bench",
                       description="Benchmark the codec on this machine.")
    if lazy == "bench":
        from .bench import cli as _bench

        _bench.add_arguments(p)
        _threads_arg(p)
        p.set_defaults(func=_bench.run)

    for name, (module, help_text) in _LAZY.items():
        p = sub.add_parser(name, help=help_text, formatter_class=fmt, add_help=lazy == name,
                           description=help_text)
        if lazy == name:
            mod = _import_delegate(name, module)
            mod.add_arguments(p)
            if name == "eval":
                _threads_arg(p)
            p.set_defaults(func=mod.run)
    return parser


def _add_codes_commands(sub: argparse._SubParsersAction, fmt: type) -> None:
    """The subcommands that read or write .codes files: encode, decode, info, trim."""
    p = sub.add_parser("encode", help="audio file(s) -> .codes", formatter_class=fmt, epilog=_EPILOGS["encode"],
                       description="Encode audio to .codes files (streamed: memory stays flat for long files).")
    p.add_argument("inputs", nargs="+", metavar="IN", help="input audio file(s) or directories")
    p.add_argument("output", metavar="OUT", help="output .codes file (one input) or directory")
    p.add_argument("--nq", type=_int, default=None, help="levels to store (default: 8, or the model's maximum if lower)")
    p.add_argument("--model", default=None, help="model directory or pretrained name (default: speech-24k in pretrained/)")
    p.add_argument("--channels", choices=("mono", "keep"), default="mono",
                   help="mono: downmix (default); keep: one code stream per channel (max 8)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="code streams encoded together (default 1)")
    p.add_argument("--precision", choices=("float32", "float64"), default="float32",
                   help="encoder arithmetic (default float32; float64 is slower and gives exactly the codes of a "
                        "'codec export --precision float64' encoder in ONNX Runtime)")
    _common(p)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help=".codes file(s) -> audio", formatter_class=fmt, epilog=_EPILOGS["decode"],
                       description="Decode .codes files to audio (wav/flac/ogg), streamed.")
    p.add_argument("inputs", nargs="+", metavar="IN", help=".codes file(s) or directories")
    p.add_argument("output", metavar="OUT", help="output audio file (.wav/.flac/.ogg; one input) or directory")
    p.add_argument("--nq", type=_int, default=None, help="decode with only the first K levels (default: all stored)")
    p.add_argument("--model", default=None, help="model directory or name (default: the model named in the file)")
    p.add_argument("--sample-rate", type=_int, default=None, help="output sample rate (default: the original one)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="code streams decoded together (default 1)")
    _common(p)
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("info", help="describe .codes file(s)", formatter_class=fmt, epilog=_EPILOGS["info"],
                       description="Print the header of .codes files: model, rates, levels, duration, bitrate.")
    p.add_argument("files", nargs="+", metavar="FILE.codes")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("trim", help="keep only the first levels of a .codes file", formatter_class=fmt,
                       epilog=_EPILOGS["trim"],
                       description="Cut a .codes file to fewer levels without re-encoding (no model needed).")
    p.add_argument("input", metavar="IN.codes")
    p.add_argument("output", metavar="OUT.codes")
    p.add_argument("--nq", type=_int, required=True, help="levels to keep")
    _common(p, device=False)
    p.set_defaults(func=_cmd_trim)


def _add_model_commands(sub: argparse._SubParsersAction, fmt: type) -> None:
    """The subcommands that run or export a whole model: demo, export."""
    p = sub.add_parser("demo", help="encode + decode the shipped sample at several bitrates", formatter_class=fmt,
                       epilog=_EPILOGS["demo"],
                       description="Encode and decode pretrained/samples/*.wav with the shipped model at several "
                                   "--nq values; write decoded wavs and print bitrate and quality per nq.")
    p.add_argument("--model", default=None, help="model directory or name (default: speech-24k in pretrained/)")
    p.add_argument("--nq", default="1,2,4,8", help="comma-separated levels to try (default 1,2,4,8)")
    p.add_argument("--out-dir", default="demo-out", help="where decoded wavs go (default ./demo-out)")
    p.add_argument("--samples", nargs="*", default=None, help="audio files to use (default pretrained/samples/*.wav)")
    _common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("export", help="write ONNX graphs of a model (encoder, decoder, streaming steps)",
                       formatter_class=fmt, epilog=_EPILOGS["export"],
                       description="Export a model for deployment: ONNX graphs plus a JSON manifest.")
    p.add_argument("model", metavar="MODEL", help="model directory or pretrained name (e.g. speech-24k)")
    p.add_argument("output", metavar="OUT_DIR", help="directory for the graphs and manifest.json (created)")
    p.add_argument("--format", choices=("onnx",), required=True, help="export format (onnx)")
    p.add_argument("--nq", type=_int, default=None, help="levels the encoder graphs produce (default: all)")
    p.add_argument("--opset", type=_int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--precision", choices=("float32", "float64"), default="float32",
                   help="encoder graphs' arithmetic (default float32; float64 gives in ONNX Runtime exactly the "
                        "codes of 'codec encode --precision float64')")
    _common(p, device=False)
    p.set_defaults(func=_cmd_export)


def _import_delegate(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
            raise CodecError(f"'codec {name}' is not available yet: the module {module} is missing.") from None
        raise CodecError(f"'codec {name}' needs the package '{exc.name}', which is not installed.") from None


def _subcommand(argv: Sequence[str]) -> Optional[str]:
    for tok in argv:
        if not tok.startswith("-"):
            return tok
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit status: 0, 2 (user error),
    130 (Ctrl-C), 143 (SIGTERM) or 129 (SIGHUP)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    old_handlers = _install_signal_handlers()
    try:
        return _main(argv)
    except _Terminated as exc:
        name = {15: "SIGTERM", 1: "SIGHUP"}.get(exc.signum, f"signal {exc.signum}")
        try:
            print(f"\n{PROG}: terminated by {name}; no partial output was kept.", file=sys.stderr)
        except (OSError, ValueError):  # stderr gone with the terminal (SIGHUP)
            pass
        return 128 + exc.signum
    finally:
        _restore_signal_handlers(old_handlers)


def _main(argv: List[str]) -> int:
    try:
        cmd = _subcommand(argv)
        lazy = cmd if cmd in ("bench", *_LAZY) else None
        parser = build_parser(lazy)
        try:
            if cmd == "train":
                from .train.cli import parse_args as parse_train_args

                args = parse_train_args(parser, argv)
            else:
                args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse: -h / --version (0)
            return int(exc.code) if isinstance(exc.code, int) else EXIT_USER_ERROR
        if "threads" in vars(args) and cmd != "train":  # commands that run models (see codec.threads)
            from .threads import set_threads

            args.threads = set_threads(args.threads)
        return int(args.func(args) or 0)
    except _UsageError as exc:
        _err(str(exc))
        return EXIT_USER_ERROR
    except CodecError as exc:
        _err(_cli_message(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; no partial output was kept.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `codec info x.codes | head`
        return 0
    except OSError as exc:
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        _err(f"{exc.strerror or exc}{where}.")
        return EXIT_USER_ERROR
    except RuntimeError as exc:
        # libsndfile errors (soundfile.LibsndfileError is a RuntimeError) become one sentence
        if type(exc).__name__ == "LibsndfileError":
            _err(f"audio file error: {str(exc).strip().rstrip('.')}.")
            return EXIT_USER_ERROR
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
