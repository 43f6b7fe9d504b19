"""The README's "Your own data" example, run as written (`dvc repro` included) on a tiny folder tree, and
the lines that name the key to change when a local import falls short (val split, held-out pairs, no
corpus)."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures_layouts import jpeg, make_img2dataset_corpus
from fixtures_project import new_project, stages_run

from pipeline.cli import run
from pipeline.data.local import LocalDataParams, import_local_data
from pipeline.io.eval_sets import read_heldout_pairs
from pipeline.io.shards import iter_samples, read_shard_info
from pipeline.stages.align import AlignParams, align_base
from pipeline.stages.embed_corpus import embed_corpus

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DVC_YAML = README.with_name("dvc.yaml")
CLASSES = ["barn_owl", "red_fox", "tree_frog"]  # folder names; the class names read them with spaces
TRAIN_PER_CLASS, EVAL_PER_CLASS = 10, 2
CORPUS_SHARDS, PER_SHARD = 3, 20


def readme_block(marker: str, lang: str) -> str:
    """The fenced block right after `<!-- own-data MARKER ...-->` in the README (exactly one)."""
    blocks = re.findall(rf"<!-- own-data {marker}\b[^>]*-->\n```{lang}\n(.*?)```\n", README.read_text(), re.DOTALL)
    assert len(blocks) == 1, f"README: {len(blocks)} blocks marked own-data {marker}"
    return blocks[0]


def make_folder(path: Path, per_class: int) -> None:
    for y, c in enumerate(CLASSES):
        (path / c).mkdir(parents=True)
        for j in range(per_class):
            (path / c / f"{c}_{j:03d}.jpg").write_bytes(jpeg(y, n_labels=len(CLASSES), seed=j))


def arf(args: list[str]) -> int:
    """The `arf` command (pipeline.cli.run; the console script, pipeline.cli:main, adds a fast exit), in this process."""
    with pytest.raises(SystemExit) as e:
        run(args)
    return e.value.code


def test_readme_params_are_complete_for_dvc():
    """`dvc repro` reads params.yaml: the README's file must hold every key dvc.yaml tracks."""
    params = yaml.safe_load(readme_block("params", "yaml"))
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    tracked = set()
    for stage in stages.values():
        for key in stage.get("params", []):
            methods = params["report"]["methods"] if "${item.method}" in key else [None]
            tracked |= {key.replace("${item.method}", m) if m else key for m in methods}
    assert tracked == {"build_data", "align", "embed_corpus", "caption", "retrieve", "pack", "train", "evaluate",
                       "zeroshot", "report", "methods.ft", "methods.flyp", "methods.arf"}
    assert sorted(k for k in tracked if not _has(params, k)) == []


def _has(params: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(params, dict) or part not in params:
            return False
        params = params[part]
    return True


def test_readme_own_data_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's params file and its three commands, in a project as a clone holds it, on a tiny
    folder tree under ~: check-params and build_data in this process (their output read closely), then
    `cp my.yaml params.yaml && dvc repro` through the shell, as typed: every stage runs, every method
    gets its row."""
    home, project = tmp_path / "home", tmp_path / "project"
    monkeypatch.setenv("HOME", str(home))  # the README's root is under ~
    project.mkdir()
    env = new_project(project, (REPO / "params.yaml").read_text(), HOME=str(home))
    monkeypatch.chdir(project)
    text = readme_block("params", "yaml")
    (project / "my.yaml").write_text(text)
    local = yaml.safe_load(text)["build_data"]["local"]
    root = Path(local["root"]).expanduser()
    assert root == home / "arf-data"
    assert local["finetune"]["layout"] == "folder" and all(e["layout"] == "folder" for e in local["eval"].values())
    make_folder(root / local["finetune"]["path"], TRAIN_PER_CLASS)
    for entry in local["eval"].values():
        make_folder(root / entry["path"], EVAL_PER_CLASS)
    shutil.move(make_img2dataset_corpus(tmp_path, shards=CORPUS_SHARDS, per_shard=PER_SHARD), root / local["corpus"])

    commands = [shlex.split(line.partition("#")[0]) for line in readme_block("commands", "bash").splitlines()]
    assert commands[2] == ["cp", "my.yaml", "params.yaml", "&&", "dvc", "repro"]  # run last, through the shell
    assert commands[0] == ["arf", "check-params", "--params", "my.yaml"]
    capsys.readouterr()
    assert arf(commands[0][1:]) == 0
    assert capsys.readouterr().out.startswith("my.yaml: ok (align, build_data, caption, ")
    assert commands[1][:2] == ["arf", "build_data"]
    assert arf(commands[1][1:]) == 0
    out = capsys.readouterr().out
    data = project / commands[1][commands[1].index("--out") + 1]

    names = [c.replace("_", " ") for c in CLASSES]
    bench = data / "benchmark"
    assert json.loads((bench / "classes.json").read_text())["seen"] == names
    train, val = list(iter_samples(bench / "finetune")), list(iter_samples(bench / "val"))
    assert sorted({json.loads(s["json"])["classname"] for s in train + val}) == names
    assert (read_shard_info(bench / "finetune").num_samples, read_shard_info(bench / "val").num_samples) == (29, 1)
    assert sorted(p.name for p in (bench / "eval").iterdir()) == ["id_test", "shift_sketch"]
    for name in local["eval"]:
        assert (bench / "eval" / name / "classnames.txt").read_text().splitlines() == names
        assert read_shard_info(bench / "eval" / name / "test").num_samples == len(CLASSES) * EVAL_PER_CLASS
    corpus = root / local["corpus"]
    assert json.loads((data / "corpus/sizes.json").read_text()) == {
        str(corpus / "00000.tar"): PER_SHARD, str(corpus / "00001.tar"): PER_SHARD}
    held = list(iter_samples(data / "corpus_heldout"))
    assert len(held) == PER_SHARD and {s["__key__"][:5] for s in held} == {"00002"}

    shortfall = (f"build_data.local.heldout_pairs: 500 asked, {PER_SHARD} held out: the last corpus shard "
                 "(00002.tar), where they come from, holds no more")
    no_val = "build_data.local.val_fraction 0.1: 2 of 3 classes have no val image (barn owl, red fox)"
    counts = json.loads((bench / "build_data.json").read_text())
    assert {k: v for k, v in counts.items() if k != "seconds"} == {
        "source": "local",
        "corpus": {"shards": 2, "pairs": 2 * PER_SHARD, "folder": str(corpus)},
        "corpus_heldout": PER_SHARD,
        "benchmark": {"finetune": 29, "val": 1, "id_test": 6, "shift_sketch": 6},
        "skipped": 0,
        "warnings": [shortfall, no_val],  # 10 images a class at 10%: one val image in all
    }
    assert out.startswith("[build_data] ") and json.dumps([shortfall, no_val]) in out

    line = readme_block("commands", "bash").splitlines()[2].partition("#")[0]
    repro = subprocess.run(["bash", "-c", line], cwd=project, env=env, capture_output=True, text=True)
    assert repro.returncode == 0, f"{line}:\n{repro.stdout[-3000:]}\n{repro.stderr[-3000:]}"
    methods = yaml.safe_load(text)["report"]["methods"]
    assert stages_run(repro.stdout) == {
        "build_data", "align", "embed_corpus", "caption", "embed_prompts", "retrieve", "pack", "gallery", "zeroshot",
        "report", *(f"{stage}@{m}-0" for stage in ("train", "evaluate") for m in methods)}
    table = (project / "results/summary.md").read_text()
    header = next(l for l in table.splitlines() if l.startswith("| method"))
    assert header == "| method | α | ID | shift sketch | shift avg | corpus i2t R@1 | corpus t2i R@1 |"  # no zeroshot_ sets
    assert [l.split(" | ")[0] for l in table.splitlines() if l.startswith("| ") and l != header] == [
        "| zeroshot", *(f"| {m}{wise}" for m in methods for wise in ("", " + WiSE-FT"))]
    assert set(json.loads((project / "results/metrics.json").read_text())) == {"zeroshot", *methods}


def small_set(tmp_path: Path, per_class: int = 6, corpus: bool = True, **kw) -> LocalDataParams:
    make_folder(tmp_path / "mine" / "train", per_class)
    if corpus:
        make_img2dataset_corpus(tmp_path / "mine", shards=2, per_shard=4)
    entries = {"root": str(tmp_path / "mine"), "finetune": {"layout": "folder", "path": "train"},
               "corpus": "cc3m" if corpus else None, "heldout_pairs": 3}
    return LocalDataParams(**{**entries, **kw})


def test_a_class_left_without_val_or_train_images_is_reported(tmp_path, caplog):
    """A class whose images all fall on one side of the val split is named, not passed over."""
    params = small_set(tmp_path, per_class=1, val_fraction=0.5)  # one image a class: each lands on one side
    counts = import_local_data(tmp_path / "data", params)
    no_val = [w for w in counts["warnings"] if "no val image" in w]
    no_train = [w for w in counts["warnings"] if "no train image" in w]
    assert counts["benchmark"]["finetune"] + counts["benchmark"]["val"] == 3
    n_val, n_train = counts["benchmark"]["val"], counts["benchmark"]["finetune"]
    assert no_val == [f"build_data.local.val_fraction 0.5: {3 - n_val} of 3 classes have no val image "
                      f"({', '.join(c.replace('_', ' ') for c in CLASSES if _side(tmp_path, c) == 'train')})"]
    assert no_train == [f"build_data.local.val_fraction 0.5: {3 - n_train} of 3 classes have no train image "
                        f"({', '.join(c.replace('_', ' ') for c in CLASSES if _side(tmp_path, c) == 'val')})"]
    assert [r.getMessage() for r in caplog.records if "classes have no" in r.getMessage()] == no_train + no_val


def _side(tmp_path: Path, cls: str) -> str:
    """Which side of the split the one image of a class landed on, read from the written shards."""
    val = {json.loads(s["json"])["classname"] for s in iter_samples(tmp_path / "data/benchmark/val")}
    return "val" if cls.replace("_", " ") in val else "train"


def test_empty_val_split_names_val_fraction_and_the_counts(tmp_path):
    params = small_set(tmp_path, val_fraction=0.02)  # 18 images: none drawn at 2%
    with pytest.raises(ValueError) as e:
        import_local_data(tmp_path / "data", params)
    assert str(e.value) == (f"{tmp_path / 'mine' / 'train'}: the finetune set gave 18 train and 0 val samples with "
                            "build_data.local.val_fraction 0.02; change it so both are non-empty")


def test_heldout_shortfall_is_reported_with_the_count_obtained(tmp_path, caplog):
    params = small_set(tmp_path, val_fraction=0.5, heldout_pairs=10)
    counts = import_local_data(tmp_path / "data", params)
    line = ("build_data.local.heldout_pairs: 10 asked, 4 held out: the last corpus shard (00001.tar), "
            "where they come from, holds no more")
    assert counts["corpus_heldout"] == 4 and counts["warnings"] == [line]
    assert json.loads((tmp_path / "data/benchmark/build_data.json").read_text())["warnings"] == [line]
    assert read_shard_info(tmp_path / "data/corpus_heldout").num_samples == 4
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [line]


def test_heldout_pairs_need_two_shards_or_heldout_pairs_zero(tmp_path):
    params = small_set(tmp_path, val_fraction=0.5)
    for tar in (tmp_path / "mine/cc3m").glob("00001*"):
        tar.unlink()
    with pytest.raises(ValueError) as e:
        import_local_data(tmp_path / "data", params)
    assert str(e.value) == (f"{tmp_path / 'mine/cc3m'}: one shard; held-out pairs come from the last shard, so the "
                            "corpus needs two or more (or set build_data.local.heldout_pairs: 0)")


def test_no_corpus_builds_the_benchmark_and_the_stages_needing_one_name_the_key(tmp_path, caplog):
    counts = import_local_data(tmp_path / "data", small_set(tmp_path, corpus=False, val_fraction=0.5))
    warning = ("build_data.local.corpus: null; the benchmark is built, but align (on a bare model), embed_corpus "
               "and the stages after it need a corpus")
    assert counts["warnings"] == [warning] and [r.getMessage() for r in caplog.records] == [warning]
    assert counts["corpus"] == {"shards": 0, "pairs": 0, "folder": None} and counts["corpus_heldout"] == 0
    assert counts["benchmark"] == {"finetune": 11, "val": 7}
    corpus, heldout = tmp_path / "data/corpus", tmp_path / "data/corpus_heldout"
    fix = "set build_data.local.corpus to an img2dataset output folder ({00000..}.tar with .jpg/.txt)"
    with pytest.raises(ValueError) as e:
        align_base(corpus, tmp_path / "base", AlignParams())
    assert str(e.value) == (f"{corpus}: no corpus pairs, which align (a bare align.model is aligned on it; a "
                            f"pretrained one needs none) needs: {fix}")
    with pytest.raises(ValueError) as e:
        embed_corpus(corpus, "unused", tmp_path / "emb")  # stops before it loads a model
    assert str(e.value) == (f"{corpus.resolve()}: no corpus pairs, which embed_corpus (ARF's anchors are retrieved "
                            f"from it) needs: {fix}")
    with pytest.raises(ValueError) as e:
        read_heldout_pairs(heldout, preprocess=None)
    assert str(e.value) == (f"{heldout}: no corpus pairs, which the retention metric (held-out pairs, "
                            f"build_data.local.heldout_pairs > 0) needs: {fix}")
    assert not (tmp_path / "base").exists() and not (tmp_path / "emb").exists()


@pytest.mark.parametrize("check_images", [True, False])
def test_bad_image_files_are_skipped_at_import_with_the_counts_later_stages_see(tmp_path, check_images):
    """Corrupt, truncated, empty and non-image files in a folder set: skipped and counted at import with
    their reasons, so the shards hold only what decodes (reading them skips nothing). With check_images
    false they are copied as they are, and the reader skips them instead (the counts then differ)."""
    from pipeline.io.shards import SkipCounter, iter_shard_images

    params = small_set(tmp_path, corpus=False, val_fraction=0.3, check_images=check_images)
    train = tmp_path / "mine" / "train"
    good = jpeg(0, n_labels=3, seed=99)
    bad = {"corrupt.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 64, "empty.png": b"", "notes.jpg": b"just text\n",
           "truncated.jpg": good[: len(good) // 2]}
    for i, (name, data) in enumerate(bad.items()):
        (train / CLASSES[i % 3] / name).write_bytes(data)
    counts = import_local_data(tmp_path / "data", params)
    stored = counts["benchmark"]["finetune"] + counts["benchmark"]["val"]
    bench = tmp_path / "data" / "benchmark"
    reader = SkipCounter()
    read = [k for split in ("finetune", "val") for k, _, _ in iter_shard_images(bench / split, reader)]
    if check_images:
        assert (counts["skipped"], stored, reader.skipped, len(read)) == (4, 18, 0, 18)
        assert len(counts["skipped_examples"]) == 4
        assert all("undecodable image" in e and "(finetune)" in e for e in counts["skipped_examples"])
    else:
        assert (counts["skipped"], stored, reader.skipped, len(read)) == (0, 22, 4, 18)
