"""`arf`: one command per DVC stage (the stage's module in pipeline/stages/, by the same name), and tools.

Every command first checks the whole params file (see pipeline.config), so a bad key stops it before
anything is written. dvc.yaml calls the stage commands (through stages/<stage>.py) with the project's
paths; outside DVC, pass paths explicitly.
"""
from __future__ import annotations

import ast
import importlib
import logging
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperGroup

from pipeline.config import ParamsError, list_param_sections
from pipeline.stages import _command as cmd
from pipeline.stages import stage_names

STAGE_DIR = Path(__file__).parent / "stages"


def _stage_of(name: str) -> str | None:
    """The stage a command name runs: its own name, or the dashed name of earlier releases."""
    stage = name.replace("-", "_")
    return stage if stage in stage_names() else None


def _stage_help(stage: str) -> str:
    """The docstring of a stage's `command`, read from its source: listing the stages imports none of
    them (each imports torch; `arf --help` would take seconds)."""
    tree = ast.parse((STAGE_DIR / f"{stage}.py").read_text())
    return next(ast.get_docstring(node) or "" for node in tree.body
                if isinstance(node, ast.FunctionDef) and node.name == "command")


class _StageStandIn(click.Command):
    """What the listing shows of a stage: its name and help, the module not imported."""

    def __init__(self, name: str, stage: str):
        super().__init__(name, help=_stage_help(stage))
        self.stage = stage

    def load(self) -> click.Command:
        single = typer.Typer(add_completion=False)
        single.command(self.name)(importlib.import_module(f"pipeline.stages.{self.stage}").command)
        return typer.main.get_command(single)


class _LazyStages(TyperGroup):
    """The tools are registered as usual; a stage's module is imported only when its command runs (or
    shows its own help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*stage_names(), *super().list_commands(ctx)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        stage = None if name in self.commands else _stage_of(name)
        return super().get_command(ctx, name) if stage is None else _StageStandIn(name, stage)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command.load() if isinstance(command, _StageStandIn) else command, rest


app = typer.Typer(cls=_LazyStages, add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command("check-params")
def check_params(path: Optional[Path] = typer.Argument(None, metavar="PARAMS", help="params file (default: params.yaml)"),
                 params: Optional[Path] = typer.Option(None, "--params", help="the same, as an option")) -> None:
    """Check every section of a params file; print the sections."""
    if path is not None and params is not None:
        raise typer.BadParameter("give the params file once, as PARAMS or --params")
    path = path or params or cmd.PARAMS.default
    cmd.section(path, None)
    typer.echo(f"{path}: ok ({', '.join(list_param_sections())})")


@app.command()
def plan(preset: Optional[str] = typer.Option(None, help="a preset name (presets/NAME.yaml); default: --params"),
         params: Path = cmd.PARAMS,
         tflops: float = typer.Option(100.0, help="achieved TFLOP/s of your GPU for ViT forward/backward"),
         caption_tflops: float = typer.Option(20.0, help="achieved TFLOP/s for autoregressive captioning")) -> None:
    """Print the stages of a preset, the inputs each expects and where, and estimated GPU hours and disk."""
    from pipeline.plan import PRESET_DIR, format_plan, make_plan

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
    """List the dataset layouts build_data.local entries can name."""
    from pipeline.data.layouts import layout_doc, list_layouts

    for name in list_layouts():
        typer.echo(f"{name:<20} {layout_doc(name)}")


@app.command("list")
def list_registered() -> None:
    """List registered methods, captioners and params sections."""
    from pipeline.core.methods import get_method, list_methods
    from pipeline.stages import load_all
    from pipeline.stages.caption import backends

    load_all()  # every stage registers its params section
    typer.echo("methods:")
    for name in list_methods():
        m = get_method(name)
        trains = " then ".join("+".join(sorted(p)) for p in m.phases) or "nothing"
        typer.echo(f"  {name:9s} trains {trains}{' (anchors)' if m.needs_anchors else ''}: {m.doc}")
    typer.echo(f"captioners (caption.backend): {', '.join(backends())}")
    typer.echo(f"params sections: {', '.join(list_param_sections())}")


@app.command()
def export(model_dir: Path = typer.Argument(..., help="a model folder (model.json, checkpoint.pt[, head.pt])"),
           out_dir: Path = typer.Argument(..., help="the folder to write (must not exist)")) -> None:
    """Write a model folder as a self-contained open_clip folder (config, safetensors weights, tokenizer)."""
    from pipeline.io.export import export_model

    typer.echo(f"{out_dir}: {', '.join(export_model(model_dir, out_dir))}")


@app.command()
def serve(index: Path = typer.Option(..., help="index folder (the retrieve stage's)"),
          corpus: Path = typer.Option(..., help="corpus shard folder the index was built from (its images)"),
          base: Path = typer.Option(..., help="model folder the corpus was embedded with"),
          host: str = typer.Option("127.0.0.1", help="address to bind; 0.0.0.0 serves every interface"),
          port: int = typer.Option(1234, help="port; 0 picks a free one")) -> None:
    """Serve the corpus index with clip-retrieval's back end and our model, offline: clip-front at /,
    POST /knn-service, GET /image/KEY (a sample's image as JPEG)."""
    from pipeline.core.models import model_dir_spec
    from pipeline.io.serve import serve as serve_index

    serve_index(index, corpus, model_dir_spec(base), ready=typer.echo, host=host, port=port)


def run(args: list[str] | None = None) -> None:
    """`arf` in this process: bad input ends in one line, not a traceback."""
    cmd.run(app, args)


def main() -> None:
    """Entry point of the `arf` script: `run`, then a fast exit (see `_command.main`)."""
    cmd.main(app)


if __name__ == "__main__":
    main()
