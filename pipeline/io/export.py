"""`arf export`: a model folder as a self-contained open_clip model, loadable without this project.

`OUT_DIR` is a Hugging Face hub cache holding one repo, `arf/<OUT_DIR's name>`:

  models--arf--<name>/refs/main                  the revision below (a hash of the files)
  models--arf--<name>/snapshots/<revision>/      the open_clip folder:
    open_clip_config.json         {"model_cfg": the architecture, "preprocess_cfg": the image transform}
    open_clip_model.safetensors   the weights (the state dict of checkpoint.pt)
    config.json, tokenizer files  a Hugging Face text tower's config and tokenizer, copied in
    head.safetensors              a classifier head (lp, ft, lpft): tensors weight and init (C x D), the
                                  class names (JSON) in its metadata under "classnames"

so that plain open_clip, 2.x included (2.32 has no `local-dir:`), loads it with one call, offline:
`HF_HUB_OFFLINE=1 HF_HUB_CACHE=OUT_DIR` and `create_model_and_transforms("hf-hub:arf/<name>")`, which
reads model_cfg, preprocess_cfg and the weights through huggingface_hub's cache. A text tower's
`hf_model_name` / `hf_tokenizer_name` are written as that same repo id (never as the path they had here,
inside a virtual environment), which transformers resolves from the same cache. The files are real
files (no blobs, no links), so the folder survives a copy, an archive or a DVC push.

The preprocessing is the one model.json records (`write_model_dir`), or for a folder written before
model.json recorded it, the one its architecture's config registers.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import safetensors.torch
from huggingface_hub.utils import HFValidationError, validate_repo_id

from pipeline.core.models import (
    create_model,
    import_open_clip,
    model_dir_spec,
    preprocess_cfg,
    read_head,
    read_model_json,
)
from pipeline.io.atomic import atomic_dir

NAMESPACE = "arf"
CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
HEAD = "head.safetensors"


def repo_id(out_dir: str | os.PathLike) -> str:
    """The hub repo id an export to `out_dir` is loaded by: arf/<out_dir's name>."""
    rid = f"{NAMESPACE}/{Path(out_dir).name}"
    try:
        validate_repo_id(rid)
    except HFValidationError as e:
        raise ValueError(f"{out_dir}: its name makes the repo id {rid!r}, which huggingface_hub refuses "
                         f"(letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters)") from e
    return rid


def snapshot_dir(out_dir: str | os.PathLike) -> Path:
    """The open_clip folder inside an export (the revision refs/main names)."""
    repo = Path(out_dir) / ("models--" + repo_id(out_dir).replace("/", "--"))
    return repo / "snapshots" / (repo / "refs" / "main").read_text()


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Write `model_dir` (a folder `write_model_dir` wrote) as a hub cache `out_dir` holding the
    open_clip repo `repo_id(out_dir)`; returns the repo's files. `out_dir` must not exist."""
    out_dir = Path(out_dir)
    rid = repo_id(out_dir)
    if out_dir.exists():
        raise ValueError(f"{out_dir}: exists; export writes a new folder")
    meta = read_model_json(model_dir)
    lm = create_model(model_dir_spec(model_dir))
    model_cfg = import_open_clip().get_model_config(lm.spec.name)
    text_cfg = model_cfg["text_cfg"]
    head = read_head(model_dir)
    with atomic_dir(out_dir) as tmp:
        repo = tmp / ("models--" + rid.replace("/", "--"))
        files = repo / "snapshots" / "new"
        files.mkdir(parents=True)
        safetensors.torch.save_file(lm.model.state_dict(), files / WEIGHTS)
        if text_cfg.get("hf_model_name"):
            lm.model.text.config.save_pretrained(files)
            text_cfg["hf_model_name"] = rid
        if text_cfg.get("hf_tokenizer_name"):
            lm.tokenizer.save_pretrained(files)
            text_cfg["hf_tokenizer_name"] = rid
        _refuse_local_paths(model_cfg, f"{model_dir}: model_cfg")
        config = {"model_cfg": model_cfg, "preprocess_cfg": meta.get("preprocess") or preprocess_cfg(lm.model)}
        (files / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if head is not None:
            safetensors.torch.save_file({"weight": head["weight"].contiguous(), "init": head["init"].contiguous()},
                                        files / HEAD, metadata={"classnames": json.dumps(list(head["classnames"]))})
        written = sorted(p.name for p in files.iterdir())
        revision = _revision(files)
        files.rename(files.parent / revision)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)  # no newline: huggingface_hub reads it as is
    return written


def _revision(folder: Path) -> str:
    """A commit-hash-shaped name for the snapshot (40 hex digits, what huggingface_hub accepts as a
    revision): the sha1 of the files' names and contents, so the same model exports the same."""
    h = hashlib.sha1()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


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
