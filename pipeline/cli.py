"""`arf`: one command per DVC stage (the stage's module in pipeline/stages/, by the same name), and tools.

Every command first checks the whole params file (see pipeline.config), so a bad key stops it before
anything is written. dvc.yaml calls the stage commands (through stages/<stage>.py) with the project's
paths; outside DVC, pass paths explicitly.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from pipeline.config import ParamsError, list_param_sections
from pipeline.stages import _command as cmd
from pipeline.stages import load_all

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
STAGES = load_all()
for _name, _module in STAGES.items():
    app.command(_name)(_module.command)
    if "_" in _name:  # the names of earlier releases
        app.command(_name.replace("_", "-"), hidden=True)(_module.command)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command("check-params")
def check_params(params: Path = cmd.PARAMS) -> None:
    """Check every section of a params file; print the sections."""
    cmd.section(params, None)
    typer.echo(f"{params}: ok ({', '.join(list_param_sections())})")


@app.command()
def plan(preset: Optional[str] = typer.Option(None, help="a preset name (presets/NAME.yaml)"),
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
    from pipeline.core.captioners import list_captioners
    from pipeline.core.methods import get_method, list_methods

    typer.echo("methods:")
    for name in list_methods():
        m = get_method(name)
        trains = " then ".join("+".join(sorted(p)) for p in m.phases) or "nothing"
        typer.echo(f"  {name:9s} trains {trains}{' (anchors)' if m.needs_anchors else ''}: {m.doc}")
    typer.echo(f"captioners: {', '.join(list_captioners())}")
    typer.echo(f"params sections: {', '.join(list_param_sections())}")


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
    """Entry point of `arf`: bad input ends in one line, not a traceback."""
    cmd.run(app, args)
