"""`arf`: one command per pipeline stage, each usable outside DVC on explicit paths.

Every command first checks the whole params file (see pipeline.params), so a bad key stops it before
anything is written. The DVC stages in `stages/` call these commands with the project's paths.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file (checked whole before running)")


def _params(path: Path, section: str):
    from .params import ParamsError, load_stage_params

    try:
        return load_stage_params(section, path)
    except ParamsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


def _check_all(path: Path) -> None:
    """For commands without a section of their own: still refuse a bad params file."""
    from .params import ParamsError, load_params_file

    try:
        load_params_file(path)
    except ParamsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


def _report(name: str, started: float, report: dict) -> None:
    report = {k: v for k, v in report.items() if k != "history"}
    typer.echo(f"[{name}] {time.time() - started:.1f}s {json.dumps(report, default=str)}")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command("check-params")
def check_params(params: Path = PARAMS) -> None:
    """Check every section of a params file; print the sections."""
    from .params import list_param_sections

    _check_all(params)
    typer.echo(f"{params}: ok ({', '.join(list_param_sections())})")


@app.command("build-data")
def build_data(out: Path = typer.Option(Path("data")), params: Path = PARAMS) -> None:
    """Build the benchmark and corpus: the packaged default, or local datasets (data.source: local)."""
    from .datasets import build_data as build

    p, t = _params(params, "data"), time.time()
    _report("build-data", t, build(out, p))


@app.command()
def plan(preset: Optional[str] = typer.Option(None, help="a preset name (presets/NAME.yaml)"),
         params: Path = PARAMS,
         tflops: float = typer.Option(100.0, help="achieved TFLOP/s of your GPU for ViT forward/backward"),
         caption_tflops: float = typer.Option(20.0, help="achieved TFLOP/s for autoregressive captioning")) -> None:
    """Print the stages of a preset, the inputs each expects and where, and estimated GPU hours and disk."""
    from .params import ParamsError
    from .plan import PRESET_DIR, format_plan, make_plan

    path = PRESET_DIR / f"{preset}.yaml" if preset else params
    if preset and not path.is_file():
        names = ", ".join(sorted(q.stem for q in PRESET_DIR.glob("*.yaml")))
        typer.echo(f"error: {path}: no such preset (known: {names})", err=True)
        raise typer.Exit(2)
    try:
        typer.echo(format_plan(make_plan(path, preset, tflops=tflops, caption_tflops=caption_tflops), path))
    except (ParamsError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


@app.command()
def layouts() -> None:
    """List the dataset layouts data.local entries can name."""
    from .datasets.layouts import layout_doc, list_layouts

    for name in list_layouts():
        typer.echo(f"{name:<20} {layout_doc(name)}")


@app.command()
def align(corpus: Path = typer.Option(Path("data/corpus")), out: Path = typer.Option(Path("models/base")),
          params: Path = PARAMS) -> None:
    """Align the default base model LiT-style (towers frozen, projections trained) on the corpus."""
    from .align import align_base

    p, t = _params(params, "align"), time.time()
    _report("align", t, align_base(corpus, out, p))


@app.command("embed-corpus")
def embed_corpus(corpus: Path = typer.Option(Path("data/corpus")), base: Path = typer.Option(Path("models/base")),
                 out: Path = typer.Option(Path("data/corpus_emb")), params: Path = PARAMS) -> None:
    """Embed corpus images and captions with clip-retrieval's inference (webdataset input)."""
    from .models import model_dir_spec
    from .retrieve import embed_corpus as run_embed

    p, t = _params(params, "embed_corpus"), time.time()
    report = run_embed(corpus, model_dir_spec(base), out, batch_size=p.batch_size, num_workers=p.num_workers,
                       distribution=p.distribution, spark_master=p.spark_master, partitions=p.partitions)
    for s in report["skipped_samples"][:20]:
        typer.echo(f"skipped {s['key']}: {s['reason']}")
    keep = ("samples_expected", "samples_embedded", "skipped", "dim", "partitions", "distribution", "samples_per_s",
            "steady_samples_per_s", "duplicate_keys", "unreadable_shards")
    _report("embed-corpus", t, {k: report[k] for k in keep if k in report})


@app.command()
def retrieve(emb: Path = typer.Option(Path("data/corpus_emb")), prompts: Path = typer.Option(Path("data/prompts/seen.npz")),
             index: Path = typer.Option(Path("data/corpus_index")),
             out: Path = typer.Option(Path("data/anchors"), help="folder for anchors.jsonl and stats.json"),
             params: Path = PARAMS) -> None:
    """Index the corpus embeddings (autofaiss) and retrieve the top-k corpus pairs per class."""
    from .atomic import write_json
    from .retrieve import anchor_stats, build_index, format_anchor_report, load_prompts, retrieve_anchors, write_anchors

    p, t = _params(params, "retrieve"), time.time()
    _, classnames = load_prompts(prompts)
    index_report = build_index(emb, index, index_key=p.index_key, flat_below=p.flat_below,
                               max_index_memory_usage=p.max_index_memory_usage,
                               current_memory_available=p.current_memory_available)
    records = retrieve_anchors(index, prompts, p.k_per_class, target=p.target, dedup=p.dedup)
    write_anchors(records, out / "anchors.jsonl")
    stats = anchor_stats(records, classnames)
    write_json(out / "stats.json", {"k_per_class": p.k_per_class, "target": p.target, "dedup": p.dedup,
                                    "anchors": len(records), "classes": stats})
    typer.echo(format_anchor_report(stats, p.k_per_class))
    _report("retrieve", t, {"anchors": len(records), **{f"{k}_index": f"{r['index_key']} ({r['chosen_by']})"
                                                         for k, r in index_report.items() if isinstance(r, dict) and "index_key" in r}})


@app.command()
def caption(finetune: Path = typer.Option(Path("data/benchmark/finetune")),
            base: Path = typer.Option(Path("models/base"), help="base model folder (nn backend)"),
            corpus_emb: Path = typer.Option(Path("data/corpus_emb"), help="clip-retrieval embeddings (nn backend)"),
            classes: Path = typer.Option(Path("data/benchmark/classes.json"), help="class names (classname backend)"),
            out: Path = typer.Option(Path("data/captions/captions.jsonl")), params: Path = PARAMS) -> None:
    """Caption the finetune images (backends: nn, blip, blip2, classname)."""
    from .caption import caption_finetune_set
    from .models import model_dir_spec
    from .distributed import relaunch_under_torchrun

    p, t = _params(params, "caption"), time.time()
    relaunch_under_torchrun(p.nproc_per_node, sys.argv)
    spec = model_dir_spec(base) if p.backend == "nn" else ""
    _report("caption", t, caption_finetune_set(finetune, out, p, spec, corpus_emb, classes))


@app.command("embed-prompts")
def embed_prompts(classes: Path = typer.Option(Path("data/benchmark/classes.json")),
                  base: Path = typer.Option(Path("models/base")),
                  out: Path = typer.Option(Path("data/prompts/seen.npz")),
                  split: str = typer.Option("seen", help="which class list of classes.json"),
                  params: Path = PARAMS) -> None:
    """Embed class names x templates with the base text tower (the zero-shot head)."""
    from .embed import load_classes, save_class_embeddings, zeroshot_head
    from .models import create_model, model_dir_spec

    _check_all(params)
    t = time.time()
    cls = load_classes(classes)
    lm = create_model(model_dir_spec(base))
    head = zeroshot_head(lm.model.eval(), lm.tokenizer, cls[split], cls["templates"])
    save_class_embeddings(out, head, cls[split], cls["templates"])
    _report("embed-prompts", t, {"classes": len(cls[split]), "templates": len(cls["templates"]), "dim": head.shape[1]})


@app.command()
def pack(finetune: Path = typer.Option(Path("data/benchmark/finetune")),
         val: Path = typer.Option(Path("data/benchmark/val")),
         captions: Path = typer.Option(Path("data/captions/captions.jsonl")),
         anchors: Path = typer.Option(Path("data/anchors/anchors.jsonl")),
         corpus: Path = typer.Option(Path("data/corpus")),
         classes: Path = typer.Option(Path("data/benchmark/classes.json")),
         out: Path = typer.Option(Path("data/packed")), params: Path = PARAMS) -> None:
    """Pack finetune samples (with captions), the ID validation split and anchor pairs into training shards."""
    from .pack import pack as pack_shards

    p, t = _params(params, "pack"), time.time()
    _report("pack", t, pack_shards(finetune, val, captions, anchors, corpus, classes, out, p))


@app.command()
def train(method: str = typer.Argument(..., help="a registered method (arf list)"),
          seed: int = typer.Option(0, help="seeds the data order, prompt choice and any random init"),
          packed: Path = typer.Option(Path("data/packed")), base: Path = typer.Option(Path("models/base")),
          out: Optional[Path] = typer.Option(None, help="default: models/<method>/seed<seed>"),
          live: Optional[Path] = typer.Option(None, help="dvclive folder; default: results/train/<method>/seed<seed>"),
          params: Path = PARAMS) -> None:
    """Finetune the base model with one method on the packed shards."""
    from .methods import get_method
    from .models import model_dir_spec
    from .distributed import relaunch_under_torchrun
    from .train import train as run_train

    p, t = _params(params, "train"), time.time()
    relaunch_under_torchrun(p.nproc_per_node, sys.argv)
    try:
        get_method(method)
    except KeyError as e:
        typer.echo(f"error: {e.args[0]}", err=True)
        raise typer.Exit(2)
    method_params = getattr(_params(params, "methods"), method)
    run_dir = Path(method) / f"seed{seed}"
    _report(f"train {method} seed {seed}", t, run_train(method, packed, model_dir_spec(base), out or Path("models") / run_dir,
                                                        p, method_params, live or Path("results/train") / run_dir, seed))


@app.command()
def evaluate(model: Path = typer.Argument(..., help="model folder (the base folder itself for zero-shot)"),
             base: Path = typer.Option(Path("models/base"), help="the base model folder WiSE-FT interpolates towards"),
             eval_root: Path = typer.Option(Path("data/benchmark/eval")),
             packed: Path = typer.Option(Path("data/packed"), help="packed shards: the ID validation split"),
             heldout: Path = typer.Option(Path("data/corpus_heldout"), help="held-out corpus pairs (retention R@1)"),
             out: Path = typer.Option(..., help="JSON-lines file, one record per (alpha, dataset)"),
             alphas: Optional[str] = typer.Option(None, help="comma-separated; default: evaluate.wise_alphas"),
             tag: list[str] = typer.Option([], help="KEY=VALUE written into every record (e.g. method=arf)"),
             params: Path = PARAMS) -> None:
    """Score a model along its WiSE-FT curve on every eval set, ID val and held-out corpus pairs."""
    from .distributed import relaunch_under_torchrun
    from .wise import evaluate_wise

    p, t = _params(params, "evaluate"), time.time()
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
    _report("evaluate", t, {"model": str(model), "alphas": grid, f"alpha {grid[-1]}": last})


@app.command()
def report(eval_dir: Path = typer.Option(Path("results/eval")), out: Path = typer.Option(Path("results")),
           params: Path = PARAMS) -> None:
    """The results table (mean ± std over seeds), WiSE-FT curves for `dvc plots`, rendered plots."""
    from .report import write_report

    p, t = _params(params, "sweep"), time.time()
    write_report(eval_dir, p.methods, p.seeds, out)
    typer.echo((out / "summary.md").read_text())
    _report("report", t, {"methods": p.methods, "seeds": p.seeds})


@app.command()
def gallery(anchors: Path = typer.Option(Path("data/anchors/anchors.jsonl")), corpus: Path = typer.Option(Path("data/corpus")),
            captions: Path = typer.Option(Path("data/captions/captions.jsonl")),
            finetune: Path = typer.Option(Path("data/benchmark/finetune")),
            classes: Path = typer.Option(Path("data/benchmark/classes.json")),
            out: Path = typer.Option(Path("results/gallery.html")),
            num_classes: int = typer.Option(12, help="classes shown (seeded sample); the count table lists all"),
            params: Path = PARAMS) -> None:
    """A static HTML page: retrieved anchors (caption, score, rank) and captioned finetune images per class."""
    from .gallery import write_gallery

    _check_all(params)
    t = time.time()
    _report("gallery", t, write_gallery(anchors, corpus, captions, finetune, classes, out, classes_per_page=num_classes))


@app.command("list")
def list_registered() -> None:
    """List registered methods, captioners and params sections."""
    from . import caption  # noqa: F401  (registers the nn captioner)
    from .captioners import list_captioners
    from .methods import get_method, list_methods
    from .params import list_param_sections

    typer.echo("methods:")
    for name in list_methods():
        m = get_method(name)
        trains = " then ".join("+".join(sorted(p)) for p in m.phases) or "nothing"
        typer.echo(f"  {name:9s} trains {trains}{' (anchors)' if m.needs_anchors else ''}: {m.doc}")
    typer.echo(f"captioners: {', '.join(list_captioners())}")
    typer.echo(f"params sections: {', '.join(list_param_sections())}")


def run(args: list[str] | None = None) -> None:
    """Entry point of `arf` and of the DVC stages: bad input ends in one line, not a traceback."""
    from .models import ModelNotAvailable

    try:
        app(args)
    except (FileNotFoundError, ValueError, ModelNotAvailable) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
