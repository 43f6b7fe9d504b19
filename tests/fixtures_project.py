"""The tiny DVC project the workflow and kill -9 tests run: a copy of this repository's pipeline files
in a fresh git repo, tiny fixture images in place of the packaged ones (ARF_ASSETS_DIR), tiny budgets.
`dvc repro` runs every stage for real (alignment, clip-retrieval inference, autofaiss, packing,
training, evaluation). Built once per worker (conftest.py's `built_project`); each test module works on
its own copy.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from fake_assets import make_fake_assets as make_assets

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

TINY_PARAMS = {
    "build_data": dict(image_size=32, min_class_size=3, unseen_fraction=0.4, val_fraction=0.2, test_fraction=0.3,
                 heldout_pairs=4, max_same_caption=2, workers=1),
    "align": dict(epochs=2, batch_size=16, feature_batch_size=16),
    "embed_corpus": dict(batch_size=16),
    "retrieve": dict(k_per_class=2),
    "train": dict(steps=2, batch_size=4, anchor_batch_size=4, warmup_steps=1, eval_every=1),
    "report": dict(methods=["lpft", "arf"], seeds=[0]),
    "evaluate": dict(wise_alphas=[0.5, 1.0]),
}


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@dataclass
class Repro:
    stdout: str
    stage_seconds: dict[str, float]  # from a stage's "Running stage" line to the next one's (or the end)


def timed_repro(root: Path, env: dict, *args: str) -> Repro:
    """`dvc repro`, its output read as it comes to time each stage."""
    proc = subprocess.Popen(["dvc", "repro", *args], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, starts = [], []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Running stage"):
            starts.append((line.split("'")[1], time.monotonic()))
    if proc.wait() != 0:
        raise AssertionError(f"dvc repro failed ({proc.returncode}):\n{''.join(lines)[-3000:]}")
    ends = [t for _, t in starts[1:]] + [time.monotonic()]
    return Repro("".join(lines), {name: end - t for (name, t), end in zip(starts, ends)})


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


COPIED = ("dvc.yaml", ".dvcignore", "scripts/ablate.py", "scripts/controls.py")


def project_env(**env_vars: str) -> dict:
    """The environment to run `dvc` and `arf` in: this venv on PATH, no analytics, a git identity."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               **env_vars)
    env.pop("PYTHONPATH", None)
    return env


def new_project(root: Path, params: str, **env_vars: str) -> dict:
    """A git repo at `root` holding this repository's pipeline files (pipeline/, stages/, .dvc/ and
    COPIED) and `params` as params.yaml: what a clone holds, without results or data. Returns the
    environment to run in (`project_env`)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        if rel.startswith(("pipeline/", "stages/", ".dvc/")) or rel in COPIED:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    (root / "params.yaml").write_text(params)
    env = project_env(**env_vars)
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "init"], root, env)
    return env


def build_tiny_project(base: Path) -> tuple[Path, Path, Repro]:
    """The tiny project after its first `dvc repro`, in base/project, with its fixture images in
    base/assets: (project, assets, the timed repro). Run it with `project_env(ARF_ASSETS_DIR=assets)`."""
    root, assets = base / "project", base / "assets"
    root.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    make_assets(assets)
    env = new_project(root, yaml.safe_dump(params, sort_keys=False), ARF_ASSETS_DIR=str(assets))
    first = timed_repro(root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "repro"], root, env)
    return root, assets, first
