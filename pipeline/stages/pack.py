"""Pack the finetune samples and the retrieved anchor pairs into WebDataset training shards.

These shards are everything the trainer reads, and what a lab shares through a DVC remote:
  packed/finetune/   KEY.png, KEY.cls (label), KEY.txt (first caption), KEY.json (class name, all captions)
  packed/anchors/    KEY.png, KEY.txt (corpus caption), KEY.json (class it was retrieved for, score, source)
  packed/val/        the ID validation split, as built (the trainer's only view of held-out data)
  packed/classes.json  the finetune class names and prompt templates (the FLYP targets)
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer
from PIL import Image

from pipeline.config import register_params
from pipeline.io.atomic import atomic_dir
from pipeline.io.records import read_anchors, read_captions
from pipeline.io.shards import (
    IMAGE_EXTS,
    SkipCounter,
    decode_image,
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
    # Store training images with their shorter side at this many pixels (downscaled only, bicubic as
    # open_clip's transform; JPEG stays JPEG at quality 95, other formats become PNG). Set it to the
    # model's input size: the trainer's resize then has nothing to do, and decoding plus preprocessing
    # a 224 px JPEG cost 3.4-5x less than a 500x375 one (scripts/bench_decode.py --stored, 2 cores).
    # null: the original bytes.
    image_size: int | None = field(default=None, metadata={"gt": 0})


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def stored_image(ext: str, data: bytes, key: str, size: int | None) -> tuple[str, bytes]:
    """The image as the trainer will read it: unchanged, or its shorter side brought down to `size`.
    An undecodable image raises ValueError naming the key."""
    if size is None:
        return ext, data
    image = decode_image(data, key)
    w, h = image.size
    if min(w, h) <= size:
        return ext, data
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    jpeg = ext in ("jpg", "jpeg")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95) if jpeg else image.save(buf, "PNG")
    return (ext if jpeg else "png"), buf.getvalue()


def pack(finetune_dir: Path, val_dir: Path, captions_path: Path, anchors_path: Path, corpus_dir: Path, classes_path: Path,
         out_dir: Path, params: PackParams) -> dict:
    captions = read_captions(captions_path)
    anchors = {a["key"]: a for a in read_anchors(anchors_path)}
    classes = json.loads(Path(classes_path).read_text())
    skips = SkipCounter()
    report = {"finetune": 0, "finetune_uncaptioned": 0, "anchors": 0}

    def image_of(s: dict) -> tuple[str, bytes] | None:
        try:
            return stored_image(*sample_image_bytes(s), s["__key__"], params.image_size)
        except (KeyError, ValueError) as e:
            skips(e)
            return None

    def finetune_samples():
        for s in iter_samples(finetune_dir, skips):
            key = s["__key__"]
            if key not in captions:
                report["finetune_uncaptioned"] += 1
                continue
            if (image := image_of(s)) is None:
                continue
            ext, img = image
            meta = json.loads(_text(s["json"])) | {"captions": captions[key]}
            report["finetune"] += 1
            yield {"__key__": key, ext: img, "cls": _text(s["cls"]), "txt": captions[key][0], "json": json.dumps(meta)}

    def anchor_samples():
        for s in iter_samples(corpus_dir, skips):
            a = anchors.get(s["__key__"])
            if a is None:
                continue
            if (image := image_of(s)) is None:
                anchors.pop(s["__key__"])  # skipped and counted, not missing
                continue
            ext, img = image
            meta = json.loads(_text(s["json"])) if "json" in s else {}
            meta |= {"class": a["class"], "score": a["score"], "rank": a.get("rank")}
            report["anchors"] += 1
            yield {"__key__": s["__key__"], ext: img, "txt": _text(s["txt"]), "json": json.dumps(meta)}

    def val_samples():
        for s in iter_samples(val_dir, skips):
            if params.image_size is None:
                yield dict(s)
            elif (image := image_of(s)) is not None:
                ext, img = image
                yield {k: v for k, v in s.items() if k not in IMAGE_EXTS} | {ext: img}

    with atomic_dir(out_dir) as tmp:
        write_shards(tmp / "finetune", finetune_samples(), params.max_per_shard)
        write_shards(tmp / "anchors", anchor_samples(), params.max_per_shard)
        write_shards(tmp / "val", val_samples(), params.max_per_shard)
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
