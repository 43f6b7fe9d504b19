"""Where prompt templates come from: the packages that ship them, not re-typed lists."""
from __future__ import annotations

import json

from pipeline.config import ParamsError


def _open_clip_templates(name: str) -> list[str] | None:
    from open_clip import zero_shot_metadata as meta

    sets = {"openai_imagenet": meta.OPENAI_IMAGENET_TEMPLATES, "simple_imagenet": meta.SIMPLE_IMAGENET_TEMPLATES}
    return [t("{c}") for t in sets[name]] if name in sets else None  # open_clip's are functions of the name


def _clip_benchmark_templates(dataset: str) -> list[str] | None:
    """CLIP_benchmark's English templates for `dataset` (its en_zeroshot_classification_templates.json,
    the file its own zero-shot evaluation reads), or None if it has none for that name."""
    from importlib.resources import files

    table = json.loads((files("clip_benchmark.datasets") / "en_zeroshot_classification_templates.json").read_text())
    return table.get(dataset)


def template_set(value: str | list[str], where: str) -> list[str]:
    """Prompt templates from a params value: a list of strings with {c}; an open_clip set
    (`openai_imagenet`: CLIP's 80, `simple_imagenet`: its 7); or `clip_benchmark:<dataset>`."""
    if isinstance(value, str):
        source, _, dataset = value.partition(":")
        templates = _clip_benchmark_templates(dataset) if source == "clip_benchmark" and dataset else \
            None if dataset else _open_clip_templates(value)
        if templates is None:
            raise ParamsError(f"{where}: {value!r} is not openai_imagenet, simple_imagenet, clip_benchmark:<dataset> "
                              "with a dataset CLIP_benchmark has templates for, or a list of strings with {c}")
        return templates
    if not value or any(not isinstance(t, str) or "{c}" not in t for t in value):
        raise ParamsError(f"{where}: every template needs {{c}}")
    return list(value)
