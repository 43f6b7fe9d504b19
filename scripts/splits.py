"""Benchmark split seeds: the main methods over 3 class splits x 3 training seeds, and ARF vs FLYP paired.

    python scripts/splits.py                    # queue and run splits 1 and 2, then write results/splits/
    python scripts/splits.py --table-only       # (re)write the tables from experiments already run
    dvc exp remove $(dvc exp ls --name-only | grep ^split-)   # before re-running: names are reused

`build_data.seed` draws every split of the default benchmark: which emoji go to the corpus or the
benchmark, which classes are seen or unseen, and train/val/test. So a split seed changes the corpus,
the base's alignment, the anchors and every eval set. Split 0 is the committed params.yaml: its records
are the 3-seed run's, committed in results/eval (`dvc exp run -S 'report.seeds=[0,1,2]'`). Splits 1
and 2 are one DVC experiment each (`-S build_data.seed=N`), training base, FT, LP-FT, FLYP and ARF
with seeds 0, 1, 2 and the full WiSE-FT grid.

Per split, each method's WiSE-FT alpha is the one with the best mean ID-validation accuracy over its
seeds, as in the results table (ties to the larger alpha). The tables give mean +- sample std over the
9 (split, seed) runs, the per-split means, and per axis a paired test of ARF against FLYP over the runs:
the mean difference, how many runs ARF wins, and an exact two-sided sign-flip permutation p-value (all
2^9 sign assignments of the 9 paired differences). The run, not the image, is the unit: runs on one
split share their images, so a per-image test pooled over runs (McNemar on summed discordant counts)
would count the same images nine times.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ablate import finished_experiments, queue_and_run, seeds_override, write_atomic

from pipeline.stages.report import BASE, point, read_records, summarize

PREFIX = "split"
METHODS = ("ft", "lpft", "flyp", "arf")
SEEDS = (0, 1, 2)
AXES = (("id", "ID test"), ("shift_avg", "shift avg"), ("zeroshot_avg", "zero-shot avg"), ("id_val", "ID val"))


def settings(data_seeds: list[int], prefix: str = PREFIX) -> list[tuple[str, list[str]]]:
    return [(f"{prefix}-data{n}", [f"build_data.seed={n}"]) for n in data_seeds]


def records_at(rev: str | None, out: Path) -> Path:
    """results/eval as committed at `rev` (None: the working tree), copied under `out`."""
    if rev is None:
        return Path("results/eval")
    archive = subprocess.run(["git", "archive", rev, "results/eval"], capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"error: {rev}: no results/eval ({archive.stderr.decode().strip()})")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "results" / "eval"


def runs_of_split(eval_dir: Path, seeds=SEEDS) -> dict[str, dict]:
    """Method -> {"alpha": chosen WiSE-FT alpha, "runs": {alpha-1 and WiSE points per seed}}."""
    summary = summarize(eval_dir, list(METHODS), list(seeds))
    base = point(read_records(eval_dir / f"{BASE}.jsonl"), None)
    out = {BASE: {"alpha": 0.0, "at_1": [base], "wise": [base]}}  # one base per split: no training seed
    for m in METHODS:
        alpha = summary["methods"][f"{m}+wise"]["alpha"]
        per_seed = [read_records(eval_dir / m / f"seed{s}.jsonl") for s in seeds]
        at = lambda a: [point([r for r in recs if r["alpha"] == a], base["zeroshot_avg"]) for recs in per_seed]
        out[m] = {"alpha": alpha, "at_1": at(1.0), "wise": at(alpha)}
    return out


def sign_flip_p(diffs: list[float]) -> float:
    """Exact two-sided p of the mean paired difference under random signs (all 2^n assignments)."""
    observed = abs(statistics.fmean(diffs)) - 1e-9
    flips = list(itertools.product((1, -1), repeat=len(diffs)))
    return sum(abs(statistics.fmean(s * d for s, d in zip(signs, diffs))) >= observed for signs in flips) / len(flips)


def mean_std(xs: list[float], sign: str = "") -> str:
    return f"{statistics.fmean(xs):{sign}.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:{sign}.1f}"


def tables(splits: dict[int, dict]) -> tuple[str, dict]:
    record = {"splits": sorted(splits), "seeds": list(SEEDS), "methods": {}, "paired": {}}
    lines = []
    for view, label in (("at_1", "alpha = 1 (the finetuned model)"), ("wise", "WiSE-FT, alpha chosen on ID val per split")):
        lines += [f"### {label}", "", "| method | " + " | ".join(c for _, c in AXES) + " | alpha per split |",
                  "|---|" + "---|" * (len(AXES) + 1)]
        for m in (BASE,) + METHODS:
            runs = [p for n in sorted(splits) for p in splits[n][m][view]]
            alphas = ", ".join(f"{splits[n][m]['alpha'] if view == 'wise' else (0.0 if m == BASE else 1.0):g}"
                               for n in sorted(splits))
            lines.append(f"| {m} | " + " | ".join(mean_std([p[k] for p in runs]) for k, _ in AXES) + f" | {alphas} |")
            record["methods"].setdefault(m, {})[view] = {
                k: [p[k] for p in runs] for k, _ in AXES} | {"alphas": [splits[n][m]["alpha"] for n in sorted(splits)]}
        lines += ["", f"ARF - FLYP, paired over the {sum(len(splits[n]['arf'][view]) for n in splits)} runs "
                  f"({label}):", "", "| axis | mean diff ± std | ARF wins | per-split mean diff | sign-flip p |",
                  "|---|---|---|---|---|"]
        for k, name in AXES:
            diffs = [a[k] - f[k] for n in sorted(splits) for a, f in zip(splits[n]["arf"][view], splits[n]["flyp"][view])]
            per_split = [statistics.fmean(a[k] - f[k] for a, f in zip(splits[n]["arf"][view], splits[n]["flyp"][view]))
                         for n in sorted(splits)]
            p = sign_flip_p(diffs)
            lines.append(f"| {name} | {mean_std(diffs, '+')} | {sum(d > 0 for d in diffs)}/{len(diffs)} | "
                         + ", ".join(f"{x:+.1f}" for x in per_split) + f" | {p:.3f} |")
            record["paired"].setdefault(view, {})[k] = {"diffs": diffs, "p": p}
        lines.append("")
    per_split = ["Per split, mean over seeds (alpha = 1): ID / shift avg / zero-shot avg", "",
                 "| method | " + " | ".join(f"split {n}" for n in sorted(splits)) + " |", "|---|" + "---|" * len(splits)]
    for m in (BASE,) + METHODS:
        per_split.append(f"| {m} | " + " | ".join(" / ".join(f"{statistics.fmean(p[k] for p in splits[n][m]['at_1']):.1f}"
                                                               for k in ("id", "shift_avg", "zeroshot_avg"))
                                                     for n in sorted(splits)) + " |")
    head = (f"Split seeds (`python scripts/splits.py`): top-1 accuracy (%), mean ± sample std over {len(splits)} "
            f"benchmark splits (build_data.seed {sorted(splits)}) x training seeds {list(SEEDS)}. zeroshot = the "
            "base model, one per split (its ± is over the splits). ID val chose each WiSE-FT alpha; the test sets "
            "chose nothing.\n\n")
    return head + "\n".join(lines) + "\n" + "\n".join(per_split) + "\n", record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-seeds", default="1,2", help="split seeds run as experiments (split 0 is the committed run)")
    ap.add_argument("--prefix", default=PREFIX)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/splits"))
    args = ap.parse_args()
    data_seeds = [int(s) for s in args.data_seeds.split(",")]
    runs = settings(data_seeds, args.prefix)
    if not args.table_only:
        queue_and_run(runs, [seeds_override(SEEDS), f"report.methods=[{','.join(METHODS)}]"])
    done = finished_experiments()
    with tempfile.TemporaryDirectory() as tmp:
        splits = {0: runs_of_split(records_at(None, Path(tmp)))}
        for n, (name, _) in zip(data_seeds, runs):
            if name in done:
                (Path(tmp) / name).mkdir()
                splits[n] = runs_of_split(records_at(done[name]["rev"], Path(tmp) / name))
            else:
                print(f"not run yet: {name}", file=sys.stderr)
    text, record = tables(splits)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "splits.md", text)
    write_atomic(args.out / "splits.json", json.dumps(record, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
