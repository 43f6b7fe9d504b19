"""Does ARF's shift gain need the shift style in the corpus? Style-held-out controls as DVC experiments.

    python scripts/controls.py                    # queue, run, write results/controls/
    python scripts/controls.py --seeds 0,1,2      # more training seeds per experiment
    python scripts/controls.py --table-only       # (re)write the tables from experiments already run
    python scripts/controls.py --seeds 0,1,2 --prefix ctl3    # the same with 3 seeds, as other experiments
    dvc exp remove $(dvc exp ls --name-only | grep ^ctl-)   # before re-running: names are reused

The default corpus holds the corpus-half emoji in all four styles, so ARF's retrieved anchors include
images in the very styles the shift sets score. For each shift style s, two experiments, each one
change against the committed params.yaml (queued with `dvc exp run --queue -S ...`):

  anchors-without-s  `retrieve.exclude={style: [s]}`: the base is aligned on the full corpus as in the
                     main runs, but no anchor is in style s (the paper's situation: the anchor corpus
                     need not contain the shift domain). ARF only: FT and FLYP read no anchors, so
                     their runs are the reference experiment's.
  corpus-without-s   `build_data.corpus_styles` without s: neither the base's alignment, nor the
                     anchors, nor the held-out retention slice holds an image in style s. The base,
                     FT, FLYP and ARF.

and a reference experiment on the full corpus. Every experiment scores WiSE-FT alpha = 1 only (the
finetuned models; ID val chose alpha = 1 for FLYP and ARF in the 3-seed table) with the seeds given.
The tables: per style s, the shift accuracy on s (seen classes in style s) and the zero-shot accuracy
on s (unseen classes in style s), mean +- sample std over seeds, and ARF - FLYP on both.
Each experiment's numbers are read from its own commit (`results/summary_full.json`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ablate import finished_experiments, queue_and_run, seeds_override, summary_of, write_atomic

from pipeline.data.default import SHIFT_STYLES
from pipeline.data.emoji import STYLES

PREFIX = "ctl"
ALL_METHODS = ("ft", "flyp", "arf")
KEYS = ("shift", "zeroshot", "zeroshot_google", "zeroshot_tuxpaint", "id", "i2t_r1")


def settings(styles: list[str], prefix: str = PREFIX) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(experiment name, -S overrides, methods trained) for the reference and each control."""
    out = [(f"{prefix}-reference", [], ALL_METHODS)]
    for s in styles:
        kept = ",".join(x for x in STYLES if x != s)
        out.append((f"{prefix}-anchors-without-{s}", [f"+retrieve.exclude.style=[{s}]"], ("arf",)))
        out.append((f"{prefix}-corpus-without-{s}", [f"build_data.corpus_styles=[{kept}]"], ALL_METHODS))
    return out


def cell(summary: dict, method: str, metric: str) -> dict | None:
    m = summary["methods"].get(method)
    return None if m is None or metric not in m else m[metric]


def fmt(c: dict | None) -> str:
    return "–" if c is None else f"{c['mean']:.1f} ± {c['std']:.1f}"


def gap(a: dict | None, b: dict | None) -> str:
    return "–" if a is None or b is None else f"{a['mean'] - b['mean']:+.1f}"


def tables(styles: list[str], summaries: dict[str, dict], prefix: str = PREFIX) -> tuple[str, dict]:
    ref = summaries.get(f"{prefix}-reference")
    lines, record, missing = [], {}, []
    seeds = next(iter(summaries.values()))["seeds"] if summaries else []
    for s in styles:
        metrics = (f"shift/{s}", f"zeroshot/{s}", "zeroshot/google", "zeroshot/tuxpaint", "id", "i2t_r1")
        lines += [f"### Style held out: {s}", "",
                  f"| setting | method | shift {s} | zero-shot {s} | zero-shot google | zero-shot tuxpaint | ID | "
                  "corpus i2t R@1 |", "|---|---|---|---|---|---|---|---|"]
        for label, name in (("full corpus (reference)", "reference"), (f"anchors without {s}", f"anchors-without-{s}"),
                            (f"corpus without {s} (base too)", f"corpus-without-{s}")):
            own = summaries.get(f"{prefix}-{name}")
            if own is None or ref is None:
                missing.append(f"{prefix}-{name}")
                continue
            cells = {}
            for method in ("zeroshot",) + ALL_METHODS:
                # anchors-without trains ARF alone: its base, FT and FLYP are the reference's runs
                source = own if cell(own, method, "id") is not None else ref
                cells[method] = [cell(source, method, k) for k in metrics]
                shown = method + (" (reference run)" if source is not own else "")
                lines.append(f"| {label} | {shown} | " + " | ".join(fmt(x) for x in cells[method]) + " |")
                record.setdefault(s, {}).setdefault(label, {})[method] = {
                    **dict(zip(KEYS, cells[method])), "reference_run": source is not own}
            lines.append(f"| {label} | **ARF - FLYP** | " + " | ".join(
                gap(a, b) for a, b in zip(cells["arf"][:5], cells["flyp"][:5])) + " | |")
        lines.append("")
    summary = ["ARF - FLYP (points) in each setting: shift s / zero-shot s (unseen classes in the held-out style) / "
               "zero-shot google and tuxpaint (unseen classes in the finetune style; another source, in no corpus):",
               "", "| style s | full corpus | anchors without s | corpus without s (base too) |", "|---|---|---|---|"]
    for s in styles:
        cells = []
        for label in ("full corpus (reference)", f"anchors without {s}", f"corpus without {s} (base too)"):
            row = record.get(s, {}).get(label)
            cells.append("–" if row is None else " / ".join(gap(row["arf"][k], row["flyp"][k]) for k in KEYS[:4]))
        summary.append(f"| {s} | " + " | ".join(cells) + " |")
    head = (f"Style-held-out controls (`python scripts/controls.py`): top-1 accuracy (%) at WiSE-FT alpha = 1, "
            f"mean ± sample std over seeds {seeds}. zeroshot = the base model. shift s: the seen classes' test "
            "emoji in style s; zero-shot s: the unseen classes in style s. corpus R@1: the held-out corpus "
            "slice, which follows the corpus restriction in the corpus-without rows.\n\n")
    note = f"\nNot run yet: {', '.join(sorted(set(missing)))}.\n" if missing else ""
    return head + "\n".join(summary) + "\n\n" + "\n".join(lines) + note, {"seeds": seeds, "styles": record}


def plot(record: dict, path: Path) -> None:
    """Per held-out style: shift and zero-shot accuracy on it of the base, FT, FLYP and ARF in the three
    settings side by side (the full corpus is the main runs' setting), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = list(record["styles"])
    methods = ("zeroshot", "ft", "flyp", "arf")
    fig, axes = plt.subplots(2, len(styles), figsize=(4.2 * len(styles), 6.4), squeeze=False, sharey="row")
    for col, s in enumerate(styles):
        settings = list(record["styles"][s])
        for row, key in enumerate(("shift", "zeroshot")):
            ax = axes[row][col]
            for i, method in enumerate(methods):
                cells = [record["styles"][s][label].get(method, {}).get(key) for label in settings]
                xs = [j + (i - 1.5) * 0.2 for j, c in enumerate(cells) if c]
                ax.bar(xs, [c["mean"] for c in cells if c], 0.2, yerr=[c["std"] for c in cells if c],
                       label="base" if method == "zeroshot" else method.upper(), capsize=2)
            ax.set_xticks(range(len(settings)), [lab.split(" (")[0].replace(f" {s}", "") for lab in settings], fontsize=8)
            ax.set_title(f"{key.replace('zeroshot', 'zero-shot')} {s}", fontsize=9)
            if col == 0:
                ax.set_ylabel("top-1 (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Style held out of the corpus: accuracy on that style (seeds {record['seeds']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds per experiment")
    ap.add_argument("--styles", nargs="*", default=list(SHIFT_STYLES), choices=SHIFT_STYLES)
    ap.add_argument("--prefix", default=PREFIX, help="experiment names' prefix (another seed set: another prefix)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/controls"))
    args = ap.parse_args()
    runs = settings(args.styles, args.prefix)
    if not args.table_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        queue_and_run([(name, [f"report.methods=[{','.join(methods)}]", *overrides]) for name, overrides, methods in runs],
                      [seeds_override(seeds), "evaluate.wise_alphas=[1.0]"])
    done = finished_experiments()
    summaries = {name: summary_of(done[name]["rev"]) for name, _, _ in runs if name in done}
    text, record = tables(args.styles, summaries, args.prefix)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "controls.md", text)
    write_atomic(args.out / "controls.json", json.dumps(record, indent=1) + "\n")
    if record["styles"]:
        plot(record, args.out / "controls.png")
    print(text)


if __name__ == "__main__":
    main()
