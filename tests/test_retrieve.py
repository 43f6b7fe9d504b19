"""The retrieve stage: clip-retrieval inference, autofaiss indices, per-class anchor retrieval."""
from __future__ import annotations

import json
import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    make_corpus_shards,
    make_prompts_npz,
    make_tiny_checkpoint,
    write_prompts_npz,
)

import pipeline.stages.embed_corpus as ec
from pipeline.config import ParamsError
from pipeline.io.clip_retrieval import ALL_CLIP_PREFIX, all_clip_uses_our_models
from pipeline.io.embeddings import (
    TARGETS,
    iter_metadata_column,
    load_embeddings,
    load_metadata,
    load_prompts,
    metadata_row_counts,
    metadata_rows,
)
from pipeline.io.records import anchor_stats, read_anchors, write_anchors
from pipeline.io.shards import decode_image
from pipeline.stages import load_params
from pipeline.stages.embed_corpus import EMBED_REPORT, embed_corpus
from pipeline.stages.retrieve import (
    INDEX_REPORT,
    build_index,
    format_anchor_report,
    retrieve_anchors,
)

N_SAMPLES = 20
CORRUPT = 3
RGBA = 5
FP16_ATOL = 2e-3
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny checkpoint, a 20-sample corpus (one corrupt PNG, one transparent), embedded and indexed."""
    tmp = tmp_path_factory.mktemp("retrieve")
    name, ckpt = make_tiny_checkpoint(tmp)
    spec = f"{name}:{ckpt}"
    corpus, samples = make_corpus_shards(tmp / "corpus", N_SAMPLES, corrupt=(CORRUPT,), rgba=(RGBA,))
    stats = {}
    real_rate = ec._steady_rate

    def keep_stats(stats_dir):  # clip-retrieval's timing files, read before the stage removes them
        stats.update({f.name: json.loads(f.read_text()) for f in stats_dir.iterdir() if f.suffix == ".json"})
        return real_rate(stats_dir)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ec, "_steady_rate", keep_stats)
        report = embed_corpus(corpus, spec, tmp / "emb", batch_size=8)
    index_report = build_index(tmp / "emb", tmp / "index")
    return dict(tmp=tmp, spec=spec, corpus=corpus, samples=samples, report=report, index_report=index_report,
                emb=tmp / "emb", index=tmp / "index", stats=stats)


def _encode_images(spec, images, mean_std=None):
    from open_clip.transform import image_transform

    from pipeline.core.models import create_model

    loaded = create_model(spec)
    loaded.model.eval()
    preprocess = loaded.preprocess
    if mean_std is not None:
        preprocess = image_transform(32, is_train=False, mean=mean_std[0], std=mean_std[1])
    with torch.no_grad():
        x = torch.stack([preprocess(im) for im in images])
        return torch.nn.functional.normalize(loaded.model.encode_image(x).float(), dim=-1).numpy()


# ------------------------------------------------------------------------------------ embed_corpus
def test_embed_corpus_layout_and_bad_sample_report(built):
    emb, report, samples = built["emb"], built["report"], built["samples"]
    assert (emb / "img_emb" / "img_emb_0.npy").is_file()
    assert (emb / "text_emb" / "text_emb_0.npy").is_file()
    assert (emb / "metadata" / "metadata_0.parquet").is_file()
    img = np.load(emb / "img_emb" / "img_emb_0.npy")
    txt = np.load(emb / "text_emb" / "text_emb_0.npy")
    meta = load_metadata(emb)
    assert img.dtype == np.float16 and img.shape == (N_SAMPLES - 1, 16) and txt.shape == img.shape
    good = [s for s in samples if not s.corrupt]
    assert list(meta["image_path"]) == [s.key for s in good]  # row order = shard order, corrupt one gone
    assert list(meta["caption"]) == [s.caption for s in good]
    for col in ("source", "licence", "style", "color"):  # the sample JSON, flattened into columns
        assert list(meta[col]) == [s.meta[col] for s in good]
    # the corrupt PNG is skipped, counted and named, not fatal
    assert report["samples_expected"] == N_SAMPLES and report["samples_embedded"] == N_SAMPLES - 1
    assert report["skipped"] == 1
    assert report["skipped_samples"] == [{"key": samples[CORRUPT].key,
                                          "reason": report["skipped_samples"][0]["reason"]}]
    assert "undecodable image" in report["skipped_samples"][0]["reason"]
    assert json.loads((emb / EMBED_REPORT).read_text())["skipped"] == 1
    # the steady rate: clip-retrieval's own counts over its read + inference time, all partitions
    assert sorted(built["stats"]) == ["0.json"]  # one partition
    (stats,) = built["stats"].values()
    assert stats["sample_count"] == N_SAMPLES - 1
    busy = stats["read_duration"] + stats["inference_duration"]
    assert busy > 0 and report["steady_samples_per_s"] == round((N_SAMPLES - 1) / busy, 2)
    written = json.loads((emb / EMBED_REPORT).read_text())  # no timings in the DVC output
    assert not (emb / "stats").exists() and "seconds" not in written and "steady_samples_per_s" not in written
    assert not list(emb.parent.glob(".tmp-*"))


def test_embed_corpus_matches_our_model(built):
    """clip-retrieval's embeddings equal create_model(...).encode_image on our decoded images (fp16 tol.)."""
    emb, samples, spec = built["emb"], built["samples"], built["spec"]
    good = [s for s in samples if not s.corrupt]
    images = [decode_image(s.png, s.key) for s in good]
    ours = _encode_images(spec, images)
    theirs = np.load(emb / "img_emb" / "img_emb_0.npy").astype(np.float32)
    np.testing.assert_allclose(theirs, ours, atol=FP16_ATOL)
    # the comparison can tell preprocessing apart: OpenAI's mean/std (what all_clip's own open_clip loader
    # would use) and dropping alpha instead of compositing on white both give different embeddings
    openai = _encode_images(spec, images, mean_std=((0.48145466, 0.4578275, 0.40821073),
                                                    (0.26862954, 0.26130258, 0.27577711)))
    assert np.abs(openai - theirs).max() > 20 * FP16_ATOL
    i_rgba = [s.key for s in good].index(samples[RGBA].key)
    import io

    from PIL import Image

    dropped_alpha = _encode_images(spec, [Image.open(io.BytesIO(samples[RGBA].png)).convert("RGB")])
    assert np.abs(dropped_alpha[0] - theirs[i_rgba]).max() > 20 * FP16_ATOL

    from pipeline.core.models import create_model

    loaded = create_model(spec)
    loaded.model.eval()
    with torch.no_grad():
        t = loaded.model.encode_text(loaded.tokenizer([s.caption for s in good])).float()
    t = torch.nn.functional.normalize(t, dim=-1).numpy()
    np.testing.assert_allclose(np.load(emb / "text_emb" / "text_emb_0.npy").astype(np.float32), t, atol=FP16_ATOL)


def test_all_clip_hook_uses_our_factory(built):
    """The loader clip-retrieval gets: eval mode, our mean/std; the registry is restored afterwards."""
    import all_clip.main as ac

    before = list(ac._CLIP_REGISTRY)
    with all_clip_uses_our_models():
        assert list(ac._CLIP_REGISTRY)[0] == ALL_CLIP_PREFIX
        model, preprocess, tokenizer = ac.load_clip_without_warmup(
            ALL_CLIP_PREFIX + built["spec"], False, "cpu", None)
    assert list(ac._CLIP_REGISTRY) == before
    assert not model.inner_model.training
    norm = preprocess.preprocess.transforms[-1]
    assert list(norm.mean) == [0.5, 0.5, 0.5] and list(norm.std) == [0.5, 0.5, 0.5]
    assert tokenizer(["a red square"]).shape == (1, 16)


def test_embed_corpus_leaves_no_partial_output(built, monkeypatch):
    tmp = built["tmp"]
    out = tmp / "emb_fail"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    children = set(multiprocessing.active_children())
    # clip-retrieval's stats loggers run as threads here (pipeline.io.clip_retrieval.stats_loggers_in_threads):
    # a spawned Python process re-imports the clip_retrieval package, seconds per partition
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start",
                        lambda self: pytest.fail("embed_corpus spawned a process"))

    # 1. the model cannot be loaded (fails inside clip-retrieval, after its stats loggers started)
    from pipeline.core.models import ModelNotAvailable

    with pytest.raises(ModelNotAvailable):
        embed_corpus(built["corpus"], f"tiny-clip:{tmp / 'missing.pt'}", out, batch_size=8)
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert not list(tmp.glob(".tmp-emb_fail-*"))
    assert set(multiprocessing.active_children()) <= children
    assert [t.name for t in threading.enumerate() if t.name.startswith("clip-retrieval")] == []  # ended, not left waiting

    # 2. a failure after clip-retrieval has written its files
    def boom(*a, **k):
        raise RuntimeError("simulated failure after inference")

    import pipeline.stages.embed_corpus as stage

    monkeypatch.setattr(stage, "metadata_row_counts", boom)
    with pytest.raises(RuntimeError, match="simulated failure"):
        embed_corpus(built["corpus"], built["spec"], out, batch_size=8)
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert not list(tmp.glob(".tmp-emb_fail-*"))


def test_metadata_is_read_by_partition_and_row(built):
    """Three partitions (one per shard): row counts from the footers, a column partition by partition,
    and given rows across partitions equal the whole table's; a column a partition lacks reads as ""."""
    out = built["tmp"] / "emb_3parts"
    report = embed_corpus(built["corpus"], built["spec"], out, batch_size=8, partitions=3)
    assert report["partitions"] == 3 and report["skipped"] == 1
    whole = load_metadata(out)
    counts = metadata_row_counts(out)
    assert len(counts) == 3 and sum(counts) == len(whole) == N_SAMPLES - 1
    assert np.concatenate(list(iter_metadata_column(out, "image_path"))).tolist() == list(whole["image_path"])
    rows = [len(whole) - 1, 0, counts[0], 3]  # unordered, across all three partitions
    got = metadata_rows(out, rows, ["image_path", "caption", "no_such_column"])
    assert got["image_path"] == [whole["image_path"][r] for r in rows]
    assert got["caption"] == [whole["caption"][r] for r in rows] and got["no_such_column"] == [""] * 4


def test_embed_corpus_pyspark_local_mode_matches_sequential(built):
    """clip-retrieval's pyspark distribution (Spark local[2], Java): two tasks in fresh Python workers that
    build our model through the loader the pickled spec installs, and the same embeddings as in-process."""
    tmp = built["tmp"]
    out = tmp / "emb_spark"
    report = embed_corpus(built["corpus"], built["spec"], out, batch_size=8, distribution="pyspark",
                                   spark_master="local[2]")
    assert report["distribution"] == "pyspark on local[2]"
    assert report["partitions"] == 2  # one per Spark core (3 shards)
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy"]
    for k in ("samples_embedded", "skipped", "skipped_samples", "dim"):
        assert report[k] == built["report"][k], k
    seq_meta, spark_meta = load_metadata(built["emb"]), load_metadata(out)
    row = {key: i for i, key in enumerate(seq_meta["image_path"])}
    order = [row[key] for key in spark_meta["image_path"]]
    assert sorted(order) == list(range(len(seq_meta)))
    assert list(spark_meta["caption"]) == list(seq_meta["caption"].iloc[order])
    for target in TARGETS:  # identical, not merely close: the same model on the same images
        np.testing.assert_array_equal(load_embeddings(out, target),
                                      load_embeddings(built["emb"], target)[order])


def test_embed_corpus_pyspark_failure_leaves_no_output(built):
    tmp = built["tmp"]
    out = tmp / "emb_spark_fail"
    with pytest.raises(RuntimeError, match="missing.pt"):
        embed_corpus(built["corpus"], f"tiny-clip:{tmp / 'missing.pt'}", out, batch_size=8,
                              distribution="pyspark", spark_master="local[2]")
    assert not out.exists() and not list(tmp.glob(".tmp-emb_spark_fail-*"))


def test_embed_corpus_pyspark_without_java_is_a_one_line_error(built, tmp_path):
    import subprocess
    import sys

    code = ("from pipeline.stages import embed_corpus as retrieve\n"
            f"retrieve.embed_corpus({str(built['corpus'])!r}, {built['spec']!r}, {str(tmp_path / 'out')!r}, "
            "distribution='pyspark', spark_master='local[1]')\n")
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "no-java"), ARF_MODEL_CONFIGS=str(ROOT / "tests" / "model_configs"))
    r = subprocess.run([sys.executable, "-c", "if __name__ == '__main__':\n" + "".join(
        "    " + ln + "\n" for ln in code.splitlines())], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "RuntimeError: embed_corpus.distribution: pyspark could not start Spark on 'local[1]' (Java 17+" in r.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- build_index
def test_build_index_files_and_flat_below(built):
    import faiss
    import pandas as pd

    idx, rep = built["index"], built["index_report"]
    for target in ("image", "text"):
        index = faiss.read_index(str(idx / f"{target}.index"))
        assert index.ntotal == N_SAMPLES - 1 and index.d == 16
        assert isinstance(faiss.downcast_index(index), faiss.IndexFlat)
        assert index.metric_type == faiss.METRIC_INNER_PRODUCT
        assert rep[target]["index_key"] == "Flat" and "flat_below" in rep[target]["chosen_by"]
        infos = json.loads((idx / f"{target}.json").read_text())
        assert infos["index_path"] == f"{target}.index" and not [k for k in infos if "speed" in k]
        assert "seconds" not in rep[target]  # no timings in a tracked output: its hash is its inputs'

    pd.testing.assert_frame_equal(pd.read_parquet(idx / "metadata" / "metadata_0.parquet"),
                                  pd.read_parquet(built["emb"] / "metadata" / "metadata_0.parquet"))
    assert json.loads((idx / INDEX_REPORT).read_text())["image"]["index_key"] == "Flat"


def test_the_index_folder_is_the_same_bytes_when_built_again(built, tmp_path):
    """What DVC hashes is a function of the inputs: no timings, no absolute paths (dvc repro twice, or
    two clones sharing a remote, agree on data/corpus_index)."""
    again = tmp_path / "index"
    build_index(built["emb"], again)
    files = sorted(p.relative_to(built["index"]) for p in built["index"].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((built["index"] / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_build_index_key_param_overrides(built):
    import faiss

    out = built["tmp"] / "index_hnsw"
    rep = build_index(built["emb"], out, index_key="HNSW8")
    assert rep["image"]["index_key"] == "HNSW8" and rep["image"]["chosen_by"] == "index_key param"
    assert isinstance(faiss.downcast_index(faiss.read_index(str(out / "image.index"))), faiss.IndexHNSW)


# ------------------------------------------------------------------------------------ retrieval
@pytest.fixture(scope="module")
def prompts(built):
    classnames = ["red", "green", "blue", "yellow"]
    return make_prompts_npz(built["tmp"] / "seen.npz", built["spec"], classnames)


@pytest.mark.parametrize("target", ["image", "text"])
def test_retrieve_matches_brute_force(built, prompts, target):
    k = 4
    records = retrieve_anchors(built["index"], prompts, k, target=target, dedup=False)
    emb = load_embeddings(built["emb"], target)
    keys = list(load_metadata(built["emb"])["image_path"])
    q, classnames = load_prompts(prompts)
    scores = q @ emb.T
    for c, name in enumerate(classnames):
        got = [r for r in records if r["class"] == name]
        order = np.argsort(-scores[c], kind="stable")[:k]
        assert [r["key"] for r in got] == [keys[i] for i in order]
        np.testing.assert_allclose([r["score"] for r in got], scores[c, order], atol=1e-5)
        assert [r["rank"] for r in got] == list(range(1, k + 1))


def _reference_dedup(scores: np.ndarray, k: int) -> list[list[int]]:
    """Exhaustive greedy: all (class, row) pairs by descending score; a row goes to the first class
    reaching it that still has room."""
    C, N = scores.shape
    pairs = sorted(((-scores[c, r], c, r) for c in range(C) for r in range(N)))
    kept, taken = [[] for _ in range(C)], set()
    for _, c, r in pairs:
        if len(kept[c]) < k and r not in taken:
            kept[c].append(r)
            taken.add(r)
    return kept


def test_retrieve_dedup_across_classes(built):
    emb = load_embeddings(built["emb"], "image")
    keys = list(load_metadata(built["emb"])["image_path"])
    rng = np.random.default_rng(0)
    a = emb[0] / np.linalg.norm(emb[0])
    b = a + 0.05 * rng.normal(size=a.shape)  # nearly the same query: the two classes compete for rows
    c = emb[10]
    path = write_prompts_npz(built["tmp"] / "crafted.npz", np.stack([a, b, c]), ["A", "B", "C"])
    q, _ = load_prompts(path)
    k = 4
    plain = retrieve_anchors(built["index"], path, k, dedup=False)
    by = lambda recs, cls: [r["key"] for r in recs if r["class"] == cls]  # noqa: E731
    assert set(by(plain, "A")) & set(by(plain, "B")), "precondition: without dedup A and B share rows"

    records = retrieve_anchors(built["index"], path, k)
    got_keys = [r["key"] for r in records]
    assert len(got_keys) == len(set(got_keys)) == 3 * k  # each row once, every class still has k
    ref = _reference_dedup(q @ emb.T, k)
    for ci, cls in enumerate("ABC"):
        assert by(records, cls) == [keys[r] for r in ref[ci]]
    # a row both A and B retrieved stays with the class that scores it higher
    scores = {cls: dict(zip(keys, (q @ emb.T)[ci])) for ci, cls in enumerate("ABC")}
    for key in set(by(plain, "A")) & set(by(plain, "B")):
        owner = next(r["class"] for r in records if r["key"] == key)
        assert owner == max("AB", key=lambda cls: scores[cls][key])
    # the class that lost rows took its next-best candidates instead
    loser = "B" if len(set(by(plain, "B")) - set(by(records, "B"))) else "A"
    assert set(by(records, loser)) - set(by(plain, loser))


def test_retrieve_corpus_exhausted_and_excluded(built, prompts):
    keys = list(load_metadata(built["emb"])["image_path"])
    records = retrieve_anchors(built["index"], prompts, 10)
    assert sorted(r["key"] for r in records) == sorted(keys)  # 4 classes x 10 > 19: every row exactly once
    stats = anchor_stats(records, ["red", "green", "blue", "yellow", "absent"])
    assert sum(s["count"] for s in stats.values()) == len(keys) and stats["absent"]["count"] == 0

    top = retrieve_anchors(built["index"], prompts, 3, dedup=False)
    excluded = {top[0]["key"], top[1]["key"]}
    records = retrieve_anchors(built["index"], prompts, 3, dedup=False, exclude={"image_path": excluded})
    assert not excluded & {r["key"] for r in records}
    assert all(stats["count"] == 3 for stats in anchor_stats(records).values())


def test_exclude_by_metadata_column_drops_every_pair_of_that_value(built, prompts):
    """retrieve.exclude {style: [...]}: the style-held-out control retrieves no pair in that style and
    still fills k from the rest; a column the metadata lacks is named with the columns it has."""
    meta = load_metadata(built["emb"])
    style = meta["style"].value_counts().index[0]  # the commonest, so it would be retrieved
    before = retrieve_anchors(built["index"], prompts, 2, dedup=False)
    assert style in set(meta.set_index("image_path").loc[[r["key"] for r in before], "style"])
    records = retrieve_anchors(built["index"], prompts, 2, dedup=False, exclude={"style": [style]})
    kept = meta.set_index("image_path").loc[[r["key"] for r in records], "style"]
    assert style not in set(kept) and len(records) == 2 * 4
    with pytest.raises(ValueError, match=r"retrieve.exclude: .*no column 'styles' \(it has: image_path, caption"):
        retrieve_anchors(built["index"], prompts, 2, exclude={"styles": [style]})


def test_the_retrieve_stage_applies_exclude_from_params_and_records_it(built, prompts, tmp_path):
    """`retrieve.exclude` in params.yaml reaches the search, and stats.json says what was excluded."""
    import yaml

    from pipeline.cli import run as arf

    meta = load_metadata(built["emb"])
    style = meta["style"].value_counts().index[0]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["retrieve"].update(k_per_class=2, exclude={"style": [style]})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as done:
        arf(["retrieve", "--emb", str(built["emb"]), "--prompts", str(prompts), "--index", str(tmp_path / "index"),
             "--out", str(tmp_path / "anchors"), "--params", str(tmp_path / "params.yaml")])
    assert done.value.code == 0
    stats = json.loads((tmp_path / "anchors" / "stats.json").read_text())
    assert stats["exclude"] == {"style": [style]} and stats["excluded_pairs"] == int((meta["style"] == style).sum())
    keys = [r["key"] for r in read_anchors(tmp_path / "anchors" / "anchors.jsonl")]
    assert keys and style not in set(meta.set_index("image_path").loc[keys, "style"])


def test_the_retrieve_stage_replaces_index_and_anchors_together(built, prompts, tmp_path, monkeypatch):
    """A failure after the new index is built leaves the previous index and anchors as they were, byte
    for byte, and no temp folder: never a new index beside anchors retrieved from the old one."""
    import yaml

    import pipeline.stages.retrieve as stage
    from pipeline.cli import run as arf

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["retrieve"].update(k_per_class=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["retrieve", "--emb", str(built["emb"]), "--prompts", str(prompts), "--index", str(tmp_path / "index"),
            "--out", str(tmp_path / "anchors"), "--params", str(tmp_path / "params.yaml")]
    with pytest.raises(SystemExit):
        arf(args)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    def fails(*a, **k):
        raise ValueError("disk full")

    monkeypatch.setattr(stage, "write_anchors", fails)
    params["retrieve"].update(index_key="HNSW8")  # another index: the failed run's differs from the first's
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before[tmp_path / "params.yaml"] = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(SystemExit) as failed:
        arf(args)
    assert failed.value.code == 1
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    assert not list(tmp_path.glob(".tmp-*"))


def test_write_anchors_jsonl(built, prompts):
    records = retrieve_anchors(built["index"], prompts, 3)
    path = built["tmp"] / "anchors" / "anchors.jsonl"
    write_anchors(records, path)
    back = read_anchors(path)
    assert back == records
    assert all(set(r) == {"key", "caption", "class", "score", "rank"} for r in back)
    captions = dict(zip(*(load_metadata(built["emb"])[c] for c in ("image_path", "caption"))))
    assert all(r["caption"] == captions[r["key"]] for r in back)
    for cls in {r["class"] for r in back}:
        s = [r["score"] for r in back if r["class"] == cls]
        assert s == sorted(s, reverse=True)
    text = format_anchor_report(anchor_stats(back), 3)
    assert "12 anchors over 4 classes" in text
    assert not list(path.parent.glob(".tmp-*"))


def test_retrieve_rejects_mismatched_prompts(built):
    bad = write_prompts_npz(built["tmp"] / "dim8.npz", np.eye(2, 8), ["a", "b"])
    with pytest.raises(ValueError, match="dim 8 != index dim 16"):
        retrieve_anchors(built["index"], bad, 2)
    with pytest.raises(ValueError, match="target"):
        retrieve_anchors(built["index"], bad, 2, target="caption")


def test_an_index_file_that_faiss_cannot_read_is_named_in_one_line(built, tmp_path):
    """A corpus index can arrive from a lab's DVC remote: a truncated or foreign file is named, not a
    page of faiss's C++ context. In `arf serve` (clip_back's loader) as in retrieval."""
    import shutil

    from pipeline.io.clip_retrieval import all_clip_uses_our_models
    from pipeline.io.serve import load_index

    index = tmp_path / "index"
    shutil.copytree(built["index"], index)
    (index / "image.index").write_bytes((index / "image.index").read_bytes()[:100])
    with pytest.raises(ValueError) as err:
        retrieve_anchors(index, write_prompts_npz(tmp_path / "p.npz", np.eye(2, 16), ["a", "b"]), 2)
    assert str(err.value).startswith(f"{index / 'image.index'}: not a readable faiss index (") and "\n" not in str(err.value)
    with pytest.raises(ValueError) as err, all_clip_uses_our_models():
        load_index(index, built["spec"])
    assert str(err.value).startswith(f"{index}: an index file is not a readable faiss index (") and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ params
def test_params_k_zero_is_a_one_line_error(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("retrieve:\n  k_per_class: 0\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)["retrieve"]
    msg = str(e.value)
    assert "retrieve.k_per_class" in msg and "\n" not in msg
    p.write_text("retrieve:\n  target: caption\n")
    with pytest.raises(ParamsError, match=r"retrieve\.target"):
        load_params(p)["retrieve"]
    p.write_text("retrieve:\n  max_index_memory_usage: lots\n")
    with pytest.raises(ParamsError, match=r"retrieve\.max_index_memory_usage"):
        load_params(p)["retrieve"]

