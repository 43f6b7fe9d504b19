"""Batched encoding of shard images and texts, and the zero-shot head (class prompts)."""
from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .shards import SkipCounter, decode_image, iter_samples, sample_image_bytes

if TYPE_CHECKING:
    from PIL.Image import Image


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def batched(iterable: Iterable, n: int) -> Iterator[list]:
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch


def iter_shard_images(root: str | os.PathLike, skips: SkipCounter | None = None, urls: list[str] | None = None,
                      part: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, "Image", dict]]:
    """(key, RGB image, sample) for each decodable sample; undecodable ones are skipped and counted.

    `part=(i, n)` keeps every n-th sample from the i-th, before decoding (one rank's share), and
    `sample["__index__"]` is the sample's position in the whole stream.
    """
    skips = skips if skips is not None else SkipCounter()
    rank, world = part
    for index, sample in enumerate(iter_samples(root, skips, urls)):
        if index % world != rank:
            continue
        sample["__index__"] = index
        key = sample["__key__"]
        try:
            _, data = sample_image_bytes(sample)
            image = decode_image(data, key)
        except (KeyError, ValueError) as e:
            skips(e)
            continue
        yield key, image, sample


@torch.inference_mode()
def encode_images(model, preprocess: Callable, images: Iterable, batch_size: int = 128, total: int | None = None,
                  desc: str = "encode images", fn: Callable | None = None) -> torch.Tensor:
    """Normalised image embeddings (or `fn(model, x)` features) of PIL images, batched."""
    fn = fn or (lambda m, x: F.normalize(m.encode_image(x), dim=-1))
    out = []
    with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for batch in batched(images, batch_size):
            out.append(fn(model, torch.stack([preprocess(im) for im in batch]).to(model_device(model))).float())
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


def save_class_embeddings(path: Path, embeddings: torch.Tensor, classnames: list[str], templates: list[str]) -> None:
    from .atomic import atomic_file

    with atomic_file(path, "wb") as f:
        np.savez(f, embeddings=embeddings.numpy().astype(np.float32), classnames=np.array(classnames),
                 templates=np.array(templates))


def load_classes(path: Path) -> dict:
    """classes.json of the benchmark: seen/unseen class names and prompt templates."""
    return json.loads(Path(path).read_text())
