"""How the suite runs on several workers (pytest-xdist; the README's test command is `-n auto
--dist loadgroup`).

* Each test file is one group, run by one worker, so a module fixture (a built project, a trained
  model) is built once. The two preset runs are the longest tests; each is its own group.
* The longest groups are collected first, so that they start at once and the short files fill in
  behind them; otherwise the run ends with one worker on a long file and the other idle.
* The cores are shared out among the workers: each worker's torch, and every process it starts
  (stages, torchrun, Spark), gets cores // workers threads. Two workers on two cores with two busy
  OpenMP threads each slow the compute-bound tests more than running in parallel gains.
"""
from __future__ import annotations

import os

import pytest

# Longest first (seconds on 2 cores, from `pytest --durations`); files not listed follow in their order.
LONGEST = ["test_dvc_workflows.py", "test_presets.py::domainnet", "test_presets.py::imagenet", "test_retrieve.py",
           "test_train.py"]


def _group(item) -> str:
    name = item.path.name
    if name == "test_presets.py" and "[" in item.name:
        return f"{name}::{item.name.split('[')[1].rstrip(']')}"
    return name


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    rank = {g: i for i, g in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(_group(item), len(LONGEST)))  # stable: file order otherwise
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))


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
