"""Corpus embeddings in clip-retrieval's output layout, and class prompt embeddings.

`img_emb/img_emb_N.npy`, `text_emb/text_emb_N.npy` (fp16, L2-normalised) and
`metadata/metadata_N.parquet` (row order = npy row order; `image_path` holds the WebDataset sample key,
`caption` the caption, the sample's JSON fields flattened into columns), read partition by partition
so that no stage needs the whole corpus in memory; and the class prompt `.npz` of embed_prompts.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch


def save_class_embeddings(path: Path, embeddings: torch.Tensor, classnames: list[str], templates: list[str]) -> None:
    from pipeline.io.atomic import atomic_file

    with atomic_file(path, "wb") as f:
        np.savez(f, embeddings=embeddings.numpy().astype(np.float32), classnames=np.array(classnames),
                 templates=np.array(templates))


log = logging.getLogger(__name__)


TARGETS = ("image", "text")


EMB_SUBDIR = {"image": "img_emb", "text": "text_emb"}


def partition_files(folder: Path, prefix: str, ext: str) -> list[Path]:
    files = sorted(folder.glob(f"{prefix}_*.{ext}"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return files


def load_embeddings(emb_dir: str | os.PathLike, target: str = "image") -> np.ndarray:
    """All partitions of one modality as float32, in row order (the order of the metadata rows)."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {TARGETS}")
    sub = Path(emb_dir) / EMB_SUBDIR[target]
    files = partition_files(sub, EMB_SUBDIR[target], "npy")
    if not files:
        raise FileNotFoundError(f"{sub}: no {EMB_SUBDIR[target]}_N.npy files")
    return np.concatenate([np.load(f).astype(np.float32) for f in files])


def _metadata_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    meta = folder / "metadata" if (folder / "metadata").is_dir() else folder
    files = partition_files(meta, "metadata", "parquet")
    if not files:
        raise FileNotFoundError(f"{meta}: no metadata_N.parquet files")
    return files


def load_metadata(folder: str | os.PathLike):
    """clip-retrieval's metadata parquet partitions as one DataFrame (row i = embedding / index id i).
    The whole table: for small corpora and tests; the stages read columns and rows as they need them."""
    import pandas as pd

    return pd.concat([pd.read_parquet(f) for f in _metadata_files(folder)], ignore_index=True)


def metadata_row_counts(folder: str | os.PathLike) -> list[int]:
    """Rows per metadata partition, from the parquet footers (nothing else is read)."""
    import pyarrow.parquet as pq

    return [pq.ParquetFile(f).metadata.num_rows for f in _metadata_files(folder)]


def metadata_columns(folder: str | os.PathLike) -> list[str]:
    import pyarrow.parquet as pq

    files = _metadata_files(folder)
    return pq.ParquetFile(files[0]).schema_arrow.names if files else []


def iter_metadata_column(folder: str | os.PathLike, column: str) -> Iterator[np.ndarray]:
    """One column, partition by partition (a million rows at most each, as clip-retrieval writes them)."""
    import pyarrow.parquet as pq

    for f in _metadata_files(folder):
        yield pq.read_table(f, columns=[column]).column(column).to_numpy(zero_copy_only=False)


def metadata_rows(folder: str | os.PathLike, rows: Sequence[int], columns: Sequence[str]) -> dict[str, list]:
    """`columns` of the given global rows (in the order given), reading only the partitions that hold
    them; a column a partition lacks reads as ""."""
    import pyarrow.parquet as pq

    files = _metadata_files(folder)
    counts = metadata_row_counts(folder)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rows = np.asarray(rows, dtype=np.int64)
    out = {c: [None] * len(rows) for c in columns}
    part_of = np.searchsorted(starts, rows, side="right") - 1
    for part in np.unique(part_of):
        where = np.flatnonzero(part_of == part)
        present = [c for c in columns if c in pq.ParquetFile(files[part]).schema_arrow.names]
        table = pq.read_table(files[part], columns=present).take(rows[where] - starts[part])
        for c in columns:
            values = table.column(c).to_pylist() if c in present else [""] * len(where)
            for i, v in zip(where, values):
                out[c][i] = v
    return out


def load_prompts(prompts_npz: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Class prompt embeddings (C x D, L2-normalised) and class names from an .npz."""
    with np.load(prompts_npz, allow_pickle=False) as z:
        missing = {"embeddings", "classnames"} - set(z.files)
        if missing:
            raise KeyError(f"{prompts_npz}: missing array(s) {', '.join(sorted(missing))}")
        emb = np.asarray(z["embeddings"], dtype=np.float32)
        names = [str(c) for c in z["classnames"]]
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise ValueError(f"{prompts_npz}: embeddings {emb.shape} do not match {len(names)} classnames")
    # Names may repeat: CLIP's ImageNet list has 'missile' (657, 744) and 'sunglasses' (836, 837). A
    # class is its row; anchor records name it, so per-class statistics merge such twins.
    norms = np.linalg.norm(emb, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        bad = int(np.argmax(np.abs(norms - 1)))
        raise ValueError(f"{prompts_npz}: embeddings must be L2-normalised (class {names[bad]!r} has norm "
                         f"{norms[bad]:.4f})")
    return emb, names


def count_vectors(sub: Path, prefix: str) -> tuple[int, int]:
    n, dim = 0, 0
    for f in partition_files(sub, prefix, "npy"):
        arr = np.load(f, mmap_mode="r")
        n, dim = n + arr.shape[0], arr.shape[1]
    return n, dim
