"""A training resume state is used only by a run of the same inputs: after the packed data or the base
model changed (a retrieve or caption param, another base), the rerun starts fresh, says why, and ends
equal to a clean run on the new inputs instead of a hybrid of the two."""
import logging
import shutil

import pytest
import torch
from test_train import setup, train_killed_after, weights  # noqa: F401  (setup is a fixture)

import pipeline.stages.train as tr
from pipeline.core.methods import ArfParams
from pipeline.core.models import create_model, model_dir_spec, write_model_dir
from pipeline.io.shards import iter_samples, write_shards
from pipeline.stages.train import TrainParams, train


def fewer_anchors(packed, tmp_path):
    other = tmp_path / "packed_b"
    shutil.copytree(packed, other)
    kept = list(iter_samples(packed / "anchors"))[:20]
    shutil.rmtree(other / "anchors")
    write_shards(other / "anchors", kept)
    return other


def perturbed_base(base, tmp_path):
    lm = create_model(model_dir_spec(base))
    with torch.no_grad():
        lm.model.logit_scale.add_(0.5)
    write_model_dir(lm.model, lm.spec.name, tmp_path / "base_b")
    return tmp_path / "base_b"


@pytest.mark.parametrize("changed", ["packed data", "base model"])
def test_a_resume_state_of_other_inputs_starts_fresh_and_says_which(setup, monkeypatch, caplog, tmp_path, changed):  # noqa: F811
    tmp, packed = setup
    p = TrainParams(steps=3, batch_size=6, anchor_batch_size=5, lr=1e-3, warmup_steps=1, eval_every=1, checkpoint_every=1)
    out = tmp_path / "arf"
    train_killed_after(monkeypatch, 2, "arf", packed, model_dir_spec(tmp / "base"), out, p, ArfParams(), seed=3)
    assert tr.resume_path(out).is_file()

    packed_b = fewer_anchors(packed, tmp_path) if changed == "packed data" else packed
    base_b = perturbed_base(tmp / "base", tmp_path) if changed == "base model" else tmp / "base"
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        rerun = train("arf", packed_b, model_dir_spec(base_b), out, p, ArfParams(), seed=3)
    assert f"saved by a run with other {changed}; starting from scratch" in caplog.text
    assert "resuming" not in caplog.text and rerun["history"][0]["step"] == 0
    clean = train("arf", packed_b, model_dir_spec(base_b), tmp_path / "clean", p, ArfParams(), seed=3)
    assert [h.get("loss") for h in rerun["history"]] == [h.get("loss") for h in clean["history"]]
    wa, wb = weights(out), weights(tmp_path / "clean")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_non_finite_loss_stops_training_naming_step_term_and_batch(setup, tmp_path):  # noqa: F811
    """A weight of 1e39 is a finite param but overflows float32: the run stops at that step with the
    term and the batch's keys named, and writes neither a model nor a resume point."""
    tmp, packed = setup
    p = TrainParams(steps=3, batch_size=6, anchor_batch_size=5, lr=1e-3, warmup_steps=1, eval_every=1, checkpoint_every=1)
    out = tmp_path / "arf"
    with pytest.raises(FloatingPointError) as err:
        train("arf", packed, model_dir_spec(tmp / "base"), out, p, ArfParams(lambda_ita=1e39), seed=3)
    message = str(err.value)
    assert message.startswith("train arf seed 3: step 1: loss term ita is not finite (flyp=")
    assert "ita=inf" in message and "\n" not in message
    keys = message.split("batch keys: ")[1].split(" and ")[0].split(", ")
    assert len(keys) == 8 and message.endswith("and 3 more")  # 6 finetune + 5 anchor keys
    assert not out.exists() and not tr.resume_path(out).exists()
