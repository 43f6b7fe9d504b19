"""The trainer on tiny packed shards with the tiny test model: determinism and what each method uses."""
import json

import pytest
import torch

from helpers import make_corpus_shards, make_tiny_checkpoint
from pipeline.methods import ArfParams, FlypParams
from pipeline.models import create_model, model_dir_spec, write_model_dir
from pipeline.shards import iter_samples, write_shards
from pipeline.train import TrainParams, train

CLASSES = ["red", "green", "blue", "yellow", "purple"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    name, ckpt = make_tiny_checkpoint(tmp)
    write_model_dir(create_model(f"{name}:{ckpt}").model, name, tmp / "base")
    src, samples = make_corpus_shards(tmp / "src", 30, size=32)
    raw = list(iter_samples(src))

    def labelled(rows):
        for s, meta in rows:
            color = meta.meta["color"]
            yield {"__key__": s["__key__"], "png": s["png"], "cls": str(CLASSES.index(color)),
                   "txt": s["txt"], "json": s["json"]}

    packed = tmp / "packed"
    write_shards(packed / "finetune", labelled(zip(raw[:20], samples[:20])))
    write_shards(packed / "val", labelled(zip(raw[20:], samples[20:])))
    write_shards(packed / "anchors", ({"__key__": s["__key__"], "png": s["png"], "txt": s["txt"]} for s in raw))
    (packed / "classes.json").write_text(json.dumps({"classnames": CLASSES, "templates": ["a {c} thing."]}))
    return tmp, packed


def run(setup, method, params, out):
    tmp, packed = setup
    p = TrainParams(steps=3, batch_size=6, anchor_batch_size=5, lr=1e-3, warmup_steps=1, eval_every=1, seed=7)
    return train(method, packed, model_dir_spec(tmp / "base"), tmp / out, p, params)


def test_same_seed_gives_identical_training_twice(setup):
    a = run(setup, "arf", ArfParams(), "arf_a")
    b = run(setup, "arf", ArfParams(), "arf_b")
    assert [h.get("loss") for h in a["history"]] == [h.get("loss") for h in b["history"]]
    assert a["val_acc1_end"] == b["val_acc1_end"]
    tmp, _ = setup
    wa = torch.load(tmp / "arf_a/checkpoint.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp / "arf_b/checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_methods_use_their_own_loss_terms_and_change_the_weights(setup):
    tmp, _ = setup
    flyp = run(setup, "flyp", FlypParams(), "flyp")
    arf = run(setup, "arf", ArfParams(lambda_tca=0.0, lambda_ita=2.0), "arf_ita")
    assert {k for h in flyp["history"][1:] for k in h if k.startswith("loss_")} == {"loss_flyp"}
    assert {k for h in arf["history"][1:] for k in h if k.startswith("loss_")} == {"loss_flyp", "loss_ita"}
    base = torch.load(tmp / "base/checkpoint.pt", weights_only=True)["state_dict"]
    tuned = torch.load(tmp / "flyp/checkpoint.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(base[k], tuned[k]) for k in base if base[k].is_floating_point())
    assert json.loads((tmp / "flyp/model.json").read_text())["method"] == "flyp"
