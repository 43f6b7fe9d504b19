"""Local dataset layouts (ImageNet and its shifts, ObjectNet, DomainNet, CLIP_benchmark, CSV, folder),
their projections against hand-checked cases, and the import into the benchmark layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_layouts import (
    DOMAINNET_CLASSES,
    FINETUNE_IDX,
    SUBSET_IDX,
    make_all,
    make_domainnet,
    make_objectnet,
)

from pipeline.config import ParamsError
from pipeline.data.layouts import (
    LayoutError,
    imagenet_classnames,
    imagenet_synsets,
    in_val_split,
    read_layout,
)
from pipeline.data.local import LocalDataParams, import_local_data
from pipeline.io.eval_sets import read_eval_set
from pipeline.io.shards import iter_samples, read_shard_info


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("datasets"))


def labels_of(ls) -> list[tuple[str, int]]:
    return [(s.key, s.label) for s in ls.samples()]


def test_packaged_imagenet_metadata_is_aligned():
    syn, names = imagenet_synsets(), imagenet_classnames()
    assert len(syn) == len(names) == 1000
    assert syn[:2] == ["n01440764", "n01443537"] and names[:2] == ["tench", "goldfish"]


def test_imagenet_folders_label_by_synset_index(fx):
    ls = read_layout("finetune", {"layout": "imagenet", "path": "imagenet", "split": "train"}, fx["root"])
    assert ls.classnames == imagenet_classnames()
    got = {y for _, y in labels_of(ls)}
    assert got == set(FINETUNE_IDX) and ls.size == 12 * len(FINETUNE_IDX)
    sketch = read_layout("shift_sketch", {"layout": "imagenet", "path": "imagenet-sketch", "split": "sketch"}, fx["root"])
    assert {y for _, y in labels_of(sketch)} == set(FINETUNE_IDX)
    v2 = read_layout("shift_v2", {"layout": "imagenet_v2", "path": "imagenetv2-matched-frequency-format-val"}, fx["root"])
    assert {y for _, y in labels_of(v2)} == set(FINETUNE_IDX)
    sample = next(v2.samples())
    assert sample.ext == "jpg" and sample.read()[:2] == b"\xff\xd8" and "." not in sample.key


def test_imagenet_subset_projects_onto_its_columns(fx):
    ls = read_layout("shift_r", {"layout": "imagenet_subset", "path": "imagenet-r"}, fx["root"])
    names = imagenet_classnames()
    assert ls.classnames == [names[i] for i in SUBSET_IDX]
    assert ls.projection.map == [[i] for i in SUBSET_IDX] and ls.projection.classnames == names
    # an image of goldfish (label 1 of the 1000) is label 0 of the subset
    assert {(k.split("--")[1], y) for k, y in labels_of(ls)} >= {("n01443537", 0)}


def test_objectnet_mapping_against_hand_checked_case(fx):
    ls = read_layout("shift_objectnet", {"layout": "objectnet", "path": fx["objectnet"]})
    # fixture: 2012 id = label + 1; 'Alarm clock' names the classes with ids 2 and 7 -> labels 1 and 6
    assert ls.classnames == ["alarm clock", "banana"]
    assert ls.projection.map == [[1, 6], [9]]
    assert sorted({y for _, y in labels_of(ls)}) == [0, 1] and ls.size == 6  # bench (unmapped) left out
    import io

    from PIL import Image

    sample = next(ls.samples())
    assert sample.ext == "png" and Image.open(io.BytesIO(sample.read())).size == (20, 20)  # 24 px less 2 a side
    from pipeline.io.eval_sets import EvalSet

    es = EvalSet("o", Path("."), ls.classnames, ["{c}"], torch.zeros(2, 3, 1, 1), torch.tensor([0, 1]),
                 projection=ls.projection.to_json())
    logits = torch.zeros(2, 1000)
    logits[0, 6], logits[0, 9] = 0.9, 0.5   # alarm clock via its second ImageNet class wins
    logits[1, 1], logits[1, 9] = 0.2, 0.7   # banana
    logits[:, 3] = 5.0                      # a class outside every mapping never counts
    assert torch.allclose(es.project(logits), torch.tensor([[0.9, 0.5], [0.2, 0.7]]))


def test_domainnet_reads_official_split_files(fx):
    ls = read_layout("id_test", {"layout": "domainnet", "path": fx["domainnet"], "domain": "real", "split": "test"})
    assert ls.classnames == [c.replace("_", " ") for c in DOMAINNET_CLASSES]
    assert sorted(y for _, y in labels_of(ls)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_domainnet_bad_split_line_names_file_and_line(tmp_path):
    dn = make_domainnet(tmp_path)
    (dn / "sketch_test.txt").write_text("sketch/ant/x.jpg 2\nnot a valid line\n")
    with pytest.raises(LayoutError, match=r"sketch_test.txt:2: expected"):
        read_layout("shift_sketch", {"layout": "domainnet", "path": dn, "domain": "sketch"})


def test_clip_benchmark_wds_export(fx):
    ls = read_layout("zeroshot_flowers", {"layout": "clip_benchmark_wds", "path": fx["wds"]})
    assert ls.classnames == ["flower 0", "flower 1", "flower 2"]
    assert ls.templates == ["a photo of a {c}, a type of flower."]
    got = labels_of(ls)
    assert len(got) == 9 and sorted(y for _, y in got) == [0] * 3 + [1] * 3 + [2] * 3


def test_coop_split_folder_layout(fx):
    ls = read_layout("zeroshot_ucf101", {"layout": "coop_split", "path": fx["coop"], "split_file": "split_zhou_UCF101.json",
                                         "images": "UCF-101-midframes"})
    assert ls.classnames == ["Apply Eye Makeup", "Archery"] and sorted(y for _, y in labels_of(ls)) == [0, 0, 1, 1]
    with pytest.raises(LayoutError, match=r"no 'val2' list"):
        read_layout("z", {"layout": "coop_split", "path": fx["coop"], "split_file": "split_zhou_UCF101.json",
                          "images": "UCF-101-midframes", "split": "val2"})


def test_an_entry_takes_its_templates_from_the_package_that_ships_them(fx):
    """`templates:` in any entry: CLIP_benchmark's per-dataset templates (the JSON its own evaluation
    reads), an open_clip set, or a list; it replaces a set's own (an export's) templates."""
    import json as _json
    from importlib.resources import files

    shipped = _json.loads((files("clip_benchmark.datasets") / "en_zeroshot_classification_templates.json").read_text())
    folder = {"layout": "coop_split", "path": fx["coop"], "split_file": "split_zhou_UCF101.json", "images": "UCF-101-midframes"}
    assert read_layout("zeroshot_ucf101", folder).templates is None  # the preset's, decided by the caller
    for source in ("clip_benchmark:dtd", "clip_benchmark:fgvc_aircraft"):
        ls = read_layout("zeroshot_x", {**folder, "templates": source})
        assert ls.templates == shipped[source.split(":")[1]] and all("{c}" in t for t in ls.templates)
    assert len(read_layout("z", {**folder, "templates": "openai_imagenet"}).templates) == 80
    export = {"layout": "clip_benchmark_wds", "path": "wds_vtab-flowers"}
    assert read_layout("z", {**export, "templates": ["a {c}."]}, fx["root"]).templates == ["a {c}."]
    for bad, msg in (("clip_benchmark:ucf101", "clip_benchmark:<dataset> with a dataset CLIP_benchmark has"),
                     ("openai", "is not openai_imagenet"), (["a photo"], "every template needs {c}")):
        with pytest.raises(ParamsError, match=msg):
            read_layout("zeroshot_x", {**folder, "templates": bad})


def test_fgvc_aircraft_release_layout(fx):
    ls = read_layout("zeroshot_aircraft", {"layout": "fgvc_aircraft", "path": fx["aircraft"]})
    assert ls.classnames == ["707-320", "A320", "Boeing 717"]  # variant names keep their spaces
    assert sorted(y for _, y in labels_of(ls)) == [0, 0, 1, 1, 2, 2]


def test_csv_and_folder_bring_your_own(fx, tmp_path):
    ls = read_layout("finetune", {"layout": "csv", "path": fx["csv"]})
    assert ls.classnames == sorted(imagenet_classnames()[i] for i in FINETUNE_IDX)
    s = next(ls.samples())
    assert s.caption.startswith("a picture of a") and s.read()[:2] == b"\xff\xd8"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimages/0_0.jpg,cat\n")
    with pytest.raises(LayoutError, match=r"bad.csv:2: label 'cat'"):
        read_layout("x", {"layout": "csv", "path": bad, "classnames": ["dog"]})
    with pytest.raises(LayoutError, match=r"image .*0_0.jpg not found"):
        read_layout("x", {"layout": "csv", "path": bad})
    (tmp_path / "f" / "red_car").mkdir(parents=True)
    (tmp_path / "f" / "red_car" / "a.jpg").write_bytes(b"x")
    folder = read_layout("x", {"layout": "folder", "path": tmp_path / "f"})
    assert folder.classnames == ["red car"] and labels_of(folder)[0][1] == 0


def test_missing_folder_and_unknown_key_are_one_line_errors(tmp_path):
    with pytest.raises(LayoutError) as e:
        read_layout("shift_objectnet", {"layout": "objectnet", "path": tmp_path / "objectnet-1.0"})
    msg = str(e.value)
    assert "objectnet-1.0: not found" in msg and "mappings" in msg and "\n" not in msg
    with pytest.raises(LayoutError, match=r"x.domian: unknown key for layout domainnet"):
        read_layout("x", {"layout": "domainnet", "path": tmp_path, "domian": "real"})
    with pytest.raises(LayoutError, match=r"x.layout: 'imagenet-a' is not one of"):
        read_layout("x", {"layout": "imagenet-a", "path": tmp_path})
    make_objectnet(tmp_path)
    (tmp_path / "objectnet-1.0" / "mappings" / "imagenet_to_label_2012_v2").unlink()
    with pytest.raises(LayoutError, match=r"imagenet_to_label_2012_v2: not found; expected ObjectNet"):
        read_layout("o", {"layout": "objectnet", "path": tmp_path / "objectnet-1.0"})


def test_val_split_draw_is_deterministic_and_near_the_fraction():
    keys = [f"k{i}" for i in range(4000)]
    draw = [in_val_split(k, 0.1, 0) for k in keys]
    assert draw == [in_val_split(k, 0.1, 0) for k in keys]
    assert 0.08 < sum(draw) / len(draw) < 0.12
    assert draw != [in_val_split(k, 0.1, 1) for k in keys]


def local_params(fx, **kw) -> LocalDataParams:
    entries = dict(
        root=str(fx["root"]),
        finetune={"layout": "imagenet", "path": "imagenet", "split": "train"},
        val_fraction=0.25,
        eval={
            "id_test": {"layout": "imagenet", "path": "imagenet", "split": "val"},
            "shift_imagenet_r": {"layout": "imagenet_subset", "path": "imagenet-r"},
            "shift_objectnet": {"layout": "objectnet", "path": "objectnet-1.0"},
            "zeroshot_flowers": {"layout": "clip_benchmark_wds", "path": "wds_vtab-flowers"},
        },
        corpus="cc3m", heldout_pairs=5, templates="simple_imagenet",
    )
    entries.update(kw)
    return LocalDataParams(**entries)


def test_import_writes_the_benchmark_layout(fx, tmp_path):
    counts = import_local_data(tmp_path, local_params(fx))
    bench = tmp_path / "benchmark"
    n_train, n_val = counts["benchmark"]["finetune"], counts["benchmark"]["val"]
    assert n_train + n_val == 12 * len(FINETUNE_IDX) and n_val > 0
    keys = lambda d: {s["__key__"] for s in iter_samples(d)}  # noqa: E731
    assert not keys(bench / "finetune") & keys(bench / "val")
    classes = json.loads((bench / "classes.json").read_text())
    assert classes["seen"] == imagenet_classnames() and len(classes["templates"]) == 7 and "{c}" in classes["templates"][0]
    assert json.loads((bench / "eval/shift_objectnet/projection.json").read_text())["map"] == [[1, 6], [9]]
    assert not (bench / "eval/id_test/projection.json").exists()
    es = read_eval_set(bench / "eval" / "shift_imagenet_r", lambda im: torch.zeros(3, 2, 2))
    assert es.projection["map"] == [[i] for i in SUBSET_IDX] and len(es.labels) == 12
    zs = (bench / "eval/zeroshot_flowers/zeroshot_classification_templates.txt").read_text()
    assert zs == "a photo of a {c}, a type of flower.\n"  # a set's own templates win
    # the corpus is a manifest of the img2dataset shards where they are, less the last (held out)
    manifest = read_shard_info(tmp_path / "corpus")
    assert manifest.num_samples == 40 and all(Path(u).is_absolute() for u in manifest.urls)
    assert sum(1 for _ in iter_samples(tmp_path / "corpus")) == 40
    held = list(iter_samples(tmp_path / "corpus_heldout"))
    assert len(held) == 5 and all(s["__key__"].startswith("00002") for s in held)


def test_import_refuses_shift_sets_of_other_classes_and_missing_parts(fx, tmp_path):
    p = local_params(fx, eval={"shift_flowers": {"layout": "clip_benchmark_wds", "path": "wds_vtab-flowers"}})
    with pytest.raises(LayoutError, match="name it zeroshot_"):
        import_local_data(tmp_path, p)
    with pytest.raises(LayoutError, match=r"nowhere: not found; build_data.local.corpus expects an img2dataset"):
        import_local_data(tmp_path, local_params(fx, corpus="nowhere"))
    with pytest.raises(ParamsError, match="build_data.local.finetune: missing"):
        import_local_data(tmp_path, local_params(fx, finetune={}))
    assert not (tmp_path / "benchmark").exists()


def test_large_eval_sets_stream_and_score_the_same(fx, tmp_path, monkeypatch):
    from helpers import make_tiny_checkpoint

    import pipeline.io.eval_sets as ev
    from pipeline.core.models import create_model
    from pipeline.core.scoring import image_features

    import_local_data(tmp_path, local_params(fx))
    name, ckpt = make_tiny_checkpoint(tmp_path)
    lm = create_model(f"{name}:{ckpt}")
    root = tmp_path / "benchmark/eval/id_test"
    cached = read_eval_set(root, lm.preprocess)
    monkeypatch.setattr(ev, "MAX_CACHED_BYTES", 0)
    streamed = read_eval_set(root, lm.preprocess)
    assert isinstance(cached.images, torch.Tensor) and isinstance(streamed.images, ev.ImageStream)
    assert torch.equal(cached.labels, streamed.labels) and len(streamed.images) == len(cached.labels)
    a = image_features(lm.model, cached.images, batch_size=5)
    b = image_features(lm.model, ev.ImageStream(streamed.images.shards, streamed.images.keys, lm.preprocess, 5))
    assert torch.allclose(a, b, atol=1e-6)


def test_the_pixel_cache_budget_is_shared_by_all_eval_sets(fx, tmp_path):
    """evaluate.cache_gb is one budget per process: sets are kept in name order while it lasts."""
    from helpers import make_tiny_checkpoint

    import pipeline.io.eval_sets as ev
    from pipeline.core.models import create_model

    import_local_data(tmp_path, local_params(fx))
    name, ckpt = make_tiny_checkpoint(tmp_path)
    lm = create_model(f"{name}:{ckpt}")
    root = tmp_path / "benchmark/eval"
    sizes = [es.cached_bytes for es in ev.read_eval_sets(root, lm.preprocess, cache_bytes=10 ** 12)]
    assert len(sizes) == 4 and all(sizes)
    budget = sizes[0] + sizes[1] - 1
    sets = ev.read_eval_sets(root, lm.preprocess, cache_bytes=budget)
    assert isinstance(sets[0].images, torch.Tensor) and isinstance(sets[1].images, ev.ImageStream)
    assert sum(es.cached_bytes for es in sets) <= budget
    assert all(isinstance(es.images, ev.ImageStream) for es in ev.read_eval_sets(root, lm.preprocess, cache_bytes=0))


def test_corpus_shards_count_samples_without_stats_files(tmp_path):
    from fixtures_layouts import make_img2dataset_corpus

    from pipeline.data.local import corpus_shards

    corpus = make_img2dataset_corpus(tmp_path, shards=2, per_shard=7)
    with_stats = corpus_shards(corpus)
    for f in corpus.glob("*_stats.json"):
        f.unlink()
    assert corpus_shards(corpus) == with_stats and sorted(with_stats.values()) == [7, 7]  # jpg + txt + json = 1 sample
