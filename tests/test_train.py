"""The trainer on tiny packed shards with the tiny test model: determinism and what each method uses."""
import json

import pytest
import torch

from helpers import make_corpus_shards, make_tiny_checkpoint
from pipeline.methods import ArfParams, NoParams
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


def run(setup, method, params, out, seed=7):
    tmp, packed = setup
    p = TrainParams(steps=3, batch_size=6, anchor_batch_size=5, lr=1e-3, warmup_steps=1, eval_every=1)
    return train(method, packed, model_dir_spec(tmp / "base"), tmp / out, p, params, seed=seed)


def weights(path):
    return torch.load(path / "checkpoint.pt", weights_only=True)["state_dict"]


def changed(a, b, prefix_visual: bool):
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point() and k.startswith("visual.") == prefix_visual)


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
    flyp = run(setup, "flyp", NoParams(), "flyp")
    arf = run(setup, "arf", ArfParams(lambda_tca=0.0, lambda_ita=2.0), "arf_ita")
    assert {k for h in flyp["history"][1:] for k in h if k.startswith("loss_")} == {"loss_flyp"}
    assert {k for h in arf["history"][1:] for k in h if k.startswith("loss_")} == {"loss_flyp", "loss_ita"}
    base = torch.load(tmp / "base/checkpoint.pt", weights_only=True)["state_dict"]
    tuned = torch.load(tmp / "flyp/checkpoint.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(base[k], tuned[k]) for k in base if base[k].is_floating_point())
    assert json.loads((tmp / "flyp/model.json").read_text())["method"] == "flyp"


def test_a_different_seed_gives_a_different_run(setup):
    a = run(setup, "flyp", NoParams(), "flyp_s7", seed=7)
    b = run(setup, "flyp", NoParams(), "flyp_s8", seed=8)
    assert [h.get("loss") for h in a["history"]] != [h.get("loss") for h in b["history"]]


def test_head_methods_train_only_their_parts_from_the_zero_shot_head(setup):
    from pipeline.embed import zeroshot_head
    from pipeline.models import read_head

    tmp, _ = setup
    base = weights(tmp / "base")
    runs = {m: run(setup, m, NoParams(), m) for m in ("lp", "ft", "lpft")}
    for r in runs.values():
        assert {k for h in r["history"][1:] for k in h if k.startswith("loss_")} == {"loss_ce"}
    # LP: both towers bit-identical to the base, the head moved; FT and LP-FT: image tower moved, text frozen
    assert not changed(base, weights(tmp / "lp"), True) and not changed(base, weights(tmp / "lp"), False)
    for m in ("ft", "lpft"):
        assert changed(base, weights(tmp / m), True) and not changed(base, weights(tmp / m), False)
    assert len(runs["lpft"]["history"]) == 1 + 2 * 3 and len(runs["ft"]["history"]) == 1 + 3  # LP, then FT
    lm = create_model(model_dir_spec(tmp / "base"))
    expected = zeroshot_head(lm.model, lm.tokenizer, CLASSES, ["a {c} thing."])
    for m in ("lp", "ft", "lpft"):
        head = read_head(tmp / m)
        assert head["classnames"] == CLASSES
        assert torch.allclose(head["init"], expected, atol=1e-5)
        assert not torch.equal(head["weight"], head["init"])


def test_zeroshot_trains_nothing(setup):
    with pytest.raises(ValueError, match="trains nothing"):
        run(setup, "zeroshot", NoParams(), "zs")
