#!/usr/bin/env python
"""Cross-check our zero-shot evaluation against CLIP_benchmark (LAION's `clip_benchmark`, PyPI).

    .venv/bin/python scripts/clip_benchmark_check.py [MODEL_DIR ...]      # default: models/base models/arf
    .venv/bin/python scripts/clip_benchmark_check.py --setup              # only create .venv-clipbench

For every model folder (model.json + checkpoint.pt; a folder without model.json stands for its
seed*/ folders) and every eval set under --eval-root it runs `clip_benchmark eval --dataset wds/<set>
--dataset_root <eval-root>/<set> --model <arch> --pretrained <checkpoint> --task zeroshot_classification`,
reads its result JSONs, scores the same models with our own evaluation code, prints a table (model, set,
ours, CLIP_benchmark, diff; acc1 in %) and exits 1 if any top-1 accuracy differs by more than --tol
points (0.5). Ours: the scorer the WiSE-FT evaluation uses (`pipeline.core.wise.Scorer.classify` on
`read_eval_sets`, which is evaluate_wise at alpha 1). Both sides classify with the model's text tower: clip_benchmark has no notion of a trained
classifier head, so a folder's head.pt (FT/LP methods) is not part of this check.

The clip_benchmark side
  * runs in its own venv, .venv-clipbench, made here on first use (or with --setup): a venv without
    packages of its own except the pinned clip_benchmark and its two missing dependencies, layered on
    our .venv through a `.pth` file (`site.addsitedir`). torch, open_clip, timm, transformers, webdataset
    are therefore the very same installs our pipeline uses, and our .venv is never written to. pip runs
    with a constraints file pinning every package of .venv at its installed version, so it cannot
    shadow one with another version; `pip check` there covers .venv plus clip_benchmark, i.e. it
    says whether clip_benchmark could be installed in .venv without breaking `pip check`.
  * is CLIP_benchmark's own CLI, started by scripts/clip_benchmark_launch.py, which registers our local
    open_clip config and adds a model type through clip_benchmark's loader hook (TYPE2FUNC) that is its
    stock open_clip loader plus our config's mean/std 0.5 (open_clip 2.x ignores a local config's
    preprocess_cfg). The launcher logs the transform it built; it must equal ours, or the check fails.
  * runs with --no_amp: clip_benchmark's default autocast would score in bfloat16 on CPU (float16 on GPU),
    our evaluation is float32. Pass --amp to see clip_benchmark's default numbers instead.

Inputs checked before scoring (a mismatch is reported and fails the check, exit 2): clip_benchmark
decodes with webdataset's "pil" handler (`Image.convert("RGB")`, which drops alpha and shows whatever
colour lies under transparent pixels), we composite transparency on white (pipeline.io.shards.decode_image).
Every image of every set is decoded both ways and compared; our export writes flattened RGB PNGs, so
they must be identical. Class names and templates clip_benchmark used (dumped in its JSON) are compared
with the ones we read.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("pipeline") is None:  # not installed in this interpreter's env
    sys.path.insert(0, str(ROOT))

CLIP_BENCHMARK_PINS = ["clip_benchmark==1.6.2", "pycocoevalcap==1.2", "pycocotools==2.0.11"]
VENV = ROOT / ".venv-clipbench"
MARKER = "arf-clipbench.json"
LAUNCHER = ROOT / "scripts" / "clip_benchmark_launch.py"
MODEL_TYPE = "open_clip_local"  # registered by the launcher
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def say(msg: str) -> None:
    print(f"[clip_benchmark_check] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- venv

def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def base_constraints() -> list[str]:
    """`name==version` for every distribution of the running (main) environment, ours excluded."""
    pins = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name and name.lower().replace("_", "-") != "arf-pipeline":
            pins[name.lower()] = f"{name}=={d.version}"
    return sorted(pins.values())


def ensure_venv(venv: Path = VENV, force: bool = False) -> dict:
    """Create (or reuse) the clip_benchmark venv layered on this interpreter's environment."""
    if Path(sys.prefix).resolve() == venv.resolve():
        raise SystemExit(f"run this with our main venv's python (.venv/bin/python), not {venv}'s")
    base_site = sysconfig.get_paths()["purelib"]
    want = {"pins": CLIP_BENCHMARK_PINS, "base_site": base_site, "python": sys.version.split()[0]}
    marker = venv / MARKER
    if not force and marker.is_file():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} == want and venv_python(venv).exists():
            return have
    say(f"creating {venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv} "
        f"({', '.join(CLIP_BENCHMARK_PINS)}, layered on {base_site})")
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Layer on the main environment: its packages come after this venv's own on sys.path.
    (site / "_arf_base_env.pth").write_text(f"import site; site.addsitedir({base_site!r})\n")
    constraints = venv / "base-constraints.txt"
    constraints.write_text("\n".join(base_constraints()) + "\n")
    cmd = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints),
           *CLIP_BENCHMARK_PINS]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit(f"pip install into {venv} failed: {' '.join(cmd)}")
    installed = [l for l in r.stdout.splitlines() if l.startswith("Successfully installed")]
    info = {**want, "installed": installed}
    say(f"{' '.join(installed) or 'nothing new installed'}")
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return info


def pip_check(venv: Path = VENV) -> str:
    """`pip check` over .venv's packages plus clip_benchmark's (what installing it into .venv would give)."""
    r = subprocess.run([str(venv_python(venv)), "-m", "pip", "check"], capture_output=True, text=True)
    return f"rc {r.returncode}: " + (r.stdout + r.stderr).strip()


def clip_benchmark_version(venv: Path = VENV) -> str:
    return subprocess.run([str(venv_python(venv)), "-c", "from importlib.metadata import version as v; "
                           "print(v('clip_benchmark'), v('open_clip_torch'), v('torch'), v('webdataset'))"],
                          check=True, capture_output=True, text=True).stdout.strip()


# ------------------------------------------------------------------------------------------ inputs

def eval_sets(eval_root: Path) -> list[Path]:
    """The sets read_eval_sets scores: folders with classnames.txt (same rule, same order)."""
    return sorted(p for p in eval_root.iterdir() if (p / "classnames.txt").is_file())


def check_inputs(root: Path) -> list[str]:
    """Problems that would make clip_benchmark read a set differently from us (empty list: none)."""
    from PIL import Image

    from pipeline.io.shards import (
        IMAGE_EXTS,
        SkipCounter,
        decode_image,
        iter_samples,
        read_shard_info,
    )

    problems = []
    info = read_shard_info(root / "test")
    nshards_file = root / "test" / "nshards.txt"
    nshards = int(nshards_file.read_text()) if nshards_file.is_file() else None
    expected = [f"{i}.tar" for i in range(len(info.sizes))]
    if nshards != len(info.sizes) or sorted(info.sizes) != sorted(expected):
        problems.append(f"{root.name}: clip_benchmark reads test/{{0..nshards.txt-1}}.tar "
                        f"(nshards.txt={nshards}), sizes.json lists {sorted(info.sizes)}")
    differ, multi, n = [], 0, 0
    skips = SkipCounter()
    for sample in iter_samples(root / "test", skips):
        members = [e for e in IMAGE_EXTS if e in sample]
        if len(members) != 1:
            multi += 1
            continue
        data = sample[members[0]]
        ours = decode_image(data, sample["__key__"])
        with io.BytesIO(data) as s:  # webdataset ImageHandler("pil"), then open_clip's _convert_to_rgb
            theirs = Image.open(s)
            theirs.load()
            theirs = theirs.convert("RGB").convert("RGB")
        n += 1
        if ours.size != theirs.size or ours.tobytes() != theirs.tobytes():
            differ.append(sample["__key__"])
    if skips.skipped:
        problems.append(f"{root.name}: {skips.skipped} unreadable sample(s) ({skips.examples[0]})")
    if multi:
        problems.append(f"{root.name}: {multi} sample(s) without exactly one image member")
    if differ:
        problems.append(f"{root.name}: {len(differ)}/{n} image(s) decode differently (alpha: clip_benchmark's "
                        f"convert('RGB') vs our white flattening), e.g. {differ[:3]}")
    return problems


def our_prompts(root: Path) -> tuple[list[str], list[str]]:
    """Class names and templates exactly as pipeline.io.eval_sets.read_eval_set reads them."""
    classnames = (root / "classnames.txt").read_text().splitlines()
    templates = [t for t in (root / "zeroshot_classification_templates.txt").read_text().splitlines() if t.strip()]
    return classnames, templates


# ------------------------------------------------------------------------------------------- runs

def expand_model_dirs(model_dirs: list[Path]) -> list[Path]:
    """Model folders; a folder without model.json stands for its per-seed folders (models/arf/seed0, ...)."""
    out = []
    for d in model_dirs:
        seeds = sorted(p.parent for p in d.glob("seed*/model.json"))
        out.extend(seeds if not (d / "model.json").is_file() and seeds else [d])
    return out


def model_tags(model_dirs: list[Path]) -> list[str]:
    tags = []
    for d in model_dirs:
        tag = f"{d.parent.name}/{d.name}" if d.name.startswith("seed") else d.name
        while tag in tags:
            tag += "_"
        tags.append(tag)
    return tags


def clip_benchmark_argv(arch: str, checkpoint: Path, sets: list[Path], eval_root: Path, out_dir: Path,
                        amp: bool = False, batch_size: int = 64) -> list[str]:
    argv = ["eval", "--model_type", MODEL_TYPE, "--model", arch, "--pretrained", str(checkpoint),
            "--task", "zeroshot_classification",
            "--dataset", *[f"wds/{s.name}" for s in sets],
            "--dataset_root", str(eval_root.resolve() / "{dataset}"),
            "--output", str(out_dir.resolve() / "{dataset}.json"),
            "--batch_size", str(batch_size), "--num_workers", "0",
            "--dump_classnames", "--dump_templates"]
    if not amp:
        argv.append("--no_amp")
    return argv


def run_clip_benchmark(model_dir: Path, tag: str, sets: list[Path], eval_root: Path, work: Path,
                       threads: int, amp: bool) -> Path:
    from pipeline.core.models import ModelSpec, model_dir_spec

    spec = ModelSpec.parse(model_dir_spec(model_dir))
    out_dir = work / "clip_benchmark" / tag
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.json"):
        old.unlink()
    argv = clip_benchmark_argv(spec.name, Path(spec.pretrained), sets, eval_root, out_dir, amp=amp)
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CB_CHECK_TRANSFORM_LOG": str(work / "transforms.tsv"),
           "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)}
    cmd = [str(venv_python()), str(LAUNCHER), *argv]
    (out_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    log = out_dir / "clip_benchmark.log"
    say(f"clip_benchmark on {tag}: {' '.join(argv[:8])} ... (log: {log})")
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"clip_benchmark failed on {tag} (exit {r.returncode}); log: {log}")
    return out_dir


def run_ours(model_dirs: list[Path], tags: list[str], eval_root: Path, work: Path, threads: int) -> tuple[dict, str]:
    """Per-set metrics from our evaluation code; returns ({tag: {set: metrics}}, which entry point).

    The scorer `evaluate_wise` runs (`pipeline.core.wise.Scorer`, at alpha 1) on the sets `read_eval_sets` reads,
    classifying with the text tower (a classifier head, which clip_benchmark cannot use, is not loaded).
    """
    import torch

    import pipeline.io.eval_sets as ev
    from pipeline.core.models import create_model, model_dir_spec

    specs = {tag: model_dir_spec(d) for tag, d in zip(tags, model_dirs)}
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        from pipeline.core.wise import Scorer

        out, sets, key = {}, None, None
        for tag, spec in specs.items():
            lm = create_model(spec)
            if sets is None or repr(lm.preprocess) != key:
                sets, key = ev.read_eval_sets(eval_root, lm.preprocess), repr(lm.preprocess)
            scorer = Scorer(lm.model, lm.tokenizer, None)
            out[tag] = {es.name: scorer.classify(es, None) for es in sets}
        (work / "ours").mkdir(parents=True, exist_ok=True)
        (work / "ours" / "per_set.json").write_text(json.dumps(out, indent=2) + "\n")
        return out, "pipeline.core.wise.Scorer.classify (text tower) on pipeline.io.eval_sets.read_eval_sets"
    finally:
        torch.set_num_threads(threads_before)


def transform_text(tf) -> str:
    """A transform's repr on one line, without object addresses (they differ between processes)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", tf if isinstance(tf, str) else repr(tf)).replace("\n", " ")


def our_transforms(model_dirs: list[Path]) -> dict[str, str]:
    from pipeline.core.models import create_model, model_dir_spec

    out = {}
    for d in model_dirs:
        spec = model_dir_spec(d)
        out[spec.split(":", 1)[1]] = transform_text(create_model(spec).preprocess)
    return out


# ----------------------------------------------------------------------------------------- compare

def compare(ours: dict[str, dict[str, dict]], cb_dirs: dict[str, Path], sets: list[Path], tol: float) -> dict:
    """Rows (model, set, ours, clip_benchmark, diff) in percent; clip_benchmark reports fractions."""
    rows, problems = [], []
    for tag, cb_dir in cb_dirs.items():
        for root in sets:
            path = cb_dir / f"{root.name}.json"
            if not path.is_file():
                problems.append(f"{tag}/{root.name}: clip_benchmark wrote no {path.name}")
                continue
            res = json.loads(path.read_text())
            m = res["metrics"]
            classnames, templates = our_prompts(root)
            if res.get("classnames") is not None and res["classnames"] != classnames:
                problems.append(f"{tag}/{root.name}: clip_benchmark's class names differ from ours")
            if res.get("templates") is not None and res["templates"] != templates:
                problems.append(f"{tag}/{root.name}: clip_benchmark's templates differ from ours")
            o = ours[tag][root.name]
            row = {"model": tag, "set": root.name, "n": o["n"],
                   "ours": o["acc1"], "clip_benchmark": 100 * m["acc1"],
                   "acc5_ours": o["acc5"], "acc5_clip_benchmark": 100 * m["acc5"],
                   "mpcr_ours": o["mean_per_class_recall"], "mpcr_clip_benchmark": 100 * m["mean_per_class_recall"]}
            row["diff"] = row["clip_benchmark"] - row["ours"]
            row["ok"] = abs(row["diff"]) <= tol
            rows.append(row)
    return {"rows": rows, "problems": problems}


def table(rows: list[dict]) -> str:
    def d(x: float) -> float:  # a float-rounding residue prints as +0.00, not -0.00
        return round(x, 2) + 0.0

    w = max([5] + [len(r["model"]) for r in rows])
    lines = [f"{'model':<{w}} {'set':<24} {'n':>4} {'ours':>7} {'CLIP_benchmark':>15} {'diff':>6}  "
             f"{'acc5 diff':>9} {'mpcr diff':>9}"]
    for r in rows:
        lines.append(f"{r['model']:<{w}} {r['set']:<24} {r['n']:>4} {r['ours']:>7.2f} {r['clip_benchmark']:>15.2f} "
                     f"{d(r['diff']):>+6.2f}  {d(r['acc5_clip_benchmark'] - r['acc5_ours']):>+9.2f} "
                     f"{d(r['mpcr_clip_benchmark'] - r['mpcr_ours']):>+9.2f}" + ("" if r["ok"] else "  <-- differs"))
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dirs", nargs="*", type=Path, default=[ROOT / "models/base", ROOT / "models/arf"])
    ap.add_argument("--eval-root", type=Path, default=ROOT / "data/benchmark/eval")
    ap.add_argument("--work-dir", type=Path, default=ROOT / ".tmp/clip_benchmark_check",
                    help="clip_benchmark result JSONs, logs, our summary, report.json")
    ap.add_argument("--tol", type=float, default=0.5, help="allowed |acc1 difference| in points")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both sides")
    ap.add_argument("--amp", action="store_true", help="clip_benchmark's default mixed precision (bf16 on CPU)")
    ap.add_argument("--setup", action="store_true", help="only create/reuse .venv-clipbench")
    ap.add_argument("--recreate-venv", action="store_true")
    args = ap.parse_args(argv)
    args.model_dirs = [d.resolve() for d in args.model_dirs]  # relative to where it was started
    args.eval_root, args.work_dir = args.eval_root.resolve(), args.work_dir.resolve()
    os.chdir(ROOT)
    os.environ.update(OFFLINE_ENV)
    t0 = time.time()

    ensure_venv(force=args.recreate_venv)
    versions = clip_benchmark_version()
    checked = pip_check()
    say(f"clip_benchmark, open_clip_torch, torch, webdataset: {versions}")
    say(f"pip check (main env + clip_benchmark): {checked}")
    if args.setup:
        return 0

    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "transforms.tsv").unlink(missing_ok=True)
    sets = eval_sets(args.eval_root)
    if not sets:
        raise SystemExit(f"{args.eval_root}: no eval sets")
    args.model_dirs = expand_model_dirs(args.model_dirs)
    missing = [str(d) for d in args.model_dirs if not (d / "model.json").is_file()]
    if missing:
        raise SystemExit(f"not a model folder (no model.json, no seed*/model.json): {', '.join(missing)}")
    tags = model_tags(args.model_dirs)

    problems = [p for root in sets for p in check_inputs(root)]
    say(f"inputs: {len(sets)} sets, every image decoded both ways: "
        + ("identical" if not problems else f"{len(problems)} problem(s)"))

    t1 = time.time()
    cb_dirs = {tag: run_clip_benchmark(d, tag, sets, args.eval_root, work, args.threads, args.amp)
               for tag, d in zip(tags, args.model_dirs)}
    t_cb = time.time() - t1
    t1 = time.time()
    ours, ours_entry = run_ours(args.model_dirs, tags, args.eval_root, work, args.threads)
    say(f"ours: {ours_entry}")
    t_ours = time.time() - t1

    result = compare(ours, cb_dirs, sets, args.tol)
    problems += result["problems"]
    theirs_tf = {}
    for line in (work / "transforms.tsv").read_text().splitlines():
        _, pretrained, tf = line.split("\t", 2)
        theirs_tf.setdefault(pretrained, set()).add(transform_text(tf))
    for pretrained, tf in our_transforms(args.model_dirs).items():
        if theirs_tf.get(pretrained) != {tf}:
            problems.append(f"{pretrained}: clip_benchmark's transform {theirs_tf.get(pretrained)} differs from ours {tf}")
    rows = result["rows"]
    print(table(rows))
    worst = max(abs(r["diff"]) for r in rows) if rows else float("nan")
    wall = time.time() - t0
    report = {"versions": versions, "ours_entry_point": ours_entry, "amp": args.amp, "tol": args.tol, "max_abs_diff": worst,
              "wall_s": round(wall, 1), "clip_benchmark_s": round(t_cb, 1), "ours_s": round(t_ours, 1),
              "pip_check_main_plus_clip_benchmark": checked, "problems": problems, "rows": rows}
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"max |acc1 diff| {worst:.2f} points (tol {args.tol}); wall {wall:.0f} s "
        f"(clip_benchmark {t_cb:.0f} s, ours {t_ours:.0f} s); report: {work / 'report.json'}")
    for p in problems:
        say(f"PROBLEM: {p}")
    if problems:
        return 2
    if not all(r["ok"] for r in rows):
        say("FAIL: CLIP_benchmark and our evaluation disagree")
        return 1
    say("OK: CLIP_benchmark agrees with our evaluation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
