"""One loader for the scripts under recipes/ (not a package): tests import them as modules by path."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_recipe(relpath: str, name: str) -> ModuleType:
    """Import ``REPO/recipes/<relpath>`` as module ``name`` (registered in ``sys.modules``, so its dataclasses
    and pickling resolve)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "recipes" / relpath)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
