"""Stage `embed_prompts`: the seen classes' prompt embeddings under the base text tower (`data/prompts`),
what retrieval searches the corpus with. No params section of its own."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from pipeline.core.encode import zeroshot_head
from pipeline.core.models import create_model, model_dir_spec
from pipeline.io.embeddings import save_class_embeddings
from pipeline.io.records import load_classes
from pipeline.stages import _command as cmd


def command(classes: Path = typer.Option(...), base: Path = typer.Option(..., help="base model folder"),
            out: Path = typer.Option(..., help=".npz of class embeddings"),
            split: str = typer.Option("seen", help="which class list of classes.json"),
            params: Path = cmd.PARAMS) -> None:
    """Embed class names x templates with the base text tower (the zero-shot head)."""
    cmd.section(params, None)
    t = time.time()
    cls = load_classes(classes)
    lm = create_model(model_dir_spec(base))
    head = zeroshot_head(lm.model.eval(), lm.tokenizer, cls[split], cls["templates"])
    save_class_embeddings(out, head, cls[split], cls["templates"])
    cmd.report("embed_prompts", t, {"classes": len(cls[split]), "templates": len(cls["templates"]), "dim": head.shape[1]})
