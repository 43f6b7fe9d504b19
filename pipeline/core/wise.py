"""WiSE-FT: weight-space ensembles of the base and a finetuned model, scored along alpha.

theta(alpha) = (1 - alpha) * theta_base + alpha * theta_finetuned, for every floating tensor of both
towers, the temperature and (FT, LP, LP-FT) the classifier head, whose base is the zero-shot head it
was initialised from. alpha = 0 is the base model exactly and alpha = 1 the finetuned one, so one
evaluation per alpha gives the curve every method is read along.

Each alpha scores every eval set, the ID validation split (where the reported alpha is chosen) and
pretraining retention: image-to-text and text-to-image R@1 on held-out corpus pairs. Image features
and text heads are reused across alphas when that tower is the same in base and finetuned (a linear
probe changes neither tower, FT not the text tower), which is where most of the time would go.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.config import DEVICE
from pipeline.core.distributed import Dist
from pipeline.core.encode import class_means, class_prompts, encode_texts
from pipeline.core.losses import group_ids
from pipeline.core.models import create_model, model_dir_spec, read_head, read_state_dict
from pipeline.core.scoring import classification_metrics, image_features
from pipeline.io.atomic import atomic_file
from pipeline.io.eval_sets import EvalSet, HeldoutPairs, read_eval_sets, read_heldout_pairs, read_val_set

log = logging.getLogger(__name__)


def interpolate(base: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * base + alpha * finetuned, tensor by tensor; exact at alpha 0 and 1.

    Tensors equal in both are passed through untouched (so an unchanged tower stays bit-identical);
    integer buffers (BatchNorm's counters) come from the finetuned model.
    """
    if base.keys() != finetuned.keys():
        diff = sorted(set(base) ^ set(finetuned))
        raise ValueError(f"WiSE-FT: the two models have different tensors ({', '.join(diff[:3])} ...)")
    out = {}
    for k, b in base.items():
        f = finetuned[k]
        if b.shape != f.shape:
            raise ValueError(f"WiSE-FT: {k} is {tuple(b.shape)} in the base and {tuple(f.shape)} finetuned")
        if not b.is_floating_point() or alpha == 1 or torch.equal(b, f):
            out[k] = f
        elif alpha == 0:
            out[k] = b
        else:
            out[k] = (1 - alpha) * b + alpha * f
    return out


def changed_parts(base: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor]) -> set[str]:
    """{"image", "text"}: which towers differ (image = `visual.*`, text = everything else)."""
    return {("image" if k.startswith("visual.") else "text") for k, b in base.items()
            if b.is_floating_point() and not torch.equal(b, finetuned[k])}


def retrieval_r1(image_emb: torch.Tensor, caption_emb: torch.Tensor, captions: list[str]) -> dict:
    """Image-to-text and text-to-image R@1 over pairs; identical captions count as one text, so an
    image retrieving any copy of its caption (or a caption retrieving any of its images) is a hit."""
    groups = group_ids(captions)
    first = {g: i for i, g in reversed(list(enumerate(groups.tolist())))}
    unique = torch.tensor([first[g] for g in range(len(first))])
    sims = image_emb @ caption_emb[unique].t()  # images x distinct captions
    i2t = (sims.argmax(1) == groups).float().mean().item()
    t2i = (groups[sims.argmax(0)] == torch.arange(len(unique))).float().mean().item()
    return {"i2t_r1": 100 * i2t, "t2i_r1": 100 * t2i, "n": len(captions), "distinct_captions": len(unique)}


class Scorer:
    """Scores one model (as its weights change along alpha) with per-tower caches. Under torchrun each
    rank encodes its share of the images and every rank gets all features; texts are encoded whole."""

    def __init__(self, model, tokenizer, head: dict | None, dist: Dist = Dist()):
        self.model, self.tokenizer, self.head, self.dist = model, tokenizer, head, dist
        self._images: dict[str, torch.Tensor] = {}
        self._texts: dict[tuple, torch.Tensor] = {}

    def invalidate(self, parts: set[str]) -> None:
        if "image" in parts:
            self._images.clear()
        if "text" in parts:
            self._texts.clear()

    def image_features(self, name: str, images, positions: torch.Tensor) -> torch.Tensor:
        if name not in self._images:
            self._images[name] = self.dist.gather_in_order(positions, image_features(self.model, images))
        return self._images[name]

    def text_features(self, texts: tuple[str, ...]) -> torch.Tensor:
        if texts not in self._texts:
            self.model.eval()
            self._texts[texts] = encode_texts(self.model, self.tokenizer, list(texts), desc="texts")
        return self._texts[texts]

    def classifier(self, es: EvalSet, head_weight: torch.Tensor | None) -> torch.Tensor:
        classnames = es.classifier_classnames
        if head_weight is not None and list(self.head["classnames"]) == list(classnames):
            return head_weight
        prompts = tuple(class_prompts(classnames, es.templates))
        return class_means(self.text_features(prompts), len(classnames), len(es.templates))

    def logits(self, es: EvalSet, head_weight: torch.Tensor | None) -> torch.Tensor:
        image_emb = self.image_features(es.name, es.images, es.positions)
        return es.project((image_emb @ self.classifier(es, head_weight).t()).cpu())

    def classify(self, es: EvalSet, head_weight: torch.Tensor | None) -> dict:
        return classification_metrics(self.logits(es, head_weight), es.labels)

    def retention(self, pairs: HeldoutPairs) -> dict:
        return retrieval_r1(self.image_features("__heldout__", pairs.images, pairs.positions).cpu(),
                            self.text_features(tuple(pairs.captions)).cpu(), pairs.captions)


@dataclass
class ScoringParams:
    """How a model is scored, whichever stage scores it (`evaluate`, `zeroshot`): each stage's section
    holds these fields, so a run on N GPUs sets `nproc_per_node` in both."""
    device: str = field(default="auto", metadata=DEVICE)  # auto: CUDA when present, else CPU
    # Processes on this machine: > 1 relaunches the command under torchrun (one per GPU), each
    # encoding every N-th image of every set; rank 0 writes the records.
    nproc_per_node: int = field(default=1, metadata={"gt": 0})
    # Preprocessed pixels each process keeps in memory, over all eval sets; the sets past it are
    # decoded again at every alpha that changes the image tower (ImageNet's at 224 px: ~160 GB in all).
    cache_gb: float = field(default=4.0, metadata={"min": 0})


def evaluate_wise(model_dir: Path, base_dir: Path, eval_root: Path, packed_dir: Path, heldout_dir: Path,
                  alphas: list[float], out_path: Path, tags: dict, device: str = "auto",
                  cache_gb: float = 4.0) -> list[dict]:
    """Score theta(alpha) for each alpha; write one JSON line per (alpha, dataset), wise-ft style.
    Under torchrun every rank scores, on the gathered features, and rank 0 writes."""
    dd = Dist.init(device)
    device = dd.device
    lm = create_model(model_dir_spec(base_dir), device=str(device))
    base = {k: v.clone() for k, v in lm.model.state_dict().items()}
    finetuned = {k: v.to(device) for k, v in read_state_dict(model_dir).items()}  # mixed with `base` on the device
    head = read_head(model_dir)
    changed = changed_parts(base, finetuned)
    budget = int(cache_gb * 1024 ** 3)
    sets = read_eval_sets(eval_root, lm.preprocess, dd, budget)
    sets.append(read_val_set(packed_dir, lm.preprocess, dd, max(0, budget - sum(es.cached_bytes for es in sets))))
    pairs = read_heldout_pairs(heldout_dir, lm.preprocess, dd)
    scorer = Scorer(lm.model, lm.tokenizer, head, dd)
    records = []
    for alpha in alphas:
        lm.model.load_state_dict(interpolate(base, finetuned, alpha))
        scorer.invalidate(changed)
        head_weight = None if head is None else \
            interpolate({"w": head["init"]}, {"w": head["weight"]}, alpha)["w"].to(device)
        for es in sets:
            m = scorer.classify(es, head_weight)
            records.append({**tags, "alpha": alpha, "dataset": es.name,
                            **{k: m[k] for k in ("acc1", "acc5", "mean_per_class_recall", "n")}})
        records.append({**tags, "alpha": alpha, "dataset": "corpus_heldout", **scorer.retention(pairs)})
        if dd.rank == 0:
            log.info("alpha %.2f: %s", alpha, {r["dataset"]: round(r.get("acc1", r.get("i2t_r1")), 1)
                                                for r in records if r["alpha"] == alpha})
    if dd.rank == 0:
        with atomic_file(out_path) as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    dd.barrier()
    return records
