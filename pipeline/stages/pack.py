"""Pack the finetune samples and the retrieved anchor pairs into WebDataset training shards.

These shards are everything the trainer reads, and what a lab shares through a DVC remote:
  packed/finetune/   KEY.png, KEY.cls (label), KEY.txt (first caption), KEY.json (class name, all captions)
  packed/anchors/    KEY.png, KEY.txt (corpus caption), KEY.json (class it was retrieved for, score, source)
  packed/val/        the ID validation split, as built (the trainer's only view of held-out data)
  packed/classes.json  the finetune class names and prompt templates (the FLYP targets)
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from pipeline.config import register_params
from pipeline.io.atomic import atomic_dir
from pipeline.io.records import read_anchors, read_captions
from pipeline.io.shards import (
    SkipCounter,
    iter_samples,
    sample_image_bytes,
    write_shards,
)
from pipeline.stages import _command as cmd

log = logging.getLogger(__name__)


@register_params("pack")
@dataclass
class PackParams:
    max_per_shard: int = field(default=1000, metadata={"gt": 0})


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def pack(finetune_dir: Path, val_dir: Path, captions_path: Path, anchors_path: Path, corpus_dir: Path, classes_path: Path,
         out_dir: Path, params: PackParams) -> dict:
    captions = read_captions(captions_path)
    anchors = {a["key"]: a for a in read_anchors(anchors_path)}
    classes = json.loads(Path(classes_path).read_text())
    skips = SkipCounter()
    report = {"finetune": 0, "finetune_uncaptioned": 0, "anchors": 0}

    def finetune_samples():
        for s in iter_samples(finetune_dir, skips):
            key = s["__key__"]
            if key not in captions:
                report["finetune_uncaptioned"] += 1
                continue
            ext, img = sample_image_bytes(s)
            meta = json.loads(_text(s["json"])) | {"captions": captions[key]}
            report["finetune"] += 1
            yield {"__key__": key, ext: img, "cls": _text(s["cls"]), "txt": captions[key][0], "json": json.dumps(meta)}

    def anchor_samples():
        for s in iter_samples(corpus_dir, skips):
            a = anchors.get(s["__key__"])
            if a is None:
                continue
            ext, img = sample_image_bytes(s)
            meta = json.loads(_text(s["json"])) if "json" in s else {}
            meta |= {"class": a["class"], "score": a["score"], "rank": a.get("rank")}
            report["anchors"] += 1
            yield {"__key__": s["__key__"], ext: img, "txt": _text(s["txt"]), "json": json.dumps(meta)}

    with atomic_dir(out_dir) as tmp:
        write_shards(tmp / "finetune", finetune_samples(), params.max_per_shard)
        write_shards(tmp / "anchors", anchor_samples(), params.max_per_shard)
        write_shards(tmp / "val", (dict(s) for s in iter_samples(val_dir, skips)), params.max_per_shard)
        missing = len(anchors) - report["anchors"]
        if missing:
            raise ValueError(f"{anchors_path}: {missing} anchor key(s) not found in {corpus_dir}")
        (tmp / "classes.json").write_text(json.dumps(
            {"classnames": classes["seen"], "templates": classes["templates"]}, indent=1) + "\n")
    report["skipped"] = skips.skipped
    if report["finetune_uncaptioned"]:
        log.warning("%s: %d finetune sample(s) had no caption record and were left out",
                    finetune_dir, report["finetune_uncaptioned"])
    return report


def command(finetune: Path = typer.Option(...), val: Path = typer.Option(...),
            captions: Path = typer.Option(...), anchors: Path = typer.Option(...), corpus: Path = typer.Option(...),
            classes: Path = typer.Option(...), out: Path = typer.Option(...), params: Path = cmd.PARAMS) -> None:
    """Pack finetune samples (with captions), the ID validation split and anchor pairs into training shards."""
    p, t = cmd.section(params, "pack"), time.time()
    cmd.report("pack", t, pack(finetune, val, captions, anchors, corpus, classes, out, p))
