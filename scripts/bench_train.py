#!/usr/bin/env python
"""The project's trainer against a plain open_clip loop on the same model, batch and device: img/s,
achieved TFLOP/s (MFU with --peak-tflops), peak memory and the ratio, in one run.

    .venv/bin/python scripts/bench_train.py                      # the embedded default on this machine
    python scripts/bench_train.py --model ViT-B-16 --image-px 224 --batch 256 --anchor-batch 256 \
        --precision bf16 --jpeg --workers 8 --peak-tflops 989     # a GPU (H100/H200 dense bf16 peak)

Trainer: `pipeline.stages.train.train()` on temporary packed shards in the project's format (finetune
images with captions, a 16-image val split, anchor pairs), timed at two step counts; its rate is the
difference, so model building, the step-0 and final validation and the data set-up cancel out. Plain
loop: the same model, its images already decoded and on the device, one class prompt per image
tokenised once, open_clip's ClipLoss, AdamW, the same autocast; FLYP's work per step, nothing else.
FLOPs per step are counted (torch FlopCounterMode, forward and backward), not estimated: the plain
loop's on one step, the trainer's as the difference between two counted runs. Peak memory is the
GPU's allocator peak, or this process's peak RSS on the CPU (which includes everything before it).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def synthetic_images(n: int, px: int, jpeg: bool, seed: int = 0) -> list[tuple[str, bytes]]:
    """Smooth gradients plus noise; JPEG at 500x375 (ImageNet-like decode cost) or PNG at `px`."""
    rng = np.random.default_rng(seed)
    h, w = (375, 500) if jpeg else (px, px)
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        a = np.stack([np.sin(x / (20 + i % 17)) * 80 + 120, np.cos(y / (15 + i % 13)) * 80 + 120, (x + y + i) % 255], -1)
        a = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG" if jpeg else "PNG", **({"quality": 90} if jpeg else {}))
        out.append(("jpg" if jpeg else "png", buf.getvalue()))
    return out


def write_packed(root: Path, n: int, n_classes: int, px: int, jpeg: bool) -> list[str]:
    from pipeline.io.shards import write_shards

    classnames = [f"thing{c}" for c in range(n_classes)]
    images = synthetic_images(n, px, jpeg)

    def samples(prefix, count, labelled=True):
        for i in range(count):
            ext, data = images[i % len(images)]
            s = {"__key__": f"{prefix}{i:06d}", ext: data, "txt": f"a picture of {classnames[i % n_classes]} number {i}"}
            if labelled:
                s["cls"] = str(i % n_classes)
            yield s

    write_shards(root / "finetune", samples("f", n), max_per_shard=256)
    write_shards(root / "val", samples("v", 16), max_per_shard=256)
    write_shards(root / "anchors", samples("a", n, labelled=False), max_per_shard=256)
    (root / "classes.json").write_text(json.dumps({"classnames": classnames, "templates": ["a photo of a {c}."]}))
    return classnames


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024 ** 3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_runs(args, method: str, packed: Path, base_spec: str, out: Path, steps: int, count_flops: bool = False):
    """(seconds, FLOPs) of one train() call."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.core.methods import get_method
    from pipeline.stages.train import TrainParams, train

    p = TrainParams(steps=steps, batch_size=args.batch, anchor_batch_size=args.anchor_batch, lr=1e-5, warmup_steps=1,
                    eval_every=10 ** 6, shuffle_buffer=64, device=args.device, precision=args.precision,
                    num_workers=args.workers)
    counter = FlopCounterMode(display=False) if count_flops else None
    t = time.perf_counter()
    with counter if counter else contextlib.nullcontext():
        train(method, packed, base_spec, out / f"{method}-{steps}", p, get_method(method).params(), seed=0)
    return time.perf_counter() - t, (counter.get_total_flops() if counter else 0)


def plain_loop(args, model, preprocess, tokenizer, classnames, device, steps: int):
    """(seconds per step, FLOPs per step) of a plain open_clip FLYP-like loop on device-resident data."""
    from open_clip.loss import ClipLoss
    from torch.utils.flop_counter import FlopCounterMode

    images = [Image.open(io.BytesIO(b)).convert("RGB") for _, b in synthetic_images(min(args.batch, 64), args.image_px,
                                                                                      args.jpeg)]
    x = torch.stack([preprocess(images[i % len(images)]) for i in range(args.batch)]).to(device)
    tokens = tokenizer([f"a photo of a {classnames[i % len(classnames)]}." for i in range(args.batch)]).to(device)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.1)
    loss_fn = ClipLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def step():
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
            loss = loss_fn(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    for _ in range(2):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t) / steps, counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="arf-lite0-minilm", help="an architecture (random or packaged weights)")
    ap.add_argument("--methods", default="flyp,arf")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--anchor-batch", type=int, default=32)
    ap.add_argument("--image-px", type=int, default=96, help="stored image side for PNG shards (the default's 96)")
    ap.add_argument("--jpeg", action="store_true", help="500x375 JPEG shards instead (decode cost of ImageNet)")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--steps", default="2,6", help="the two trainer step counts whose difference is timed")
    ap.add_argument("--plain-steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--workers", type=int, default=0, help="train.num_workers")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    ap.add_argument("--no-flops", action="store_true", help="skip the counted trainer runs (slow on a CPU)")
    args = ap.parse_args()

    from pipeline.core.distributed import resolve_device
    from pipeline.core.models import create_model, write_model_dir

    device = resolve_device(args.device)
    args.device = str(device)
    s1, s2 = (int(s) for s in args.steps.split(","))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lm = create_model(args.model)
        write_model_dir(lm.model, args.model, tmp / "base")
        base_spec = f"{args.model}:{tmp / 'base' / 'checkpoint.pt'}"
        n = max(args.batch, args.anchor_batch) * (s2 + 1)
        classnames = write_packed(tmp / "packed", n, args.classes, args.image_px, args.jpeg)
        print(f"model {args.model} on {device} ({args.precision}), batch {args.batch} + {args.anchor_batch} anchors, "
              f"{'500x375 JPEG' if args.jpeg else f'{args.image_px} px PNG'} shards, {args.workers} decode workers")

        plain = create_model(base_spec, device=str(device))
        sec, plain_flops = plain_loop(args, plain.model, plain.preprocess, plain.tokenizer, classnames, device,
                                      args.plain_steps)
        rows = [("plain open_clip loop", args.batch / sec, plain_flops / sec, peak_memory_gb(device))]
        del plain
        for method in args.methods.split(","):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t1, _ = trainer_runs(args, method, tmp / "packed", base_spec, tmp / "out", s1)
            t2, _ = trainer_runs(args, method, tmp / "packed", base_spec, tmp / "out", s2)
            step_s = (t2 - t1) / (s2 - s1)
            flops = 0.0
            if not args.no_flops:
                _, f1 = trainer_runs(args, method, tmp / "packed", base_spec, tmp / "out", 1, count_flops=True)
                _, f2 = trainer_runs(args, method, tmp / "packed", base_spec, tmp / "out", 2, count_flops=True)
                flops = f2 - f1
            rows.append((f"trainer {method}", args.batch / step_s, flops / step_s, peak_memory_gb(device)))

    plain_rate, plain_tflops = rows[0][1], rows[0][2] / 1e12
    mem = "GPU peak GiB" if device.type == "cuda" else "peak RSS GiB"
    print(f"\n| run | finetune img/s | x plain | TFLOP/s | x plain | MFU | {mem} |")
    print("|---|---|---|---|---|---|---|")
    for name, rate, flops_s, memory in rows:
        tf = flops_s / 1e12
        mfu = f"{100 * tf / args.peak_tflops:.1f}%" if args.peak_tflops and tf else "-"
        counted = f"{tf:.3f} | {tf / plain_tflops:.2f}" if tf else "- | -"
        print(f"| {name} | {rate:.1f} | {rate / plain_rate:.2f} | {counted} | {mfu} | {memory:.1f} |")


if __name__ == "__main__":
    main()
