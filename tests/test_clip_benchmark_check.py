"""scripts/clip_benchmark_check.py without clip_benchmark: its input checks, how it reads clip_benchmark's
result JSONs, and our side of the comparison on a tiny model.

The cross-check itself needs clip_benchmark (its own venv, see the script); these tests run offline in
the main venv on a few synthetic images. `clip_benchmark_predictions` below is a transcription of
clip_benchmark 1.6.2's `metrics/zeroshot_classification.py` (zero_shot_classifier + run_classification,
fp32) and its wds decode (`Image.convert("RGB")`), so a change to our evaluation that would break the
agreement is caught here too.
"""
from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL, make_tiny_checkpoint, png_bytes, synthetic_image
from PIL import Image

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "clip_benchmark_check.py"


@pytest.fixture(scope="module")
def cbc():
    spec = importlib.util.spec_from_file_location("clip_benchmark_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_cb_set(root: Path, classnames: list[str], templates: list[str], n: int = 10, rgba: tuple = (),
                shard: str = "0.tar", labels: list[int] | None = None) -> Path:
    """An eval set in CLIP_benchmark's wds layout, as our export writes it (plus sizes.json)."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    members = {}
    for i in range(n):
        img, _, _ = synthetic_image(i, 40, "RGBA" if i in rgba else "RGB")
        members[f"s{i:03d}.png"] = png_bytes(img)
        members[f"s{i:03d}.cls"] = str(labels[i] if labels else i % len(classnames)).encode()
    write_tar(root / "test" / shard, members)
    (root / "test" / "sizes.json").write_text(json.dumps({shard: n}))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    (root / "dataset_type.txt").write_text("classification\n")
    return root


def test_input_check_passes_flattened_rgb_and_flags_alpha_and_shard_names(cbc, tmp_path):
    ok = make_cb_set(tmp_path / "zeroshot_ok", ["red", "green"], ["a {c} thing."])
    assert cbc.check_inputs(ok) == []
    # transparent background with black stored under it: clip_benchmark's convert("RGB") shows black,
    # we composite on white, so the two evaluations would see different images
    alpha = make_cb_set(tmp_path / "zeroshot_alpha", ["red", "green"], ["a {c} thing."], rgba=(1, 4))
    [problem] = cbc.check_inputs(alpha)
    assert "2/10 image(s) decode differently" in problem
    # clip_benchmark reads test/{0..nshards-1}.tar, not img2dataset's 00000.tar
    named = make_cb_set(tmp_path / "zeroshot_named", ["red", "green"], ["a {c} thing."], shard="00000.tar")
    assert any("nshards.txt" in p for p in cbc.check_inputs(named))


def cb_result(dir_: Path, name: str, acc1: float, classnames, templates) -> None:
    """A result JSON as clip_benchmark 1.6.2 writes it (metrics are fractions; --dump_classnames/templates)."""
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / f"{name}.json").write_text(json.dumps({
        "dataset": f"wds/{name}", "model": TINY_MODEL, "pretrained": "/x/checkpoint.pt",
        "task": "zeroshot_classification", "language": "en", "classnames": classnames, "templates": templates,
        "metrics": {"acc1": acc1, "acc5": 1.0, "mean_per_class_recall": acc1}}))


def test_compare_reads_fractions_as_points_and_applies_the_tolerance(cbc, tmp_path):
    a = make_cb_set(tmp_path / "eval" / "id_a", ["red", "green"], ["a {c} thing.", "", "the {c}."])
    b = make_cb_set(tmp_path / "eval" / "zeroshot_b", ["red ", "green"], ["a {c} thing."])  # trailing space
    ours = {"m": {"id_a": {"acc1": 50.0, "acc5": 100.0, "mean_per_class_recall": 50.0, "n": 10},
                  "zeroshot_b": {"acc1": 40.0, "acc5": 100.0, "mean_per_class_recall": 40.0, "n": 10}}}
    cb = tmp_path / "cb" / "m"
    # clip_benchmark keeps a blank template line (an empty prompt) where we drop it, and strips class names
    cb_result(cb, "id_a", 0.5, ["red", "green"], ["a {c} thing.", "", "the {c}."])
    cb_result(cb, "zeroshot_b", 0.3, ["red", "green"], ["a {c} thing."])
    out = cbc.compare(ours, {"m": cb}, [a, b], tol=0.5)
    rows = {r["set"]: r for r in out["rows"]}
    assert rows["id_a"]["clip_benchmark"] == pytest.approx(50.0) and rows["id_a"]["ok"]
    assert rows["zeroshot_b"]["diff"] == pytest.approx(-10.0) and not rows["zeroshot_b"]["ok"]
    assert out["problems"] == ["m/id_a: clip_benchmark's templates differ from ours",
                               "m/zeroshot_b: clip_benchmark's class names differ from ours"]
    assert "<-- differs" in cbc.table(out["rows"]).splitlines()[2]


def test_clip_benchmark_command_and_model_folders(cbc, tmp_path):
    argv = cbc.clip_benchmark_argv("arch", Path("/m/checkpoint.pt"), [tmp_path / "id_a"], tmp_path, tmp_path / "o")
    assert argv[:5] == ["eval", "--model_type", cbc.MODEL_TYPE, "--model", "arch"]
    assert "wds/id_a" in argv and "--no_amp" in argv
    assert argv[argv.index("--dataset_root") + 1].endswith("/{dataset}")
    assert argv[argv.index("--output") + 1].endswith("/o/{dataset}.json")
    assert "--no_amp" not in cbc.clip_benchmark_argv("a", Path("c"), [], tmp_path, tmp_path, amp=True)
    for d in ("base", "arf/seed0", "arf/seed1"):
        (tmp_path / "models" / d).mkdir(parents=True)
        (tmp_path / "models" / d / "model.json").write_text("{}")
    dirs = cbc.expand_model_dirs([tmp_path / "models" / "base", tmp_path / "models" / "arf"])
    assert cbc.model_tags(dirs) == ["base", "arf/seed0", "arf/seed1"]
    assert cbc.transform_text("Compose(\n  <function f at 0x7f00ab>\n)") == "Compose(   <function f> )"


def clip_benchmark_predictions(model, tokenizer, transform, root: Path) -> list[int]:
    """clip_benchmark 1.6.2's zero-shot predictions (fp32), transcribed: its reading, head and logits."""
    classnames = [l.strip() for l in (root / "classnames.txt").read_text().splitlines()]
    templates = [l.strip() for l in (root / "zeroshot_classification_templates.txt").read_text().splitlines()]
    with torch.no_grad():
        weights = []
        for c in classnames:
            emb = F.normalize(model.encode_text(tokenizer([t.format(c=c) for t in templates])), dim=-1).mean(0)
            weights.append(emb / emb.norm())
        classifier = torch.stack(weights, dim=1)
        with tarfile.open(root / "test" / "0.tar") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        images = [transform(Image.open(io.BytesIO(files[k])).convert("RGB")) for k in sorted(files) if k.endswith(".png")]
        logits = 100.0 * F.normalize(model.encode_image(torch.stack(images)), dim=-1) @ classifier
    return logits.argmax(1).tolist()


def test_ours_on_a_tiny_model_predicts_what_clip_benchmark_predicts(cbc, tmp_path):
    """Each set is labelled with clip_benchmark's predictions, so ours scores 100 only if every one of its
    predictions is the same (a random tiny model's accuracy alone would not notice a changed
    normalisation; its predictions do)."""
    from pipeline.core.models import create_model

    name, ckpt = make_tiny_checkpoint(tmp_path)
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    (model_dir / "checkpoint.pt").write_bytes(ckpt.read_bytes())
    (model_dir / "model.json").write_text(json.dumps({"name": name, "checkpoint": "checkpoint.pt"}))
    lm = create_model(f"{name}:{ckpt}")
    eval_root = tmp_path / "eval"
    words = ["red", "green", "blue", "yellow", "purple", "square", "circle", "stripes", "dots", "cat"]
    sets = {"id_words": (words, ["a {c} shape.", "something {c}.", "the colour {c}."], 40),
            "zeroshot_two": (["red", "green"], ["a {c} thing."], 12)}
    for set_name, (classnames, templates, n) in sets.items():
        root = make_cb_set(eval_root / set_name, classnames, templates, n=n)
        preds = clip_benchmark_predictions(lm.model, lm.tokenizer, lm.preprocess, root)
        assert len(set(preds)) > 1
        make_cb_set(root, classnames, templates, n=n, labels=preds)

    threads = torch.get_num_threads()
    ours, entry = cbc.run_ours([model_dir], ["tiny"], eval_root, tmp_path / "work", threads=1)
    assert torch.get_num_threads() == threads and entry
    for set_name, (_, _, n) in sets.items():
        assert ours["tiny"][set_name]["n"] == n
        assert ours["tiny"][set_name]["acc1"] == pytest.approx(100.0)
