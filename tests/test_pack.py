"""The pack stage: what the trainer reads, with and without images stored at the model's size."""
import io
import json

import pytest
from PIL import Image

from helpers import make_corpus_shards, synthetic_image
from pipeline.io.records import write_anchors
from pipeline.io.shards import decode_image, iter_samples, write_shards
from pipeline.stages.pack import PackParams, pack


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Finetune: 6 PNGs (48 px, one corrupt, one RGBA) and 2 JPEGs (64x40); val: 2 PNGs; 3 anchors."""
    tmp = tmp_path_factory.mktemp("pack")
    _, pngs = make_corpus_shards(tmp / "src", 6, corrupt=(2,), rgba=(4,))
    samples = [{"__key__": s.key, "png": s.png} for s in pngs]
    samples += [{"__key__": f"j{i}", "jpg": _jpeg(synthetic_image(10 + i, 64)[0].resize((64, 40)))} for i in range(2)]
    for s in samples:
        s |= {"cls": "0", "json": json.dumps({"name": "thing"})}
    write_shards(tmp / "finetune", samples)
    write_shards(tmp / "val", [dict(samples[0], __key__="v0"), dict(samples[1], __key__="v1")])
    corpus, corpus_samples = make_corpus_shards(tmp / "corpus", 5, key_prefix="c")
    write_anchors([{"key": s.key, "caption": s.caption, "class": "thing", "score": 0.5, "rank": i}
                   for i, s in enumerate(corpus_samples[:3])], tmp / "anchors.jsonl")
    (tmp / "captions.jsonl").write_text("".join(json.dumps({"key": s["__key__"], "captions": ["a thing"]}) + "\n"
                                                for s in samples))
    (tmp / "classes.json").write_text(json.dumps({"seen": ["thing"], "unseen": [], "templates": ["a {c}."]}))
    return tmp, {s["__key__"]: s for s in samples}


def _pack(tmp, out, **params):
    return pack(tmp / "finetune", tmp / "val", tmp / "captions.jsonl", tmp / "anchors.jsonl", tmp / "corpus",
                tmp / "classes.json", tmp / out, PackParams(**params))


def test_by_default_images_are_packed_as_their_original_bytes(inputs):
    tmp, source = inputs
    report = _pack(tmp, "plain")
    packed = {s["__key__"]: s for s in iter_samples(tmp / "plain/finetune")}
    assert set(packed) == set(source)  # the corrupt one too: the trainer skips it, as before
    assert all(packed[k].get("png", packed[k].get("jpg")) == source[k].get("png", source[k].get("jpg")) for k in source)
    assert report["anchors"] == 3 and report["skipped"] == 0


def test_image_size_stores_the_shorter_side_at_that_size(inputs):
    tmp, source = inputs
    report = _pack(tmp, "small", image_size=24)
    packed = {s["__key__"]: s for s in iter_samples(tmp / "small/finetune")}
    assert set(packed) == set(source) - {"000002"} and report["skipped"] == 1  # the corrupt PNG, counted
    for key, s in packed.items():
        ext = "jpg" if key.startswith("j") else "png"
        assert set(s) >= {ext, "cls", "txt", "json"}  # JPEG stays JPEG, PNG stays PNG
        image = Image.open(io.BytesIO(s[ext]))
        assert min(image.size) == 24 and image.mode == "RGB"
    # PNG is lossless: exactly the bicubic resize of the decoded original (transparency on white)
    expected = decode_image(source["000004"]["png"]).resize((24, 24), Image.BICUBIC)
    assert Image.open(io.BytesIO(packed["000004"]["png"])).tobytes() == expected.tobytes()
    assert Image.open(io.BytesIO(packed["j0"]["jpg"])).size == (38, 24)  # 64x40: aspect kept
    val = list(iter_samples(tmp / "small/val"))
    assert [min(Image.open(io.BytesIO(s["png"])).size) for s in val] == [24, 24] and val[0]["cls"] == b"0"
    anchors = list(iter_samples(tmp / "small/anchors"))
    assert len(anchors) == 3 and all(min(Image.open(io.BytesIO(s["png"])).size) == 24 for s in anchors)


def test_images_at_or_below_the_size_keep_their_bytes(inputs):
    tmp, source = inputs
    _pack(tmp, "large", image_size=48)
    packed = {s["__key__"]: s for s in iter_samples(tmp / "large/finetune")}
    assert packed["000000"]["png"] == source["000000"]["png"]  # 48 px: unchanged
    assert min(Image.open(io.BytesIO(packed["j1"]["jpg"])).size) == 40  # 64x40: below 48, unchanged
    assert packed["j1"]["jpg"] == source["j1"]["jpg"]
