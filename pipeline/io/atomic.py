"""Write-then-rename helpers, so that no stage leaves a half-written output that looks complete.

A stage writes into a sibling temp path and renames it into place only after everything succeeded.
A crash leaves at most a `.tmp-*` sibling, which the next run removes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a fresh temp folder that replaces `path` when the block exits without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".tmp-{path.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w"):
    """Yield an open temp file that replaces `path` when the block exits without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode) as f:
            yield f
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def read_json(path: str | os.PathLike, expected: str, error: type[Exception] = FileNotFoundError):
    """A JSON file a stage wrote. Missing or unreadable, it stops with one line naming the file and
    saying what was `expected` there, as an `error` the command line reports."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing; expected {expected}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}); expected {expected}") from None


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")
