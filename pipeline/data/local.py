"""The benchmark and corpus from local datasets (`build_data.source: local`): the paper's scale.

Writes exactly what the embedded default writes, so every later stage runs unchanged:
  benchmark/finetune, benchmark/val   shards with `.cls` (val: a seeded per-sample draw from finetune)
  benchmark/eval/<name>               CLIP_benchmark sets (+ projection.json for ImageNet-A/R, ObjectNet)
  benchmark/classes.json              finetune class names and templates
  corpus/sizes.json                   a manifest naming the img2dataset shards where they are
  corpus_heldout/                     pairs from the corpus's last shard, which the manifest leaves out

The corpus is not copied: at CC3M / LAION scale a copy doubles terabytes for nothing, and shards
named by absolute path read the same through webdataset and clip-retrieval. The trade-off: DVC
tracks the manifest, not the tars, so the corpus folder must be treated as immutable (a changed
shard with the same name and sample count goes unnoticed). Finetune and eval images are copied
(bytes as they are, no re-encoding) into shards: they are read many times, and shards stream.
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import webdataset as wds

from pipeline.config import ParamsError
from pipeline.data.layouts import LabelledSet, LayoutError, in_val_split, read_layout
from pipeline.data.templates import template_set
from pipeline.data.writing import write_clip_benchmark_set
from pipeline.io.atomic import atomic_dirs, write_json
from pipeline.io.shards import SkipCounter, decode_image, write_shards

log = logging.getLogger(__name__)


EVAL_PREFIXES = ("id_", "shift_", "zeroshot_")


@dataclass
class LocalDataParams:
    # Folder the relative paths below are under (an absolute path in an entry ignores it).
    root: str | None = None
    # The finetune set: a layout entry {layout, path, ...}; see `arf layouts`.
    finetune: dict[str, Any] = field(default_factory=dict)
    # Share of the finetune set drawn (per sample, seeded) as the ID validation split.
    val_fraction: float = field(default=0.02, metadata={"gt": 0.0, "max": 0.5})
    # name -> layout entry. The prefix says the axis: id_*, shift_<domain>, zeroshot_<dataset>.
    eval: dict[str, dict[str, Any]] = field(default_factory=dict)
    # img2dataset output folder: {00000..}.tar with .jpg/.txt members and {00000..}_stats.json.
    # null: benchmark only; align (on a bare model), embed_corpus and the stages after it stop naming this key.
    corpus: str | None = None
    # Corpus pairs held out of retrieval for the retention metric (taken from the last shard).
    heldout_pairs: int = field(default=500, metadata={"min": 0})
    # Templates of the finetune set and of every eval set without its own (`templates:` in its entry,
    # same values, or a CLIP_benchmark export's): openai_imagenet (CLIP's 80, open_clip), simple_imagenet (its 7),
    # clip_benchmark:<dataset> (CLIP_benchmark's, e.g. clip_benchmark:pets) or a list with {c}.
    templates: str | list[str] = "openai_imagenet"
    # Cap on images per class in every set, for quick runs; null = all.
    max_per_class: int | None = field(default=None, metadata={"min": 1})
    seed: int = 0
    max_per_shard: int = field(default=1000, metadata={"gt": 0})
    # A corpus shard member (one image, caption or record) over this many MB is refused: members are
    # read whole into memory (img2dataset's are 10-500 KB).
    max_member_mb: int = field(default=64, metadata={"gt": 0})
    # Decode every benchmark image at import, as training and evaluation will: a corrupt, truncated,
    # empty or non-image file (or one over the pixel cap) is skipped and counted here, with its
    # reason, so the counts written are the ones every later stage sees. false: copy bytes unchecked
    # (an ImageNet import decodes 1.3M images once more); later stages then skip what fails.
    check_images: bool = True

    def check(self, where: str) -> None:
        for name in self.eval:
            if not name.startswith(EVAL_PREFIXES):
                raise ParamsError(f"{where}.eval.{name}: an eval set name starts with one of {', '.join(EVAL_PREFIXES)}")

    def template_list(self) -> list[str]:
        return template_set(self.templates, "build_data.local.templates")


def _root(params: LocalDataParams) -> Path | None:
    return Path(os.path.expanduser(params.root)) if params.root else None


def _samples(ls: LabelledSet, max_per_class: int | None, skips: SkipCounter, keep=lambda key: True,
             check_images: bool = True):
    """Shard samples of a set; unreadable files (and, with `check_images`, undecodable ones) are skipped
    and counted, never fatal, and count against no class's `max_per_class`. A label outside
    the set's classes or a key given to two images makes the set unusable (a wrong label file, two
    files that one key cannot tell apart), whatever the layout: refused, naming the sample."""
    per_class: Counter = Counter()
    seen: set[str] = set()
    for s in ls.samples():
        if not 0 <= s.label < len(ls.classnames):
            raise LayoutError(f"{ls.name}: sample {s.key}: label {s.label} is not a class of the set "
                              f"(0..{len(ls.classnames) - 1}, {len(ls.classnames)} classnames under {ls.root})")
        if s.key in seen:
            raise LayoutError(f"{ls.name}: sample key {s.key} names two images under {ls.root}; rename one of them")
        seen.add(s.key)
        if not keep(s.key) or (max_per_class is not None and per_class[s.label] >= max_per_class):
            continue
        try:
            data = s.read()
        except OSError as e:
            skips(OSError(f"{ls.name}: sample {s.key}: {e}"))
            continue
        if check_images:
            try:
                decode_image(data, f"{s.key} ({ls.name})")
            except ValueError as e:
                skips(e)
                continue
        per_class[s.label] += 1
        meta = {"classname": ls.classnames[s.label], "label": s.label, "set": ls.name}
        sample = {"__key__": s.key, s.ext: data, "cls": str(s.label), "json": json.dumps(meta, sort_keys=True)}
        if s.caption:
            sample["txt"] = s.caption
        yield sample


def _counted(samples, labels: Counter):
    """The samples, counting each one's label into `labels` as it goes by."""
    for sample in samples:
        labels[int(sample["cls"])] += 1
        yield sample


_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def check_corpus_tar(tar: Path, max_member_bytes: int) -> None:
    """A corpus shard is a plain tar of files of bounded size, as img2dataset writes them. Refused with
    one line naming the shard and member: a compressed tar (a small file that decompresses to GBs in
    memory), links, devices and other non-files, names that climb out of the shard, oversized members.
    Only the headers are read."""
    with tar.open("rb") as f:
        head = f.read(6)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise LayoutError(f"{tar}: {kind}-compressed; build_data.local.corpus expects plain .tar shards "
                              f"(img2dataset's); decompress it")
    try:
        with tarfile.open(tar, "r:") as members:
            for m in members:
                if m.isdir():
                    continue
                if not m.isfile():
                    raise LayoutError(f"{tar}: member {m.name!r} is not a file (a link or device); a corpus shard "
                                      f"holds image and text files only")
                if m.name.startswith("/") or ".." in PurePosixPath(m.name).parts:
                    raise LayoutError(f"{tar}: member {m.name!r} names a path outside the shard")
                if m.size > max_member_bytes:
                    raise LayoutError(f"{tar}: member {m.name!r} is {m.size / 2 ** 20:.0f} MB, over "
                                      f"build_data.local.max_member_mb ({max_member_bytes // 2 ** 20})")
    except tarfile.TarError as e:
        raise LayoutError(f"{tar}: unreadable shard ({e})") from None


def corpus_shards(folder: Path, max_member_mb: int = 64) -> dict[str, int]:
    """Absolute shard path -> sample count of an img2dataset output folder (from its _stats.json
    files where present, else by reading the tar's member names); every shard is checked first
    (`check_corpus_tar`)."""
    tars = sorted(folder.glob("*.tar"))
    if not tars:
        raise LayoutError(f"{folder}: no .tar shards; expected an img2dataset output folder ({{00000..}}.tar with .jpg and .txt)")
    from pipeline.io.shards import (
        shard_members,  # webdataset's key split, as clip-retrieval will read them
    )

    sizes = {}
    for tar in tars:
        check_corpus_tar(tar, max_member_mb * 2 ** 20)
        stats = tar.with_name(f"{tar.stem}_stats.json")
        if stats.is_file():
            sizes[str(tar.resolve())] = int(json.loads(stats.read_text())["successes"])
        else:
            members, broken = shard_members([str(tar)])
            if broken:
                raise LayoutError(f"{tar}: unreadable shard ({broken[0]})")
            sizes[str(tar.resolve())] = len(members)
    return sizes


def _heldout_pairs(tar: str, n: int, skips: SkipCounter) -> list[dict]:
    out = []
    for s in wds.WebDataset([tar], shardshuffle=False, handler=skips, empty_check=False):
        if len(out) >= n:
            break
        if "txt" not in s or not any(e in s for e in ("jpg", "png", "webp", "jpeg")):
            continue
        out.append({k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"})
    return out


def import_local_data(out_root: Path, params: LocalDataParams) -> dict:
    """Write benchmark/, corpus/ and corpus_heldout/ under out_root from local datasets; return counts."""
    t0 = time.perf_counter()
    root = _root(params)
    if not params.finetune:
        raise ParamsError("build_data.local.finetune: missing; a layout entry such as {layout: imagenet, path: imagenet, split: train}")
    templates = params.template_list()
    finetune = read_layout("finetune", params.finetune, root)
    evals = {name: read_layout(name, spec, root) for name, spec in params.eval.items()}
    warnings, shards, corpus_dir = [], {}, None
    if params.corpus:
        corpus_dir = Path(os.path.expanduser(params.corpus))
        corpus_dir = corpus_dir if corpus_dir.is_absolute() or root is None else root / corpus_dir
        if not corpus_dir.is_dir():
            raise LayoutError(f"{corpus_dir}: not found; build_data.local.corpus expects an img2dataset output folder ({{00000..}}.tar)")
        shards = corpus_shards(corpus_dir, params.max_member_mb)
        if params.heldout_pairs and len(shards) < 2:
            raise LayoutError(f"{corpus_dir}: one shard; held-out pairs come from the last shard, so the corpus needs "
                              f"two or more (or set build_data.local.heldout_pairs: 0)")
    else:
        warnings.append("build_data.local.corpus: null; the benchmark is built, but align (on a bare model), "
                        "embed_corpus and the stages after it need a corpus")
    for name, es in evals.items():
        target = es.projection.classnames if es.projection else es.classnames
        if name.startswith(("id_", "shift_")) and target != finetune.classnames:
            raise LayoutError(f"{es.root}: build_data.local.eval.{name} is scored with the finetune classes, but its "
                              f"classes differ (name it zeroshot_* to score it with its own)")

    skips = SkipCounter()
    counts: dict[str, Any] = {"source": "local"}
    out_root = Path(out_root)
    # benchmark/ (with build_data.json) is the marker: replaced last, so it never sits beside corpus
    # folders of another run
    with atomic_dirs(out_root / "corpus", out_root / "corpus_heldout", out_root / "benchmark") as (
            corpus_tmp, heldout_tmp, tmp):
        manifest = dict(list(shards.items())[:-1]) if params.heldout_pairs else shards
        (corpus_tmp / "sizes.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        counts["corpus"] = {"shards": len(manifest), "pairs": sum(manifest.values()),
                            "folder": str(corpus_dir.resolve()) if corpus_dir else None}
        held = _heldout_pairs(list(shards)[-1], params.heldout_pairs, skips) if params.heldout_pairs and shards else []
        write_shards(heldout_tmp, held, params.max_per_shard)
        counts["corpus_heldout"] = len(held)
        if shards and len(held) < params.heldout_pairs:
            warnings.append(f"build_data.local.heldout_pairs: {params.heldout_pairs} asked, {len(held)} held out: "
                            f"the last corpus shard ({Path(list(shards)[-1]).name}), where they come from, holds no more")
        frac, seed = params.val_fraction, params.seed
        per_class = {"train": Counter(), "val": Counter()}
        check = params.check_images
        info = write_shards(tmp / "finetune", _counted(_samples(finetune, params.max_per_class, skips, lambda k: not
                                                                in_val_split(k, frac, seed), check), per_class["train"]),
                            params.max_per_shard)
        val = write_shards(tmp / "val", _counted(_samples(finetune, params.max_per_class, skips,
                                                          lambda k: in_val_split(k, frac, seed), check), per_class["val"]),
                           params.max_per_shard)
        counts["benchmark"] = {"finetune": info.num_samples, "val": val.num_samples}
        if info.num_samples == 0 or val.num_samples == 0:
            unreadable = f" ({skips.report('unreadable images')})" if skips.skipped else ""
            raise LayoutError(f"{finetune.root}: the finetune set gave {info.num_samples} train and {val.num_samples} "
                              f"val samples with build_data.local.val_fraction {frac}{unreadable}; change it so both "
                              f"are non-empty")
        for split, labels in per_class.items():
            absent = [c for i, c in enumerate(finetune.classnames) if not labels[i]]
            if absent:
                warnings.append(f"build_data.local.val_fraction {frac}: {len(absent)} of {len(finetune.classnames)} "
                                f"classes have no {split} image ({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''})")
        for name, es in evals.items():
            sizes = write_clip_benchmark_set(tmp / "eval" / name, _samples(es, params.max_per_class, skips,
                                                                           check_images=check),
                                             es.classnames, es.templates or templates, params.max_per_shard)
            if es.projection is not None:
                write_json(tmp / "eval" / name / "projection.json", es.projection.to_json(), indent=None)
            counts["benchmark"][name] = sum(sizes.values())
        (tmp / "classes.json").write_text(json.dumps(
            {"seen": finetune.classnames, "unseen": [], "templates": templates}, indent=2) + "\n")
        counts["skipped"] = skips.skipped
        if skips.skipped:
            counts["skipped_examples"] = skips.examples
        counts["warnings"] = warnings
        counts["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(tmp / "build_data.json", counts)
    for w in warnings:
        log.warning(w)
    if skips.skipped:
        log.warning(skips.report("build_data.local"))
    return counts
