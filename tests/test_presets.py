"""The paper-scale presets: each parses strictly, and `dvc repro` on each completes with fixture data
in the real layouts and tiny models (a tiny open_clip ViT, a tiny BLIP-2).

What the test changes in a preset, and only that: where the data and weights are (fixtures), the
budgets (2 training steps of 4, k = 2 anchors per class, 5 held-out pairs, alphas 0.5 and 1), the
templates (open_clip's 7 instead of its 80, to keep 1,000-class heads cheap) and, for DomainNet, the
captioner (tiny BLIP instead of tiny BLIP-2, so that both backends run through the stages), and the
methods: each run trains two of the preset's four (ImageNet FT and ARF, DomainNet LP-FT and FLYP; all
four across the two runs: a stage costs ~10 s of start-up, and the methods' code is the same in both).
Layouts, set names and every other key are the preset's own.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_captioners import build_tiny_blip, build_tiny_blip2
from fixtures_layouts import make_preset_tree
from helpers import TEST_MODEL_CONFIGS, make_tiny_checkpoint

from pipeline.stages import load_params

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (REPO / "presets").glob("*.yaml"))
VENV_BIN = Path(sys.executable).parent


def test_presets_are_complete_params_files():
    assert PRESETS == ["domainnet", "imagenet"]
    for name in PRESETS:
        params = load_params(REPO / "presets" / f"{name}.yaml")
        local = params["build_data"].local
        assert params["build_data"].source == "local" and params["align"].model == "ViT-B-16:openai"
        assert params["caption"].backend == "blip2"
        zs = sorted(n for n in local.eval if n.startswith("zeroshot_"))
        assert zs == sorted(f"zeroshot_{d}" for d in ("caltech101", "flowers102", "food101", "sun397", "dtd", "aircraft",
                                                      "cars", "pets", "eurosat", "ucf101"))
        shifts = sorted(n for n in local.eval if n.startswith("shift_"))
        assert len(shifts) == 5, shifts
        text = (REPO / "presets" / f"{name}.yaml").read_text()
        assert "ASSUMPTION" in text and f"cp presets/{name}.yaml params.yaml" in text


def _project(root: Path, preset: str, fixtures: Path, ckpt: Path, blip2: Path, blip: Path) -> dict:
    for rel in ("pipeline", "stages", ".dvc"):
        shutil.copytree(REPO / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    for rel in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / rel, root / rel)
    params = yaml.safe_load((REPO / "presets" / f"{preset}.yaml").read_text())
    local = params["build_data"]["local"]
    local.update(root=str(fixtures), heldout_pairs=5, templates="simple_imagenet", val_fraction=0.25)
    params["align"]["model"] = f"tiny-clip:{ckpt}"
    params["caption"].update(model_path=str(blip2 if preset == "imagenet" else blip), batch_size=4, max_new_tokens=5)
    if preset != "imagenet":
        params["caption"]["backend"] = "blip"
    params["embed_corpus"].update(batch_size=16, num_workers=0)
    if preset == "domainnet":  # one preset's corpus goes through clip-retrieval's Spark distribution
        params["embed_corpus"].update(distribution="pyspark", spark_master="local[2]")
    params["retrieve"].update(k_per_class=2, current_memory_available="2G", max_index_memory_usage="1G")
    params["train"].update(steps=2, batch_size=4, anchor_batch_size=4, warmup_steps=1, eval_every=1, shuffle_buffer=50)
    params["evaluate"]["wise_alphas"] = [0.5, 1.0]
    assert params["report"]["methods"] == ["ft", "lpft", "flyp", "arf"]
    params["report"]["methods"] = ["ft", "arf"] if preset == "imagenet" else ["lpft", "flyp"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, ARF_MODEL_CONFIGS=str(TEST_MODEL_CONFIGS), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    env.pop("PYTHONPATH", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return env


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    return make_tiny_checkpoint(tmp)[1], build_tiny_blip2(tmp / "blip2"), build_tiny_blip(tmp / "blip")


@pytest.mark.parametrize("preset", ["imagenet", "domainnet"])
def test_dvc_repro_on_the_preset_completes_with_fixture_data_and_tiny_models(preset, models, tmp_path):
    fixtures = make_preset_tree(tmp_path / "datasets", yaml.safe_load((REPO / "presets" / f"{preset}.yaml").read_text()))
    root = tmp_path / "project"
    env = _project(root, preset, fixtures, *models)
    proc = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    full = json.loads((root / "results/summary_full.json").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    methods = params["report"]["methods"]
    assert set(full["methods"]) == {"zeroshot", *methods, *(f"{m}+wise" for m in methods)}
    shifts = {n[len("shift_"):] for n in params["build_data"]["local"]["eval"] if n.startswith("shift_")}
    zs = {n[len("zeroshot_"):] for n in params["build_data"]["local"]["eval"] if n.startswith("zeroshot_")}
    for name, row in full["methods"].items():
        assert {f"shift/{d}" for d in shifts} <= set(row) and {f"zeroshot/{d}" for d in zs} <= set(row)
        records = [json.loads(l) for l in (root / "results/eval" / (
            "zeroshot.jsonl" if row["alpha"] == 0 else f"{name.removesuffix('+wise')}/seed0.jsonl")).read_text().splitlines()]
        ids = [r["acc1"] for r in records if r["alpha"] == row["alpha"] and r["dataset"].startswith("id_") and r["dataset"] != "id_val"]
        assert len(ids) == 1 and row["id"]["mean"] == ids[0]
    base = json.loads((root / "models/base/model.json").read_text())
    assert base["pretrained"].startswith("tiny-clip:")  # a pretrained CLIP is the base as it is
    embedded_by = "pyspark on local[2]" if preset == "domainnet" else "sequential"
    assert f'"distribution": "{embedded_by}"' in proc.stdout, proc.stdout[-3000:]
    captions = (root / "data/captions/captions.jsonl").read_text().splitlines()
    assert captions and json.loads(captions[0])["captions"]


def test_plan_counts_present_sets_and_names_missing_ones(tmp_path):
    from pipeline.plan import PRESET_DIR, format_plan, make_plan

    preset = yaml.safe_load((REPO / "presets/imagenet.yaml").read_text())
    make_preset_tree(tmp_path / "datasets", preset)
    shutil.rmtree(tmp_path / "datasets" / "objectnet-1.0")
    preset["build_data"]["local"]["root"] = str(tmp_path / "datasets")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(preset))
    plans = make_plan(params, "imagenet", tflops=50.0)
    needs = {n.what: n for s in plans for n in s.needs}
    assert needs["finetune"].found and needs["finetune"].counted and needs["finetune"].samples == 48
    on = needs["shift_objectnet"]
    assert not on.found and not on.counted and on.samples == 18574  # the published size
    assert "objectnet-1.0: not found" in on.expects and "mappings" in on.expects
    assert needs["corpus"].samples == 60 and needs["corpus"].counted
    costs = json.loads((PRESET_DIR / "costs.json").read_text())["clip"]["ViT-B-16"]
    embed = next(s for s in plans if s.name == "embed_corpus")
    assert embed.gpu_hours == pytest.approx(60 * (costs["image_forward_flops"] + costs["text_forward_flops"]) / 50e12 / 3600)
    text = format_plan(plans, params)
    assert "[MISSING] build_data    shift_objectnet" in text and "total" in text


def _stage(root: Path, stage: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), *args], cwd=root, env=env,
                          capture_output=True, text=True)


def test_missing_dataset_or_weights_stop_with_one_line_naming_path_and_layout(tmp_path):
    preset = yaml.safe_load((REPO / "presets/imagenet.yaml").read_text())
    make_preset_tree(tmp_path / "datasets", preset)
    shutil.rmtree(tmp_path / "datasets" / "imagenet-a")
    preset["build_data"]["local"]["root"] = str(tmp_path / "datasets")
    preset["align"]["model"] = f"ViT-B-16:{tmp_path / 'weights' / 'openai.pt'}"
    preset["caption"]["model_path"] = str(tmp_path / "blip2-opt-2.7b")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(preset))
    env = dict(os.environ)
    for stage, args, expected in (  # the paths dvc.yaml gives
        ("build_data", ["--out", "data"], f"{tmp_path}/datasets/imagenet-a: not found; shift_imagenet_a expects layout imagenet_subset: PATH/<wnid>/<image>"),
        ("align", ["--corpus", "data/corpus", "--out", "models/base"], f"checkpoint {tmp_path}/weights/openai.pt not found; expected an open_clip checkpoint file of ViT-B-16"),
    ):
        proc = _stage(tmp_path, stage, env, *args)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "data" / "benchmark").exists() and not (tmp_path / "models").exists()
    from pipeline.core.captioners.registry import create_captioner

    with pytest.raises(ValueError, match=r"blip2-opt-2.7b'?: not a local folder .*point caption.model_path at the folder"):
        create_captioner("blip2", model_path=preset["caption"]["model_path"])
