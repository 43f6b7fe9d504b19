"""Run CLIP_benchmark's own command line (`clip_benchmark ...`) with our local model configs known.

Used by scripts/clip_benchmark_check.py, inside the clip_benchmark venv (.venv-clipbench):

    .venv-clipbench/bin/python scripts/clip_benchmark_launch.py eval --model_type open_clip_local ...

Everything after the script name is clip_benchmark's CLI, unchanged; clip_benchmark.cli.main() parses
and runs it in this process. Two things are added before that, and nothing else is patched:

1. Our open_clip JSON configs (pipeline/core/model_configs, `${MINILM}` resolved) are registered with open_clip
   by `pipeline.core.models.register_model_configs()`, the same call our pipeline makes. Without it open_clip
   does not know `arf-lite0-minilm`.
2. A model type `open_clip_local` is added through clip_benchmark's model-loading hook
   (`clip_benchmark.models.TYPE2FUNC`, chosen with its `--model_type` option). Its loader is
   clip_benchmark's `load_open_clip` plus the config's `preprocess_cfg` passed as image_mean / image_std /
   image_interpolation / image_resize_mode, exactly as `pipeline.core.models.create_model` passes them: open_clip
   2.x ignores a local config's preprocess_cfg, so the stock loader would normalise with the OpenAI
   mean/std instead of the 0.5/0.5 the model was trained with (measured with `--model_type open_clip` on
   models/base: 3.5 to 19 points lower top-1 on every eval set).

Data reading (webdataset decode, RGB conversion), class names, templates, zero-shot head, logits and
metrics are clip_benchmark's own code. If CB_CHECK_TRANSFORM_LOG names a file, the loader appends
`model<TAB>pretrained<TAB>repr(transform)` to it so the caller can check the transform equals ours.
"""
from __future__ import annotations

import json
import os
import sys

import open_clip

from pipeline.core.models import CONFIG_DIR, register_model_configs

MODEL_TYPE = "open_clip_local"


def local_preprocess_cfg(model_name: str) -> dict:
    path = CONFIG_DIR / f"{model_name}.json"
    return json.loads(path.read_text()).get("preprocess_cfg", {}) if path.is_file() else {}


def load_open_clip_local(model_name: str, pretrained: str, cache_dir: str | None = None, device="cpu"):
    """clip_benchmark.models.open_clip.load_open_clip, with the local config's preprocessing."""
    pp = local_preprocess_cfg(model_name)
    model, _, transform = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, cache_dir=cache_dir,
        image_mean=pp.get("mean"), image_std=pp.get("std"),
        image_interpolation=pp.get("interpolation"), image_resize_mode=pp.get("resize_mode"))
    model = model.to(device)
    tokenizer = open_clip.get_tokenizer(model_name)
    log = os.environ.get("CB_CHECK_TRANSFORM_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{model_name}\t{pretrained}\t{transform!r}".replace("\n", " ") + "\n")
    return model, transform, tokenizer


def main(argv: list[str]) -> int:
    register_model_configs()
    import clip_benchmark.cli
    import clip_benchmark.models as cb_models

    cb_models.TYPE2FUNC[MODEL_TYPE] = load_open_clip_local
    if MODEL_TYPE not in cb_models.MODEL_TYPES:
        cb_models.MODEL_TYPES.append(MODEL_TYPE)  # the same list object is --model_type's `choices`
    sys.argv = ["clip_benchmark", *argv]
    return clip_benchmark.cli.main() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
