"""Batched encoding of shard images and texts, and the zero-shot head (class prompts)."""
from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """The image tower in channels-last memory format, for every pass through it (training included).

    oneDNN's convolutions run the EfficientNet about 1.7x faster this way on CPU (measured at 96 px),
    and cuDNN's under autocast prefer it too; a ViT only has its patch convolution to gain. Values
    differ by float rounding only. Checkpoints are saved contiguous (`save_checkpoint`)."""
    with torch.inference_mode(False):  # called from inference code too; the weights must stay trainable
        model.visual.to(memory_format=torch.channels_last)
    return model


def inference_batch_size(device: torch.device | str) -> int:
    """Images per forward pass where no parameter sets it: 32 on a CPU, 256 on a GPU. On a CPU, the
    activations of a large batch fall out of cache: EfficientNet-Lite0 at 96 px encodes ~420 img/s
    in batches of 32 and ~220 in batches of 256 (2 cores); a GPU needs large batches to be busy."""
    return 256 if torch.device(device).type == "cuda" else 32


def pixels(batch: torch.Tensor | list[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """A batch of preprocessed images (a tensor or a list of them) on `device`, channels-last."""
    x = torch.stack(batch) if isinstance(batch, list) else batch
    return x.to(device).contiguous(memory_format=torch.channels_last)


def batched(iterable: Iterable, n: int) -> Iterator[list]:
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch


@torch.inference_mode()
def encode_images(model, preprocess: Callable, images: Iterable, batch_size: int = 128, total: int | None = None,
                  desc: str = "encode images", fn: Callable | None = None) -> torch.Tensor:
    """Normalised image embeddings (or `fn(model, x)` features) of PIL images, batched."""
    fn = fn or (lambda m, x: F.normalize(m.encode_image(x), dim=-1))
    channels_last(model)
    out = []
    with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for batch in batched(images, batch_size):
            out.append(fn(model, pixels([preprocess(im) for im in batch], model_device(model))).float())
            bar.update(len(batch))
    return torch.cat(out) if out else torch.zeros(0)


@torch.inference_mode()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 256, desc: str = "encode texts",
                 fn: Callable | None = None) -> torch.Tensor:
    fn = fn or (lambda m, t: F.normalize(m.encode_text(t), dim=-1))
    out = []
    for batch in tqdm(list(batched(texts, batch_size)), desc=desc, unit="batch", leave=False):
        out.append(fn(model, tokenizer(batch).to(model_device(model))).float())
    return torch.cat(out) if out else torch.zeros(0)


def class_prompts(classnames: list[str], templates: list[str]) -> list[str]:
    return [t.replace("{c}", c) for c in classnames for t in templates]


def zeroshot_head(model, tokenizer, classnames: list[str], templates: list[str], grad: bool = False) -> torch.Tensor:
    """C x D normalised class embeddings: the mean of each class's normalised prompt embeddings."""
    texts = class_prompts(classnames, templates)
    if grad:
        emb = F.normalize(model.encode_text(tokenizer(texts).to(model_device(model))), dim=-1)
    else:
        emb = encode_texts(model, tokenizer, texts, desc="class prompts")
    return class_means(emb, len(classnames), len(templates))


def class_means(prompt_emb: torch.Tensor, n_classes: int, n_templates: int) -> torch.Tensor:
    """Normalised mean of each class's prompt embeddings (rows in `class_prompts` order)."""
    return F.normalize(prompt_emb.view(n_classes, n_templates, -1).mean(1), dim=-1)
