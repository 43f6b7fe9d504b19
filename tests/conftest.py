"""How the suite runs on several workers (pytest-xdist; the README's test command is `-n auto
--dist loadfile`).

* Each test file runs on one worker, so a module fixture (a built project, a trained model) is built
  once. (`--dist loadgroup` would let the two preset runs go to different workers, but with pytest 9.2
  and xdist 3.8 it ignores the groups: every test went to either worker and the workflow project was
  built twice.)
* The longest files are collected first, so that they start at once and the short files fill in
  behind them; otherwise the run ends with one worker on a long file and the other idle.
* The cores are shared out among the workers: each worker's torch, and every process it starts
  (stages, torchrun, Spark), gets cores // workers threads. Two workers on two cores with two busy
  OpenMP threads each slow the compute-bound tests more than running in parallel gains.
"""
from __future__ import annotations

import os

# Longest first (seconds on 2 cores, from `pytest --durations`); files not listed follow in their order.
LONGEST = ["test_presets.py", "test_dvc_workflows.py", "test_faults_kill.py", "test_retrieve.py", "test_train.py"]


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
