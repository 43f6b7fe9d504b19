"""The anchor gallery: content, escaping, determinism, missing inputs and corrupt images."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from helpers import make_corpus_shards, png_bytes, synthetic_image

from pipeline.io.shards import write_shards
from pipeline.stages.gallery import write_gallery

CLASSES = ["alpha", "beta & <b>", "gamma"]
CORRUPT = 3  # corpus index whose PNG is truncated
EVIL = "<script>alert('x')</script>"
URI = "data:image/png;base64,"


def _build(tmp: Path) -> dict:
    """12 corpus samples; 3 anchors per class; 2 finetune images per class, one caption carrying a script tag."""
    _, corpus = make_corpus_shards(tmp / "corpus", 12, corrupt=(CORRUPT,), max_per_shard=5)
    anchors = []
    for ci, c in enumerate(CLASSES):
        for r in range(3):
            key = corpus[ci * 3 + r + 1].key  # class 0 holds the corrupt sample 3
            anchors.append({"key": key, "caption": f"{c} anchor {r} & <i>", "class": c,
                            "score": round(0.5 - 0.1 * r - 0.01 * ci, 6), "rank": r + 1})
    (tmp / "anchors.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anchors))
    ft, captions = [], []
    for i in range(2 * len(CLASSES)):
        key = f"ft-{i:03d}"
        ft.append({"__key__": key, "png": png_bytes(synthetic_image(100 + i)[0]), "cls": str(i % len(CLASSES))})
        captions.append({"key": key, "captions": [EVIL if i == 0 else f"caption of {key}", "second <cap>"]})
    write_shards(tmp / "finetune", ft, max_per_shard=4)
    (tmp / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions))
    (tmp / "classes.json").write_text(json.dumps({"seen": CLASSES, "unseen": [], "templates": ["{}"]}))
    return dict(anchors_path=tmp / "anchors.jsonl", corpus_dir=tmp / "corpus", captions_path=tmp / "captions.jsonl",
                finetune_dir=tmp / "finetune", classes_path=tmp / "classes.json", anchors=anchors)


@pytest.fixture()
def inputs(tmp_path):
    return _build(tmp_path)


def _run(inputs, out, **kw):
    args = {k: v for k, v in inputs.items() if k != "anchors"}
    return write_gallery(**args, out_html=out, **kw)


def test_all_classes_content_escaping_and_corrupt_image(inputs, tmp_path):
    out = tmp_path / "g.html"
    report = _run(inputs, out, classes_per_page=10, anchors_per_class=8, finetune_per_class=4)
    page = out.read_text()
    assert report["sampled"] == sorted(CLASSES) and report["anchors"] == 9 and report["finetune"] == 6
    for a in inputs["anchors"]:
        assert html.escape(a["caption"]) in page and f"score {a['score']:.3f}" in page
        assert f"rank {a['rank']}" in page and a["key"] in page
    assert "<i>" not in page and "<b>" not in page and html.escape(CLASSES[1]) in page
    # The script caption is shown, escaped, never live.
    assert "<script" not in page and html.escape(EVIL) in page and html.escape("second <cap>") in page
    # 9 anchor tiles less the corrupt one, plus all 6 finetune images.
    assert page.count(URI) == report["images"] == 9 - 1 + 6
    assert report["skipped"] == 1 and "Skipped 1 bad sample(s): 000003" in page
    assert page.count("image unreadable or missing") == 1
    # Summary and per-class table.
    assert "9 anchors over 3 of 3 classes; 6 finetune images; 6 captioned, 2.00 captions per image" in page
    assert f"<tr><td>{html.escape(CLASSES[1])}</td><td>3</td><td>0.390</td></tr>" in page


def test_sample_limits_order_and_table_covers_all(inputs, tmp_path):
    out = tmp_path / "g.html"
    report = _run(inputs, out, classes_per_page=1, anchors_per_class=2, finetune_per_class=1, seed=3)
    page = out.read_text()
    (picked,) = report["sampled"]
    others = [c for c in CLASSES if c != picked]
    shown = [a for a in inputs["anchors"] if a["class"] == picked][:2]  # best two: ranks 1 and 2
    for a in inputs["anchors"]:
        assert (html.escape(a["caption"]) in page) == (a in shown)
    assert page.index(html.escape(shown[0]["caption"])) < page.index(html.escape(shown[1]["caption"]))
    assert page.count(URI) == report["images"] == 2 + 1  # the corrupt sample is rank 3 of its class: not shown
    assert re.findall(r"<h2>(.*?)</h2>", page) == [html.escape(picked), "All classes"]
    for c in others:  # not sampled, but still in the table
        assert f"<tr><td>{html.escape(c)}</td><td>3</td>" in page
    # The same seed always picks the same class.
    assert _run(inputs, tmp_path / "h.html", classes_per_page=1, seed=3)["sampled"] == [picked]


def test_byte_identical_across_runs_and_paths(tmp_path):
    pages = []
    for name in ("run1", "run2"):
        inputs = _build(tmp_path / name)
        _run(inputs, tmp_path / name / "g.html")
        pages.append((tmp_path / name / "g.html").read_bytes())
    assert pages[0] == pages[1]
    assert str(tmp_path).encode() not in pages[0]
    assert not list(tmp_path.glob("run1/.tmp-*"))  # the atomic write left nothing behind


@pytest.mark.parametrize("which", ["anchors_path", "captions_path", "classes_path", "corpus_dir", "finetune_dir"])
def test_missing_input_names_the_path(inputs, tmp_path, which):
    inputs[which] = tmp_path / "nowhere" / which
    out = tmp_path / "g.html"
    with pytest.raises(FileNotFoundError) as e:
        _run(inputs, out)
    msg = str(e.value)
    assert str(inputs[which]) in msg and "\n" not in msg
    assert not out.exists()
