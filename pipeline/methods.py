"""Finetuning methods: a registry of loss functions over one training step's batch.

A method sees a `Step` (the finetune batch, and an anchor batch if it asked for one) and returns its
named loss terms; the trainer sums them. Every method shares the trainer's budget (steps, batch size,
optimiser, schedule); a method's own knobs (loss weights) are its params dataclass, a section of
`params.yaml` under `methods.<name>`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
import torch.nn.functional as F

from .losses import contrastive_loss, group_ids


@dataclass
class Method:
    name: str
    loss: Callable[["Step", object], dict[str, torch.Tensor]]
    params: type
    needs_anchors: bool = False


_METHODS: dict[str, Method] = {}


def register_method(name: str, params: type, needs_anchors: bool = False):
    def deco(fn):
        _METHODS[name] = Method(name, fn, params, needs_anchors)
        return fn
    return deco


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(list_methods())})")
    return _METHODS[name]


@dataclass
class Step:
    """One step's inputs; embeddings are computed on first use and shared between loss terms."""

    model: torch.nn.Module
    tokenizer: Callable
    images: torch.Tensor
    labels: torch.Tensor
    captions: list[str]
    prompts: list[str]  # one class prompt per distinct label in the batch, in `prompt_labels` order
    prompt_labels: torch.Tensor
    anchor_images: torch.Tensor | None = None
    anchor_captions: list[str] | None = None

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=100)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(texts)), dim=-1)

    @cached_property
    def image_emb(self) -> torch.Tensor:
        return F.normalize(self.model.encode_image(self.images), dim=-1)


@dataclass
class FlypParams:
    pass  # FLYP has no knobs of its own: the shared budget is all


@dataclass
class ArfParams:
    # Weights of the two anchor losses relative to the FLYP loss. The paper does not state them; 1.0
    # gives each anchor set the same pull as the finetune objective (choose on ID validation).
    lambda_tca: float = field(default=1.0, metadata={"min": 0})
    lambda_ita: float = field(default=1.0, metadata={"min": 0})


def flyp_loss(step: Step) -> torch.Tensor:
    """Contrastive loss between images and their class prompts (both towers trained).

    Only the distinct classes of the batch are encoded; every image of a class is a positive for
    that class's prompt (see losses.contrastive_loss).
    """
    text = step.encode_text(step.prompts)
    return contrastive_loss(step.image_emb, text, step.logit_scale, step.labels, step.prompt_labels)


def caption_loss(image_emb: torch.Tensor, captions: list[str], step: Step) -> torch.Tensor:
    groups = group_ids(captions)  # identical captions (nearest-neighbour ones can repeat) are positives
    return contrastive_loss(image_emb, step.encode_text(captions), step.logit_scale, groups, groups)


@register_method("flyp", FlypParams)
def flyp(step: Step, p: FlypParams) -> dict[str, torch.Tensor]:
    return {"flyp": flyp_loss(step)}


@register_method("arf", ArfParams, needs_anchors=True)
def arf(step: Step, p: ArfParams) -> dict[str, torch.Tensor]:
    terms = {"flyp": flyp_loss(step)}
    if p.lambda_tca > 0:  # text-compensated anchors: the finetune images with their rich captions
        terms["tca"] = p.lambda_tca * caption_loss(step.image_emb, step.captions, step)
    if p.lambda_ita > 0:  # image-text-pair anchors retrieved from the corpus
        anchor_emb = F.normalize(step.model.encode_image(step.anchor_images), dim=-1)
        terms["ita"] = p.lambda_ita * caption_loss(anchor_emb, step.anchor_captions, step)
    return terms
