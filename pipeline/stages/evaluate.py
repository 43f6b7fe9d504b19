"""Stage `evaluate`: score a finetuned model along its WiSE-FT curve towards the base on every eval set,
the ID validation split and held-out corpus pairs; one JSON line per (alpha, dataset). Alpha 0, the
base itself, is the `zeroshot` stage's, scored once for every method.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from pipeline.config import register_params
from pipeline.core.distributed import relaunch_under_torchrun
from pipeline.core.wise import ScoringParams, evaluate_wise
from pipeline.stages import _command as cmd


@register_params("evaluate")
@dataclass
class EvaluateParams(ScoringParams):
    # alpha = 0 is the base model for every method, scored once by the `zeroshot` stage.
    wise_alphas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 11)])

    def check(self, where: str) -> None:
        from pipeline.config import ParamsError

        if not self.wise_alphas or any(not 0 <= a <= 1 for a in self.wise_alphas) or 1.0 not in self.wise_alphas:
            raise ParamsError(f"{where}.wise_alphas: alphas in [0, 1] including 1.0 (the finetuned model), got {self.wise_alphas}")


def command(model: Path = typer.Argument(..., help="finetuned model folder"),
            base: Path = typer.Option(..., help="the base model folder WiSE-FT interpolates towards"),
            eval_root: Path = typer.Option(..., help="folder of eval sets (CLIP_benchmark layout)"),
            packed: Path = typer.Option(..., help="packed shards: the ID validation split"),
            heldout: Path = typer.Option(..., help="held-out corpus pairs (retention R@1)"),
            out: Path = typer.Option(..., help="JSON-lines file, one record per (alpha, dataset)"),
            tag: list[str] = typer.Option([], help="KEY=VALUE written into every record (e.g. method=arf)"),
            params: Path = cmd.PARAMS) -> None:
    """Score a model along its WiSE-FT curve on every eval set, ID val and held-out corpus pairs."""
    p, t = cmd.section(params, "evaluate"), time.time()
    relaunch_under_torchrun(p.nproc_per_node, sys.argv)
    tags = {}
    for item in tag:
        k, sep, v = item.partition("=")
        if not sep:
            typer.echo(f"error: --tag {item!r}: expected KEY=VALUE", err=True)
            raise typer.Exit(2)
        tags[k] = int(v) if v.lstrip("-").isdigit() else v
    records = evaluate_wise(model, base, eval_root, packed, heldout, p.wise_alphas, out, tags, p.device, p.cache_gb)
    last = {r["dataset"]: round(r.get("acc1", r.get("i2t_r1", 0)), 1) for r in records if r["alpha"] == p.wise_alphas[-1]}
    cmd.report("evaluate", t, {"model": str(model), "alphas": p.wise_alphas, f"alpha {p.wise_alphas[-1]}": last})
