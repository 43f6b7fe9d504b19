"""Zero-shot classification of eval sets (CLIP_benchmark layout) and the results table.

Every model is scored the same way: its own text tower builds the zero-shot head from the set's
class names and templates, so a finetuned text tower is evaluated as it would be used.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import atomic_file, write_json
from .embed import iter_shard_images, zeroshot_head
from .models import create_model
from .shards import SkipCounter

log = logging.getLogger(__name__)

# Eval set names say what they measure: `id_*` in-distribution, `shift_<domain>` seen classes in another
# style, `zeroshot_<domain>` unseen classes.
AXES = ("id", "shift", "zeroshot")


@dataclass
class EvalSet:
    name: str
    root: Path
    classnames: list[str]
    templates: list[str]
    images: torch.Tensor  # preprocessed, N x 3 x H x W
    labels: torch.Tensor

    @property
    def axis(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def domain(self) -> str:
        return self.name.split("_", 1)[1] if "_" in self.name else self.name


def read_eval_set(root: Path, preprocess) -> EvalSet:
    """Load a CLIP_benchmark-style classification set: test shards, classnames.txt, templates."""
    classnames = (root / "classnames.txt").read_text().splitlines()
    templates = [t for t in (root / "zeroshot_classification_templates.txt").read_text().splitlines() if t.strip()]
    skips = SkipCounter()
    images, labels = [], []
    for key, image, sample in iter_shard_images(root / "test", skips):
        try:
            label = int(sample["cls"])
        except (KeyError, ValueError):
            skips(ValueError(f"{root.name}: sample {key} has no integer .cls"))
            continue
        images.append(preprocess(image))
        labels.append(label)
    if skips.skipped:
        log.warning(skips.report(str(root)))
    if not images:
        raise ValueError(f"{root}: no readable samples")
    return EvalSet(root.name, root, classnames, templates, torch.stack(images), torch.tensor(labels))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    n, c = logits.shape
    top = logits.topk(min(5, c), dim=1).indices
    acc1 = (top[:, 0] == labels).float().mean().item()
    acc5 = (top == labels[:, None]).any(1).float().mean().item()
    recalls = [(top[labels == k, 0] == k).float().mean().item() for k in range(c) if (labels == k).any()]
    return {
        "acc1": 100 * acc1,
        "acc5": 100 * acc5,
        "mean_per_class_recall": 100 * sum(recalls) / len(recalls),
        "se": 100 * math.sqrt(acc1 * (1 - acc1) / n),  # binomial standard error of acc1
        "n": n,
    }


@torch.inference_mode()
def zeroshot_logits(model, tokenizer, es: EvalSet, batch_size: int = 256) -> torch.Tensor:
    """N x C cosine logits of a set's images against the model's own zero-shot head."""
    model.eval()
    head = zeroshot_head(model, tokenizer, es.classnames, es.templates)
    feats = torch.cat([F.normalize(model.encode_image(es.images[i:i + batch_size]), dim=-1)
                       for i in range(0, len(es.images), batch_size)])
    return feats @ head.t()


def evaluate_model(model, tokenizer, eval_sets: list[EvalSet], batch_size: int = 256) -> dict[str, dict]:
    return {es.name: classification_metrics(zeroshot_logits(model, tokenizer, es, batch_size), es.labels)
            for es in eval_sets}


def mcnemar_p(a_correct: torch.Tensor, b_correct: torch.Tensor) -> dict:
    """Exact two-sided McNemar test of two models scored on the same images (paired)."""
    from math import comb

    a_only = int((a_correct & ~b_correct).sum())
    b_only = int((b_correct & ~a_correct).sum())
    n, k = a_only + b_only, min(a_only, b_only)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": p}


def pooled(sets: dict[str, dict]) -> dict:
    """Average over sets with the pooled standard error of that mean."""
    accs = [m["acc1"] for m in sets.values()]
    se = math.sqrt(sum(m["se"] ** 2 for m in sets.values())) / len(sets)
    return {"acc1": sum(accs) / len(accs), "se": se}


def summarize(per_method: dict[str, dict[str, dict]], eval_sets: list[EvalSet]) -> dict:
    summary = {"chance": {es.name: 100 / len(es.classnames) for es in eval_sets}, "methods": {}}
    for method, sets in per_method.items():
        row: dict = {}
        for axis in AXES:
            by_domain = {es.domain: sets[es.name] for es in eval_sets if es.axis == axis}
            if axis == "id":
                row["id"] = next(iter(by_domain.values())) if by_domain else None
            else:
                row[axis] = by_domain
                if by_domain:
                    row[f"{axis}_avg"] = pooled(by_domain)
        summary["methods"][method] = row
    return summary


def markdown_table(summary: dict) -> str:
    methods = summary["methods"]
    first = next(iter(methods.values()))
    shift_domains, zs_domains = list(first.get("shift", {})), list(first.get("zeroshot", {}))
    cols = ["ID"] + [f"shift {d}" for d in shift_domains] + ["shift avg"] + [f"zs {d}" for d in zs_domains] + ["zs avg"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def cell(m):
        return f"{m['acc1']:.1f} ± {m['se']:.1f}"

    for name, row in methods.items():
        cells = [cell(row["id"])] + [cell(row["shift"][d]) for d in shift_domains] + [cell(row["shift_avg"])]
        cells += [cell(row["zeroshot"][d]) for d in zs_domains] + [cell(row["zeroshot_avg"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    chance = ", ".join(f"{k} {v:.1f}" for k, v in summary["chance"].items())
    return ("Top-1 accuracy (%) ± binomial standard error; averages carry the pooled standard error.\n\n"
            + "\n".join(lines) + f"\n\nChance: {chance}.\n")


def evaluate_models(models: dict[str, str], eval_root: Path, out_json: Path, out_md: Path,
                    batch_size: int = 256) -> dict:
    """Score each model (name -> spec) on every eval set under `eval_root`; write the summary."""
    roots = sorted(p for p in eval_root.iterdir() if (p / "classnames.txt").is_file())
    if not roots:
        raise FileNotFoundError(f"{eval_root}: no eval sets (folders with classnames.txt and test/ shards)")
    per_method, eval_sets, preprocess_key = {}, None, None
    for method, spec in models.items():
        lm = create_model(spec)
        key = repr(lm.preprocess)
        if eval_sets is None or key != preprocess_key:  # decode and preprocess once per transform
            eval_sets, preprocess_key = [read_eval_set(r, lm.preprocess) for r in roots], key
        per_method[method] = evaluate_model(lm.model, lm.tokenizer, eval_sets, batch_size)
        log.info("%s: %s", method, {k: round(v["acc1"], 1) for k, v in per_method[method].items()})
    summary = summarize(per_method, eval_sets)
    summary["per_set"] = per_method
    write_json(out_json, summary)
    with atomic_file(out_md) as f:
        f.write(markdown_table(summary))
    return summary
