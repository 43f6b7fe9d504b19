"""`arf export`: a model folder becomes a hub cache holding an open_clip repo that plain open_clip 2.32
(no `pipeline` import, in another process) loads with the README's one call, offline, with the same
weights, tokenizer and image transform, so the same features, logits and head scores."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import make_tiny_checkpoint, synthetic_image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.models import DEFAULT_MODEL, create_model, model_dir_spec, read_head, write_model_dir
from pipeline.io.export import export_model, repo_id, snapshot_dir

TEXTS = ["a red square", "a photo of a green circle", "stripes"]
CLASSNAMES = ["red", "green", "blue", "yellow"]
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme() -> dict:
    """The README's `arf export` section, as a user copies it: the export command's folder, the
    environment its `export` line sets, and its two Python blocks (the load; a head's scores)."""
    text = README.read_text()
    section = text[text.index("## Using a trained model elsewhere: `arf export`"):]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]  # to the next heading
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    shell = [shlex.split(line, comments=True) for lang, b in blocks if lang == "bash" for line in b.splitlines()]
    python = [b for lang, b in blocks if lang == "python"]
    (cmd,) = [words for words in shell if words[:2] == ["arf", "export"]]
    (env,) = [dict(w.split("=", 1) for w in words[1:]) for words in shell if words[:1] == ["export"]]
    (load,) = [b for b in python if "create_model_and_transforms" in b]
    (head,) = [b for b in python if "head.safetensors" in b]
    return {"out": cmd[3], "env": env, "load": load, "head": head}


# Around the README's lines: its load, then features and logits of the images and texts given, then (for a
# model with a head) its head block, whose `images` are the preprocessed images.
SCRIPT = """
import sys
{load}
assert "pipeline" not in sys.modules
import torch, torch.nn.functional as F
from PIL import Image

paths, texts, out = sys.argv[1].split(","), sys.argv[2].split("|"), sys.argv[3]
torch.set_grad_enabled(False)
images = torch.stack([preprocess(Image.open(p)) for p in paths])
image = F.normalize(model.encode_image(images), dim=-1)
text = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
result = {{"pixels": images, "image": image, "text": text, "logits": model.logit_scale.exp() * image @ text.t(),
          "transforms": [(type(t).__name__, str(getattr(t, "size", "")), str(getattr(t, "interpolation", "")),
                          [float(x) for x in getattr(t, "mean", [])], [float(x) for x in getattr(t, "std", [])])
                         for t in preprocess.transforms]}}
{head}
torch.save(result, out)
"""
HEAD_RESULT = """
result["head_scores"], result["classnames"] = scores, classnames
"""
# What the process inherits from this one is cleared: it sees only what the README sets.
CLEARED = ("PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE",
           "PYTORCH_TRANSFORMERS_CACHE", "PYTORCH_PRETRAINED_BERT_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _transforms(preprocess) -> list:
    return [(type(t).__name__, str(getattr(t, "size", "")), str(getattr(t, "interpolation", "")),
             [float(x) for x in getattr(t, "mean", [])], [float(x) for x in getattr(t, "std", [])])
            for t in preprocess.transforms]


def _images(folder: Path, n: int = 4) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(n):  # sizes unlike the model's input: the resize and crop are part of what is compared
        img, _, _ = synthetic_image(i, size=40 + 9 * i)
        paths.append(folder / f"{i}.png")
        img.save(paths[-1])
    return paths


def _plain_open_clip(cwd: Path, images: list[Path], out: Path, head: bool = False) -> dict:
    """The README's lines, run from `cwd` (where the README's export folder is) by a fresh Python that
    does not see this project; the export must be the same afterwards (the load writes nothing)."""
    readme = _readme()
    script = SCRIPT.format(load=readme["load"], head=readme["head"] + HEAD_RESULT if head else "")
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(readme["env"])
    before = _listing(cwd / readme["out"])
    subprocess.run([sys.executable, "-c", script, ",".join(map(str, images)), "|".join(TEXTS), str(out)],
                   cwd=cwd, env=env, check=True)
    assert _listing(cwd / readme["out"]) == before
    return torch.load(out, weights_only=True)


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def _project(model_dir: Path, images: list[Path]) -> dict:
    from PIL import Image

    lm = create_model(model_dir_spec(model_dir))
    pixels = torch.stack([lm.preprocess(Image.open(p)) for p in images])
    with torch.no_grad():
        image = F.normalize(lm.model.encode_image(pixels), dim=-1)
        text = F.normalize(lm.model.encode_text(lm.tokenizer(TEXTS)), dim=-1)
    return {"pixels": pixels, "image": image, "text": text, "logits": lm.model.logit_scale.exp() * image @ text.t(),
            "transforms": _transforms(lm.preprocess)}


def _assert_same(ours: dict, theirs: dict) -> None:
    assert theirs["transforms"] == ours["transforms"]
    assert torch.equal(theirs["pixels"], ours["pixels"])
    for key in ("image", "text"):
        assert torch.allclose(theirs[key], ours[key], rtol=0, atol=1e-6), key
    # The project cuts the texts' padding (models.TrimmedTokenizer), plain open_clip does not: the
    # same values up to float rounding, which the logits carry times the temperature.
    scale = float(ours["logits"].abs().max() / (ours["image"] @ ours["text"].t()).abs().max())
    assert torch.allclose(theirs["logits"], ours["logits"], rtol=0, atol=1e-6 * scale)


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _local_paths(export: Path) -> list[str]:
    """Strings in the export's JSON files (and refs) that name this machine; links (a copy, an archive
    or a DVC push would break them)."""
    files = sorted(export.rglob("*"))
    found = [f"{p}: a link" for p in files if p.is_symlink()]
    for p in files:
        strings = list(_strings(json.loads(p.read_text()))) if p.suffix == ".json" else \
            [p.read_text()] if p.parent.name == "refs" else []
        found += [f"{p.relative_to(export)}: {s}" for s in strings
                  if os.path.isabs(s) or ".venv" in s or "site-packages" in s]
    return found


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """tiny-clip finetuned with a classifier head, as the trainer writes lp / ft / lpft."""
    tmp = tmp_path_factory.mktemp("export")
    name, ckpt = make_tiny_checkpoint(tmp)
    torch.manual_seed(1)
    weight = F.normalize(torch.randn(len(CLASSNAMES), 16), dim=-1)
    write_model_dir(create_model(f"{name}:{ckpt}").model, name, tmp / "lp",
                    head={"weight": weight, "init": torch.zeros_like(weight), "classnames": CLASSNAMES})
    return tmp / "lp"


def test_the_model_folder_records_its_preprocessing(tiny_dir):
    assert json.loads((tiny_dir / "model.json").read_text())["preprocess"] == {
        "size": [32, 32], "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
        "resize_mode": "shortest", "fill_color": 0}


def test_plain_open_clip_loads_the_export_with_the_readmes_call_and_scores_as_the_project(tiny_dir, tmp_path):
    out = tmp_path / _readme()["out"]  # exports/arf-seed0, the README's
    result = CliRunner().invoke(app, ["export", str(tiny_dir), str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{out}: head.safetensors, open_clip_config.json, open_clip_model.safetensors\n"
    assert repo_id(out) == "arf/arf-seed0"
    assert sorted(p.name for p in out.iterdir()) == ["models--arf--arf-seed0"]
    config = json.loads((snapshot_dir(out) / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"] == json.loads((tiny_dir / "model.json").read_text())["preprocess"]
    assert _local_paths(out) == []

    images = _images(tmp_path / "images")
    theirs = _plain_open_clip(tmp_path, images, tmp_path / "theirs.pt", head=True)
    ours = _project(tiny_dir, images)
    _assert_same(ours, theirs)
    head = read_head(tiny_dir)
    assert theirs["classnames"] == CLASSNAMES
    assert torch.allclose(theirs["head_scores"], ours["image"] @ head["weight"].t(), rtol=0, atol=1e-6)


def test_the_export_is_a_hub_cache_whose_main_names_a_content_revision(tiny_dir, tmp_path):
    a, b = export_model(tiny_dir, tmp_path / "a/m.1"), export_model(tiny_dir, tmp_path / "b/m.1")
    assert a == b == ["head.safetensors", "open_clip_config.json", "open_clip_model.safetensors"]
    repo = tmp_path / "a/m.1/models--arf--m.1"
    revision = (repo / "refs/main").read_text()
    assert re.fullmatch(r"[0-9a-f]{40}", revision)
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == sorted(
        ["refs", "refs/main", "snapshots", f"snapshots/{revision}"] + [f"snapshots/{revision}/{f}" for f in a])
    assert snapshot_dir(tmp_path / "b/m.1").name == revision  # the same model, the same revision
    assert not any(p.is_symlink() for p in repo.rglob("*"))


@pytest.mark.parametrize("name", ["arf seed0", "arf--seed0", "-seed0", "x" * 97])
def test_export_refuses_a_folder_name_that_is_no_repo_name(tiny_dir, tmp_path, name):
    with pytest.raises(ValueError, match="repo id"):
        export_model(tiny_dir, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_a_folder_without_recorded_preprocessing_exports_its_architectures(tiny_dir, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for f in tiny_dir.iterdir():
        (old / f.name).symlink_to(f)
    meta = json.loads((tiny_dir / "model.json").read_text())
    (old / "model.json").unlink()
    (old / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "preprocess"}))
    export_model(old, tmp_path / "exported")
    config = json.loads((snapshot_dir(tmp_path / "exported") / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"] == meta["preprocess"]


def test_export_refuses_an_existing_folder(tiny_dir, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="exists"):
        export_model(tiny_dir, tmp_path / "out")


def test_the_default_model_exports_with_its_text_tower_copied_in(tmp_path):
    torch.manual_seed(0)
    write_model_dir(create_model(DEFAULT_MODEL).model, DEFAULT_MODEL, tmp_path / "base")
    out = tmp_path / _readme()["out"]
    assert export_model(tmp_path / "base", out) == [
        "config.json", "open_clip_config.json", "open_clip_model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    config = json.loads((snapshot_dir(out) / "open_clip_config.json").read_text())
    text_cfg = config["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == "arf/arf-seed0"
    assert config["preprocess_cfg"] == {"size": [96, 96], "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                        "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    assert _local_paths(out) == []

    images = _images(tmp_path / "images")
    _assert_same(_project(tmp_path / "base", images), _plain_open_clip(tmp_path, images, tmp_path / "theirs.pt"))
