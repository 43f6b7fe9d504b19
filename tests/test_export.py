"""`arf export`: a model folder becomes an open_clip folder that plain open_clip (no `pipeline` import,
in another process) loads with the same weights, tokenizer and image transform, so the same logits."""
from __future__ import annotations

import json
import os
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
from pipeline.io.export import export_model

TEXTS = ["a red square", "a photo of a green circle", "stripes"]
CLASSNAMES = ["red", "green", "blue", "yellow"]

# The README's load for the installed open_clip (2.x: no `local-dir:` yet), run from inside the folder.
LOAD = """
import json, sys
import open_clip, torch, torch.nn.functional as F
from PIL import Image

assert "pipeline" not in sys.modules
cfg = json.load(open("open_clip_config.json"))
pp = cfg["preprocess_cfg"]
open_clip.factory._MODEL_CONFIGS["exported"] = cfg["model_cfg"]
model, _, preprocess = open_clip.create_model_and_transforms(
    "exported", pretrained="open_clip_model.safetensors", image_mean=pp["mean"], image_std=pp["std"],
    image_interpolation=pp["interpolation"], image_resize_mode=pp["resize_mode"])
tokenizer = open_clip.get_tokenizer("exported")

images, texts, out = sys.argv[1].split(","), sys.argv[2].split("|"), sys.argv[3]
pixels = torch.stack([preprocess(Image.open(p)) for p in images])
model.eval()
with torch.no_grad():
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
result = {"pixels": pixels, "image": image, "text": text, "logits": model.logit_scale.exp() * image @ text.t(),
          "transforms": [(type(t).__name__, str(getattr(t, "size", "")), str(getattr(t, "interpolation", "")),
                          [float(x) for x in getattr(t, "mean", [])], [float(x) for x in getattr(t, "std", [])])
                         for t in preprocess.transforms]}
try:
    from safetensors import safe_open
    with safe_open("head.safetensors", "pt") as f:
        result["head_logits"] = image @ f.get_tensor("weight").t()
        result["classnames"] = json.loads(f.metadata()["classnames"])
except FileNotFoundError:
    pass
torch.save(result, out)
"""


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


def _plain_open_clip(export: Path, images: list[Path], out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run([sys.executable, "-c", LOAD, ",".join(map(str, images)), "|".join(TEXTS), str(out)],
                   cwd=export, env=env, check=True)
    return torch.load(out, weights_only=True)


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
    for key in ("image", "text", "logits"):
        assert torch.allclose(theirs[key], ours[key], rtol=0, atol=1e-6), key


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
    return [f"{p.name}: {s}" for p in sorted(export.glob("*.json")) for s in _strings(json.loads(p.read_text()))
            if os.path.isabs(s) or ".venv" in s or "site-packages" in s]


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


def test_plain_open_clip_loads_the_export_and_scores_as_the_project(tiny_dir, tmp_path):
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", str(tiny_dir), str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{out}: head.safetensors, open_clip_config.json, open_clip_model.safetensors\n"
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"] == json.loads((tiny_dir / "model.json").read_text())["preprocess"]
    assert _local_paths(out) == []

    images = _images(tmp_path / "images")
    theirs = _plain_open_clip(out, images, tmp_path / "theirs.pt")
    ours = _project(tiny_dir, images)
    _assert_same(ours, theirs)
    head = read_head(tiny_dir)
    assert theirs["classnames"] == CLASSNAMES
    assert torch.allclose(theirs["head_logits"], ours["image"] @ head["weight"].t(), rtol=0, atol=1e-6)


def test_a_folder_without_recorded_preprocessing_exports_its_architectures(tiny_dir, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for f in tiny_dir.iterdir():
        (old / f.name).symlink_to(f)
    meta = json.loads((tiny_dir / "model.json").read_text())
    (old / "model.json").unlink()
    (old / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "preprocess"}))
    export_model(old, tmp_path / "exported")
    config = json.loads((tmp_path / "exported/open_clip_config.json").read_text())
    assert config["preprocess_cfg"] == meta["preprocess"]


def test_export_refuses_an_existing_folder(tiny_dir, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="exists"):
        export_model(tiny_dir, tmp_path / "out")


def test_the_default_model_exports_with_its_text_tower_copied_in(tmp_path):
    torch.manual_seed(0)
    write_model_dir(create_model(DEFAULT_MODEL).model, DEFAULT_MODEL, tmp_path / "base")
    out = tmp_path / "exported"
    assert export_model(tmp_path / "base", out) == [
        "config.json", "open_clip_config.json", "open_clip_model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == "."
    assert config["preprocess_cfg"] == {"size": [96, 96], "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                        "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    assert _local_paths(out) == []

    images = _images(tmp_path / "images")
    _assert_same(_project(tmp_path / "base", images), _plain_open_clip(out, images, tmp_path / "theirs.pt"))
