"""The caption stage: one caption record per finetune sample, and the default captioner.

The default backend, `nn`, is a stand-in for BLIP: no captioner's weights can be had offline, so each
finetune image gets the captions of its nearest corpus images under the base model. Those captions
are real human-written text about *similar* images, not a description of this image: they carry the
style and vocabulary of the corpus (what the text-compensated anchors are for) but can name the wrong
object. The BLIP / BLIP-2 backends run the same stage on local weights.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import atomic_file
from .captioners import caption_dataset, create_captioner, list_captioners, register_captioner
from .embed import iter_shard_images
from .models import create_model
from .params import register_params
from .retrieve import load_embeddings, load_metadata
from .shards import SkipCounter, read_shard_info

log = logging.getLogger(__name__)


@register_params("caption")
@dataclass
class CaptionParams:
    # classname: the class name alone as the caption, the ablation without rich text
    backend: str = field(default="nn", metadata={"choices": ("nn", "blip", "blip2", "classname")})
    model_path: str | None = None  # local BLIP / BLIP-2 folder (backends blip, blip2)
    num_captions: int = field(default=1, metadata={"gt": 0})
    batch_size: int = field(default=32, metadata={"gt": 0})
    max_new_tokens: int = field(default=30, metadata={"gt": 0})
    prompt: str | None = None
    # blip / blip2 only: weights' dtype (bf16 / fp16 on a GPU) and device (auto: CUDA when present)
    dtype: str = field(default="fp32", metadata={"choices": ("fp32", "bf16", "fp16")})
    device: str = "auto"
    # > 1: the caption command relaunches under torchrun, one process per GPU, each captioning
    # every world-th shard. Shards are captioned (and saved) one at a time, so a killed run resumes
    # at the first shard without captions.
    nproc_per_node: int = field(default=1, metadata={"gt": 0})

    def check(self, where: str) -> None:
        from .params import ParamsError

        if self.backend in ("blip", "blip2") and not self.model_path:
            raise ParamsError(f"{where}.model_path: required for backend {self.backend!r} (a local model folder)")


@register_captioner("nn")
class NearestNeighbourCaptioner:
    """Captions of the nearest corpus images (cosine, base model image embeddings), distinct texts only."""

    def __init__(self, model_spec: str, corpus_emb_dir: str | Path, num_captions: int = 1, batch_size: int = 64,
                 device: str = "cpu", **_):
        lm = create_model(model_spec, device=device)
        self.model, self.preprocess, self.device = lm.model.eval(), lm.preprocess, torch.device(device)
        emb = load_embeddings(corpus_emb_dir, "image")
        self.captions = list(load_metadata(Path(corpus_emb_dir) / "metadata")["caption"])
        self.corpus = F.normalize(torch.from_numpy(emb).to(self.device), dim=-1)
        self.num_captions = num_captions
        self.batch_size = batch_size

    @torch.inference_mode()
    def caption(self, images) -> list[list[str]]:
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        sims = F.normalize(self.model.encode_image(x), dim=-1) @ self.corpus.t()
        order = sims.argsort(dim=1, descending=True)
        out = []
        for row in order.tolist():
            picked: list[str] = []
            for j in row:  # the four styles of one corpus emoji share a caption: skip repeats
                if self.captions[j] not in picked:
                    picked.append(self.captions[j])
                if len(picked) == self.num_captions:
                    break
            out.append(picked)
        return out


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
    from .distributed import Dist

    skips = SkipCounter()
    if params.backend == "classname":
        if classes_path is None or not Path(classes_path).is_file():
            raise FileNotFoundError(f"{classes_path}: the classname backend needs the benchmark's classes.json")
        n = _write_records(out_path, class_name_captions(finetune_dir, classes_path, skips))
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
        _write_records(part, caption_dataset(captioner, samples, params.batch_size, desc=f"captioning {Path(url).name}"))
    dd.barrier()
    n = 0
    if dd.rank == 0:
        def joined():
            for u in urls:
                with open(parts / f"{Path(u).name}.jsonl") as f:
                    yield from (json.loads(line) for line in f)
        n = _write_records(out_path, joined())
        shutil.rmtree(parts)
    dd.barrier()
    if skips.skipped:
        log.warning(skips.report(str(finetune_dir)))
    return {"captioned": n, "skipped": skips.skipped, "backend": params.backend, "backends": list_captioners(),
            "shards": len(urls), "shards_resumed": done}


def _write_records(path: Path, records) -> int:
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
