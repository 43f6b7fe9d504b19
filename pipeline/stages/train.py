"""A stateless trainer: reads only the packed shards, the base model and its params.

One protocol for every method (steps, batch size, optimiser, schedule, seed); the method only decides
the loss. Validation accuracy on the ID validation split is logged along the way (dvclive), so the
budget can be checked for convergence without looking at any OOD set.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
import typer
import webdataset as wds
from tqdm import tqdm

from pipeline.config import DEVICE, register_params
from pipeline.core.distributed import Dist, relaunch_under_torchrun
from pipeline.core.encode import batched, channels_last, inference_batch_size, pixels, zeroshot_head
from pipeline.core.methods import HEAD, IMAGE, TEXT, Step, get_method
from pipeline.core.models import (
    ModelSpec,
    create_model,
    freeze_batchnorm,
    load_tensors,
    model_dir_spec,
    portable_spec,
    write_model_dir,
)
from pipeline.core.schedule import lr_factor
from pipeline.io.digest import tree_digest
from pipeline.io.shards import (
    IMAGE_EXTS,
    SkipCounter,
    decode_image,
    every_shard,
    read_shard_info,
    sample_image_bytes,
)
from pipeline.stages import _command as cmd

log = logging.getLogger(__name__)


@register_params("train")
@dataclass
class TrainParams:
    steps: int = field(default=120, metadata={"gt": 0})  # per phase (LP-FT has two)
    batch_size: int = field(default=32, metadata={"gt": 1})
    anchor_batch_size: int = field(default=32, metadata={"gt": 1})  # per step, for methods with anchors
    lr: float = field(default=1e-5, metadata={"gt": 0})
    weight_decay: float = field(default=0.1, metadata={"min": 0})
    warmup_steps: int = field(default=10, metadata={"min": 0})
    eval_every: int = field(default=20, metadata={"gt": 0})
    shuffle_buffer: int = field(default=2000, metadata={"gt": 0})
    # auto: CUDA when present, else CPU. Results are bit-identical run to run on one device only.
    device: str = field(default="auto", metadata=DEVICE)
    # fp32, or autocast to bf16 / fp16 (fp16 with loss scaling) for the forward passes on a GPU.
    precision: str = field(default="fp32", metadata={"choices": ("fp32", "bf16", "fp16")})
    # Save the full training state every this many steps (0: never) beside the output folder; a
    # killed run started again with the same params resumes from it and ends bit-identical to an
    # uninterrupted run (the data streams are fast-forwarded without decoding).
    checkpoint_every: int = field(default=0, metadata={"min": 0})
    # Data-parallel runs (torchrun): how the global batch (batch_size, anchor_batch_size: global, split
    # evenly over ranks) is shared out. sample: every rank reads the same seeded stream and keeps its
    # slice, so the run matches one process at the same global batch (every rank decodes the whole
    # batch: exact, but decoding does not scale with ranks). shard: each rank streams its own shards
    # (webdataset-style node splitting), decoding 1/world of the data; batches then differ from a
    # one-process run. Ignored in a single process.
    data_split: str = field(default="sample", metadata={"choices": ("sample", "shard")})
    # Processes on this machine: > 1 relaunches the train command under torchrun (one per GPU). Runs
    # across nodes are started with torchrun on each node instead (README: Running the paper's setup).
    nproc_per_node: int = field(default=1, metadata={"gt": 0})
    # Encode each rank's batch in chunks of this many samples (GradCache): the gradients of the whole
    # batch, with the activation memory of one chunk; costs one extra forward pass. null: all at once.
    micro_batch_size: int | None = field(default=None, metadata={"gt": 0})
    # Processes decoding and preprocessing images for each stream of each rank (0: this process).
    # They decode ahead in stream order, so the run is bit-identical whatever the count.
    num_workers: int = field(default=0, metadata={"min": 0})


_IMAGE_MEMBERS = frozenset(IMAGE_EXTS)


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def raw_stream(root: Path, seed: int, buffer: int, skips: SkipCounter, rank: int = 0, world: int = 1) -> Iterator[dict]:
    """Endless, seeded, shuffled stream of undecoded samples from a shard folder (epoch after epoch).
    Its order depends only on the seed and the shards, so skipping n samples reproduces any position.
    With world > 1, this rank's shards only (every world-th, from rank)."""
    urls = read_shard_info(root).urls
    if world > 1:
        if len(urls) < world:
            raise ValueError(f"{root}: {len(urls)} shard(s) for {world} ranks; use train.data_split: sample or more shards")
        urls = urls[rank::world]
    epoch = 0
    while True:
        rng = random.Random(seed * 100003 + epoch)
        order = urls[:]
        rng.shuffle(order)
        yield from wds.WebDataset(order, shardshuffle=False, handler=skips, empty_check=False,
                                  nodesplitter=every_shard).shuffle(buffer, initial=buffer, rng=rng)
        epoch += 1


_WORKER_PREPROCESS = None


def _start_decode_worker(preprocess) -> None:
    global _WORKER_PREPROCESS
    _WORKER_PREPROCESS = preprocess
    torch.set_num_threads(1)  # one core per worker, as DataLoader's workers


def _decode(preprocess, key: str, sample: dict):
    """The preprocessed image of a raw sample, or the error that makes it a bad sample."""
    try:
        return preprocess(decode_image(sample_image_bytes(sample)[1], key))
    except (KeyError, ValueError) as e:
        return e


def _decode_in_worker(key: str, sample: dict):
    return _decode(_WORKER_PREPROCESS, key, sample)


# Preprocessed images a stream keeps in memory when its whole split fits: the embedded default's
# finetune split (241 images of 110 KB) is drawn ~16 times in 120 steps of 32, its anchors (480) 8
# times: 38,400 draws in the main command's training at 0.54-0.61 ms a decode on 2 cores (train@lp
# 1.4 s faster with the cache). The transform is the deterministic evaluation one, so a kept image is
# the image decoding would give. ImageNet-scale splits never fit.
DECODED_CACHE_BYTES = 1 << 30
_WINDOW_DRAIN_S = 60.0  # per pending decode when a stream closes; a decode that hangs is then killed


def _cache_key(sample: dict) -> tuple:
    return sample.get("__url__"), sample["__key__"]


class _Recalled:
    """A kept image in the decode window, answering like the pool's pending results."""

    def __init__(self, image):
        self.image = image

    def get(self):
        return self.image

    def wait(self, timeout=None):
        pass


class SampleStream:
    """Decoded samples of `raw_stream`; counts the raw samples it consumed, so a resumed run can
    skip exactly those (`skip`) without decoding them again. Bad samples are skipped and counted;
    a split that fits in `cache_bytes` is decoded once (bad samples included: each draw of one is
    counted again, as without the cache).

    With workers, decoding runs in a process pool a bounded window ahead of the consumer and results
    are taken in stream order. Why not webdataset's worker splitting (each DataLoader worker reading
    its own shards): it changes the sample order with the worker count, and with it the run, and a
    resume would need every worker's position; an ordered window keeps runs bit-identical and
    `consumed` exact, at the cost of the main process reading the tar bytes (cheap next to decoding).
    """

    def __init__(self, root: Path, preprocess, seed: int, buffer: int, skips: SkipCounter, rank: int = 0,
                 world: int = 1, workers: int = 0, cache_bytes: int = DECODED_CACHE_BYTES):
        self.root, self.preprocess, self.skips, self.workers = root, preprocess, skips, workers
        self.raw = raw_stream(root, seed, buffer, skips, rank, world)
        self.consumed = 0
        self.size = read_shard_info(root).num_samples
        self.cache_bytes = cache_bytes
        self._cache: dict | None = {} if cache_bytes > 0 else None
        self._sized = False

    def _remember(self, sample: dict, image):
        """Keep a decoded image for the next epochs if the whole split fits in `cache_bytes`, judged
        on the first image (the transform gives every image one size)."""
        if self._cache is None:
            return image
        if isinstance(image, torch.Tensor):
            if not self._sized:
                self._sized = True
                if self.size * image.element_size() * image.nelement() > self.cache_bytes:
                    self._cache = None
                    return image
            # a worker's tensor lives in shared memory, one file descriptor each: keep a private copy
            self._cache[_cache_key(sample)] = image.clone() if image.is_shared() else image
        else:
            self._cache[_cache_key(sample)] = image  # a bad sample stays bad
        return image

    def _recalled(self, sample: dict):
        return None if self._cache is None else self._cache.get(_cache_key(sample))

    def skip(self, n: int) -> None:
        for _ in range(n):
            next(self.raw)
        self.consumed += n

    def _decoded(self) -> Iterator[tuple[dict, object]]:
        if not self.workers:
            for s in self.raw:
                image = self._recalled(s)
                yield s, image if image is not None else self._remember(s, _decode(self.preprocess, s["__key__"], s))
            return
        import collections

        import torch.multiprocessing as mp  # tensors come back through shared memory, as DataLoader's

        # fork: the workers inherit the transform (no pickling of it) and never touch CUDA
        pool = mp.get_context("fork").Pool(self.workers, _start_decode_worker, (self.preprocess,))
        window: collections.deque = collections.deque()
        try:
            for s in self.raw:
                meta = {k: v for k, v in s.items() if k not in _IMAGE_MEMBERS}
                image = self._recalled(s)
                if image is None:
                    image = {k: v for k, v in s.items() if k in _IMAGE_MEMBERS}  # all a worker needs
                    window.append((meta, pool.apply_async(_decode_in_worker, (s["__key__"], image))))
                else:
                    window.append((meta, _Recalled(image)))
                if len(window) >= 4 * self.workers:
                    meta, result = window.popleft()
                    yield meta, self._remember(meta, result.get())
        finally:  # the generator is closed when training ends (or unwinds on an error)
            # Let the window's decodes finish first: terminate() with results still pending can
            # find the pool's result thread already gone and raise "Cannot have cache with
            # result_hander not alive" (CPython's Pool; ~1 stream close in 8 in a test here).
            for _, result in window:
                result.wait(_WINDOW_DRAIN_S)
            pool.terminate()

    def close(self) -> None:
        if hasattr(self, "_it"):
            self._it.close()

    def __iter__(self) -> Iterator[dict]:
        failed = 0
        self._it = self._decoded()
        for s, image in self._it:
            self.consumed += 1
            key = s["__key__"]
            if isinstance(image, Exception):
                self.skips(image)
                failed += 1
                if failed > self.size:
                    raise ValueError(f"{self.root}: no readable samples")
                continue
            failed = 0
            yield {"key": key, "image": image, "txt": _text(s.get("txt", b"")),
                   "cls": int(_text(s["cls"])) if "cls" in s else -1}


def load_val(root: Path, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    from pipeline.io.shards import iter_shard_images

    images, labels, skips = [], [], SkipCounter()
    for key, image, s in iter_shard_images(root, skips):
        images.append(preprocess(image))
        labels.append(int(_text(s["cls"])))
    if not images:
        raise ValueError(f"{root}: no decodable validation image ({skips.skipped} skipped); the ID validation "
                         f"split is what training reports and WiSE-FT's alpha is chosen on")
    return torch.stack(images), torch.tensor(labels)


@torch.inference_mode()
def val_accuracy(model, tokenizer, classnames, templates, images, labels, head: torch.Tensor | None = None) -> float:
    modes = [(m, m.training) for m in model.modules()]  # put back as found: frozen parts stay in eval mode
    model.eval()
    head = head if head is not None else zeroshot_head(model, tokenizer, classnames, templates)
    n = inference_batch_size(images.device)
    feats = torch.cat([F.normalize(model.encode_image(pixels(images[i:i + n], images.device)), dim=-1)
                       for i in range(0, len(images), n)])
    acc = ((feats @ head.t()).argmax(1) == labels).float().mean().item() * 100
    for m, training in modes:
        m.training = training
    return acc


def set_trainable(model: torch.nn.Module, parts: frozenset[str]) -> list[torch.nn.Parameter]:
    """Switch requires_grad by part (image = model.visual, text = everything else); return the trained ones."""
    trained = []
    for name, p in model.named_parameters():
        part = IMAGE if name.startswith("visual.") else TEXT
        p.requires_grad_(part in parts)
        if part in parts:
            trained.append(p)
    return trained


def _fingerprint(method_name: str, seed: int, base_spec: str, params: TrainParams, method_params, shards_over: int,
                 packed_dir: Path) -> dict:
    """What a resume state must match, part by part: the run it was saved from (method, seed, params)
    and everything that run read (packed data, base weights, the code), so that a rerun after any
    input changed starts fresh instead of finishing a hybrid of two runs."""
    from dataclasses import asdict

    train = {k: v for k, v in asdict(params).items() if k not in ("checkpoint_every", "nproc_per_node", "num_workers")}
    spec = ModelSpec.parse(base_spec)
    return {"run": json.dumps({"method": method_name, "seed": seed, "train": train, "method_params": asdict(method_params),
                               "shards_over_ranks": shards_over}, sort_keys=True),
            "packed data": tree_digest(packed_dir),
            "base model": tree_digest(spec.pretrained) if spec.is_local_checkpoint else portable_spec(spec),
            "code": tree_digest(Path(__file__).parents[1], (".py", ".json"))}


def resume_path(out_dir: Path) -> Path:
    # Beside the output, not in it: DVC deletes a stage's outputs before running it again.
    return out_dir.parent / f".{out_dir.name}.resume.pt"


def train(method_name: str, packed_dir: Path, base_spec: str, out_dir: Path, params: TrainParams,
          method_params, live_dir: Path | None = None, seed: int = 0) -> dict:
    method = get_method(method_name)
    if not method.trains:
        raise ValueError(f"method {method_name!r} trains nothing: evaluate the base model folder instead")
    dd = Dist.init(params.device)
    device = dd.device
    torch.manual_seed(seed)
    rng = random.Random(seed)
    classes = json.loads((packed_dir / "classes.json").read_text())
    classnames, templates = classes["classnames"], classes["templates"]
    lm = create_model(base_spec, device=str(device))
    model, tokenizer = channels_last(lm.model), lm.tokenizer
    head = head_init = None
    head_scale = model.logit_scale.exp().item()
    if method.uses_head:
        with torch.inference_mode():
            head_init = zeroshot_head(model, tokenizer, classnames, templates)
        head = torch.nn.Parameter(head_init.clone())
    skips = SkipCounter()
    by_shard = dd.world > 1 and params.data_split == "shard"
    split = (dd.rank, dd.world) if by_shard else (0, 1)
    b_ft, b_anchor = dd.share(params.batch_size, "train.batch_size"), dd.share(params.anchor_batch_size, "train.anchor_batch_size")
    ft_data = SampleStream(packed_dir / "finetune", lm.preprocess, seed, params.shuffle_buffer, skips, *split,
                           workers=params.num_workers)
    anchor_data = SampleStream(packed_dir / "anchors", lm.preprocess, seed + 1, params.shuffle_buffer, skips, *split,
                               workers=params.num_workers) if method.needs_anchors else None
    val_images, val_labels = load_val(packed_dir / "val", lm.preprocess)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.precision)
    scaler = torch.amp.GradScaler(device.type) if params.precision == "fp16" else None

    def val_acc() -> float:
        return val_accuracy(model, tokenizer, classnames, templates, val_images.to(device), val_labels.to(device),
                            None if head is None else head.detach())

    fingerprint = _fingerprint(method_name, seed, base_spec, params, method_params, dd.world if by_shard else 1,
                               packed_dir)
    state_path = resume_path(out_dir)
    state = _load_resume(state_path, fingerprint) if params.checkpoint_every else None
    if state is not None:
        model.load_state_dict(state["model"])
        if head is not None:
            head.data.copy_(state["head"])
        consumed = state["consumed"][dd.rank if by_shard else 0]
        ft_data.skip(consumed[0])
        if anchor_data is not None:
            anchor_data.skip(consumed[1])
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        log.warning("%s: resuming %s seed %d at step %d", state_path, method_name, seed, state["step"])
    else:
        history = None
    # sample split (and one process): every rank draws the global batch and keeps its slice
    ft_stream = batched(ft_data, b_ft if by_shard else params.batch_size)
    anchor_stream = batched(anchor_data, b_anchor if by_shard else params.anchor_batch_size) \
        if anchor_data is not None else None
    mine = (lambda items, b: items) if by_shard else (lambda items, b: items[dd.rank * b:(dd.rank + 1) * b])
    everyone = dd.gather_objects if by_shard else (lambda items: items)

    live = _make_live(live_dir if dd.rank == 0 else None, resume=state is not None)
    if history is None:
        history = [{"step": 0, "val_acc1": val_acc()}]
        _log(live, 0, history[0])
    step_i = 0
    for phase_i, parts in enumerate(method.phases):
        trained = set_trainable(model, parts)
        if head is not None:
            head.requires_grad_(HEAD in parts)
            trained += [head] if HEAD in parts else []
        # fused: one kernel over all parameters; on 2 CPU cores 11-15 ms a step for both towers
        # (26 M parameters) against 65-68 ms for the default multi-tensor AdamW
        opt = torch.optim.AdamW(trained, lr=params.lr, weight_decay=params.weight_decay,
                                fused=device.type in ("cpu", "cuda"))
        sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to zero
            opt, lambda s: lr_factor(s, params.steps, params.warmup_steps))
        first = 0
        if state is not None and step_i + params.steps > state["step"]:  # the phase the state was saved in
            first = state["step"] - step_i
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if scaler is not None:
                scaler.load_state_dict(state["scaler"])
            state = None
        elif state is not None:  # a finished phase: nothing to redo
            step_i += params.steps
            continue
        step_i += first
        model.train()
        freeze_batchnorm(model)
        # A frozen image tower is a feature extractor: in eval mode, so an image's embedding is the
        # same at every draw and is computed once per phase (`Step.frozen_image_emb`) when images
        # repeat: LP's 3,840 draws of the default's 241 finetune images (ImageNet's 61 k draws of
        # 1.28 M images would only fill memory).
        repeats = ft_data.size < params.steps * params.batch_size
        frozen_image_emb = {} if IMAGE not in parts and repeats else None
        if IMAGE not in parts:
            model.visual.eval()
        # GradCache backpropagates in several passes, which DDP's one-backward bookkeeping does not
        # follow: its gradients are averaged over ranks by hand (no overlap with the backward pass).
        loss_fn = method.loss if dd.world == 1 or params.micro_batch_size else \
            _data_parallel_loss(method, model, head, device)
        desc = f"train {method_name}" + (f" phase {phase_i + 1}/{len(method.phases)}" if len(method.phases) > 1 else "")
        for _ in tqdm(range(first, params.steps), desc=desc, unit="step", initial=first, total=params.steps,
                      disable=dd.rank > 0):
            step_i += 1
            drawn = next(ft_stream)
            batch = mine(drawn, b_ft)
            labels = torch.tensor([s["cls"] for s in batch])
            all_labels = torch.tensor(everyone([s["cls"] for s in drawn]))
            distinct = sorted(set(all_labels.tolist()))
            step = Step(
                model=model, tokenizer=tokenizer,
                images=pixels([s["image"] for s in batch], device), labels=labels.to(device),
                captions=everyone([s["txt"] for s in drawn]),
                prompts=[rng.choice(templates).replace("{c}", classnames[c]) for c in distinct],
                prompt_labels=torch.tensor(distinct).to(device), head=head, head_scale=head_scale,
                train_image=IMAGE in parts, frozen_image_emb=frozen_image_emb, image_keys=[s["key"] for s in batch],
                gather=dd.gather if dd.world > 1 else None, all_labels=all_labels.to(device) if dd.world > 1 else None,
                micro_batch=params.micro_batch_size,
            )
            if anchor_stream is not None:
                drawn_anchors = next(anchor_stream)
                step.anchor_images = pixels([s["image"] for s in mine(drawn_anchors, b_anchor)], device)
                step.anchor_captions = everyone([s["txt"] for s in drawn_anchors])
            with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                terms = loss_fn(step, method_params)
                loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if params.micro_batch_size:
                step.backward_encodings()
                if dd.world > 1:
                    dd.average_gradients(trained)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            lr = sched.get_last_lr()[0]  # the rate this step trained with, before the schedule moves on
            sched.step()
            value = (lambda x: x) if dd.world == 1 else dd.mean  # head terms are per-rank means
            record = {"loss": value(loss.item()), **{f"loss_{k}": value(v.item()) for k, v in terms.items()},
                      "lr": lr}
            # Checked on the values the record already synchronised: a NaN model is never written, and
            # no resume point is saved after the step that made it.
            bad = [k for k in terms if not math.isfinite(record[f"loss_{k}"])]
            if bad or not math.isfinite(record["loss"]):
                keys = [s["key"] for s in batch] + ([s["key"] for s in drawn_anchors] if anchor_stream is not None else [])
                values = ", ".join(f"{k}={record['loss_' + k]}" for k in terms)
                raise FloatingPointError(
                    f"train {method_name} seed {seed}: step {step_i}: loss term {', '.join(bad) or 'sum'} is not finite "
                    f"({values}); batch keys: {', '.join(keys[:8])}" + (f" and {len(keys) - 8} more" if len(keys) > 8 else ""))
            if step_i % params.eval_every == 0 or step_i == params.steps * len(method.phases):
                record["val_acc1"] = val_acc()
            history.append({"step": step_i, **record})
            _log(live, step_i, record)
            if params.checkpoint_every and step_i % params.checkpoint_every == 0 \
                    and step_i < params.steps * len(method.phases):
                consumed = [ft_data.consumed, 0 if anchor_data is None else anchor_data.consumed]
                consumed = dd.gather_objects([consumed]) if by_shard else [consumed]
                if dd.rank == 0:
                    _save_resume(state_path, fingerprint, step_i, model, head, opt, sched, scaler, consumed, rng, history)
                dd.barrier()
    for data in (ft_data, anchor_data):
        if data is not None:
            data.close()
    model.eval()
    set_trainable(model, frozenset((IMAGE, TEXT)))
    result = {"method": method_name, "seed": seed, "val_acc1_start": history[0]["val_acc1"],
              "val_acc1_end": history[-1].get("val_acc1"), "skipped": skips.skipped, "history": history}
    if dd.rank > 0:  # rank 0 writes the model; the weights are the same on every rank
        dd.barrier()
        return result
    head_record = None if head is None else {"weight": head.detach().cpu().clone(), "init": head_init.cpu(),
                                             "classnames": classnames}
    write_model_dir(model.cpu(), lm.spec.name, out_dir, head=head_record, method=method_name, base=portable_spec(base_spec),
                    seed=seed, steps=params.steps * len(method.phases), final_val_acc1=history[-1].get("val_acc1"))
    state_path.unlink(missing_ok=True)
    if live is not None:
        live.end()
    if skips.skipped:
        log.warning(skips.report(str(packed_dir)))
    dd.barrier()
    return result


def _data_parallel_loss(method, model, head, device):
    """The method's loss inside DistributedDataParallel, which averages gradients over ranks."""
    from torch.nn.parallel import DistributedDataParallel

    class _Loss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            if head is not None:
                self.head = head

        def forward(self, step, method_params):
            return method.loss(step, method_params)

    ddp = DistributedDataParallel(_Loss(), device_ids=[device.index] if device.type == "cuda" else None)
    return lambda step, method_params: ddp(step, method_params)


def _save_resume(path: Path, fingerprint: dict, step: int, model, head, opt, sched, scaler, consumed: list,
                 rng: random.Random, history: list[dict]) -> None:
    from pipeline.io.atomic import atomic_file

    state = {"fingerprint": fingerprint, "step": step, "model": model.state_dict(),
             "head": None if head is None else head.detach(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "scaler": None if scaler is None else scaler.state_dict(),
             "consumed": consumed,  # raw samples per rank: [[finetune, anchors], ...]
             "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "history": history}
    with atomic_file(path, "wb") as f:
        torch.save(state, f)


def _load_resume(path: Path, fingerprint: dict) -> dict | None:
    if not path.is_file():
        return None
    state = load_tensors(path)
    saved = state.get("fingerprint")
    changed = [part for part in fingerprint if not isinstance(saved, dict) or saved.get(part) != fingerprint[part]]
    if changed:
        what = {"run": "params"}
        log.warning("%s: saved by a run with other %s; starting from scratch", path,
                    " and ".join(what.get(part, part) for part in changed))
        return None
    return state


def _make_live(live_dir: Path | None, resume: bool = False):
    if live_dir is None:
        return None
    from dvclive import Live

    return Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None, resume=resume)


def _log(live, step: int, record: dict) -> None:
    if live is None:
        return
    live.step = step
    for k, v in record.items():
        if k != "step":  # dvclive's own step, not a metric
            live.log_metric(f"train/{k}" if k != "val_acc1" else "val/acc1", v)


def command(method: str = typer.Argument(..., help="a registered method (arf list)"),
            seed: int = typer.Option(0, help="seeds the data order, prompt choice and any random init"),
            packed: Path = typer.Option(...), base: Path = typer.Option(..., help="base model folder"),
            out: Path = typer.Option(..., help="model folder to write"),
            live: Optional[Path] = typer.Option(None, help="dvclive folder (training curves)"),
            params: Path = cmd.PARAMS) -> None:
    """Finetune the base model with one method on the packed shards."""
    p, t = cmd.section(params, "train"), time.time()
    relaunch_under_torchrun(p.nproc_per_node, sys.argv)
    try:
        get_method(method)
    except KeyError as e:
        typer.echo(f"error: {e.args[0]}", err=True)
        raise typer.Exit(2)
    method_params = getattr(cmd.section(params, "methods"), method)
    cmd.report(f"train {method} seed {seed}", t, train(method, packed, model_dir_spec(base), out, p, method_params,
                                                        live, seed))
