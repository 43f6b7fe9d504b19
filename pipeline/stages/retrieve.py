"""Stage `retrieve`: index the corpus embeddings with autofaiss and pick anchor pairs per seen class.

* `build_index` builds `image.index` / `text.index` (+ autofaiss's `image.json` / `text.json`) and copies
  `metadata/` beside them: clip-retrieval's index-folder convention, so `clip-retrieval back` can serve
  it. Below `flat_below` vectors a flat inner-product index is forced (exact, and faster than
  autofaiss's HNSW pick at that size; see the toolchain notes).
* `retrieve_anchors` searches each class's prompt embedding against the image (or caption) index, keeps
  the top k per class and de-duplicates across classes.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import typer

from pipeline.config import ParamsError, register_params
from pipeline.io.atomic import atomic_dir, atomic_dirs, write_json
from pipeline.io.embeddings import (
    EMB_SUBDIR,
    TARGETS,
    count_vectors,
    iter_metadata_column,
    load_prompts,
    metadata_columns,
    metadata_row_counts,
    metadata_rows,
)
from pipeline.io.records import anchor_stats, write_anchors
from pipeline.stages import _command as cmd

log = logging.getLogger(__name__)


INDEX_REPORT = "index_report.json"


_MEM_RE = re.compile(r"^\d+(\.\d+)?[KMGT]?B?$", re.IGNORECASE)


@register_params("retrieve")
@dataclass
class RetrieveParams:
    k_per_class: int = field(default=16, metadata={"gt": 0})
    target: str = field(default="image", metadata={"choices": TARGETS})
    dedup: bool = True
    index_key: str | None = None  # a faiss index factory string; null: Flat below flat_below, else autofaiss picks
    flat_below: int = field(default=100_000, metadata={"min": 0})
    max_index_memory_usage: str = "4G"
    current_memory_available: str = "16G"
    # Corpus pairs never retrieved, by metadata column: {column: [values]}. The metadata holds each
    # pair's json fields (the default corpus: `style`, `source`, `emoji`). {style: [twitter]} leaves
    # the base aligned on Twitter emoji but retrieves no anchor in that style (issue 15's control).
    exclude: dict[str, list[str]] = field(default_factory=dict)

    def check(self, where: str) -> None:
        for name in ("max_index_memory_usage", "current_memory_available"):
            value = getattr(self, name)
            if not _MEM_RE.match(value):
                raise ParamsError(f"{where}.{name}: expected a size such as '4G' or '512M', got {value!r}")
        if self.index_key is not None and not self.index_key.strip():
            raise ParamsError(f"{where}.index_key: empty; use null to let the size decide")


def build_index(
    emb_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    index_key: str | None = None,
    flat_below: int = 100_000,
    max_index_memory_usage: str = "4G",
    current_memory_available: str = "16G",
    nb_cores: int | None = None,
) -> dict[str, Any]:
    """Build `image.index` and `text.index` with autofaiss (inner product) and copy `metadata/` beside them.

    `index_key`: a faiss factory string used for both; None: "Flat" below `flat_below` vectors, else
    autofaiss's own choice under `max_index_memory_usage`. Returns (and writes as `index_report.json`)
    the key used and vector counts per modality.
    """
    import faiss
    from autofaiss import build_index as autofaiss_build_index

    emb_dir = Path(emb_dir)
    if not (emb_dir / "metadata").is_dir():
        raise FileNotFoundError(f"{emb_dir}/metadata: missing; expected embed_corpus output")
    report: dict[str, Any] = {"embeddings": str(emb_dir)}
    with atomic_dir(index_dir) as tmp:
        for target in TARGETS:
            sub = emb_dir / EMB_SUBDIR[target]
            n, dim = count_vectors(sub, EMB_SUBDIR[target])
            if n == 0:
                raise FileNotFoundError(f"{sub}: no embeddings")
            if index_key is not None:
                key, chosen_by = index_key, "index_key param"
            elif n < flat_below:
                key, chosen_by = "Flat", f"{n} < flat_below={flat_below}"
            else:
                key, chosen_by = None, "autofaiss"
            t0 = time.perf_counter()
            index, _ = autofaiss_build_index(
                embeddings=str(sub),
                index_path=str(tmp / f"{target}.index"),
                index_infos_path=str(tmp / f"{target}.json"),
                index_key=key,
                metric_type="ip",
                max_index_memory_usage=max_index_memory_usage,
                current_memory_available=current_memory_available,
                nb_cores=nb_cores,
                verbose=logging.WARNING,
            )
            # autofaiss reports most failures by logging and returning None, not by raising
            if index is None or not (tmp / f"{target}.index").is_file():
                raise RuntimeError(f"autofaiss could not build the {target} index (key {key or 'auto'}, "
                                   f"{n} x {dim}); see its log above")
            # autofaiss's infos, less what differs run to run or clone to clone (its search-speed
            # timings, the absolute path of the temp folder), so that the folder's DVC hash is a
            # function of its inputs: timings go to the log.
            infos_path = tmp / f"{target}.json"
            infos = json.loads(infos_path.read_text())
            timings = {k: round(infos.pop(k), 3) for k in list(infos) if "speed" in k}
            infos["index_path"] = f"{target}.index"  # relative to this folder
            write_json(infos_path, infos)
            if key is None:
                key = infos.get("index_key", "?")
            ntotal = faiss.read_index(str(tmp / f"{target}.index")).ntotal
            if ntotal != n:
                raise RuntimeError(f"{target}.index holds {ntotal} vectors, embeddings have {n}")
            report[target] = {"vectors": n, "dim": dim, "index_key": key, "chosen_by": chosen_by}
            log.info("%s index: %s in %.1f s, search %s", target, key, time.perf_counter() - t0, timings)
        shutil.copytree(emb_dir / "metadata", tmp / "metadata")
        write_json(tmp / INDEX_REPORT, report)
    return report


def _assign(scores: np.ndarray, ids: np.ndarray, k: int, dedup: bool, excluded: np.ndarray):
    """Per class, its kept (row, score) pairs, best first; and whether each class saw all its candidates.

    With dedup, candidates are taken in global score order (ties: class order, then row): a row goes to
    the first class that reaches it, i.e. the class with the highest score among those that still have
    room, and the class that lost it takes its next candidate instead.
    """
    C = scores.shape[0]
    kept: list[list[tuple[int, float]]] = [[] for _ in range(C)]
    valid = (ids >= 0) & ~excluded[np.clip(ids, 0, None)]
    if not dedup:
        for c in range(C):
            sel = np.flatnonzero(valid[c])[:k]
            kept[c] = [(int(ids[c, j]), float(scores[c, j])) for j in sel]
        return kept
    cls, col = np.nonzero(valid)
    order = np.lexsort((ids[cls, col], cls, -scores[cls, col]))
    taken: set[int] = set()
    full = 0
    for i in order:
        c, j = cls[i], col[i]
        if len(kept[c]) >= k:
            continue
        row = int(ids[c, j])
        if row in taken:
            continue
        taken.add(row)
        kept[c].append((row, float(scores[c, j])))
        if len(kept[c]) == k:
            full += 1
            if full == C:
                break
    return kept


def excluded_rows(index_dir: Path, n_rows: int, exclude: dict[str, Iterable[str]]) -> np.ndarray:
    """Mask of the metadata rows whose `column` holds one of `exclude[column]`, for every column given."""
    excluded = np.zeros(n_rows, dtype=bool)
    columns = metadata_columns(index_dir) if exclude else []
    for column, values in exclude.items():
        if column not in columns:
            raise ValueError(f"retrieve.exclude: {index_dir}/metadata has no column {column!r} (it has: "
                             f"{', '.join(columns)})")
        unwanted, start = np.array(sorted({str(v) for v in values}), dtype=object), 0
        for part in iter_metadata_column(index_dir, column):
            excluded[start:start + len(part)] |= np.isin(part.astype(str).astype(object), unwanted)
            start += len(part)
    return excluded


def retrieve_anchors(
    index_dir: str | os.PathLike,
    prompts_npz: str | os.PathLike,
    k_per_class: int,
    target: str = "image",
    dedup: bool = True,
    exclude: dict[str, Iterable[str]] | None = None,
) -> list[dict]:
    """Top `k_per_class` corpus pairs per class by prompt-embedding similarity; records sorted by class, rank.

    `target="image"` searches the corpus image index, `"text"` the caption index. With `dedup`, a pair
    found for several classes is kept once, under the class where it scores highest, and the other
    classes take their next candidates, so each class keeps k as far as the corpus allows. A sample whose
    metadata column holds one of `exclude[column]` (`image_path` is the key) is never returned. Records: key, caption, class, score (inner product =
    cosine), rank (1 = best within the class).
    """
    import faiss

    if target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    if not isinstance(k_per_class, int) or k_per_class <= 0:
        raise ValueError(f"k_per_class must be a positive integer, got {k_per_class!r}")
    index_dir = Path(index_dir)
    try:
        index = faiss.read_index(str(index_dir / f"{target}.index"))
    except RuntimeError as e:  # faiss's reader on a missing, truncated or foreign file: a page of C++ context
        raise ValueError(f"{index_dir / f'{target}.index'}: not a readable faiss index "
                         f"({str(e).strip().splitlines()[-1][:160]})") from None
    n_meta = sum(metadata_row_counts(index_dir))
    if n_meta != index.ntotal:
        raise ValueError(f"{index_dir}: {target}.index has {index.ntotal} vectors but metadata {n_meta} rows")
    queries, classnames = load_prompts(prompts_npz)
    if queries.shape[1] != index.d:
        raise ValueError(f"{prompts_npz}: embedding dim {queries.shape[1]} != index dim {index.d} "
                         "(prompts and corpus embedded with different models?)")
    excluded = excluded_rows(index_dir, n_meta, exclude or {})
    n_avail = int((~excluded).sum())
    # Search deep enough that every class can still fill k after losing rows to other classes and to the
    # exclusion list; deepen and redo while a class came up short and has unseen candidates.
    depth = min(index.ntotal, k_per_class * (2 if dedup and len(classnames) > 1 else 1) + int(excluded.sum()))
    while True:
        scores, ids = index.search(np.ascontiguousarray(queries), depth)
        kept = _assign(scores, ids, k_per_class, dedup, excluded)
        short = [c for c in range(len(classnames)) if len(kept[c]) < k_per_class]
        if not short or depth >= index.ntotal:
            break
        depth = min(index.ntotal, depth * 2)
    rows = sorted({int(row) for c in range(len(classnames)) for row, _ in kept[c]})
    meta = metadata_rows(index_dir, rows, ["image_path", "caption"])  # the retrieved rows only
    at = {row: i for i, row in enumerate(rows)}
    records = []
    for c, name in enumerate(classnames):
        for rank, (row, score) in enumerate(kept[c], start=1):
            i = at[int(row)]
            records.append({"key": str(meta["image_path"][i]), "caption": str(meta["caption"][i]), "class": name,
                            "score": round(score, 6), "rank": rank})
    if short:
        log.warning("retrieve_anchors: %d class(es) got fewer than k=%d (corpus has %d usable samples)",
                    len(short), k_per_class, n_avail)
    return records


def format_anchor_report(stats: dict[str, dict], k: int) -> str:
    lines = [f"{'class':<24} {'n':>4} {'min':>7} {'mean':>7} {'max':>7}"]
    for c, s in stats.items():
        if s["count"]:
            lines.append(f"{c[:24]:<24} {s['count']:>4} {s['score_min']:>7.3f} {s['score_mean']:>7.3f} "
                         f"{s['score_max']:>7.3f}")
        else:
            lines.append(f"{c[:24]:<24} {0:>4}       -       -       -")
    short = [c for c, s in stats.items() if s["count"] < k]
    lines.append(f"{sum(s['count'] for s in stats.values())} anchors over {len(stats)} classes"
                 + (f"; {len(short)} class(es) below k={k}: {', '.join(short[:5])}" if short else ""))
    return "\n".join(lines)


def command(emb: Path = typer.Option(..., help="clip-retrieval embeddings folder"),
            prompts: Path = typer.Option(..., help="class prompt embeddings (.npz of embed_prompts)"),
            index: Path = typer.Option(..., help="index folder (clip-retrieval's layout)"),
            out: Path = typer.Option(..., help="folder for anchors.jsonl and stats.json"),
            params: Path = cmd.PARAMS) -> None:
    """Index the corpus embeddings (autofaiss) and retrieve the top-k corpus pairs per class."""
    p, t = cmd.section(params, "retrieve"), time.time()
    _, classnames = load_prompts(prompts)
    # the index and the anchors retrieved from it appear together: the anchors folder, the marker, last
    with atomic_dirs(index, out) as (index_tmp, out_tmp):
        index_report = build_index(emb, index_tmp, index_key=p.index_key, flat_below=p.flat_below,
                                   max_index_memory_usage=p.max_index_memory_usage,
                                   current_memory_available=p.current_memory_available)
        records = retrieve_anchors(index_tmp, prompts, p.k_per_class, target=p.target, dedup=p.dedup,
                                   exclude=p.exclude)
        write_anchors(records, out_tmp / "anchors.jsonl")
        stats = anchor_stats(records, classnames)
        write_json(out_tmp / "stats.json", {"k_per_class": p.k_per_class, "target": p.target, "dedup": p.dedup,
                                            **({"exclude": p.exclude, "excluded_pairs": int(excluded_rows(
                                                index_tmp, index_report["image"]["vectors"], p.exclude).sum())}
                                               if p.exclude else {}),
                                            "anchors": len(records), "classes": stats})
    typer.echo(format_anchor_report(stats, p.k_per_class))
    cmd.report("retrieve", t, {"anchors": len(records), **{f"{k}_index": f"{r['index_key']} ({r['chosen_by']})"
                                                           for k, r in index_report.items()
                                                           if isinstance(r, dict) and "index_key" in r}})
