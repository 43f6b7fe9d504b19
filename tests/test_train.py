"""The trainer on tiny packed shards with the tiny test model: determinism and what each method uses."""
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import make_corpus_shards, make_tiny_checkpoint, weight_diffs

from pipeline.core.methods import ArfParams, NoParams, get_method
from pipeline.core.models import create_model, model_dir_spec, write_model_dir
from pipeline.io.shards import iter_samples, write_shards
from pipeline.stages.train import TrainParams, train

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


TEMPLATES = ["a {c} thing.", "a photo of something {c}."]


@pytest.fixture(scope="module")
def two_templates(setup):
    """The packed shards of `setup` with two prompt templates per class."""
    tmp, packed = setup
    other = tmp / "packed_two_templates"
    other.mkdir()
    for split in ("finetune", "val", "anchors"):
        (other / split).symlink_to(packed / split)
    (other / "classes.json").write_text(json.dumps({"classnames": CLASSES, "templates": TEMPLATES}))
    return tmp, other


def test_head_methods_train_only_their_parts_from_the_zero_shot_head(two_templates):
    from pipeline.core.models import read_head

    tmp, _ = two_templates
    base = weights(tmp / "base")
    runs = {m: run(two_templates, m, NoParams(), m) for m in ("lp", "ft", "lpft")}
    for r in runs.values():
        assert {k for h in r["history"][1:] for k in h if k.startswith("loss_")} == {"loss_ce"}
    # LP: both towers bit-identical to the base, the head moved; FT and LP-FT: image tower moved, text frozen
    assert not changed(base, weights(tmp / "lp"), True) and not changed(base, weights(tmp / "lp"), False)
    for m in ("ft", "lpft"):
        assert changed(base, weights(tmp / m), True) and not changed(base, weights(tmp / m), False)
    assert len(runs["lpft"]["history"]) == 1 + 2 * 3 and len(runs["ft"]["history"]) == 1 + 3  # LP, then FT
    # the zero-shot head by its definition: per class, the normalised mean of the normalised
    # embeddings of its prompts, one per template, with the base text tower
    lm = create_model(model_dir_spec(tmp / "base"))
    lm.model.eval()
    with torch.no_grad():
        expected = []
        for c in CLASSES:
            emb = lm.model.encode_text(lm.tokenizer([t.replace("{c}", c) for t in TEMPLATES]))
            mean = (emb / emb.norm(dim=-1, keepdim=True)).mean(0)
            expected.append(mean / mean.norm())
        expected = torch.stack(expected)
    for m in ("lp", "ft", "lpft"):
        head = read_head(tmp / m)
        assert head["classnames"] == CLASSES
        assert torch.allclose(head["init"], expected, atol=1e-5)
        assert not torch.equal(head["weight"], head["init"])


def test_zeroshot_trains_nothing(setup):
    with pytest.raises(ValueError, match="trains nothing"):
        run(setup, "zeroshot", NoParams(), "zs")


class Killed(Exception):
    pass


def train_killed_after(monkeypatch, step: int, *args, **kwargs) -> None:
    """`train(*args, **kwargs)` stopped right after it logs `step`, as a kill between steps would."""
    import pipeline.stages.train as tr

    real_log = tr._log

    def dying_log(live, at, record):
        real_log(live, at, record)
        if at == step:
            raise Killed

    monkeypatch.setattr(tr, "_log", dying_log)
    with pytest.raises(Killed):
        tr.train(*args, **kwargs)
    monkeypatch.setattr(tr, "_log", real_log)


@pytest.mark.parametrize("method,params,kill_at,workers", [("arf", ArfParams(), 3, 0), ("lpft", NoParams(), 5, 0),
                                                            ("arf", ArfParams(), 3, 2)])
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_bit_identical(setup, monkeypatch, method, params, kill_at,
                                                                          workers):
    """Uninterrupted vs killed after step kill_at and started again (checkpoints every 2 steps): the
    same weights, head and loss history. LP-FT is killed in its second phase (steps 4-6); ARF also with
    decoding workers, whose read-ahead must not count as consumed."""
    import pipeline.stages.train as tr

    tmp, packed = setup
    spec = model_dir_spec(tmp / "base")
    tmp = tmp / f"workers{workers}"
    p = TrainParams(steps=3, batch_size=6, anchor_batch_size=5, lr=1e-3, warmup_steps=1, eval_every=1, checkpoint_every=2,
                    num_workers=workers)
    whole = train(method, packed, spec, tmp / f"{method}_whole", p, params, seed=3)
    assert not tr.resume_path(tmp / f"{method}_whole").exists()  # removed once the model is written

    train_killed_after(monkeypatch, kill_at, method, packed, spec, tmp / f"{method}_resumed", p, params, seed=3)
    state = tr.resume_path(tmp / f"{method}_resumed")
    assert state.is_file() and not (tmp / f"{method}_resumed").exists()
    resumed = train(method, packed, spec, tmp / f"{method}_resumed", p, params, seed=3)
    assert [h.get("loss") for h in resumed["history"]] == [h.get("loss") for h in whole["history"]]
    wa, wb = weights(tmp / f"{method}_whole"), weights(tmp / f"{method}_resumed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    if method == "lpft":
        ha = torch.load(tmp / "lpft_whole/head.pt", weights_only=True)["weight"]
        hb = torch.load(tmp / "lpft_resumed/head.pt", weights_only=True)["weight"]
        assert torch.equal(ha, hb)
    assert not state.exists()


def test_a_resume_state_of_other_params_is_ignored(setup, caplog):
    import pipeline.stages.train as tr

    tmp, packed = setup
    spec = model_dir_spec(tmp / "base")
    p = TrainParams(steps=2, batch_size=6, lr=1e-3, warmup_steps=1, eval_every=1, checkpoint_every=1)
    tr.resume_path(tmp / "flyp_other").write_bytes(b"")  # placeholder, replaced below
    torch.save({"fingerprint": "another run", "step": 1}, tr.resume_path(tmp / "flyp_other"))
    out = train("flyp", packed, spec, tmp / "flyp_other", p, NoParams(), seed=1)
    assert "saved by a run with other params" in caplog.text and out["history"][0]["step"] == 0


def test_bf16_autocast_trains_close_to_fp32(setup):
    tmp, packed = setup
    spec = model_dir_spec(tmp / "base")
    runs = {}
    for precision in ("fp32", "bf16"):
        p = TrainParams(steps=2, batch_size=6, lr=1e-3, warmup_steps=1, eval_every=1, precision=precision)
        runs[precision] = train("flyp", packed, spec, tmp / f"flyp_{precision}", p, NoParams(), seed=2)
    a, b = runs["fp32"]["history"][1]["loss"], runs["bf16"]["history"][1]["loss"]
    assert a != b and abs(a - b) / a < 0.02  # bf16 rounds (about 3 significant digits), same computation


DDP_SCRIPT = """
import json, sys
from pathlib import Path
from pipeline.core.methods import get_method
from pipeline.stages.train import TrainParams, train
method, packed, base, out, split, micro = sys.argv[1:7]
p = TrainParams(steps=3, batch_size=6, anchor_batch_size=4, lr=1e-3, warmup_steps=1, eval_every=1, data_split=split,
                micro_batch_size=int(micro) or None)
r = train(method, Path(packed), base, Path(out), p, get_method(method).params(), seed=5)
Path(out + ".history.json").write_text(json.dumps(r["history"]))
"""


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory):
    """The one-process reference of the gloo test, per method: trained once, here, in this process (with
    the thread count the test's subprocesses inherit, conftest.py); the ARF cases share it, as
    micro-batching is only the two-process run's."""
    tmp, packed = setup
    runs = {}

    def run(method: str) -> tuple[Path, list]:
        if method not in runs:
            out = tmp_path_factory.mktemp(f"one_{method}") / "model"
            p = TrainParams(steps=3, batch_size=6, anchor_batch_size=4, lr=1e-3, warmup_steps=1, eval_every=1,
                            data_split="sample")
            r = train(method, packed, model_dir_spec(tmp / "base"), out, p, get_method(method).params(), seed=5)
            runs[method] = out, r["history"]
        return runs[method]

    return run


@pytest.mark.parametrize("method,micro", [("arf", 0), ("ft", 0), ("arf", 2)])
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(setup, one_process, tmp_path, method, micro):
    """torchrun with 2 CPU processes (gloo), global batch 6 = 2 x 3, against 1 process with batch 6:
    the same loss at every step within 1e-5 relative (summation order differs), and the same weights
    within 1e-5 absolute (measured: ~1e-7). ARF covers the gathered contrastive terms, FT the per-rank
    head loss; ARF with micro-batches of 2 (per-rank batch 3) the GradCache path's hand-averaged gradients."""
    import subprocess
    import sys

    from pipeline.core.models import model_dir_spec

    tmp, packed = setup
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    base = model_dir_spec(tmp / "base")
    from helpers import TEST_MODEL_CONFIGS

    env = {k: v for k, v in __import__("os").environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["ARF_MODEL_CONFIGS"] = str(TEST_MODEL_CONFIGS)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), method, str(packed), base, str(tmp_path / "two"), "sample", str(micro)],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    one, h1 = one_process(method)
    h2 = json.loads((tmp_path / "two.history.json").read_text())
    losses1 = [h["loss"] for h in h1 if "loss" in h]
    losses2 = [h["loss"] for h in h2 if "loss" in h]
    assert len(losses1) == len(losses2) == 3
    assert losses1 == pytest.approx(losses2, rel=1e-5)
    w1, w2 = weights(one), weights(tmp_path / "two")
    diffs = weight_diffs(w1, w2)
    assert diffs[-1][0] < 1e-5, diffs[-8:]
    assert any(not torch.equal(w1[k], weights(tmp / "base")[k]) for k in w1)  # it trained


def test_shard_split_gives_each_rank_its_own_shards(tmp_path):
    from helpers import make_corpus_shards

    from pipeline.io.shards import SkipCounter
    from pipeline.stages.train import raw_stream

    root, _ = make_corpus_shards(tmp_path / "c", 12, max_per_shard=3)  # 4 shards
    keys = {}
    for rank in (0, 1):
        stream = raw_stream(root, seed=0, buffer=10, skips=SkipCounter(), rank=rank, world=2)
        keys[rank] = {next(stream)["__key__"] for _ in range(6)}  # one epoch of this rank's 2 shards
    assert len(keys[0]) == len(keys[1]) == 6 and not keys[0] & keys[1]
    with pytest.raises(ValueError, match="4 shard\\(s\\) for 8 ranks"):
        next(raw_stream(root, 0, 10, SkipCounter(), rank=0, world=8))


def test_nproc_per_node_relaunches_the_command_under_torchrun(monkeypatch):
    import sys

    import pipeline.core.distributed as tr

    calls = []
    monkeypatch.setattr(tr.os, "execv", lambda exe, args: calls.append(args))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    tr.relaunch_under_torchrun(1, ["stages/train.py", "arf", "0"])
    assert calls == []
    tr.relaunch_under_torchrun(4, ["stages/train.py", "arf", "0"])
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                      "stages/train.py", "arf", "0"]]
    monkeypatch.setenv("WORLD_SIZE", "4")  # already a torchrun worker: no second launch
    tr.relaunch_under_torchrun(4, ["stages/train.py", "arf", "0"])
    assert len(calls) == 1


@pytest.mark.parametrize("method,params", [("arf", ArfParams()), ("lpft", NoParams())])
def test_micro_batches_give_the_whole_batch_gradients(setup, method, params):
    """GradCache: encoding a batch of 6 in chunks of 2 gives the same run as all at once (same
    losses within 1e-5 relative, same weights within 1e-5; attention key biases as in the DDP test)."""
    tmp, packed = setup
    spec = model_dir_spec(tmp / "base")
    runs = {}
    for mb in (None, 2):
        p = TrainParams(steps=3, batch_size=6, anchor_batch_size=4, lr=1e-3, warmup_steps=1, eval_every=1,
                        micro_batch_size=mb)
        runs[mb] = train(method, packed, spec, tmp / f"{method}_mb{mb}", p, params, seed=4)
    l1 = [h["loss"] for h in runs[None]["history"] if "loss" in h]
    l2 = [h["loss"] for h in runs[2]["history"] if "loss" in h]
    assert l1 == pytest.approx(l2, rel=1e-5)
    w1, w2 = weights(tmp / f"{method}_mbNone"), weights(tmp / f"{method}_mb2")
    diffs = weight_diffs(w1, w2)
    assert diffs[-1][0] < 1e-5, diffs[-5:]
    assert any(not torch.equal(w1[k], weights(tmp / "base")[k]) for k in w1)


@pytest.mark.parametrize("method,params", [("arf", ArfParams()), ("lpft", NoParams())])
def test_decoding_workers_leave_the_run_bit_identical(setup, monkeypatch, method, params):
    """train.num_workers: 2 decoding processes per stream give the same losses and weights as decoding
    in the training process (they decode ahead in stream order), and stop with the run."""
    import multiprocessing

    import pipeline.stages.train as tr

    running = []
    real_log = tr._log
    monkeypatch.setattr(tr, "_log", lambda *a: (running.append(len(multiprocessing.active_children())), real_log(*a)))
    tmp, packed = setup
    spec = model_dir_spec(tmp / "base")
    p0 = TrainParams(steps=3, batch_size=6, anchor_batch_size=5, lr=1e-3, warmup_steps=1, eval_every=1)
    p2 = TrainParams(**{**p0.__dict__, "num_workers": 2})
    before = set(multiprocessing.active_children())
    a = train(method, packed, spec, tmp / f"{method}_w0", p0, params, seed=4)
    assert max(running) == len(before)
    running.clear()
    b = train(method, packed, spec, tmp / f"{method}_w2", p2, params, seed=4)
    assert max(running) == len(before) + 2 * (2 if method == "arf" else 1)  # a pool per stream: finetune (+ anchors)
    assert [h.get("loss") for h in a["history"]] == [h.get("loss") for h in b["history"]]
    wa, wb = weights(tmp / f"{method}_w0"), weights(tmp / f"{method}_w2")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert set(multiprocessing.active_children()) <= before  # the pools are gone


def _spy_loss(monkeypatch, method_name, seen: list):
    """Record each step's inputs as the trainer hands them to the method's loss."""
    from pipeline.core.methods import get_method

    method = get_method(method_name)
    real = method.loss

    def spy(step, p):
        seen.append({"captions": list(step.captions),
                     "anchor_images": None if step.anchor_images is None else step.anchor_images.clone()})
        return real(step, p)

    monkeypatch.setattr(method, "loss", spy)


def test_the_anchor_stream_follows_the_seed(setup, monkeypatch):
    """The same seed draws the same anchors in the same order; another seed draws others."""
    tmp, packed = setup
    p = TrainParams(steps=2, batch_size=6, anchor_batch_size=5, lr=1e-3, warmup_steps=1, eval_every=100)
    drawn = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        seen = []
        _spy_loss(monkeypatch, "arf", seen)
        train("arf", packed, model_dir_spec(tmp / "base"), tmp / f"anchor_seed_{name}", p, ArfParams(), seed=seed)
        monkeypatch.undo()
        assert len(seen) == 2 and all(s["anchor_images"].shape[0] == 5 for s in seen)
        drawn[name] = torch.cat([s["anchor_images"] for s in seen])
    assert torch.equal(drawn["a"], drawn["b"])
    firsts = [drawn[n][:5] for n in ("a", "c")]  # the first anchor batch already differs
    assert not torch.equal(*firsts)


def test_a_corrupt_finetune_sample_is_skipped_and_counted(setup, tmp_path, monkeypatch):
    """A truncated PNG in the finetune shards: the run completes on the readable samples, in stream
    order (shuffle buffer 1 keeps the written order), and counts the bad one each time it is read."""
    import shutil

    tmp, packed = setup
    src, samples = make_corpus_shards(tmp_path / "src", 8, corrupt=(3,), size=32)
    bad = tmp_path / "packed"
    write_shards(bad / "finetune", ({"__key__": s["__key__"], "png": s["png"], "txt": s["txt"],
                                     "cls": str(CLASSES.index(meta.meta["color"]))}
                                    for s, meta in zip(iter_samples(src), samples)))
    shutil.copytree(packed / "val", bad / "val")
    shutil.copy(packed / "classes.json", bad / "classes.json")
    seen = []
    _spy_loss(monkeypatch, "flyp", seen)
    p = TrainParams(steps=2, batch_size=6, lr=1e-3, warmup_steps=1, eval_every=100, shuffle_buffer=1)
    result = train("flyp", bad, model_dir_spec(tmp / "base"), tmp_path / "out", p, NoParams(), seed=0)
    # samples 0-7 in order, 3 unreadable: step 1 reads 0 1 2 [3] 4 5 6, step 2 reads 7, then 0 1 2 [3] 4 5
    caption = [s.caption for s in samples]
    assert [s["captions"] for s in seen] == [[caption[i] for i in (0, 1, 2, 4, 5, 6)],
                                            [caption[i] for i in (7, 0, 1, 2, 4, 5)]]
    assert result["skipped"] == 2
    assert [h["step"] for h in result["history"]] == [0, 1, 2] and (tmp_path / "out/checkpoint.pt").is_file()


def test_the_learning_rate_each_step_trains_with_warms_up_then_decays_by_cosine(setup, monkeypatch):
    """The lr the optimiser holds at each of its steps: linear warm-up over warmup_steps, then cosine
    to zero over the phase, restarted for LP-FT's second phase (computed here from the definition)."""
    tmp, packed = setup
    used = []

    class SpyAdamW(torch.optim.AdamW):
        def step(self, *args, **kwargs):
            used.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    steps, warmup, lr = 4, 2, 1e-3
    p = TrainParams(steps=steps, batch_size=6, lr=lr, warmup_steps=warmup, eval_every=100)
    train("lpft", packed, model_dir_spec(tmp / "base"), tmp / "lpft_lr", p, NoParams(), seed=0)
    # warm-up factors (s + 1) / 2 = 0.5, 1, 1, 1; cosine 0.5 (1 + cos(pi s / 4)) = 1, 0.854, 0.5, 0.146
    expected = [lr * min(1.0, (s + 1) / warmup) * (1 + math.cos(math.pi * s / steps)) / 2 for s in range(steps)]
    assert expected == pytest.approx([5e-4, 8.535534e-4, 5e-4, 1.464466e-4], rel=1e-6)
    assert used == pytest.approx(expected + expected, rel=1e-9)  # LP, then FT with a fresh schedule


@pytest.mark.parametrize("workers", [0, 2])
def test_a_split_that_fits_in_memory_is_decoded_once_and_streams_as_without_the_cache(tmp_path, monkeypatch, workers):
    """Three epochs of an 8-sample split with a corrupt PNG, kept in memory and not: the same keys in
    the same order, equal image tensors, the bad sample counted at each draw; kept, each sample is
    decoded once (in this process: counted with no workers). Over the budget, nothing is kept."""
    from open_clip.transform import image_transform

    import pipeline.stages.train as tr
    from pipeline.io.shards import SkipCounter

    root, _ = make_corpus_shards(tmp_path / "c", 8, corrupt=(3,), size=32, max_per_shard=3)
    preprocess = image_transform(32, is_train=False)
    decoded = []
    real_decode = tr.decode_image
    monkeypatch.setattr(tr, "decode_image", lambda data, key: (decoded.append(key), real_decode(data, key))[1])

    def draws(cache_bytes):
        decoded.clear()
        skips = SkipCounter()
        stream = tr.SampleStream(root, preprocess, seed=3, buffer=4, skips=skips, workers=workers, cache_bytes=cache_bytes)
        it = iter(stream)
        out = [next(it) for _ in range(3 * 7)]
        stream.close()
        return [s["key"] for s in out], torch.stack([s["image"] for s in out]), skips.skipped, len(decoded), stream

    keys, images, skipped, n_decoded, _ = draws(0)
    kept_keys, kept_images, kept_skipped, kept_decoded, kept = draws(1 << 30)
    assert kept_keys == keys and len(set(keys)) == 7
    assert torch.equal(kept_images, images)
    assert kept_skipped == skipped >= 2
    assert len(kept._cache) == 8  # 7 images and the bad sample's error
    if workers == 0:
        assert n_decoded == 3 * 7 + skipped and kept_decoded == 8
    over = draws(3 * 32 * 32 * 4 * 8 - 1)[-1]  # one byte short of the 8 images
    assert over._cache is None


def test_a_frozen_image_tower_encodes_each_drawn_image_once_and_a_killed_lp_resumes_bit_identical(setup, monkeypatch):
    """LP draws 32 images from a split of 20: each image goes through the frozen tower once, one at
    a time, so a run killed and started again computes the same embeddings and ends byte-equal."""
    import pipeline.core.methods as methods
    import pipeline.stages.train as tr

    tmp, packed = setup
    spec = model_dir_spec(tmp / "base")
    p = TrainParams(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, eval_every=1, checkpoint_every=1)
    encoded = []
    real_image = methods.Step._image
    monkeypatch.setattr(methods.Step, "_image", lambda self, x: encoded.append(x.shape[0]) or real_image(self, x))
    drawn = []
    real_step = methods.Step.__init__

    def recording_init(self, *a, **kw):
        real_step(self, *a, **kw)
        drawn.extend(self.image_keys)

    monkeypatch.setattr(methods.Step, "__init__", recording_init)
    whole = train("lp", packed, spec, tmp / "lp_whole", p, NoParams(), seed=3)
    assert len(drawn) == 32 and encoded == [1] * len(set(drawn)) and len(set(drawn)) <= 20

    train_killed_after(monkeypatch, 2, "lp", packed, spec, tmp / "lp_resumed", p, NoParams(), seed=3)
    resumed = train("lp", packed, spec, tmp / "lp_resumed", p, NoParams(), seed=3)
    assert [h.get("loss") for h in resumed["history"]] == [h.get("loss") for h in whole["history"]]
    ha = torch.load(tmp / "lp_whole/head.pt", weights_only=True)["weight"]
    hb = torch.load(tmp / "lp_resumed/head.pt", weights_only=True)["weight"]
    assert torch.equal(ha, hb)


def test_cached_frozen_embeddings_are_the_towers_own():
    from pipeline.core.methods import Step

    torch.manual_seed(0)
    tower = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    model = type("M", (torch.nn.Module,), {"encode_image": lambda self, x: tower(x)})()
    images = torch.randn(5, 3, 2, 2)
    known = {}
    for keys, rows in ((["a", "b", "c"], [0, 1, 2]), (["c", "d", "a"], [2, 3, 0])):
        step = Step(model=model, tokenizer=None, images=images[rows], labels=torch.zeros(3), captions=[], prompts=[],
                    prompt_labels=torch.zeros(0), train_image=False, frozen_image_emb=known, image_keys=keys)
        expected = torch.nn.functional.normalize(tower(images[rows]), dim=-1)
        assert torch.allclose(step.image_emb, expected, atol=1e-6) and not step.image_emb.requires_grad
    assert sorted(known) == ["a", "b", "c", "d"]
