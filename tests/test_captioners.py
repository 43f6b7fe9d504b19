"""Captioner registry, local-only loading and the BLIP / BLIP-2 backends on tiny random models."""
from __future__ import annotations

import os
import shutil
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from pipeline.core.captioners import registry as captioners
from pipeline.core.captioners.blip import Blip2Captioner, BlipCaptioner
from pipeline.core.captioners.registry import (
    Captioner,
    caption_dataset,
    create_captioner,
    list_captioners,
    register_captioner,
)

try:
    from fixtures_captioners import build_tiny_blip, build_tiny_blip2
except ImportError:  # tests/ collected as a package
    from tests.fixtures_captioners import build_tiny_blip, build_tiny_blip2

PROMPT = "a picture of"
BACKENDS = ("blip", "blip2")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly: captioners must never touch the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioners")
    return {"blip": build_tiny_blip(root / "blip"), "blip2": build_tiny_blip2(root / "blip2")}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 30, 3), dtype=np.uint8)) for i in range(4)]
    ims.append(ims[0].convert("L"))  # grayscale and RGBA inputs are converted to RGB
    ims.append(ims[1].convert("RGBA"))
    return ims


def make(name, folders, **kw):
    kw.setdefault("max_new_tokens", 6)
    return create_captioner(name, model_path=str(folders[name]), **kw)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_backends():
    names = list_captioners()
    assert {"blip", "blip2"} <= set(names)
    assert names == sorted(names)


def test_unknown_captioner_is_one_clear_line():
    with pytest.raises(ValueError) as e:
        create_captioner("nope")
    msg = one_line_error(e)
    assert "unknown captioner 'nope'" in msg and "blip" in msg and "blip2" in msg


def test_registry_is_open_to_other_modules(monkeypatch):
    monkeypatch.setattr(captioners, "_CAPTIONERS", dict(captioners._CAPTIONERS))

    @register_captioner("constant")
    class Constant:
        def __init__(self, text: str = "x", batch_size: int = 2):
            self.text, self.batch_size = text, batch_size

        def caption(self, images):
            return [[self.text] for _ in images]

    assert "constant" in list_captioners()
    cap = create_captioner("constant", text="hello")
    assert isinstance(cap, Captioner)
    recs = list(caption_dataset(cap, [(f"k{i}", None) for i in range(5)], progress=False))
    assert recs == [{"key": f"k{i}", "captions": ["hello"]} for i in range(5)]

    # a bad option is one line naming the backend
    with pytest.raises(ValueError) as e:
        create_captioner("constant", colour="red")
    assert "captioner 'constant'" in one_line_error(e) and "colour" in str(e.value)

    # re-registering the same definition is fine; a different one under a taken name is not
    register_captioner("constant")(Constant)

    def other(**kw):
        return Constant()

    with pytest.raises(ValueError, match="already registered"):
        register_captioner("constant")(other)
    register_captioner("constant", override=True)(other)
    assert captioners._CAPTIONERS["constant"] is other


def test_caption_dataset_checks_backend_output(monkeypatch):
    class Short:
        def caption(self, images):
            return [["a"]] * (len(images) - 1)

    class Flat:
        def caption(self, images):
            return ["a"] * len(images)

    with pytest.raises(RuntimeError, match="returned 1 caption lists for 2 images"):
        list(caption_dataset(Short(), [("a", None), ("b", None)], batch_size=2, progress=False))
    with pytest.raises(TypeError, match="list of strings"):
        list(caption_dataset(Flat(), [("a", None)], batch_size=2, progress=False))


# ---------------------------------------------------------------------------------- local-folder errors


@pytest.mark.parametrize("name", BACKENDS)
def test_missing_folder_is_one_clear_line(name, tmp_path):
    with pytest.raises(ValueError) as e:
        create_captioner(name, model_path=str(tmp_path / "absent"))
    msg = one_line_error(e)
    assert "not a local folder" in msg and "config.json" in msg and "caption.model_path" in msg


@pytest.mark.parametrize(
    "name, hub_id",
    [("blip", "Salesforce/blip-image-captioning-base"), ("blip2", "Salesforce/blip2-opt-2.7b")],
)
def test_hub_id_is_refused_without_network(name, hub_id):
    with pytest.raises(ValueError) as e:
        create_captioner(name, model_path=hub_id)
    msg = one_line_error(e)
    assert msg.startswith(f"captioner model_path '{hub_id}': not a local folder")
    assert "download" in msg and ("BLIP-2" if name == "blip2" else "BLIP") in msg


def test_unset_model_path():
    with pytest.raises(ValueError) as e:
        create_captioner("blip")
    assert "model_path is not set" in one_line_error(e)


@pytest.mark.parametrize(
    "remove, expect",
    [
        (["model.safetensors"], "model weights"),
        (["config.json"], "config.json"),
        (["preprocessor_config.json"], "preprocessor_config.json"),
        (["vocab.txt"], "tokenizer files"),
    ],
)
def test_incomplete_folder_names_what_is_missing(folders, tmp_path, remove, expect):
    broken = shutil.copytree(folders["blip"], tmp_path / "blip")
    for f in remove:
        (broken / f).unlink()
    with pytest.raises(ValueError) as e:
        create_captioner("blip", model_path=str(broken))
    msg = one_line_error(e)
    assert "incomplete blip folder, missing" in msg and expect in msg


def test_git_lfs_pointer_weights(folders, tmp_path):
    broken = shutil.copytree(folders["blip"], tmp_path / "blip")
    (broken / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 990000000\n"
    )
    with pytest.raises(ValueError) as e:
        create_captioner("blip", model_path=str(broken))
    assert "git-lfs pointer" in one_line_error(e)


def test_folder_of_the_other_backend(folders):
    with pytest.raises(ValueError) as e:
        create_captioner("blip", model_path=str(folders["blip2"]))
    msg = one_line_error(e)
    assert "model_type 'blip-2'" in msg and "use captioner 'blip2'" in msg


def test_option_errors(folders, monkeypatch):
    with pytest.raises(ValueError, match="greedy decoding gives one caption"):
        make("blip", folders, num_captions=2, decoding="greedy")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        make("blip", folders, batch_size=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        make("blip", folders, dtype="int8")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        make("blip", folders, dtype="fp16", device="cpu")
    import torch

    if torch.cuda.is_available():  # a GPU host: the model goes where it was asked to
        cap = make("blip", folders, device="cuda")
        assert cap.device == "cuda" and {p.device.type for p in cap.model.parameters()} == {"cuda"}
        assert make("blip", folders).device == "cuda"  # auto
    else:
        with pytest.raises(ValueError, match="device 'cuda' asked for but CUDA is not available"):
            make("blip", folders, device="cuda")
        assert make("blip", folders).device == "cpu"  # auto
    # the refusal, on any host: as if no GPU were there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda:1' asked for but CUDA is not available"):
        make("blip", folders, device="cuda:1")


# ----------------------------------------------------------------------------------------- captioning


@pytest.mark.parametrize("name", BACKENDS)
def test_greedy_captions_one_record_per_image_and_batch_invariant(name, folders, images):
    cap1 = make(name, folders, batch_size=1)
    cap3 = make(name, folders, batch_size=3)
    assert isinstance(cap1, Captioner) and isinstance(cap1, (BlipCaptioner, Blip2Captioner))
    assert cap1.describe()["decoding"] == "greedy"

    samples = [(f"img{i:03d}", im) for i, im in enumerate(images)]
    recs1 = list(caption_dataset(cap1, samples, batch_size=2, progress=False))
    recs3 = list(caption_dataset(cap3, samples, progress=False))
    assert [r["key"] for r in recs1] == [k for k, _ in samples]
    for rec in recs1:
        assert set(rec) == {"key", "captions"}
        assert len(rec["captions"]) == 1
        c = rec["captions"][0]
        assert isinstance(c, str) and c and c == c.strip()
    assert recs1 == recs3  # greedy decoding does not depend on batching
    # the tiny random model is not blind: different images get different captions
    assert len({r["captions"][0] for r in recs1}) > 1
    # same pixels in another mode give the same caption (converted to RGB first)
    assert cap1.caption([images[4].convert("RGB")]) == [recs1[4]["captions"]]


@pytest.mark.parametrize("name", BACKENDS)
def test_prompt_is_fed_and_stripped(name, folders, images, monkeypatch):
    cap = make(name, folders, batch_size=3, prompt=PROMPT)
    raw = []
    generate = cap.model.generate

    def spy(**kw):
        out = generate(**kw)
        raw.append(out)
        return out

    monkeypatch.setattr(cap.model, "generate", spy)
    captions = cap.caption(images[:4])
    assert len(captions) == 4 and all(len(c) == 1 and c[0] for c in captions)
    assert len(raw) == 2  # 4 images in batches of 3
    # the model was fed the prompt and echoed it; the captions are exactly what follows it
    decoded = [" ".join(d.split()) for r in raw for d in cap.tokenizer.batch_decode(r, skip_special_tokens=True)]
    assert [d for d in decoded] == [f"{PROMPT} {c}" for (c,) in captions]


@pytest.mark.parametrize("name", BACKENDS)
def test_prompt_ids_match_the_official_processor(name, folders, images):
    """The ids built here equal what BlipProcessor / Blip2Processor give for the same prompt."""
    from transformers import AutoProcessor

    cap = make(name, folders, prompt=PROMPT)
    proc = AutoProcessor.from_pretrained(str(folders[name]), local_files_only=True)
    ids = proc(images=images[:2], text=[PROMPT] * 2, return_tensors="pt")["input_ids"]
    assert ids.tolist() == [cap._prefix_ids] * 2


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("decoding", ["sample", "beam"])
def test_several_captions_per_image(name, decoding, folders, images):
    cap = make(name, folders, batch_size=4, num_captions=3, decoding=decoding)
    out = cap.caption(images[:4])
    assert len(out) == 4
    for caps in out:
        assert len(caps) == 3 and all(isinstance(c, str) and c for c in caps)
    if decoding == "sample":
        # seeded: a fresh captioner with the same settings draws the same captions
        again = make(name, folders, batch_size=4, num_captions=3, decoding=decoding).caption(images[:4])
        assert again == out
        assert make(name, folders, num_captions=3).describe()["decoding"] == "sample"  # the auto choice


def test_corrupt_weights_are_one_line(folders, tmp_path):
    broken = shutil.copytree(folders["blip2"], tmp_path / "blip2")
    (broken / "model.safetensors").write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError) as e:
        create_captioner("blip2", model_path=str(broken))
    assert "could not load blip2 from it" in one_line_error(e)


def test_bf16_runs_on_cpu(folders, images):
    cap = make("blip2", folders, dtype="bf16", device="cpu")
    out = cap.caption(images[:2])
    assert cap.describe()["dtype"] == "bfloat16"
    assert len(out) == 2 and all(len(c) == 1 and isinstance(c[0], str) and c[0] for c in out)
