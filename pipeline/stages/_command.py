"""What every stage's `arf` command shares: the params option, its section of a params file checked
whole, and the one-line report it prints. Paths have no defaults: dvc.yaml is where they are written."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import typer

from pipeline.config import ParamsError
from pipeline.core.errors import ModelNotAvailable
from pipeline.stages import load_params

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file (checked whole before running)")


def section(path: Path, name: str | None):
    """The named section of the params file, after checking every section; None: check only."""
    try:
        sections = load_params(path)
    except ParamsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    return sections[name] if name else None


def report(name: str, started: float, record: dict) -> None:
    record = {k: v for k, v in record.items() if k != "history"}
    typer.echo(f"[{name}] {time.time() - started:.1f}s {json.dumps(record, default=str)}")


def run(app: Callable, args: list[str] | None = None) -> None:
    """Run a typer app or command: bad input ends in one line, not a traceback."""
    try:
        (app if isinstance(app, typer.Typer) else _single(app))(args)
    except (FileNotFoundError, ValueError, ModelNotAvailable) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


def _single(command: Callable) -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(command)
    return app
