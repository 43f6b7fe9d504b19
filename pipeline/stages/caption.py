"""Stage `caption`: one caption record per finetune sample (`data/captions`).

The captioner is chosen in `caption.backend` from the registry in `pipeline.core.captioners` (the `nn`
stand-in by default, BLIP and BLIP-2 on local weights, `classname` for the ablation without rich text).
Model backends caption shard by shard, ranks of a torchrun job taking every world-th shard.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from pipeline.config import DEVICE, register_params
from pipeline.core.captioners.registry import (
    caption_dataset,
    create_captioner,
    list_captioners,
)
from pipeline.core.distributed import relaunch_under_torchrun
from pipeline.core.models import model_dir_spec
from pipeline.io.records import write_records
from pipeline.io.shards import SkipCounter, iter_shard_images, read_shard_info
from pipeline.stages import _command as cmd

log = logging.getLogger(__name__)


def backends() -> list[str]:
    """Every `caption.backend`: the registered captioners, then `classname` (the class name alone as the
    caption, the ablation without rich text; see class_name_captions)."""
    return [*list_captioners(), "classname"]


@register_params("caption")
@dataclass
class CaptionParams:
    backend: str = field(default="nn", metadata={"choices": backends})
    model_path: str | None = None  # local BLIP / BLIP-2 folder (backends blip, blip2)
    num_captions: int = field(default=1, metadata={"gt": 0})
    batch_size: int = field(default=32, metadata={"gt": 0})
    max_new_tokens: int = field(default=30, metadata={"gt": 0})
    prompt: str | None = None
    # blip / blip2 only: weights' dtype (bf16 / fp16 on a GPU) and device (auto: CUDA when present)
    dtype: str = field(default="fp32", metadata={"choices": ("fp32", "bf16", "fp16")})
    device: str = field(default="auto", metadata=DEVICE)
    # > 1: the caption command relaunches under torchrun, one process per GPU, each captioning
    # every world-th shard. Shards are captioned (and saved) one at a time, so a killed run resumes
    # at the first shard without captions.
    nproc_per_node: int = field(default=1, metadata={"gt": 0})

    def check(self, where: str) -> None:
        from pipeline.config import ParamsError

        if self.backend in ("blip", "blip2") and not self.model_path:
            raise ParamsError(f"{where}.model_path: required for backend {self.backend!r} (a local model folder)")


def class_name_captions(finetune_dir: Path, classes_path: Path, skips: SkipCounter):
    """{key, captions: [class name]} per sample: the ablation that keeps the anchor loss but not the rich text.
    It reads labels, which no image captioner sees, so it is not a registered captioner."""
    classnames = json.loads(Path(classes_path).read_text())["seen"]
    for key, _, sample in iter_shard_images(finetune_dir, skips):
        try:
            cls = sample["cls"]
            yield {"key": key, "captions": [classnames[int(cls.decode() if isinstance(cls, bytes) else cls)]]}
        except (KeyError, ValueError, IndexError):
            skips(ValueError(f"{finetune_dir}: sample {key} has no valid .cls label"))


def _captioner(params: CaptionParams, base_model_spec: str, corpus_emb_dir: Path, device: str):
    if params.backend == "nn":
        return create_captioner("nn", model_spec=base_model_spec, corpus_emb_dir=corpus_emb_dir,
                                num_captions=params.num_captions, batch_size=params.batch_size, device=device)
    return create_captioner(params.backend, model_path=params.model_path, batch_size=params.batch_size,
                            num_captions=params.num_captions, max_new_tokens=params.max_new_tokens,
                            prompt=params.prompt, dtype=params.dtype, device=device)


def caption_finetune_set(finetune_dir: Path, out_path: Path, params: CaptionParams, base_model_spec: str,
                         corpus_emb_dir: Path, classes_path: Path | None = None) -> dict:
    """Caption every finetune image; write JSONL records {key, captions} atomically.

    Model backends caption shard by shard into a parts folder beside the output (kept across a
    crash, keyed by the params that made it), ranks of a torchrun job taking every world-th shard;
    rank 0 joins the parts in shard order, so the output is the same for any number of processes.
    """
    from pipeline.core.distributed import Dist

    skips = SkipCounter()
    if params.backend == "classname":
        if classes_path is None or not Path(classes_path).is_file():
            raise FileNotFoundError(f"{classes_path}: the classname backend needs the benchmark's classes.json")
        n = write_records(out_path, class_name_captions(finetune_dir, classes_path, skips))
        return {"captioned": n, "skipped": skips.skipped, "backend": params.backend, "backends": list_captioners()}
    dd = Dist.init(params.device)
    parts = out_path.parent / f".{out_path.name}.parts"
    run = {k: v for k, v in vars(params).items() if k not in ("batch_size", "device", "nproc_per_node")}
    fingerprint = json.dumps({**run, "base": base_model_spec if params.backend == "nn" else None}, sort_keys=True)
    if dd.rank == 0:
        if parts.is_dir() and (parts / "params.json").is_file() and (parts / "params.json").read_text() != fingerprint:
            log.warning("%s: captions of other params; starting over", parts)
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        (parts / "params.json").write_text(fingerprint)
    dd.barrier()
    urls = read_shard_info(finetune_dir).urls
    done = sum((parts / f"{Path(u).name}.jsonl").is_file() for u in urls)
    captioner = None
    for url in urls[dd.rank::dd.world]:
        part = parts / f"{Path(url).name}.jsonl"
        if part.is_file():
            continue
        captioner = captioner or _captioner(params, base_model_spec, corpus_emb_dir, str(dd.device))
        samples = ((key, image) for key, image, _ in iter_shard_images(finetune_dir, skips, [url]))
        write_records(part, caption_dataset(captioner, samples, params.batch_size, desc=f"captioning {Path(url).name}"))
    dd.barrier()
    n = 0
    if dd.rank == 0:
        def joined():
            for u in urls:
                with open(parts / f"{Path(u).name}.jsonl") as f:
                    yield from (json.loads(line) for line in f)
        n = write_records(out_path, joined())
        shutil.rmtree(parts)
    dd.barrier()
    if skips.skipped:
        log.warning(skips.report(str(finetune_dir)))
    return {"captioned": n, "skipped": skips.skipped, "backend": params.backend, "backends": list_captioners(),
            "shards": len(urls), "shards_resumed": done}


def command(finetune: Path = typer.Option(...), base: Path = typer.Option(..., help="base model folder (nn backend)"),
            corpus_emb: Path = typer.Option(..., help="clip-retrieval embeddings (nn backend)"),
            classes: Path = typer.Option(..., help="class names (classname backend)"),
            out: Path = typer.Option(..., help="captions JSON-lines file"), params: Path = cmd.PARAMS) -> None:
    """Caption the finetune images (caption.backend: a registered captioner, or classname)."""
    p, t = cmd.section(params, "caption"), time.time()
    relaunch_under_torchrun(p.nproc_per_node, sys.argv)
    spec = model_dir_spec(base) if p.backend == "nn" else ""
    cmd.report("caption", t, caption_finetune_set(finetune, out, p, spec, corpus_emb, classes))
