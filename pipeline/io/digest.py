"""Digests of what a run read, so that saved state (a training resume point) is used only by a run
of the same inputs.

A full hash of ImageNet's packed shards (~140 GB) would cost minutes at every start, so a file is
digested by its size and its first, middle and last MiB. A rewritten shard changes its size or those
bytes in practice (a tar's headers and member order sit at the start and its end-of-archive blocks at
the end), and the failure mode is a fresh start, never a wrong resume, whenever any of them differs.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - _CHUNK // 2), max(0, size - _CHUNK)}):
            f.seek(offset)
            h.update(f.read(_CHUNK))
    return h.hexdigest()[:16]


def tree_digest(root: str | os.PathLike, suffixes: tuple[str, ...] = ()) -> str:
    """Every file below `root` (a file itself: that file), or those with one of `suffixes`, by relative
    name and `file_digest`."""
    root = Path(root)
    if root.is_file():
        return file_digest(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and (not suffixes or p.suffix in suffixes)):
        h.update(f"{path.relative_to(root).as_posix()}\0{file_digest(path)}\0".encode())
    return h.hexdigest()[:16]
