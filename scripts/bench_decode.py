#!/usr/bin/env python
"""Training-stream decoding throughput: img/s of `pipeline.stages.train.SampleStream` at each worker count.

    .venv/bin/python scripts/bench_decode.py [--images 200] [--seconds 10] [--workers 0,1,2] [--size 224] [--stored 224]

Writes a temporary shard folder of photo-like 500x375 JPEGs (quality 90, about ImageNet's median
size; smooth gradients plus noise, not real photos), then draws samples through the stream with the
eval transform of a `size`-px open_clip model (what training uses) and prints samples per second per
worker count. Decoding is what limits a GPU run's input: ViT-B/16 training at the presets' batch
wants about a thousand images per second per GPU, so `train.num_workers` (per stream, per rank)
should be that over this script's one-worker figure. `--stored 224` packs the JPEGs as `pack.image_size:
224` would (shorter side at 224, JPEG quality 95), which leaves the trainer's resize nothing to do.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500]
    out = []
    for i in range(n):
        a = np.stack([np.sin(x / (20 + i % 17)) * 80 + 120, np.cos(y / (15 + i % 13)) * 80 + 120, (x + y + i) % 255], -1)
        a = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--stored", type=int, default=None, help="pack.image_size: store the JPEGs at this shorter side")
    args = ap.parse_args()

    from open_clip.transform import image_transform

    from pipeline.io.shards import SkipCounter, write_shards
    from pipeline.stages.pack import stored_image
    from pipeline.stages.train import SampleStream

    preprocess = image_transform(args.size, is_train=False)
    jpegs = [stored_image("jpg", j, str(i), args.stored)[1] for i, j in enumerate(synthetic_jpegs(args.images))]
    stored = f"stored at {args.stored} px shorter side" if args.stored else "500x375"
    print(f"{len(jpegs)} JPEGs, {np.mean([len(j) for j in jpegs]) / 1024:.0f} KB mean, {stored} -> {args.size} px")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shards"
        write_shards(root, ({"__key__": f"{i:06d}", "jpg": j, "cls": "0", "txt": "a photo"} for i, j in enumerate(jpegs)),
                     max_per_shard=50)
        for workers in [int(w) for w in args.workers.split(",")]:
            stream = SampleStream(root, preprocess, seed=0, buffer=50, skips=SkipCounter(), workers=workers,
                                  cache_bytes=0)  # decoding itself, not the in-memory cache
            it = iter(stream)
            for _ in range(max(8, 4 * workers)):  # start-up (pool, first window) outside the timing
                next(it)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                next(it)
                n += 1
            rate = n / (time.perf_counter() - t0)
            stream.close()
            print(f"num_workers {workers}: {rate:7.0f} img/s")


if __name__ == "__main__":
    main()
