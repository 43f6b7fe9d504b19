"""One module per DVC stage (dvc.yaml): its params section, its code and its `arf` command (`command`).

A stage imports core/, io/ and data/, never another stage. `load_all()` imports every stage, which
registers every params section: what checking a whole params file needs.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from pipeline.config import load_params_file


def stage_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_all() -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"{__name__}.{name}") for name in stage_names()}


def load_params(path: str | Path = "params.yaml") -> dict:
    """Every section of a params file, checked against every stage's section (see pipeline.config)."""
    load_all()
    return load_params_file(path)
