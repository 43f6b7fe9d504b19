"""ARF's ablations as DVC experiments, and the table they make.

    python scripts/ablate.py                  # queue, run, then write results/ablations.md
    python scripts/ablate.py --table-only     # only (re)write the table from experiments already run
    python scripts/ablate.py --only k=32 captioner --seeds 0,1,2 --prefix abl3 \
        --defaults-from results/three_seeds/summary_full.json --out results/ablations_3seeds.md
    dvc exp remove $(dvc exp ls --name-only | grep ^abl-)   # before re-running: names are reused

One experiment per setting: a single knob changed against the committed params.yaml (queued with
`dvc exp run --queue -S ...`, so settings never stack), with the sweep narrowed to ARF, the seeds given
by --seeds and the WiSE-FT grid to alpha = 1 (the finetuned model) to keep each run to one training.
A baseline experiment with the same narrowing gives the reference row. Stages the knob does not reach
come from DVC's cache: a loss weight retrains only ARF; k re-runs retrieval and packing; the captioner
re-runs captioning and packing.

The table reports every setting on ID validation (the only number a setting may be chosen by) and on
the test sets. Knobs whose 0 value is a method of the main table (lambda_tca = 0 is arf_ita,
lambda_ita = 0 is arf_tca) are not repeated here.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# setting name -> (params key, values); the committed params.yaml holds each knob's default
ABLATIONS = {
    "lambda_tca": ("methods.arf.lambda_tca", [0.5, 2.0]),
    "lambda_ita": ("methods.arf.lambda_ita", [0.5, 2.0]),
    "k": ("retrieve.k_per_class", [8, 32]),
    "captioner": ("caption.backend", ["classname"]),
}
PREFIX = "abl"
COLUMNS = [("id_val", "ID val"), ("id", "ID test"), ("shift_avg", "shift avg"), ("zeroshot_avg", "zs avg"),
           ("zeroshot_retention", "zs retention %"), ("i2t_r1", "corpus i2t R@1"), ("t2i_r1", "corpus t2i R@1")]


def dvc(*args: str) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: dvc {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def settings(only: list[str] | None, prefix: str = PREFIX) -> list[tuple[str, list[str]]]:
    """(experiment name, -S overrides) for the baseline and every setting; `only` names knobs (`k`) or
    single settings (`k=32`)."""
    out = [(f"{prefix}-default", [])]
    for name, (key, values) in ABLATIONS.items():
        picked = [v for v in values if not only or name in only or f"{name}={v}" in only]
        out += [(f"{prefix}-{name}-{v}".replace(".", "p"), [f"{key}={v}"]) for v in picked]
    return out


def seeds_override(seeds) -> str:
    return f"report.seeds=[{','.join(map(str, seeds))}]"


def queue_and_run(runs: list[tuple[str, list[str]]], common: list[str]) -> None:
    """Queue one DVC experiment per (name, overrides), each with the `common` overrides too, and run them."""
    for name, overrides in runs:
        args = ["exp", "run", "--queue", "-n", name]
        for o in common + overrides:
            args += ["-S", o]
        dvc(*args)
        print(f"queued {name}: {' '.join(overrides) or '(defaults)'}")
    dvc("exp", "run", "--run-all", "--jobs", "1")


def finished_experiments() -> dict[str, dict]:
    """Name -> {"rev", "params", "metrics"} of every experiment that finished, from `dvc exp show`.

    Queued and running experiments are left out: their entries carry the baseline's commit and the
    workspace's numbers, which would pass for theirs."""
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            executor = node.get("executor") or {}
            for rev in node.get("revs") or []:
                data = rev.get("data") or {}
                if rev.get("name") and executor.get("state", "success") == "success" and data.get("rev") == rev.get("rev"):
                    metrics = (data.get("metrics") or {}).get("results/metrics.json", {}).get("data")
                    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
                    found[rev["name"]] = {"rev": rev["rev"], "params": params or {}, "metrics": metrics or {}}
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(dvc("exp", "show", "--json", "--all-commits")))
    return found


def summary_of(rev: str) -> dict:
    """results/summary_full.json as an experiment's commit holds it (mean and std per metric)."""
    shown = subprocess.run(["git", "show", f"{rev}:results/summary_full.json"], capture_output=True, text=True)
    if shown.returncode != 0:
        sys.exit(f"error: {rev}: no results/summary_full.json ({shown.stderr.strip()})")
    return json.loads(shown.stdout)


def table(runs: list[tuple[str, list[str]]], found: dict[str, dict], defaults: Path | None = None) -> str:
    lines = ["| setting | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    missing, seeds = [], None
    for name, overrides in runs:
        if not overrides and defaults is not None:
            summary, label = json.loads(defaults.read_text()), f"defaults (params.yaml; the run in {defaults})"
        elif name in found:
            summary, label = summary_of(found[name]["rev"]), ", ".join(overrides) or "defaults (params.yaml)"
        else:
            missing.append(name)
            continue
        row, seeds = summary["methods"]["arf"], summary["seeds"]
        cell = (lambda c: f"{c['mean']:.1f} ± {c['std']:.1f}") if len(seeds) > 1 else (lambda c: f"{c['mean']:.1f}")
        lines.append(f"| {label} | " + " | ".join(cell(row[k]) if k in row else "–" for k, _ in COLUMNS) + " |")
    note = (f"\n\nNot run yet: {', '.join(missing)}." if missing else "")
    return ("ARF ablations: one knob changed per row against params.yaml, ARF only, alpha = 1, mean"
            f"{' ± sample std' if seeds and len(seeds) > 1 else ''} over seeds {seeds}. Choose a setting by ID val "
            "only.\n\n" + "\n".join(lines) + note + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0", help="comma-separated seeds per setting")
    ap.add_argument("--only", nargs="*", choices=sorted(ABLATIONS) + [f"{n}={v}" for n, (_, vs) in ABLATIONS.items() for v in vs],
                    help="a subset of the knobs (k) or of their settings (k=32)")
    ap.add_argument("--prefix", default=PREFIX, help="experiment names' prefix (another seed set: another prefix)")
    ap.add_argument("--defaults-from", type=Path, help="the defaults row from this summary_full.json (a run of ARF "
                    "with params.yaml and the same seeds, e.g. results/three_seeds/summary_full.json), not an experiment")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/ablations.md"))
    args = ap.parse_args()
    runs = settings(args.only, args.prefix)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.defaults_from is not None:
        ran = json.loads(args.defaults_from.read_text())["seeds"]
        if ran != seeds:
            sys.exit(f"error: {args.defaults_from}: seeds {ran}, not --seeds {seeds}")
    if not args.table_only:
        queue_and_run([r for r in runs if r[1] or args.defaults_from is None],
                      ["report.methods=[arf]", seeds_override(seeds), "evaluate.wise_alphas=[1.0]"])
    text = table(runs, finished_experiments(), args.defaults_from)
    write_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
