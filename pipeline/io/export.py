"""`arf export`: a model folder as a self-contained open_clip folder, loadable without this project.

The folder is the layout open_clip reads from a hub repo (`hf-hub:`) and, from 3.0 on, from a local
folder (`local-dir:`):

  open_clip_config.json         {"model_cfg": the architecture, "preprocess_cfg": the image transform}
  open_clip_model.safetensors   the weights (the state dict of checkpoint.pt)
  config.json, tokenizer files  a Hugging Face text tower's config and tokenizer, copied in
  head.safetensors              a classifier head (lp, ft, lpft): tensors weight and init (C x D), the
                                class names (JSON) in its metadata under "classnames"

A text tower's `hf_model_name` / `hf_tokenizer_name` are written as "." (this folder), never as the
path they had here (inside a virtual environment): open_clip hands them to transformers, which
resolves a relative path against the working directory, so such a model is loaded from inside the
folder. The preprocessing is the one model.json records (`write_model_dir`), or for a folder written
before model.json recorded it, the one its architecture's config registers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import safetensors.torch

from pipeline.core.models import create_model, model_dir_spec, preprocess_cfg, read_head, read_model_json
from pipeline.io.atomic import atomic_dir

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
HEAD = "head.safetensors"
HERE = "."  # a text tower's files, as the exported config names them


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Write `model_dir` (a folder `write_model_dir` wrote) as an open_clip folder `out_dir`; returns
    the files written. `out_dir` must not exist."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ValueError(f"{out_dir}: exists; export writes a new folder")
    meta = read_model_json(model_dir)
    lm = create_model(model_dir_spec(model_dir))
    model_cfg = open_clip.get_model_config(lm.spec.name)
    text_cfg = model_cfg["text_cfg"]
    head = read_head(model_dir)
    with atomic_dir(out_dir) as tmp:
        safetensors.torch.save_file(lm.model.state_dict(), tmp / WEIGHTS)
        if text_cfg.get("hf_model_name"):
            lm.model.text.config.save_pretrained(tmp)
            text_cfg["hf_model_name"] = HERE
        if text_cfg.get("hf_tokenizer_name"):
            lm.tokenizer.save_pretrained(tmp)
            text_cfg["hf_tokenizer_name"] = HERE
        _refuse_local_paths(model_cfg, f"{model_dir}: model_cfg")
        config = {"model_cfg": model_cfg, "preprocess_cfg": meta.get("preprocess") or preprocess_cfg(lm.model)}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if head is not None:
            safetensors.torch.save_file({"weight": head["weight"].contiguous(), "init": head["init"].contiguous()},
                                        tmp / HEAD, metadata={"classnames": json.dumps(list(head["classnames"]))})
        written = sorted(p.name for p in tmp.iterdir())
    return written


def _refuse_local_paths(obj, where: str) -> None:
    """An absolute path in the config would point into this machine (a lab config naming a local
    asset): the export would load only here."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _refuse_local_paths(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _refuse_local_paths(v, f"{where}[{i}]")
    elif isinstance(obj, str) and os.path.isabs(obj):
        raise ValueError(f"{where}: {obj} is a path on this machine; an export carries no such path")
