"""How the suite runs on several workers (pytest-xdist; the README's test command is `-n auto
--dist loadfile`).

* Each test file runs on one worker, so a module fixture (a built project, a trained model) is built
  once. (`--dist loadgroup` would let the two preset runs go to different workers, but with pytest 9.2
  and xdist 3.8 it ignores the groups: every test went to either worker and the workflow project was
  built twice.)
* The longest files are collected first, so that they start at once and the short files fill in
  behind them; otherwise the run ends with one worker on a long file and the other idle. xdist hands
  out files in collection order only with `--no-loadscope-reorder` (pyproject.toml's addopts): by
  default it reorders them by their number of tests, which put the few long DVC tests last.
* The tiny DVC project (fixtures_project.py) is built once per run, by the first worker that asks
  for it (`built_project`); each module that uses it works on a copy.
* The cores are shared out among the workers: each worker's torch, and every process it starts
  (stages, torchrun, Spark), gets cores // workers threads. Two workers on two cores with two busy
  OpenMP threads each slow the compute-bound tests more than running in parallel gains.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Longest first (seconds on 2 cores, from `pytest --durations`); files not listed follow in their order.
LONGEST = ["test_dvc_workflows.py", "test_presets.py", "test_own_data.py", "test_faults_kill.py", "test_retrieve.py",
           "test_train.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST)))  # stable: file order otherwise


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = threads
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def built_project(tmp_path_factory):
    """The tiny DVC project after its first `dvc repro`: (root, env, the timed Repro). Copy it before
    changing it (test_dvc_workflows.project). Under xdist the first worker to ask builds it and a
    worker asking meanwhile waits for that build (a lock in the run's shared temp folder): two builds
    at once on two cores would each take about as long as waiting does."""
    import fcntl
    import json

    from fixtures_project import Repro, build_tiny_project, project_env

    if "PYTEST_XDIST_WORKER" not in os.environ:
        root, assets, first = build_tiny_project(tmp_path_factory.mktemp("tiny"))
        return root, project_env(ARF_ASSETS_DIR=str(assets)), first
    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's own
    record = shared / "tiny_project.json"
    with open(shared / "tiny_project.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            root, assets, first = build_tiny_project(shared / "tiny")
            record.write_text(json.dumps({"root": str(root), "assets": str(assets), "stdout": first.stdout,
                                          "stage_seconds": first.stage_seconds}))
    built = json.loads(record.read_text())
    return (Path(built["root"]), project_env(ARF_ASSETS_DIR=built["assets"]),
            Repro(built["stdout"], built["stage_seconds"]))
