"""Every device-facing path run on a simulated second device (tests/simulated_device.py): a tensor left
on the CPU fails here as it would on a GPU, and the results equal the CPU run's up to float rounding."""
import contextlib

import pytest
import torch
from fixtures_captioners import build_tiny_blip, build_tiny_blip2
from helpers import make_corpus_shards, make_tiny_checkpoint, weight_diffs
from simulated_device import SIMULATED, DeviceMismatch, simulated_accelerator
from test_train import setup  # noqa: F401  (the tiny packed data and base model)
from test_wise_report import tiny  # noqa: F401  (a base, a finetuned model with a head, eval sets)

from pipeline.core.methods import (
    ArfParams,
    ArfTcaParams,
    NoParams,
    get_method,
    list_methods,
)
from pipeline.core.models import model_dir_spec
from pipeline.core.wise import evaluate_wise
from pipeline.stages.train import TrainParams, train

SIM = str(SIMULATED)


def test_the_simulated_device_fails_on_a_cpu_tensor_as_cuda_does():
    with simulated_accelerator() as dev:
        x = torch.ones(3, 2).to(dev)
        assert (x * torch.tensor(2.0)).device == dev  # CPU scalars mix, as on CUDA
        assert x[torch.tensor([0, 2])].shape == (2, 2)  # CPU indices too
        with pytest.raises(DeviceMismatch, match=f"{SIM} and cpu"):
            x @ torch.ones(2, 2)
        with pytest.raises(DeviceMismatch):
            torch.nn.functional.cross_entropy(x, torch.tensor([0, 1, 1]))
        y = torch.arange(3, device=x.device)
        assert y.device == dev and y.cpu().tolist() == [0, 1, 2] and (x.sum(1) + y).cpu().tolist() == [2, 3, 4]


LR = 1e-3
TRAINED = [m for m in list_methods() if get_method(m).trains]
VARIANTS = [pytest.param(m, get_method(m).params(), None, id=m) for m in TRAINED] + [
    pytest.param("arf", ArfParams(mixing="joint", anchor_logit_scale=50.0), None, id="arf-joint-fixed-scale"),
    pytest.param("arf_tca", ArfTcaParams(anchor_logit_scale=50.0), None, id="arf_tca-fixed-scale"),
    pytest.param("arf", ArfParams(), 2, id="arf-gradcache"), pytest.param("lpft", NoParams(), 2, id="lpft-gradcache"),
]


@pytest.mark.parametrize("method,params,micro", VARIANTS)
def test_each_method_trains_on_a_strict_device_as_on_the_cpu(setup, request, method, params, micro):  # noqa: F811
    tmp, packed = setup
    out = {d: tmp / f"dev_{request.node.callspec.id}_{d}" for d in ("cpu", SIM)}
    spec = model_dir_spec(tmp / "base")
    runs = {}
    for device in ("cpu", SIM):
        p = TrainParams(steps=2, batch_size=6, anchor_batch_size=5, lr=LR, warmup_steps=1, eval_every=1,
                        micro_batch_size=micro, device=device)
        with simulated_accelerator() if device == SIM else contextlib.nullcontext():
            runs[device] = train(method, packed, spec, out[device], p, params, seed=3)
    losses = {d: [h["loss"] for h in r["history"] if "loss" in h] for d, r in runs.items()}
    assert len(losses["cpu"]) == 2 * len(get_method(method).phases)
    assert losses[SIM] == pytest.approx(losses["cpu"], rel=1e-5)
    a, b = (torch.load(out[d] / "checkpoint.pt", weights_only=True)["state_dict"] for d in ("cpu", SIM))
    if get_method(method).uses_head:
        a["head"], b["head"] = (torch.load(out[d] / "head.pt", weights_only=True)["weight"] for d in ("cpu", SIM))
    # Other kernels (the math attention path on this device) round differently, and Adam turns rounding
    # on near-zero gradients into steps of up to lr: the weights agree to well within one step.
    diffs = weight_diffs(a, b)
    assert diffs[-1][0] < LR / 2, diffs[-4:]


def test_wise_evaluation_scores_on_a_strict_device_as_on_the_cpu(tiny):  # noqa: F811
    tmp, eval_root, packed = tiny
    records = {}
    for device in ("cpu", SIM):
        with simulated_accelerator() if device == SIM else contextlib.nullcontext():
            records[device] = evaluate_wise(tmp / "ft", tmp / "base", eval_root, packed, tmp / "heldout", [0.0, 0.5, 1.0],
                                            tmp / f"dev_{device}.jsonl", {"method": "ft"}, device=device)
    assert len(records["cpu"]) == 3 * 5
    for a, b in zip(records["cpu"], records[SIM]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)


@pytest.mark.parametrize("backend", ["nn", "blip", "blip2"])
def test_captioners_caption_on_a_strict_device_as_on_the_cpu(tmp_path, monkeypatch, backend):
    import pipeline.core.captioners.blip as captioners
    from pipeline.io.records import read_captions
    from pipeline.stages.caption import CaptionParams, caption_finetune_set
    from pipeline.stages.embed_corpus import embed_corpus

    monkeypatch.setattr(captioners, "_resolve_device", lambda device, backend: device)  # it knows cpu and cuda only
    finetune, _ = make_corpus_shards(tmp_path / "finetune", 5, size=32)
    spec, folder = "", None
    if backend == "nn":
        name, ckpt = make_tiny_checkpoint(tmp_path)
        spec = f"{name}:{ckpt}"
        corpus, _ = make_corpus_shards(tmp_path / "corpus", 8, size=32, key_prefix="c")
        embed_corpus(corpus, spec, tmp_path / "emb", batch_size=4)
    else:
        folder = {"blip": build_tiny_blip, "blip2": build_tiny_blip2}[backend](tmp_path / backend)
    captions = {}
    for device in ("cpu", SIM):
        params = CaptionParams(backend=backend, model_path=folder and str(folder), num_captions=2, batch_size=3,
                               max_new_tokens=4, device=device)
        with simulated_accelerator() if device == SIM else contextlib.nullcontext():
            caption_finetune_set(finetune, tmp_path / f"{device}.jsonl", params, spec, tmp_path / "emb")
        captions[device] = read_captions(tmp_path / f"{device}.jsonl")
    assert len(captions["cpu"]) == 5 and captions[SIM] == captions["cpu"]
