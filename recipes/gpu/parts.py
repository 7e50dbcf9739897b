"""Split a file into parts small enough to come back from a borrowed machine, and join them again.

    python recipes/gpu/parts.py split gpu-out/model/model.safetensors [--max-mib 16]
    python recipes/gpu/parts.py join gpu-out/model

A file over ``--max-mib`` becomes ``NAME.part1-of-N`` ... ``NAME.partN-of-N`` (byte ranges, in order) and
the original is removed; a file within the limit is left alone. ``join`` restores every such set in a folder
byte for byte (written under a temporary name, then renamed, so a failed join leaves no half-written file) and
removes the parts. ``recipes/gpu/run.py`` splits the exported weights this way, because the device tool hands
back files of at most 16 MiB and the shipped model's float16 weights are larger.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 2 ** 20
_PART = re.compile(r"^(?P<name>.+)\.part(?P<k>\d+)-of-(?P<n>\d+)$")


def split(path: Path, max_bytes: int) -> List[Path]:
    """Split ``path`` into parts of at most ``max_bytes`` -> the parts (``[path]`` when it already fits)."""
    if max_bytes <= 0:
        raise SystemExit(f"the part size must be positive, not {max_bytes} bytes.")
    size = path.stat().st_size
    if size <= max_bytes:
        return [path]
    n = -(-size // max_bytes)
    parts = [path.with_name(f"{path.name}.part{k}-of-{n}") for k in range(1, n + 1)]
    with path.open("rb") as src:
        for part in parts:
            part.write_bytes(src.read(max_bytes))
    path.unlink()
    return parts


def join(folder: Path) -> Dict[str, str]:
    """Join every ``NAME.partK-of-N`` set in ``folder`` back into ``NAME`` -> {NAME: sha256 of the joined file}.

    Refuses (``SystemExit``) a set with a part missing or with parts of different counts, and a ``NAME`` that
    already exists beside its parts.
    """
    sets: Dict[str, Dict[int, Path]] = {}
    counts: Dict[str, set] = {}
    for p in sorted(folder.iterdir()):
        m = _PART.match(p.name)
        if m:
            sets.setdefault(m["name"], {})[int(m["k"])] = p
            counts.setdefault(m["name"], set()).add(int(m["n"]))
    if not sets:
        raise SystemExit(f"{folder} holds no parts (NAME.partK-of-N) to join.")
    done = {}
    for name, parts in sets.items():
        n = next(iter(counts[name])) if len(counts[name]) == 1 else None
        if n is None or sorted(parts) != list(range(1, n + 1)):
            raise SystemExit(f"{folder / name}: its parts are incomplete (have {sorted(parts)}, "
                             f"counts {sorted(counts[name])}); copy all of them back first.")
        out = folder / name
        if out.exists():
            raise SystemExit(f"{out} already exists beside its parts; move one of them away first.")
        tmp = folder / f".{name}.joining"
        try:
            with tmp.open("wb") as dst:
                for k in range(1, n + 1):
                    dst.write(parts[k].read_bytes())
            tmp.rename(out)
        finally:
            tmp.unlink(missing_ok=True)
        for p in parts.values():
            p.unlink()
        done[name] = sha256(out)
    return done


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (what ``join`` reports for the file it restores)."""
    from codec.pretrained import file_hash

    return file_hash(path, digits=64)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("split", help="split one file into parts")
    a.add_argument("file", type=Path)
    a.add_argument("--max-mib", type=float, default=16.0, help="largest part, MiB (default 16)")
    b = sub.add_parser("join", help="join every set of parts in a folder")
    b.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "split":
        if not args.file.is_file():
            raise SystemExit(f"{args.file} is not a file.")
        for part in split(args.file, int(args.max_mib * MIB)):
            print(part)
    else:
        if not args.folder.is_dir():
            raise SystemExit(f"{args.folder} is not a folder.")
        for name, digest in join(args.folder).items():
            print(f"{args.folder / name}  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
