"""Reusable test fixtures: a tiny CLIP checkpoint, synthetic corpus shards, class prompt embeddings.

Everything here is built locally and deterministically (seeded); nothing is downloaded.

    name, ckpt = make_tiny_checkpoint(tmp_path)           # open_clip-loadable checkpoint of `tiny-clip`
    spec = f"{name}:{ckpt}"                                # a pipeline.models spec
    root, samples = make_corpus_shards(tmp_path / "corpus", 20, corrupt=(3,), rgba=(5,))
    make_prompts_npz(tmp_path / "seen.npz", spec, ["red", "green"])
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

TEST_MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
TINY_MODEL = "tiny-clip"

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30),
          "purple": (140, 40, 170)}
SHAPES = ("square", "circle", "stripes", "dots")


def register_test_models() -> None:
    """Register the configs in tests/model_configs (tiny-clip) with open_clip, in this process."""
    from pipeline.core.models import register_model_configs

    register_model_configs(TEST_MODEL_CONFIGS)


def make_tiny_checkpoint(tmp: str | Path, name: str = TINY_MODEL, seed: int = 0) -> tuple[str, Path]:
    """Randomly initialised (seeded) model `name` saved as an open_clip checkpoint; returns (name, path)."""
    import torch

    from pipeline.core.models import create_model, save_checkpoint

    register_test_models()
    path = Path(tmp) / f"{name}-seed{seed}.pt"
    if not path.is_file():
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            loaded = create_model(name)
        finally:
            torch.random.set_rng_state(state)
        save_checkpoint(loaded.model, name, path)
    return name, path


def synthetic_image(i: int, size: int = 48, mode: str = "RGB") -> tuple[Image.Image, str, str]:
    """A deterministic image of a coloured shape; returns (image, colour name, shape name).

    mode="RGBA": the shape is opaque and the background fully transparent, with black stored under the
    transparency (what `convert("RGB")` would show instead of compositing on white).
    """
    rng = np.random.default_rng(i)
    color_name = list(COLORS)[i % len(COLORS)]
    shape = SHAPES[(i // len(COLORS)) % len(SHAPES)]
    color = np.array(COLORS[color_name], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy = rng.uniform(0.35, 0.65, 2)
    if shape == "square":
        mask = (np.abs(xx - cx) < 0.25) & (np.abs(yy - cy) < 0.25)
    elif shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 0.09
    elif shape == "stripes":
        mask = (np.floor(xx * 8 + rng.uniform()) % 2) == 0
    else:
        mask = ((np.floor(xx * 6) + np.floor(yy * 6)) % 2 == 0) & ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.16)
    bg = rng.uniform(200, 255, 3).astype(np.float32)
    noise = rng.normal(0, 8, (size, size, 3))
    rgb = np.where(mask[..., None], color, bg) + noise
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    if mode == "RGBA":
        alpha = np.where(mask, 255, 0).astype(np.uint8)
        rgb[~mask] = 0
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), color_name, shape
    return Image.fromarray(rgb, "RGB"), color_name, shape


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class CorpusSample:
    key: str
    png: bytes
    caption: str
    meta: dict
    corrupt: bool = False


def make_corpus_shards(
    root: str | Path,
    n: int,
    corrupt: Iterable[int] = (),
    rgba: Iterable[int] = (),
    size: int = 48,
    max_per_shard: int = 8,
    key_prefix: str = "",
) -> tuple[Path, list[CorpusSample]]:
    """Write `n` synthetic samples as img2dataset-style shards (`KEY.png`, `KEY.txt`, `KEY.json`, sizes.json).

    Samples at indices in `corrupt` get a truncated PNG (valid header, cut in the middle of the data),
    those in `rgba` a transparent background. Returns (root, samples in write order).
    """
    from pipeline.io.shards import write_shards

    corrupt, rgba = set(corrupt), set(rgba)
    samples = []
    for i in range(n):
        img, color, shape = synthetic_image(i, size, "RGBA" if i in rgba else "RGB")
        data = png_bytes(img)
        if i in corrupt:
            data = data[: max(len(data) // 2, 60)]
        meta = {"source": "synthetic", "licence": "CC0-1.0", "style": shape, "color": color}
        samples.append(CorpusSample(f"{key_prefix}{i:06d}", data, f"a {color} {shape} pattern", meta, i in corrupt))
    write_shards(root, ({"__key__": s.key, "png": s.png, "txt": s.caption.encode(), "json": json.dumps(s.meta).encode()}
                        for s in samples), max_per_shard=max_per_shard)
    return Path(root), samples


def encode_texts(model_spec: str, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings of `texts` (float32) with the model's text tower."""
    import torch

    from pipeline.core.models import create_model

    loaded = create_model(model_spec)
    loaded.model.eval()
    with torch.no_grad():
        emb = loaded.model.encode_text(loaded.tokenizer(list(texts))).float()
    return torch.nn.functional.normalize(emb, dim=-1).numpy()


def write_corpus_embeddings(out: str | Path, model_spec: str, samples: Sequence[CorpusSample]) -> Path:
    """What embed_corpus writes for the decodable `samples` (clip-retrieval's layout: fp16 img_emb / text_emb,
    metadata parquet with image_path, caption and the JSON fields), encoded here in-process: seconds, where
    clip-retrieval's inference spends tens of seconds starting its worker processes. For tests that
    need an index, not the inference (test_retrieve checks that the two agree)."""
    import pandas as pd
    import torch

    from pipeline.core.models import create_model
    from pipeline.io.shards import decode_image

    good = [s for s in samples if not s.corrupt]
    loaded = create_model(model_spec)
    with torch.no_grad():
        img = loaded.model.encode_image(torch.stack([loaded.preprocess(decode_image(s.png, s.key)) for s in good]))
        txt = loaded.model.encode_text(loaded.tokenizer([s.caption for s in good]))
    out = Path(out)
    for sub, emb in (("img_emb", img), ("text_emb", txt)):
        (out / sub).mkdir(parents=True)
        emb = torch.nn.functional.normalize(emb.float(), dim=-1).numpy()
        np.save(out / sub / f"{sub}_0.npy", emb.astype(np.float16))
    (out / "metadata").mkdir()
    pd.DataFrame([{"image_path": s.key, "caption": s.caption, **s.meta} for s in good]).to_parquet(
        out / "metadata" / "metadata_0.parquet")
    return out


def make_prompts_npz(path: str | Path, model_spec: str, classnames: Sequence[str],
                     templates: Sequence[str] = ("a photo of a {}.", "a {} pattern.", "something {}.")) -> Path:
    """Class prompt embeddings as the prompts stage writes them: per class the mean of its template
    embeddings, re-normalised; arrays `embeddings` (C x D float32) and `classnames`."""
    texts = [t.format(c) for c in classnames for t in templates]
    emb = encode_texts(model_spec, texts).reshape(len(classnames), len(templates), -1).mean(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, embeddings=emb.astype(np.float32), classnames=np.array(list(classnames)))
    return path


def write_prompts_npz(path: str | Path, embeddings: np.ndarray, classnames: Sequence[str]) -> Path:
    """An .npz of given (re-normalised) class embeddings, for crafted retrieval tests."""
    emb = np.asarray(embeddings, dtype=np.float32)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.savez(path, embeddings=emb, classnames=np.array(list(classnames)))
    return Path(path)


def weight_diffs(a: dict, b: dict) -> list[tuple[float, str]]:
    """Max absolute difference per floating-point tensor of two state dicts, sorted ascending.

    Attention's key bias has no effect on any output (softmax is shift-invariant), so its gradient is
    rounding noise, which AdamW's normalisation turns into lr-sized steps when two runs round
    differently (other summation orders, other kernels): of each in_proj_bias only q and v are compared.
    """
    import torch

    def comparable(state, k):
        if k.endswith("in_proj_bias"):
            q, _, v = state[k].chunk(3)
            return torch.cat([q, v])
        return state[k]

    return sorted(((comparable(a, k) - comparable(b, k)).abs().max().item(), k) for k in a if a[k].is_floating_point())
