"""Eval sets in the CLIP_benchmark webdataset layout, the ID validation split and held-out corpus pairs,
read into memory while a pixel budget lasts and streamed past it.

A model classifies with its own text tower (the zero-shot head built from the set's class names and
templates), so a finetuned text tower is evaluated as it would be used. A model with a trained
classifier head (FT, LP, LP-FT) uses that head on sets whose classes are the head's (ID and shifts)
and its text tower elsewhere (zero-shot sets), as in the robust-finetuning literature.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from pipeline.core.distributed import Dist
from pipeline.io.shards import SkipCounter, iter_shard_images, read_corpus_info

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    name: str
    root: Path
    classnames: list[str]
    templates: list[str]
    images: "torch.Tensor | ImageStream"  # preprocessed N x 3 x H x W, or streamed batches for large sets
    labels: torch.Tensor
    # Under torchrun each rank holds every world-th image (`images`, at these positions in the set);
    # `labels` are the whole set's, and `Dist.gather_in_order` puts the image features back together.
    positions: torch.Tensor | None = None
    # Sets over a subset or a grouping of another label space (ImageNet-A/R, ObjectNet): the classifier
    # is built over `projection["classnames"]` and eval class i scores the max of its columns map[i].
    projection: dict | None = None

    @property
    def cached_bytes(self) -> int:
        return self.images.numel() * self.images.element_size() if isinstance(self.images, torch.Tensor) else 0

    @property
    def classifier_classnames(self) -> list[str]:
        return self.projection["classnames"] if self.projection else self.classnames

    def project(self, logits: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return logits
        return torch.stack([logits[:, cols].amax(1) for cols in self.projection["map"]], dim=1)


def read_eval_set(root: Path, preprocess, dist: Dist = Dist(), cache_bytes: int | None = None) -> EvalSet:
    """Load a CLIP_benchmark-style classification set: test shards, classnames.txt, templates."""
    classnames = (root / "classnames.txt").read_text().splitlines()
    templates = [t for t in (root / "zeroshot_classification_templates.txt").read_text().splitlines() if t.strip()]
    es = read_labelled_shards(root / "test", root.name, classnames, templates, preprocess, dist, cache_bytes)
    if (root / "projection.json").is_file():
        es.projection = read_projection(root / "projection.json", len(classnames))
    return es


def read_projection(path: Path, n_classes: int) -> dict:
    proj = json.loads(path.read_text())
    n_source = len(proj.get("classnames", []))
    cols = proj.get("map", [])
    if len(cols) != n_classes or not all(cols) or any(not 0 <= c < n_source for m in cols for c in m):
        raise ValueError(f"{path}: expected classnames (C') and map: {n_classes} non-empty lists of indices < C'")
    return proj


# Preprocessed pixels kept in memory per process, over all sets (`evaluate.cache_gb`): sets are
# decoded once and kept while they fit (every default set, ~5k images at 96 px, many times over);
# the rest (ImageNet val at 224 px is 30 GB) are decoded again on every pass, so evaluation memory
# stays within the budget whatever the eval sets.
MAX_CACHED_BYTES = 4 * 1024 ** 3


class ImageStream:
    """Preprocessed images of a shard folder, batch by batch, re-read on every iteration; only the
    keys found readable (and labelled) on the first pass are yielded, so labels stay aligned."""

    def __init__(self, shards: Path, keys: list[str], preprocess, batch_size: int = 256, part: tuple[int, int] = (0, 1)):
        self.shards, self.keys, self.preprocess, self.batch_size, self.part = shards, keys, preprocess, batch_size, part

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[torch.Tensor]:
        wanted, n, batch = set(self.keys), 0, []
        for key, image, _ in iter_shard_images(self.shards, part=self.part):
            if key not in wanted:
                continue
            batch.append(self.preprocess(image))
            n += 1
            if len(batch) == self.batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)
        if n != len(self.keys):
            raise RuntimeError(f"{self.shards}: {n} images read, {len(self.keys)} on the first pass (changed on disk?)")


def read_labelled_shards(shards: Path, name: str, classnames: list[str], templates: list[str], preprocess,
                         dist: Dist = Dist(), cache_bytes: int | None = None) -> EvalSet:
    """Images with integer `.cls` labels from a shard folder; unreadable samples are skipped and counted.
    Under torchrun each rank decodes only its share of the images (see `EvalSet.positions`). Pixels
    are kept if they fit in `cache_bytes` (default MAX_CACHED_BYTES), else streamed."""
    cache_bytes = MAX_CACHED_BYTES if cache_bytes is None else cache_bytes
    skips = SkipCounter()
    part = (dist.rank, dist.world)
    images, labels, keys, positions, pixel_bytes = [], [], [], [], 0
    for key, image, sample in iter_shard_images(shards, skips, part=part):
        try:
            label = int(sample["cls"])
        except (KeyError, ValueError):
            skips(ValueError(f"{name}: sample {key} has no integer .cls"))
            continue
        x = preprocess(image)
        pixel_bytes += x.numel() * x.element_size()
        if images is not None:
            images.append(x)
            if pixel_bytes > cache_bytes:
                images = None  # too large to keep: stream it instead
        labels.append(label)
        keys.append(key)
        positions.append(sample["__index__"])
    if skips.skipped:
        log.warning(skips.report(str(shards)))
    positions = torch.tensor(positions, dtype=torch.long)
    all_labels = dist.gather_in_order(positions, torch.tensor(labels, dtype=torch.long))
    if not len(all_labels):
        raise ValueError(f"{shards}: no readable samples")
    bad = [(k, y) for k, y in zip(keys, labels) if not 0 <= y < len(classnames)]
    if bad:  # a -1 would index the last class name and score as a real prediction
        raise ValueError(f"{shards}: sample {bad[0][0]}: label {bad[0][1]} is not one of the {len(classnames)} classes "
                         f"of {name} ({len(bad)} such sample(s))")
    if images is None:
        pixels = ImageStream(shards, keys, preprocess, part=part)
    else:  # a rank may hold no image of a small set
        pixels = torch.stack(images) if images else torch.zeros(0)
    return EvalSet(name, shards, classnames, templates, pixels, all_labels, positions=positions)


def read_eval_sets(eval_root: Path, preprocess, dist: Dist = Dist(), cache_bytes: int | None = None) -> list[EvalSet]:
    """Every set under eval_root, in name order, kept in memory while `cache_bytes` lasts (over all)."""
    roots = sorted(p for p in Path(eval_root).iterdir() if (p / "classnames.txt").is_file()) if Path(eval_root).is_dir() else []
    if not roots:
        raise FileNotFoundError(f"{eval_root}: no eval sets (folders with classnames.txt and test/ shards)")
    left = MAX_CACHED_BYTES if cache_bytes is None else cache_bytes
    sets = []
    for r in roots:
        sets.append(read_eval_set(r, preprocess, dist, left))
        left -= sets[-1].cached_bytes
    return sets


@dataclass
class HeldoutPairs:
    images: torch.Tensor  # this rank's share, at `positions` (see EvalSet)
    captions: list[str]  # all of them
    positions: torch.Tensor


def read_heldout_pairs(root: Path, preprocess, dist: Dist = Dist()) -> HeldoutPairs:
    read_corpus_info(root, "the retention metric (held-out pairs, build_data.local.heldout_pairs > 0)")
    skips = SkipCounter()
    images, captions, positions = [], [], []
    for key, image, sample in iter_shard_images(root, skips, part=(dist.rank, dist.world)):
        txt = sample.get("txt")
        if not txt:
            skips(ValueError(f"{root}: sample {key} has no .txt caption"))
            continue
        images.append(preprocess(image))
        captions.append(txt.decode("utf-8") if isinstance(txt, bytes) else txt)
        positions.append(sample["__index__"])
    if skips.skipped:
        log.warning(skips.report(str(root)))
    positions = torch.tensor(positions, dtype=torch.long)
    captions = dist.gather_in_order(positions, captions)
    if not captions:
        raise ValueError(f"{root}: no readable image-caption pairs")
    return HeldoutPairs(torch.stack(images) if images else torch.zeros(0), captions, positions)


def read_val_set(packed_dir: Path, preprocess, dist: Dist = Dist(), cache_bytes: int | None = None) -> EvalSet:
    """The ID validation split as packed for training, scored with the finetune classes and templates."""
    classes = json.loads((packed_dir / "classes.json").read_text())
    return read_labelled_shards(packed_dir / "val", "id_val", classes["classnames"], classes["templates"], preprocess,
                                dist, cache_bytes)
