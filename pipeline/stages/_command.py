"""What every stage's `arf` command shares: the params option, its section of a params file checked
whole, and the one-line report it prints. Paths have no defaults: dvc.yaml is where they are written."""
from __future__ import annotations

import atexit
import json
import os
import sys
import threading
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


# What bad input, a full disk or a diverging run raise: one line and exit 1. Anything else is a bug
# and keeps its traceback.
EXPECTED = (OSError, ValueError, ArithmeticError, ModelNotAvailable)


def run(app: Callable, args: list[str] | None = None) -> None:
    """Run a typer app or command: an expected failure ends in one line naming what to fix, not a
    traceback; `--debug` anywhere on the command line shows the traceback instead."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        (app if isinstance(app, typer.Typer) else _single(app))(args)
    except EXPECTED as e:
        if debug:
            raise
        lines = str(e).strip().splitlines()  # a library's message may run to a page
        typer.echo(f"error: {lines[0] if lines else type(e).__name__}", err=True)
        sys.exit(1)


def main(app: Callable) -> None:
    """`run` as a process's entry point (the `arf` script, stages/*.py), ending in a fast exit.

    Once the command has returned, every output is closed and renamed into place; what is left is
    the interpreter's teardown of torch, transformers and the rest: ~1.1 s of every model-building
    process on 2 cores (`import open_clip` then exit: 5.7 s, against 4.5 s with os._exit), paid by
    every stage DVC starts. The exit does what teardown would that matters: it waits for non-daemon
    threads, runs the atexit handlers (logging, multiprocessing, temp-file finalizers) and flushes
    stdout and stderr, then leaves with os._exit. A bug's traceback still exits the usual way, and so
    does every exit under a profiler (`python -m cProfile -o`), which writes its file after the
    script returns."""
    try:
        run(app)
        code = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    if sys.getprofile() is not None:
        sys.exit(code)
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _single(command: Callable) -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(command)
    return app
