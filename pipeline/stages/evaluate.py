"""Stage `evaluate` (and `evaluate_zeroshot` for the base): score a model along its WiSE-FT curve on every
eval set, the ID validation split and held-out corpus pairs; one JSON line per (alpha, dataset).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from pipeline.config import register_params
from pipeline.core.distributed import Dist, relaunch_under_torchrun
from pipeline.core.models import (
    create_model,
    model_dir_spec,
    read_head,
    read_state_dict,
)
from pipeline.core.wise import Scorer, changed_parts, interpolate
from pipeline.io.atomic import atomic_file
from pipeline.io.eval_sets import read_eval_sets, read_heldout_pairs, read_val_set
from pipeline.stages import _command as cmd

log = logging.getLogger(__name__)


@register_params("evaluate")
@dataclass
class EvaluateParams:
    # alpha = 0 is the base model for every method, scored once as `zeroshot`.
    wise_alphas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 11)])
    device: str = "auto"  # CUDA when present, else CPU
    # Processes on this machine: > 1 relaunches the evaluate command under torchrun (one per GPU),
    # each encoding every N-th image of every set; rank 0 writes the records.
    nproc_per_node: int = field(default=1, metadata={"gt": 0})
    # Preprocessed pixels each process keeps in memory, over all eval sets; the sets past it are
    # decoded again at every alpha that changes the image tower (ImageNet's at 224 px: ~160 GB in all).
    cache_gb: float = field(default=4.0, metadata={"min": 0})

    def check(self, where: str) -> None:
        from pipeline.config import ParamsError

        if not self.wise_alphas or any(not 0 <= a <= 1 for a in self.wise_alphas) or 1.0 not in self.wise_alphas:
            raise ParamsError(f"{where}.wise_alphas: alphas in [0, 1] including 1.0 (the finetuned model), got {self.wise_alphas}")


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


def command(model: Path = typer.Argument(..., help="model folder (the base folder itself for zero-shot)"),
            base: Path = typer.Option(..., help="the base model folder WiSE-FT interpolates towards"),
            eval_root: Path = typer.Option(..., help="folder of eval sets (CLIP_benchmark layout)"),
            packed: Path = typer.Option(..., help="packed shards: the ID validation split"),
            heldout: Path = typer.Option(..., help="held-out corpus pairs (retention R@1)"),
            out: Path = typer.Option(..., help="JSON-lines file, one record per (alpha, dataset)"),
            alphas: Optional[str] = typer.Option(None, help="comma-separated; default: evaluate.wise_alphas"),
            tag: list[str] = typer.Option([], help="KEY=VALUE written into every record (e.g. method=arf)"),
            params: Path = cmd.PARAMS) -> None:
    """Score a model along its WiSE-FT curve on every eval set, ID val and held-out corpus pairs."""
    p, t = cmd.section(params, "evaluate"), time.time()
    relaunch_under_torchrun(p.nproc_per_node, sys.argv)
    grid = [float(a) for a in alphas.split(",")] if alphas else p.wise_alphas
    tags = {}
    for item in tag:
        k, sep, v = item.partition("=")
        if not sep:
            typer.echo(f"error: --tag {item!r}: expected KEY=VALUE", err=True)
            raise typer.Exit(2)
        tags[k] = int(v) if v.lstrip("-").isdigit() else v
    records = evaluate_wise(model, base, eval_root, packed, heldout, grid, out, tags, p.device, p.cache_gb)
    last = {r["dataset"]: round(r.get("acc1", r.get("i2t_r1", 0)), 1) for r in records if r["alpha"] == grid[-1]}
    cmd.report("evaluate", t, {"model": str(model), "alphas": grid, f"alpha {grid[-1]}": last})
