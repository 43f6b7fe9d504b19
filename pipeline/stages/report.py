"""The results table and plots, from the per-(method, seed) WiSE-FT records.

Rows are methods at alpha = 1 (the finetuned model) and, for each finetuned method, its WiSE-FT point
at the alpha with the best mean ID-validation accuracy over seeds (ties go to the larger alpha, the
finetuned end, so the choice never leans towards robustness). Cells are mean ± sample std over seeds.
Eval set names say what they measure: `id_*`, `shift_<domain>`, `zeroshot_<domain>`.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from pipeline.config import register_params
from pipeline.core.methods import list_methods
from pipeline.io.atomic import atomic_file, write_json
from pipeline.stages import _command as cmd

BASE = "zeroshot"  # the base model's records; alpha 0 of every WiSE-FT curve


@register_params("report")
@dataclass
class ReportParams:
    # The table's rows and seeds: dvc.yaml's train and evaluate matrices run each (method, seed) listed
    # here, so they are what `dvc repro` trains. The default is the 1-seed preset; the 3-seed table is
    # `dvc exp run -S 'report.seeds=[0,1,2]'`.
    methods: list[str] = field(default_factory=lambda: ["lp", "ft", "lpft", "flyp", "arf", "arf_tca", "arf_ita"],
                               metadata={"choices": lambda: [m for m in list_methods() if m != BASE], "min_items": 1})
    seeds: list[int] = field(default_factory=lambda: [0])

    def check(self, where: str) -> None:
        from pipeline.config import ParamsError

        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ParamsError(f"{where}.seeds: need distinct seeds, got {self.seeds}")
        if len(set(self.methods)) != len(self.methods):
            raise ParamsError(f"{where}.methods: listed twice: {self.methods}")


def read_records(path: Path) -> list[dict]:
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: bad record ({e})") from None
    if not out:
        raise ValueError(f"{path}: no records")
    return out


# The axes of the WiSE-FT curves and plots. id_val is always there (the val split); the others need
# eval sets with that prefix, which a benchmark of your own may lack (no zeroshot_ sets, say).
AXES = ("id", "id_val", "shift_avg", "zeroshot_avg")


def point(records: list[dict], base_zs: float | None) -> dict:
    """One model's headline numbers from its records at one alpha."""
    by = {r["dataset"]: r for r in records}
    shift = {d[len("shift_"):]: r["acc1"] for d, r in by.items() if d.startswith("shift_")}
    zs = {d[len("zeroshot_"):]: r["acc1"] for d, r in by.items() if d.startswith("zeroshot_")}
    ids = [r["acc1"] for d, r in by.items() if d.startswith("id_") and d != "id_val"]
    p = {"id": ids[0] if ids else None, "id_val": by["id_val"]["acc1"] if "id_val" in by else None,
         "shift": shift, "shift_avg": statistics.fmean(shift.values()) if shift else None,
         "zeroshot": zs, "zeroshot_avg": statistics.fmean(zs.values()) if zs else None}
    if "corpus_heldout" in by:
        p["i2t_r1"], p["t2i_r1"] = by["corpus_heldout"]["i2t_r1"], by["corpus_heldout"]["t2i_r1"]
    if base_zs and p["zeroshot_avg"] is not None:
        p["zeroshot_retention"] = 100 * p["zeroshot_avg"] / base_zs
    return p


def _flat(p: dict) -> dict[str, float]:
    out = {}
    for k, v in p.items():
        if isinstance(v, dict):
            out.update({f"{k}/{d}": x for d, x in v.items()})
        elif v is not None:
            out[k] = v
    return out


def _stats(points: list[dict]) -> dict[str, dict]:
    flats = [_flat(p) for p in points]
    keys = [k for k in flats[0] if all(k in f for f in flats)]
    return {k: {"mean": statistics.fmean(f[k] for f in flats),
                "std": statistics.stdev(f[k] for f in flats) if len(flats) > 1 else 0.0} for k in keys}


def summarize(eval_dir: Path, methods: list[str], seeds: list[int]) -> dict:
    """Aggregate results/eval/<method>/seed<k>.jsonl (and zeroshot.jsonl) into the summary."""
    base_records = read_records(eval_dir / f"{BASE}.jsonl")
    base = point(base_records, None)
    if base["zeroshot_avg"] is not None:
        base["zeroshot_retention"] = 100.0
    summary = {"seeds": seeds, "methods": {BASE: {"alpha": 0.0, "n_seeds": 1, **_stats([base])}}, "curves": {}}
    for method in methods:
        per_seed = [read_records(eval_dir / method / f"seed{s}.jsonl") for s in seeds]
        alphas = sorted({r["alpha"] for r in per_seed[0]})
        curve = {}
        for a in alphas:
            pts = [point([r for r in recs if r["alpha"] == a], base["zeroshot_avg"]) for recs in per_seed]
            curve[a] = _stats(pts)
        curve.setdefault(0.0, summary["methods"][BASE])
        chosen = max(curve, key=lambda a: (round(curve[a]["id_val"]["mean"], 6), a))
        summary["methods"][method] = {"alpha": 1.0, "n_seeds": len(seeds), **curve[1.0]}
        summary["methods"][f"{method}+wise"] = {"alpha": chosen, "n_seeds": len(seeds), **curve[chosen]}
        summary["curves"][method] = {a: {k: curve[a][k]["mean"] for k in AXES if k in curve[a]} for a in sorted(curve)}
    return summary


def _cell(s: dict | None, n_seeds: int) -> str:
    if s is None:
        return "–"
    return f"{s['mean']:.1f} ± {s['std']:.1f}" if n_seeds > 1 else f"{s['mean']:.1f}"


def markdown_table(summary: dict) -> str:
    rows = summary["methods"]
    base = rows[BASE]
    shift = sorted(k.split("/", 1)[1] for k in base if k.startswith("shift/"))
    zs = sorted(k.split("/", 1)[1] for k in base if k.startswith("zeroshot/"))
    cols = ([("id", "ID")] + [(f"shift/{d}", f"shift {d}") for d in shift] + [("shift_avg", "shift avg")]
            + [(f"zeroshot/{d}", f"zs {d}") for d in zs] + [("zeroshot_avg", "zs avg"),
                                                          ("zeroshot_retention", "zs retention %"),
                                                          ("i2t_r1", "corpus i2t R@1"), ("t2i_r1", "corpus t2i R@1")])
    cols = [(k, c) for k, c in cols if any(k in row for row in rows.values())]  # e.g. no zeroshot_ sets
    lines = ["| method | α | " + " | ".join(c for _, c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, row in rows.items():
        label = name.replace("+wise", " + WiSE-FT")
        lines.append(f"| {label} | {row['alpha']:.1f} | " + " | ".join(_cell(row.get(k), row["n_seeds"]) for k, _ in cols) + " |")
    n = len(summary["seeds"])
    spread = f"mean ± sample std over {n} seeds ({', '.join(map(str, summary['seeds']))})" if n > 1 else \
        f"one seed ({summary['seeds'][0]}), so no spread"
    return (f"Top-1 accuracy (%), {spread}. α: WiSE-FT weight on the finetuned model, chosen on ID validation "
            "(best mean val accuracy, ties to the larger α); α = 1 is the finetuned model. zs retention: zero-shot "
            "average as % of the base's. corpus R@1: held-out corpus pairs no stage ever used (pretraining "
            "retention).\n\n" + "\n".join(lines) + "\n")


def write_plot_data(summary: dict, out_dir: Path) -> None:
    """One JSON file per method: its WiSE-FT curve (mean over seeds), for `dvc plots`."""
    for method, curve in summary["curves"].items():
        write_json(out_dir / f"{method}.json", [{"alpha": a, **{k: round(v, 3) for k, v in p.items()}}
                                              for a, p in curve.items()])
    base = summary["methods"][BASE]
    write_json(out_dir / f"{BASE}.json", [{"alpha": 0.0, **{k: round(base[k]["mean"], 3) for k in AXES if k in base}}])


def render_plots(summary: dict, out_dir: Path) -> list[Path]:
    """ID vs shift average and ID vs zero-shot average, each method's WiSE-FT curve (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    base = summary["methods"][BASE]
    for y, label in (("shift_avg", "domain shift average"), ("zeroshot_avg", "zero-shot average")):
        fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
        missing = [f"{k.removesuffix('_avg')}_" for k in ("id", y) if k not in base]
        if missing:  # a benchmark without such eval sets (your own data): the declared plot says so
            ax.text(0.5, 0.5, f"no {' or '.join(missing)} eval sets: nothing to plot", ha="center", va="center")
            ax.set_axis_off()
        else:
            for method, curve in summary["curves"].items():
                xs = [p["id"] for p in curve.values()]
                ys = [p[y] for p in curve.values()]
                line, = ax.plot(xs, ys, "-o", ms=3, lw=1.2, label=method)
                ax.plot(xs[-1], ys[-1], "o", ms=8, color=line.get_color())  # alpha = 1: the finetuned model
                chosen = summary["methods"][f"{method}+wise"]
                ax.plot(chosen["id"]["mean"], chosen[y]["mean"], "*", ms=12, color=line.get_color(), mec="black", mew=0.5)
            ax.plot(base["id"]["mean"], base[y]["mean"], "k*", ms=14, label="zero-shot (α = 0)")
            ax.set_xlabel("ID accuracy (%)")
            ax.set_ylabel(f"{label} accuracy (%)")
            ax.set_title("WiSE-FT curves (α = 0 … 1; large dot α = 1, star = α chosen on ID val)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"id_vs_{y.replace('_avg', '')}.png"
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", metadata={"Software": None})
        plt.close(fig)
        paths.append(path)
    return paths


# What `dvc metrics show` and `dvc exp show` display: each method's row (alpha = 1, the zero-shot row
# at alpha 0) on the axes of the finding, short-named so that a few methods fit 120 columns. The wide
# records stay in summary.json and summary_full.json.
COMPACT = {"id_val": "id_val", "id": "id", "shift_avg": "shift", "zeroshot_avg": "zs", "zeroshot_retention": "zs_ret"}


def compact_metrics(summary: dict) -> dict:
    return {name: {short: round(row[k]["mean"], 2) for k, short in COMPACT.items() if k in row}
            for name, row in summary["methods"].items() if not name.endswith("+wise")}


def write_report(eval_dir: Path, methods: list[str], seeds: list[int], out_dir: Path) -> dict:
    summary = summarize(eval_dir, methods, seeds)
    metrics = {name: {k: round(v["mean"], 3) for k, v in row.items() if isinstance(v, dict) and "/" not in k}
               | {"alpha": row["alpha"]} for name, row in summary["methods"].items()}
    write_json(out_dir / "summary.json", {"seeds": seeds, "methods": metrics})
    write_json(out_dir / "metrics.json", compact_metrics(summary))
    write_json(out_dir / "summary_full.json", summary)
    with atomic_file(out_dir / "summary.md") as f:
        f.write(markdown_table(summary))
    write_plot_data(summary, out_dir / "plots" / "wise")
    render_plots(summary, out_dir / "plots")
    return summary


def command(eval_dir: Path = typer.Option(...), out: Path = typer.Option(...), params: Path = cmd.PARAMS) -> None:
    """The results table (mean ± std over seeds), WiSE-FT curves for `dvc plots`, rendered plots."""
    p, t = cmd.section(params, "report"), time.time()
    write_report(eval_dir, p.methods, p.seeds, out)
    typer.echo((out / "summary.md").read_text())
    cmd.report("report", t, {"methods": p.methods, "seeds": p.seeds})
