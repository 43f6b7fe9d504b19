"""LiT-style alignment of the embedded default base model.

The image tower (EfficientNet-Lite0, ImageNet) and the text tower (MiniLM sentence encoder) come
pretrained from their packages but have never seen each other. Locking both towers and training only
the two projections (and the temperature) on the corpus pairs gives a zero-shot model in seconds once
the tower features are cached: the towers' forward passes are the only real cost, and each corpus
sample goes through them once.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import typer
from tqdm import tqdm

from pipeline.config import register_params
from pipeline.core.encode import encode_images, encode_texts
from pipeline.core.losses import contrastive_loss, group_ids
from pipeline.core.models import (
    ModelSpec,
    create_model,
    portable_spec,
    write_model_dir,
)
from pipeline.io.shards import (
    SkipCounter,
    iter_shard_images,
    read_corpus_info,
    read_shard_info,
)
from pipeline.stages import _command as cmd

log = logging.getLogger(__name__)


@register_params("align")
@dataclass
class AlignParams:
    # A bare architecture (the default arf-lite0-minilm, towers pretrained from packages) is aligned
    # here. A pretrained CLIP (NAME:TAG from the local open_clip cache, or NAME:/path/checkpoint.pt)
    # is aligned already: it becomes the base as it is, and the keys below are not used.
    model: str = "arf-lite0-minilm"
    epochs: int = field(default=30, metadata={"gt": 0})  # projections converge in ~20 epochs on ~11k pairs
    batch_size: int = field(default=512, metadata={"gt": 1})  # larger batches = harder negatives, still cheap
    lr: float = field(default=2e-3, metadata={"gt": 0})
    weight_decay: float = field(default=0.05, metadata={"min": 0})
    feature_batch_size: int = field(default=32, metadata={"gt": 0})  # a GPU wants 256
    seed: int = 0


def _image_trunk_features(model, x):
    return model.visual.trunk(x)


def _text_pooled_features(model, tokens):
    text = model.text
    mask = (tokens != text.config.pad_token_id).long()
    out = text.transformer(input_ids=tokens, attention_mask=mask)
    return text.pooler(out, mask)


def corpus_features(model, preprocess, tokenizer, corpus_dir: Path, batch_size: int):
    """Frozen-tower features of every corpus pair: (image feats, text feats, captions, skip report)."""
    skips = SkipCounter()
    keys, captions = [], []
    total = read_shard_info(corpus_dir).num_samples

    def images_iter():
        for key, image, sample in iter_shard_images(corpus_dir, skips):
            keys.append(key)
            captions.append(sample["txt"].decode("utf-8") if isinstance(sample["txt"], bytes) else sample["txt"])
            yield image

    img = encode_images(model, preprocess, images_iter(), batch_size, total=total, desc="image tower",
                        fn=_image_trunk_features)
    txt = encode_texts(model, tokenizer, captions, batch_size=2 * batch_size, desc="text tower", fn=_text_pooled_features)
    return img, txt, captions, skips


def train_projections(model, img_feats, txt_feats, captions, params: AlignParams) -> list[float]:
    """Train visual.head and text.proj (and logit_scale) on cached tower features."""
    g = torch.Generator().manual_seed(params.seed)
    torch.manual_seed(params.seed)
    img_proj, txt_proj = model.visual.head, model.text.proj
    trainable = list(img_proj.parameters()) + list(txt_proj.parameters()) + [model.logit_scale]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    groups = group_ids(captions, img_feats.device)  # the four styles of one emoji share a caption: positives, not negatives
    n = img_feats.shape[0]
    steps = params.epochs * max(1, n // params.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=params.lr, total_steps=steps, pct_start=0.1)
    losses = []
    with tqdm(total=steps, desc="align projections", leave=False) as bar:
        for _ in range(params.epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(max(1, n // params.batch_size)):
                idx = perm[i * params.batch_size:(i + 1) * params.batch_size]
                ie = F.normalize(img_proj(img_feats[idx]), dim=-1)
                te = F.normalize(txt_proj(txt_feats[idx]), dim=-1)
                loss = contrastive_loss(ie, te, model.logit_scale.exp().clamp(max=100), groups[idx], groups[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update(1)
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def align_base(corpus_dir: Path, out_dir: Path, params: AlignParams) -> dict:
    if ModelSpec.parse(params.model).pretrained is None:  # checked before the towers load
        read_corpus_info(corpus_dir, "align (a bare align.model is aligned on it; a pretrained one needs none)")
    torch.manual_seed(params.seed)  # the fresh projections are initialised when the model is built
    lm = create_model(params.model)
    if lm.spec.pretrained is not None:
        write_model_dir(lm.model.eval(), lm.spec.name, out_dir, pretrained=portable_spec(lm.spec))
        return {"pretrained": portable_spec(lm.spec), "aligned": False,
                "logit_scale": float(lm.model.logit_scale.exp())}
    model = lm.model.eval()
    img, txt, captions, skips = corpus_features(model, lm.preprocess, lm.tokenizer, corpus_dir, params.feature_batch_size)
    losses = train_projections(model, img, txt, captions, params)
    model.eval()
    write_model_dir(model, params.model, out_dir, aligned_on=str(corpus_dir), pairs=len(captions))
    report = {"pairs": len(captions), "skipped": skips.skipped, "loss_first": losses[0], "loss_last": losses[-1],
              "logit_scale": float(model.logit_scale.exp())}
    if skips.skipped:
        log.warning(skips.report(str(corpus_dir)))
    return report


def command(corpus: Path = typer.Option(...), out: Path = typer.Option(...), params: Path = cmd.PARAMS) -> None:
    """Align the default base model LiT-style (towers frozen, projections trained) on the corpus."""
    p, t = cmd.section(params, "align"), time.time()
    cmd.report("align", t, align_base(corpus, out, p))
