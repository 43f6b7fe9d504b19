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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    # The writer's pid in the name: a later run removes the temps of writers that died, never those
    # of one still writing (two `dvc exp run --temp` or a user beside DVC).
    return f".tmp-{path.name}-{os.getpid()}-"


def _remove_dead_writers_temps(path: Path) -> None:
    for stale in path.parent.glob(f".tmp-{path.name}-*"):
        pid = stale.name[len(f".tmp-{path.name}-"):].split("-")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a fresh temp folder that replaces `path` when the block exits without error. The folder
    gets the permissions the user's umask gives (mkdtemp's are 0700: unreadable to a lab's group)."""
    with atomic_dirs(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_dirs(*paths: str | os.PathLike):
    """`atomic_dir` for the several output folders of one stage: yields their temp folders, and only
    when all are complete replaces the old folders. The last path is the stage's marker (the folder
    holding its record): it is removed first and comes back last, so whenever it exists the others
    are of the same run, even after a kill between two renames."""
    paths = [Path(p) for p in paths]
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(_temp_dir(p)) for p in paths]
        yield temps
        _replace_with(paths[-1], None)
        for path, tmp in zip(paths[:-1], temps[:-1]):
            _replace_with(path, tmp)
        _replace_with(paths[-1], temps[-1])


@contextlib.contextmanager
def _temp_dir(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_with(path: Path, tmp: Path | None) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if tmp is not None:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w"):
    """Yield an open temp file that replaces `path` when the block exits without error, with the
    permissions the user's umask gives (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
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
