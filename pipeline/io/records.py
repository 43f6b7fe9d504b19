"""The JSON-lines records stages hand each other: anchors (retrieve), captions (caption), and the
benchmark's classes.json. A malformed line fails with one line naming the file and line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.io.atomic import atomic_file


def load_classes(path: Path) -> dict:
    """classes.json of the benchmark: seen/unseen class names and prompt templates."""
    return json.loads(Path(path).read_text())


def write_anchors(records: Sequence[dict], path: str | os.PathLike) -> None:
    """Anchors as JSON lines, written atomically."""
    with atomic_file(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_anchors(path: str | os.PathLike) -> list[dict]:
    """Anchor records; a malformed line fails with one line naming the file and line number."""
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                missing = [k for k in ("key", "caption", "class", "score") if k not in r]
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: bad anchor record ({e})") from None
            if missing:
                raise ValueError(f"{path}:{i}: bad anchor record (missing {', '.join(missing)})")
            out.append(r)
    return out


def write_records(path: Path, records) -> int:
    n = 0
    with atomic_file(path) as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
            n += 1
    return n


def read_captions(path: Path) -> dict[str, list[str]]:
    records = {}
    with open(path) as f:
        for i, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                records[r["key"]] = r["captions"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path}:{i}: bad caption record ({e})") from None
    return records


def anchor_stats(records: Sequence[dict], classnames: Sequence[str] | None = None) -> dict[str, dict]:
    """Per class: count and score min / mean / max (classes with no anchor included when named)."""
    by_class: dict[str, list[float]] = {c: [] for c in (classnames or ())}
    for r in records:
        by_class.setdefault(r["class"], []).append(r["score"])
    out = {}
    for c, s in by_class.items():
        out[c] = {"count": len(s), "score_min": min(s) if s else None,
                  "score_mean": round(float(np.mean(s)), 6) if s else None, "score_max": max(s) if s else None}
    return out
