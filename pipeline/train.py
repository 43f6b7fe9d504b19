"""A stateless trainer: reads only the packed shards, the base model and its params.

One protocol for every method (steps, batch size, optimiser, schedule, seed); the method only decides
the loss. Validation accuracy on the ID validation split is logged along the way (dvclive), so the
budget can be checked for convergence without looking at any OOD set.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
import webdataset as wds
from tqdm import tqdm

from .embed import batched, zeroshot_head
from .methods import HEAD, IMAGE, TEXT, Step, get_method, list_methods
from .models import create_model, freeze_batchnorm, portable_spec, write_model_dir
from .params import register_params
from .shards import SkipCounter, decode_image, read_shard_info, sample_image_bytes

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


# One field per registered method, typed by its params dataclass: `methods.<name>` in params.yaml.
MethodsParams = register_params("methods")(make_dataclass(
    "MethodsParams", [(m, get_method(m).params, field(default_factory=get_method(m).params)) for m in list_methods()]))


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def sample_stream(root: Path, preprocess, seed: int, buffer: int, skips: SkipCounter) -> Iterator[dict]:
    """Endless, seeded, shuffled stream of decoded samples from a shard folder (epoch after epoch)."""
    urls = read_shard_info(root).urls
    epoch = 0
    while True:
        rng = random.Random(seed * 100003 + epoch)
        order = urls[:]
        rng.shuffle(order)
        ds = wds.WebDataset(order, shardshuffle=False, handler=skips, empty_check=False).shuffle(buffer, initial=buffer, rng=rng)
        n = 0
        for s in ds:
            key = s["__key__"]
            try:
                image = preprocess(decode_image(sample_image_bytes(s)[1], key))
            except (KeyError, ValueError) as e:
                skips(e)
                continue
            n += 1
            yield {"key": key, "image": image, "txt": _text(s.get("txt", b"")),
                   "cls": int(_text(s["cls"])) if "cls" in s else -1}
        if n == 0:
            raise ValueError(f"{root}: no readable samples")
        epoch += 1


def load_val(root: Path, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    from .embed import iter_shard_images

    images, labels = [], []
    for key, image, s in iter_shard_images(root):
        images.append(preprocess(image))
        labels.append(int(_text(s["cls"])))
    return torch.stack(images), torch.tensor(labels)


@torch.inference_mode()
def val_accuracy(model, tokenizer, classnames, templates, images, labels, head: torch.Tensor | None = None) -> float:
    was_training = model.training
    model.eval()
    head = head if head is not None else zeroshot_head(model, tokenizer, classnames, templates)
    feats = torch.cat([F.normalize(model.encode_image(images[i:i + 256]), dim=-1) for i in range(0, len(images), 256)])
    acc = ((feats @ head.t()).argmax(1) == labels).float().mean().item() * 100
    if was_training:
        model.train()
        freeze_batchnorm(model)
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


def train(method_name: str, packed_dir: Path, base_spec: str, out_dir: Path, params: TrainParams,
          method_params, live_dir: Path | None = None, seed: int = 0) -> dict:
    method = get_method(method_name)
    if not method.trains:
        raise ValueError(f"method {method_name!r} trains nothing: evaluate the base model folder instead")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    classes = json.loads((packed_dir / "classes.json").read_text())
    classnames, templates = classes["classnames"], classes["templates"]
    lm = create_model(base_spec)
    model, tokenizer = lm.model, lm.tokenizer
    head = head_init = None
    head_scale = model.logit_scale.exp().item()
    if method.uses_head:
        with torch.inference_mode():
            head_init = zeroshot_head(model, tokenizer, classnames, templates)
        head = torch.nn.Parameter(head_init.clone())
    skips = SkipCounter()
    ft_stream = batched(sample_stream(packed_dir / "finetune", lm.preprocess, seed, params.shuffle_buffer, skips),
                        params.batch_size)
    anchor_stream = None
    if method.needs_anchors:
        anchor_stream = batched(sample_stream(packed_dir / "anchors", lm.preprocess, seed + 1,
                                              params.shuffle_buffer, skips), params.anchor_batch_size)
    val_images, val_labels = load_val(packed_dir / "val", lm.preprocess)

    def val_acc() -> float:
        return val_accuracy(model, tokenizer, classnames, templates, val_images, val_labels,
                            None if head is None else head.detach())

    live = _make_live(live_dir)
    history = [{"step": 0, "val_acc1": val_acc()}]
    _log(live, 0, history[0])
    step_i = 0
    for phase_i, parts in enumerate(method.phases):
        trained = set_trainable(model, parts)
        if head is not None:
            head.requires_grad_(HEAD in parts)
            trained += [head] if HEAD in parts else []
        opt = torch.optim.AdamW(trained, lr=params.lr, weight_decay=params.weight_decay)
        warmup = max(1, params.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to zero
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / params.steps))))
        model.train()
        freeze_batchnorm(model)
        desc = f"train {method_name}" + (f" phase {phase_i + 1}/{len(method.phases)}" if len(method.phases) > 1 else "")
        for _ in tqdm(range(params.steps), desc=desc, unit="step"):
            step_i += 1
            batch = next(ft_stream)
            labels = torch.tensor([s["cls"] for s in batch])
            distinct = sorted(set(labels.tolist()))
            step = Step(
                model=model, tokenizer=tokenizer,
                images=torch.stack([s["image"] for s in batch]), labels=labels,
                captions=[s["txt"] for s in batch],
                prompts=[rng.choice(templates).replace("{c}", classnames[c]) for c in distinct],
                prompt_labels=torch.tensor(distinct), head=head, head_scale=head_scale,
                train_image=IMAGE in parts,
            )
            if anchor_stream is not None:
                anchors = next(anchor_stream)
                step.anchor_images = torch.stack([s["image"] for s in anchors])
                step.anchor_captions = [s["txt"] for s in anchors]
            terms = method.loss(step, method_params)
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            record = {"loss": loss.item(), **{f"loss_{k}": v.item() for k, v in terms.items()},
                      "lr": sched.get_last_lr()[0]}
            if step_i % params.eval_every == 0 or step_i == params.steps * len(method.phases):
                record["val_acc1"] = val_acc()
            history.append({"step": step_i, **record})
            _log(live, step_i, record)
    model.eval()
    set_trainable(model, frozenset((IMAGE, TEXT)))
    head_record = None if head is None else {"weight": head.detach().clone(), "init": head_init, "classnames": classnames}
    write_model_dir(model, lm.spec.name, out_dir, head=head_record, method=method_name, base=portable_spec(base_spec),
                    seed=seed, steps=params.steps * len(method.phases), final_val_acc1=history[-1].get("val_acc1"))
    if live is not None:
        live.end()
    if skips.skipped:
        log.warning(skips.report(str(packed_dir)))
    return {"method": method_name, "seed": seed, "val_acc1_start": history[0]["val_acc1"],
            "val_acc1_end": history[-1].get("val_acc1"), "skipped": skips.skipped, "history": history}


def _make_live(live_dir: Path | None):
    if live_dir is None:
        return None
    from dvclive import Live

    return Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)


def _log(live, step: int, record: dict) -> None:
    if live is None:
        return
    live.step = step
    for k, v in record.items():
        live.log_metric(f"train/{k}" if k != "val_acc1" else "val/acc1", v)
