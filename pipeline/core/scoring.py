"""Image features and classification metrics shared by evaluation and validation: top-1/top-5,
mean per-class recall with a binomial standard error, and McNemar's exact paired test.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.core.encode import channels_last, inference_batch_size, model_device, pixels
from pipeline.io.eval_sets import ImageStream


@torch.inference_mode()
def image_features(model, images: "torch.Tensor | ImageStream", batch_size: int | None = None) -> torch.Tensor:
    """Normalised image embeddings, batch by batch (channels-last: see encode.channels_last)."""
    model.eval()
    channels_last(model)
    device = model_device(model)
    batch_size = batch_size or inference_batch_size(device)
    batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size)) \
        if isinstance(images, torch.Tensor) else iter(images)
    feats = [F.normalize(model.encode_image(pixels(b, device)), dim=-1) for b in batches]
    return torch.cat(feats) if feats else torch.zeros(0, device=device)  # (no rows: torch.cat skips it)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    n, c = logits.shape
    top = logits.topk(min(5, c), dim=1).indices
    acc1 = (top[:, 0] == labels).float().mean().item()
    acc5 = (top == labels[:, None]).any(1).float().mean().item()
    recalls = [(top[labels == k, 0] == k).float().mean().item() for k in range(c) if (labels == k).any()]
    return {
        "acc1": 100 * acc1,
        "acc5": 100 * acc5,
        "mean_per_class_recall": 100 * sum(recalls) / len(recalls),
        "se": 100 * math.sqrt(acc1 * (1 - acc1) / n),  # binomial standard error of acc1
        "n": n,
    }


def mcnemar_p(a_correct: torch.Tensor, b_correct: torch.Tensor) -> dict:
    """Exact two-sided McNemar test of two models scored on the same images (paired)."""
    from math import comb

    a_only = int((a_correct & ~b_correct).sum())
    b_only = int((b_correct & ~a_correct).sum())
    n, k = a_only + b_only, min(a_only, b_only)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": p}
