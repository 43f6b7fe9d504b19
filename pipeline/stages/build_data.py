"""Stage `build_data`: the benchmark and the corpus (`data/benchmark`, `data/corpus`, `data/corpus_heldout`),
built from the packaged default or imported from local datasets (`build_data.source`); params section `build_data`."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from pipeline.config import register_params
from pipeline.data.default import DataParams, build_default_data
from pipeline.data.local import import_local_data
from pipeline.stages import _command as cmd

register_params("build_data")(DataParams)


def build_data(out_root: Path, params: DataParams) -> dict:
    """benchmark/, corpus/ and corpus_heldout/ under out_root, from the source params.yaml names."""
    if params.source == "local":
        return import_local_data(out_root, params.local)
    return build_default_data(out_root, params)


def command(out: Path = typer.Option(..., help="folder for benchmark/, corpus/ and corpus_heldout/"),
            params: Path = cmd.PARAMS) -> None:
    """Build the benchmark and corpus: the packaged default, or local datasets (build_data.source: local)."""
    p, t = cmd.section(params, "build_data"), time.time()
    cmd.report("build_data", t, build_data(out, p))
