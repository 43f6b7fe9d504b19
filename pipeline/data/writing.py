"""Reproducible shard writing on top of `pipeline.io.shards.write_shards`, and CLIP_benchmark's layout.

webdataset stamps every tar member with the current time (as a float, which also adds a PAX
header per member), so two runs of `write_shards` never give the same bytes. `write_shards_fixed`
rewrites each finished shard with mtime 0: same seed -> byte-identical shards.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable

import webdataset as wds

from pipeline.io.shards import write_shards

TAR_MTIME = 0


_USER = "bigdata"  # what webdataset's TarWriter writes as owner


def _normalise_tar(path: Path) -> None:
    with tarfile.open(path) as src:
        members = [(m.name, m.mode, src.extractfile(m).read()) for m in src.getmembers() if m.isfile()]
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as dst:
        for name, mode, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), TAR_MTIME, mode
            ti.uname = ti.gname = _USER
            dst.addfile(ti, io.BytesIO(data))
    tmp.replace(path)


def write_shards_fixed(root: Path, samples: Iterable[dict], max_per_shard: int = 1000) -> dict[str, int]:
    """`write_shards` (img2dataset naming, `sizes.json`), then fixed tar timestamps.

    Call it inside an enclosing `atomic_dir` so that the rewrite happens before anything is visible.
    """
    info = write_shards(root, samples, max_per_shard=max_per_shard)
    for name in sorted(info.sizes):
        _normalise_tar(Path(root) / name)
    return dict(info.sizes)


def write_clip_benchmark_set(
    set_dir: Path,
    samples: Iterable[dict],
    classnames: list[str],
    templates: list[str],
    max_per_shard: int = 1000,
    split: str = "test",
) -> dict[str, int]:
    """One CLIP_benchmark webdataset classification set, written as the samples stream by.

    Layout: `<set>/<split>/{0..N-1}.tar` (no zero padding), `<split>/nshards.txt`, `classnames.txt`,
    `zeroshot_classification_templates.txt`, `dataset_type.txt` ("classification"), plus
    `<split>/sizes.json` for `pipeline.io.shards.read_shard_info`. No samples: one empty shard.
    """
    split_dir = Path(set_dir) / split
    split_dir.mkdir(parents=True, exist_ok=False)
    sizes: dict[str, int] = {}
    writer = None
    try:
        for sample in samples:
            if writer is None or sizes[name] == max_per_shard:
                if writer is not None:
                    writer.close()
                name = f"{len(sizes)}.tar"
                writer, sizes[name] = wds.TarWriter(str(split_dir / name), mtime=TAR_MTIME), 0
            writer.write(sample)
            sizes[name] += 1
        if writer is None:
            name = "0.tar"
            writer, sizes[name] = wds.TarWriter(str(split_dir / name), mtime=TAR_MTIME), 0
    finally:
        if writer is not None:
            writer.close()
    (split_dir / "nshards.txt").write_text(f"{len(sizes)}\n")
    (split_dir / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    (Path(set_dir) / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames))
    (Path(set_dir) / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    (Path(set_dir) / "dataset_type.txt").write_text("classification\n")
    return sizes
