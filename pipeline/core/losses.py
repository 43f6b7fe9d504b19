"""Contrastive image-text loss with group-aware targets.

Plain CLIP loss treats every off-diagonal pair as a negative. In finetuning batches many images share
a class (FLYP) and several images can share a caption (the four styles of one emoji in the corpus, or
nearest-neighbour captions): treating those as negatives would push apart pairs that match. So each
side carries a group id, every same-group pair is a positive, and the cross-entropy target is uniform
over a row's positives. With unique ids this is exactly the CLIP loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    image_groups: torch.Tensor | None = None,
    text_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between normalised embeddings (N x D and M x D).

    Without groups, N == M and pair i matches text i. With groups (N and M long tensors), image i
    matches every text j with the same group id; each row and column must have at least one match.
    """
    logits = logit_scale * image_emb @ text_emb.t()
    if image_groups is None and text_groups is None:
        if logits.shape[0] != logits.shape[1]:
            raise ValueError(f"contrastive_loss: {logits.shape[0]} images vs {logits.shape[1]} texts need groups")
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    match = (image_groups[:, None] == text_groups[None, :]).to(logits.dtype)
    if (match.sum(1) == 0).any() or (match.sum(0) == 0).any():
        raise ValueError("contrastive_loss: every image and every text needs a positive in the batch")
    i2t = -(match / match.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(match / match.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (i2t + t2i) / 2


def group_ids(values, device: torch.device | str | None = None) -> torch.Tensor:
    """Map hashable values (captions, labels) to dense group ids, equal values sharing an id, on `device`
    (the embeddings' device: the ids meet them in contrastive_loss)."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(v, len(ids)) for v in values], dtype=torch.long, device=device)
