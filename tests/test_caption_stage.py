"""The caption stage on tiny data: BLIP and BLIP-2 (tiny random models from config) and the nn default."""
import io
import json

import pytest
from fixtures_captioners import build_tiny_blip, build_tiny_blip2
from helpers import make_corpus_shards, make_tiny_checkpoint
from PIL import Image

from pipeline.io.records import read_captions
from pipeline.stages.caption import CaptionParams, caption_finetune_set


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    root, samples = make_corpus_shards(tmp_path_factory.mktemp("ft") / "finetune", 6, corrupt=(2,), size=32)
    return root, samples


@pytest.mark.parametrize("backend, build", [("blip", build_tiny_blip), ("blip2", build_tiny_blip2)])
def test_blip_backends_write_one_record_per_readable_sample(tmp_path, finetune, backend, build):
    root, samples = finetune
    folder = build(tmp_path / backend)
    out = tmp_path / "captions.jsonl"
    params = CaptionParams(backend=backend, model_path=str(folder), batch_size=4, max_new_tokens=5)
    report = caption_finetune_set(root, out, params, base_model_spec="", corpus_emb_dir=tmp_path)
    records = read_captions(out)
    readable = [s.key for s in samples if not s.corrupt]
    assert list(records) == readable  # corrupt sample skipped, order kept
    assert report["skipped"] == 1 and report["captioned"] == len(readable)
    # each record holds what the captioner says of that image, decoded here from the PNG bytes
    # (greedy decoding, so one image at a time gives the same captions as the stage's batches of 4)
    from pipeline.core.captioners.registry import create_captioner

    captioner = create_captioner(backend, model_path=str(folder), batch_size=1, max_new_tokens=5)
    for s in samples:
        if not s.corrupt:
            assert records[s.key] == captioner.caption([Image.open(io.BytesIO(s.png)).convert("RGB")])[0], s.key
    assert len({caps[0] for caps in records.values()}) > 1  # not one caption for every image


def test_nn_backend_gives_the_caption_of_the_nearest_corpus_image(tmp_path, finetune):
    from pipeline.stages.embed_corpus import embed_corpus

    root, samples = finetune
    name, ckpt = make_tiny_checkpoint(tmp_path)
    spec = f"{name}:{ckpt}"
    corpus, corpus_samples = make_corpus_shards(tmp_path / "corpus", 10, size=32, key_prefix="c")
    embed_corpus(corpus, spec, tmp_path / "emb", batch_size=4)
    out = tmp_path / "captions.jsonl"
    caption_finetune_set(root, out, CaptionParams(backend="nn", num_captions=2), spec, tmp_path / "emb")
    records = read_captions(out)
    # finetune image i and corpus image i are drawn identically (same generator index): nearest = itself
    by_key = {s.key: s for s in corpus_samples}
    for s in samples:
        if not s.corrupt:
            assert records[s.key][0] == by_key[f"c{s.key}"].caption
            assert len(set(records[s.key])) == len(records[s.key]) <= 2


def test_missing_local_blip_folder_is_one_line(tmp_path, finetune):
    root, _ = finetune
    params = CaptionParams(backend="blip", model_path="Salesforce/blip-image-captioning-base")
    with pytest.raises(ValueError) as err:
        caption_finetune_set(root, tmp_path / "c.jsonl", params, "", tmp_path)
    assert "local folder" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "c.jsonl").exists()


def test_classname_backend_captions_each_image_with_its_class_name(tmp_path):
    from pipeline.io.shards import iter_samples, write_shards

    src, _ = make_corpus_shards(tmp_path / "src", 4, size=32)
    rows = [{"__key__": s["__key__"], "png": s["png"], "cls": str(i % 2)} for i, s in enumerate(iter_samples(src))]
    rows[3].pop("cls")  # an unlabelled sample is skipped and counted, not guessed
    write_shards(tmp_path / "ft", rows)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"seen": ["cat", "dog"], "unseen": [], "templates": ["a {c}."]}))
    out = tmp_path / "captions.jsonl"
    report = caption_finetune_set(tmp_path / "ft", out, CaptionParams(backend="classname"), "", tmp_path, classes)
    assert list(read_captions(out).values()) == [["cat"], ["dog"], ["cat"]]
    assert report["skipped"] == 1
    with pytest.raises(FileNotFoundError, match="nope.json"):
        caption_finetune_set(tmp_path / "ft", tmp_path / "c2.jsonl", CaptionParams(backend="classname"), "", tmp_path,
                             tmp_path / "nope.json")


CAPTION_SCRIPT = """
import sys
from pathlib import Path
from pipeline.stages.caption import CaptionParams, caption_finetune_set
root, folder, out = sys.argv[1:4]
params = CaptionParams(backend="blip", model_path=folder, batch_size=2, max_new_tokens=4)
caption_finetune_set(Path(root), Path(out), params, base_model_spec="", corpus_emb_dir=Path(out).parent)
"""


def test_captioning_resumes_per_shard_and_splits_over_torchrun_ranks(tmp_path, monkeypatch):
    """Three shards: one run; a run killed in its second shard and started again (the first shard is
    not captioned twice); two gloo processes under torchrun. All three write the same file."""
    import subprocess
    import sys

    import pipeline.stages.caption as cap

    root, _ = make_corpus_shards(tmp_path / "ft", 9, size=32, max_per_shard=3)
    folder = build_tiny_blip(tmp_path / "blip")
    params = CaptionParams(backend="blip", model_path=str(folder), batch_size=2, max_new_tokens=4)
    whole = tmp_path / "whole" / "captions.jsonl"
    caption_finetune_set(root, whole, params, "", tmp_path)
    assert len(whole.read_text().splitlines()) == 9

    real = cap.caption_dataset
    calls = []

    def dying(captioner, samples, batch_size, **kw):
        calls.append(kw["desc"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(captioner, samples, batch_size, **kw)

    out = tmp_path / "resumed" / "captions.jsonl"
    monkeypatch.setattr(cap, "caption_dataset", dying)
    with pytest.raises(KeyboardInterrupt):
        caption_finetune_set(root, out, params, "", tmp_path)
    assert not out.exists() and (out.parent / ".captions.jsonl.parts" / "00000.tar.jsonl").is_file()
    calls.clear()
    monkeypatch.setattr(cap, "caption_dataset", lambda *a, **kw: (calls.append(kw["desc"]), real(*a, **kw))[1])
    report = caption_finetune_set(root, out, params, "", tmp_path)
    assert calls == ["captioning 00001.tar", "captioning 00002.tar"] and report["shards_resumed"] == 1
    assert out.read_text() == whole.read_text() and not (out.parent / ".captions.jsonl.parts").exists()

    script = tmp_path / "caption.py"
    script.write_text(CAPTION_SCRIPT)
    two = tmp_path / "two" / "captions.jsonl"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(root), str(folder), str(two)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert two.read_text() == whole.read_text()
