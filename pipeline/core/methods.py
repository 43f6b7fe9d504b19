"""Finetuning methods: a registry of loss functions, each with the parts of the model it trains.

A method sees a `Step` (the finetune batch, and an anchor batch if it asked for one) and returns its
named loss terms; the trainer sums them. Every method shares the trainer's budget (steps, batch size,
optimiser, schedule, seed); a method's own knobs (loss weights) are its params dataclass, a section
of `params.yaml` under `methods.<name>`.

`phases` says what trains, phase after phase, each phase with the full step budget and a fresh
optimiser and schedule. The parts are "image" (the image tower), "text" (the text tower and the
temperature) and "head" (a linear classifier over the finetune classes, initialised from the
zero-shot head, the base text tower's normalised class embeddings, so that the model before training
*is* the zero-shot model and WiSE-FT's alpha = 0 is the base). Head logits are the base temperature
times (normalised image feature . head row), exactly as the zero-shot logits: the head's weights live
on the scale of normalised embeddings, so the shared learning rate moves them as it moves the towers.
(Folding the temperature into the weights, as some codebases do, shrinks every head update by the
temperature, 23x here: measured, LP's validation accuracy then did not move in 120 steps.)
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from functools import cached_property
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.config import register_params
from pipeline.core.encode import TEXT_CALL_COST_TOKENS, in_text_order, length_buckets
from pipeline.core.losses import contrastive_loss, group_ids

IMAGE, TEXT, HEAD = "image", "text", "head"


@dataclass
class Method:
    name: str
    loss: Callable[["Step", object], dict[str, torch.Tensor]]
    params: type
    phases: tuple[frozenset[str], ...]
    needs_anchors: bool = False
    doc: str = ""

    @property
    def uses_head(self) -> bool:
        return any(HEAD in p for p in self.phases)

    @property
    def trains(self) -> bool:
        return bool(self.phases)


_METHODS: dict[str, Method] = {}


def register_method(name: str, params: type, phases: tuple[tuple[str, ...], ...], needs_anchors: bool = False):
    def deco(fn):
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS[name] = Method(name, fn, params, tuple(frozenset(p) for p in phases), needs_anchors,
                                doc[0] if doc else "")
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
    head: torch.Tensor | None = None  # C x D classifier weights (methods with a head)
    head_scale: float = 1.0  # the base model's temperature, fixed: head logits are on the zero-shot scale
    train_image: bool = True  # False: the image tower is frozen this phase, so no graph is built for it
    # With a frozen image tower (in eval mode): embeddings by sample key (`image_keys`), kept by the
    # trainer for the phase, so each image goes through the tower once however often it is drawn.
    frozen_image_emb: dict | None = None
    image_keys: list[str] | None = None
    # Data-parallel runs: `images`, `labels` and `anchor_images` are this rank's share of the global
    # batch; `captions`, `anchor_captions` and the prompts are the global batch's; `gather`
    # concatenates a per-rank tensor over ranks with gradients, so every contrastive term sees the
    # global batch exactly as one process would (open_clip's gather_with_grad).
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    all_labels: torch.Tensor | None = None
    # Activation memory. With `micro_batch`, every encoding runs without a graph, chunk by chunk, and
    # the loss sees leaf tensors; `backward_encodings()` then encodes each chunk again with a graph and
    # back-propagates the loss's gradient into it (GradCache, Gao et al. 2021). The gradients are the
    # whole batch's, contrastive negatives included; memory is one chunk's activations, paid for with
    # a second forward pass. Needs deterministic towers (no dropout), as CLIP's are.
    micro_batch: int | None = None
    _replay: list = field(default_factory=list, init=False, repr=False)
    # Every distinct text of the step, encoded once: row of each text in `_text_bank`.
    _text_rows: dict = field(default_factory=dict, init=False, repr=False)
    _text_bank: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=100)

    def _text(self, texts: list[str]) -> torch.Tensor:
        """One pass through the text tower, in length buckets (`length_buckets`): prompts are ~8 tokens
        and captions up to ~28, and a batch padded to its longest was half padding."""
        device = self.images.device
        buckets = length_buckets(self.tokenizer, texts, TEXT_CALL_COST_TOKENS.get(device.type))
        return F.normalize(in_text_order([
            (group, self.model.encode_text(ids.to(device) if isinstance(ids, torch.Tensor) else ids))
            for group, ids in buckets]), dim=-1)

    def _image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images), dim=-1)

    def _encode(self, fn: Callable, inputs) -> torch.Tensor:
        if self.micro_batch is None or not torch.is_grad_enabled():
            return fn(inputs)
        with torch.no_grad():
            emb = torch.cat([fn(inputs[i:i + self.micro_batch]) for i in range(0, len(inputs), self.micro_batch)])
        leaf = emb.requires_grad_(True)
        self._replay.append((fn, inputs, leaf))
        return leaf

    def encode_texts(self, *text_sets: list[str]) -> list[torch.Tensor]:
        """Embeddings of several lists of texts from one pass through the text tower: a loss that uses
        prompts, captions and anchor captions asks for all of them first, so the step's distinct
        texts are encoded together, each once. A text already encoded in this step is not encoded
        again (identical captions share one embedding, one dropout mask included)."""
        new = [t for t in dict.fromkeys(t for texts in text_sets for t in texts) if t not in self._text_rows]
        if new:
            emb = self._encode(self._text, new)
            self._text_bank = emb if self._text_bank is None else torch.cat([self._text_bank, emb])
            self._text_rows.update((t, len(self._text_rows)) for t in new)
        return [self._text_bank[torch.tensor([self._text_rows[t] for t in texts], device=self._text_bank.device)]
                for texts in text_sets]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.encode_texts(texts)[0]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_image and torch.is_grad_enabled()):
            return self._encode(self._image, images)

    def backward_encodings(self) -> None:
        """After loss.backward() with `micro_batch`: carry the embeddings' gradients into the towers."""
        for fn, inputs, leaf in self._replay:
            if leaf.grad is None:
                continue
            for i in range(0, len(inputs), self.micro_batch):
                out = fn(inputs[i:i + self.micro_batch])
                if out.requires_grad:  # a frozen tower builds no graph
                    out.backward(leaf.grad[i:i + self.micro_batch])
        self._replay.clear()

    @cached_property
    def image_emb(self) -> torch.Tensor:
        known = self.frozen_image_emb
        if known is None or self.train_image:
            return self.encode_image(self.images)
        with torch.no_grad():  # one image at a time: its embedding cannot depend on the batch it came in,
            for i, k in enumerate(self.image_keys):  # so a resumed run computes the same values
                if k not in known:
                    known[k] = self._image(self.images[i:i + 1])[0]
        return torch.stack([known[k] for k in self.image_keys])

    def gathered(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.gather is None else self.gather(x)

    @cached_property
    def all_image_emb(self) -> torch.Tensor:
        return self.gathered(self.image_emb)

    @property
    def global_labels(self) -> torch.Tensor:
        return self.labels if self.all_labels is None else self.all_labels


@dataclass
class NoParams:
    pass  # the shared budget is all


@dataclass
class AnchorParams:
    # Temperature of the anchor terms. null: the model's own trained logit scale, shared with the FLYP
    # term (the paper gives none; one scale keeps the terms comparable and leaves nothing to tune). A
    # number fixes the anchor terms' logit scale (1 / temperature) instead, e.g. 100, CLIP's cap.
    anchor_logit_scale: float | None = field(default=None, metadata={"gt": 0})


@dataclass
class ArfParams(AnchorParams):
    # Weights of the two anchor losses relative to the FLYP loss. The paper does not state them; 1.0
    # gives each anchor set the same pull as the finetune objective (an ablation sweeps them, read on
    # ID validation only).
    lambda_tca: float = field(default=1.0, metadata={"min": 0})
    lambda_ita: float = field(default=1.0, metadata={"min": 0})
    # How the anchors meet each other in a step. separate: each anchor set is its own contrastive
    # batch and the weighted terms are summed (the paper lists the losses as separate terms). joint:
    # the captioned finetune pairs and the retrieved pairs form one contrastive batch, so each is a
    # negative for the other; the term's weight is the lambdas averaged over the batch's pairs.
    mixing: str = field(default="separate", metadata={"choices": ("separate", "joint")})


@dataclass
class ArfTcaParams(AnchorParams):
    lambda_tca: float = field(default=1.0, metadata={"min": 0})


@dataclass
class ArfItaParams(AnchorParams):
    lambda_ita: float = field(default=1.0, metadata={"min": 0})


def flyp_loss(step: Step) -> torch.Tensor:
    """Contrastive loss between images and their class prompts (both towers trained).

    Only the distinct classes of the batch are encoded; every image of a class is a positive for
    that class's prompt (see losses.contrastive_loss).
    """
    text = step.encode_text(step.prompts)
    return contrastive_loss(step.all_image_emb, text, step.logit_scale, step.global_labels, step.prompt_labels)


def caption_loss(image_emb: torch.Tensor, captions: list[str], step: Step, scale: float | None = None) -> torch.Tensor:
    groups = group_ids(captions, image_emb.device)  # identical captions (nearest-neighbour ones can repeat) are positives
    logit_scale = step.logit_scale if scale is None else torch.tensor(scale, device=image_emb.device)
    return contrastive_loss(image_emb, step.encode_text(captions), logit_scale, groups, groups)


def head_ce_loss(step: Step) -> torch.Tensor:
    """Cross-entropy of the linear head on normalised image features, at the base temperature."""
    return F.cross_entropy(step.head_scale * step.image_emb @ step.head.t(), step.labels)


def flyp_with_anchors(step: Step, lambda_tca: float, lambda_ita: float, p: AnchorParams) -> dict[str, torch.Tensor]:
    """The FLYP term plus the anchor terms with a weight above 0; their texts (prompts, captions,
    anchor captions) go through the text tower in one pass."""
    step.encode_texts(step.prompts, *([step.captions] if lambda_tca > 0 else []),
                      *([step.anchor_captions] if lambda_ita > 0 else []))
    return {"flyp": flyp_loss(step), **anchor_terms(step, lambda_tca, lambda_ita, p)}


def anchor_terms(step: Step, lambda_tca: float, lambda_ita: float, p: AnchorParams) -> dict[str, torch.Tensor]:
    scale = p.anchor_logit_scale
    if getattr(p, "mixing", "separate") == "joint" and lambda_tca > 0 and lambda_ita > 0:
        n_ft, n_anchor = len(step.captions), len(step.anchor_captions)
        weight = (lambda_tca * n_ft + lambda_ita * n_anchor) / (n_ft + n_anchor)
        images = torch.cat([step.all_image_emb, step.gathered(step.encode_image(step.anchor_images))])
        return {"anchors": weight * caption_loss(images, step.captions + step.anchor_captions, step, scale)}
    terms = {}
    if lambda_tca > 0:  # text-compensated anchors: the finetune images with their rich captions
        terms["tca"] = lambda_tca * caption_loss(step.all_image_emb, step.captions, step, scale)
    if lambda_ita > 0:  # image-text-pair anchors retrieved from the corpus
        terms["ita"] = lambda_ita * caption_loss(step.gathered(step.encode_image(step.anchor_images)),
                                                 step.anchor_captions, step, scale)
    return terms


@register_method("zeroshot", NoParams, phases=())
def zeroshot(step: Step, p: NoParams) -> dict[str, torch.Tensor]:
    """The base model as it is, no training: its model folder is the base's."""
    raise AssertionError("zeroshot has no training phase, so no loss")


@register_method("lp", NoParams, phases=((HEAD,),))
def lp(step: Step, p: NoParams) -> dict[str, torch.Tensor]:
    """Linear probe: the head alone, on frozen image features."""
    return {"ce": head_ce_loss(step)}


@register_method("ft", NoParams, phases=((IMAGE, HEAD),))
def ft(step: Step, p: NoParams) -> dict[str, torch.Tensor]:
    """End-to-end finetuning with cross-entropy: image tower and head (text tower frozen)."""
    return {"ce": head_ce_loss(step)}


@register_method("lpft", NoParams, phases=((HEAD,), (IMAGE, HEAD)))
def lpft(step: Step, p: NoParams) -> dict[str, torch.Tensor]:
    """LP-FT: a linear probe with the full budget, then FT from its head with the full budget."""
    return {"ce": head_ce_loss(step)}


@register_method("flyp", NoParams, phases=((IMAGE, TEXT),))
def flyp(step: Step, p: NoParams) -> dict[str, torch.Tensor]:
    """FLYP: contrastive finetuning against class prompts, both towers trained."""
    return {"flyp": flyp_loss(step)}


@register_method("arf", ArfParams, phases=((IMAGE, TEXT),), needs_anchors=True)
def arf(step: Step, p: ArfParams) -> dict[str, torch.Tensor]:
    """ARF: FLYP + text-compensated anchors (captions) + retrieved image-text anchors."""
    return flyp_with_anchors(step, p.lambda_tca, p.lambda_ita, p)


@register_method("arf_tca", ArfTcaParams, phases=((IMAGE, TEXT),))
def arf_tca(step: Step, p: ArfTcaParams) -> dict[str, torch.Tensor]:
    """ARF ablation: FLYP + captioned finetune images only."""
    return flyp_with_anchors(step, p.lambda_tca, 0.0, p)


@register_method("arf_ita", ArfItaParams, phases=((IMAGE, TEXT),), needs_anchors=True)
def arf_ita(step: Step, p: ArfItaParams) -> dict[str, torch.Tensor]:
    """ARF ablation: FLYP + retrieved image-text anchors only."""
    return flyp_with_anchors(step, 0.0, p.lambda_ita, p)


# One field per registered method, typed by its params dataclass: `methods.<name>` in params.yaml.
MethodsParams = register_params("methods")(make_dataclass(
    "MethodsParams", [(m, get_method(m).params, field(default_factory=get_method(m).params)) for m in list_methods()]))
