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


# What one more text-tower call costs, in tokens of work, when choosing length buckets
# (`length_buckets`). On 2 CPU cores an ARF step's texts (~30 prompts, 32 captions, 32 anchor captions,
# 8-28 tokens) went through the tower forward and backward in 970 ms as three padded calls and 705-720
# ms in 2-4 length buckets with a cost of 64-256 (32: 5 buckets, no better): a call's fixed cost is
# small next to a row's. A GPU is the opposite (kernel launches, nothing to gain from short rows): one
# call, unmeasured there.
TEXT_CALL_COST_TOKENS = {"cpu": 128}


def length_buckets(tokenizer, texts: list[str], call_cost: float | None = None,
                   max_rows: int | None = None) -> list[tuple[list[int], torch.Tensor]]:
    """The token ids of `texts` in groups of similar length: (positions in `texts`, ids cut to the
    group's longest row), every position once.

    A tower that ignores padding (`TrimmedTokenizer`) gives each text the same embedding whatever its
    group, up to float rounding, so texts are sorted by length and each group pays only for its own
    padding: in consecutive groups of `max_rows` (inference), or split where one more call costs less
    than the padding it saves, at `call_cost` tokens a call (training's one pass per step). Any other
    tokenizer: one group of `max_rows` rows at a time, in order."""
    if getattr(tokenizer, "trim", None) is None:
        rows = max_rows or max(1, len(texts))
        return [(list(range(i, min(i + rows, len(texts)))), tokenizer(texts[i:i + rows]))
                for i in range(0, len(texts), rows)]
    return id_length_buckets(tokenizer.tokenizer(texts), tokenizer.pad_id, call_cost, max_rows)


def id_length_buckets(ids: torch.Tensor, pad_id: int, call_cost: float | None = None,
                      max_rows: int | None = None) -> list[tuple[list[int], torch.Tensor]]:
    """`length_buckets` on right-padded token ids (one row a text)."""
    lengths = (ids != pad_id).sum(1).tolist()
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if max_rows is not None or call_cost is None:
        rows = max_rows or max(1, len(order))
        cuts = list(range(0, len(order), rows)) + [len(order)]
    else:
        cuts = _cheapest_cuts([lengths[i] for i in order], call_cost)
    return [(order[a:b], ids[order[a:b], :max(lengths[i] for i in order[a:b])]) for a, b in zip(cuts, cuts[1:])]


def _cheapest_cuts(sorted_lengths: list[int], call_cost: float) -> list[int]:
    """Group boundaries over ascending lengths minimising padded tokens + call_cost per group. A cut
    only pays between two different lengths, so the search runs over those (at most the context
    length of them): cheap at any batch size."""
    n = len(sorted_lengths)
    starts = [i for i in range(n) if i == 0 or sorted_lengths[i] != sorted_lengths[i - 1]] + [n]
    best, back = {0: 0.0}, {}
    for j in starts[1:]:
        best[j], back[j] = min((best[i] + (j - i) * sorted_lengths[j - 1] + call_cost, i)
                               for i in starts if i < j)
    cuts = [n]
    while cuts[-1]:
        cuts.append(back[cuts[-1]])
    return cuts[::-1]


def in_text_order(parts: list[tuple[list[int], torch.Tensor]]) -> torch.Tensor:
    """Rows of per-group results (positions, rows) put back in the texts' order."""
    positions = torch.tensor([p for group, _ in parts for p in group])
    return torch.cat([rows for _, rows in parts])[torch.argsort(positions).to(parts[0][1].device)]


@torch.inference_mode()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 256, desc: str = "encode texts",
                 fn: Callable | None = None) -> torch.Tensor:
    """Embeddings (or `fn(model, ids)` features) of `texts`, in order. Each distinct text is encoded
    once (the corpus's 10,322 captions are 5,724 texts), in batches of similar length."""
    if not texts:
        return torch.zeros(0)
    fn = fn or (lambda m, t: F.normalize(m.encode_text(t), dim=-1))
    distinct = list(dict.fromkeys(texts))
    device = model_device(model)
    parts = [(group, fn(model, ids.to(device)).float())
             for group, ids in tqdm(length_buckets(tokenizer, distinct, max_rows=batch_size), desc=desc,
                                    unit="batch", leave=False)]
    row = {t: i for i, t in enumerate(distinct)}
    return in_text_order(parts)[torch.tensor([row[t] for t in texts], device=device)]


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
