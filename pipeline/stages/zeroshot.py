"""Stage `zeroshot`: the base model scored once, as method `zeroshot`, on every eval set, the ID
validation split and held-out corpus pairs. It is alpha 0 of every method's WiSE-FT curve, so the
`evaluate` stage does not score it again.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from pipeline.config import register_params
from pipeline.core.distributed import relaunch_under_torchrun
from pipeline.core.wise import ScoringParams, evaluate_wise
from pipeline.stages import _command as cmd

METHOD = "zeroshot"  # the registered method without training; the report's base row


@register_params("zeroshot")
@dataclass
class ZeroshotParams(ScoringParams):
    pass


def command(base: Path = typer.Argument(..., help="the base model folder"),
            eval_root: Path = typer.Option(..., help="folder of eval sets (CLIP_benchmark layout)"),
            packed: Path = typer.Option(..., help="packed shards: the ID validation split"),
            heldout: Path = typer.Option(..., help="held-out corpus pairs (retention R@1)"),
            out: Path = typer.Option(..., help="JSON-lines file, one record per dataset"),
            params: Path = cmd.PARAMS) -> None:
    """Score the base model (alpha 0 of every WiSE-FT curve) on every eval set, ID val and held-out pairs."""
    p, t = cmd.section(params, "zeroshot"), time.time()
    relaunch_under_torchrun(p.nproc_per_node, sys.argv)
    records = evaluate_wise(base, base, eval_root, packed, heldout, [0.0], out, {"method": METHOD}, p.device, p.cache_gb)
    cmd.report("zeroshot", t, {"model": str(base), "alpha 0.0": {r["dataset"]: round(r.get("acc1", r.get("i2t_r1", 0)), 1)
                                                                  for r in records}})
