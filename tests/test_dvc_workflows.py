"""The whole DVC pipeline on tiny data, and the lab workflows around it.

One module-scoped project: a copy of this repository's pipeline files in a fresh git repo, tiny
fixture images in place of the packaged ones (ARF_ASSETS_DIR), tiny budgets. `dvc repro` runs every
stage for real (alignment, clip-retrieval inference, autofaiss, packing, training, evaluation).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
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


def id_test_acc(records_file: Path, alpha: float) -> float:
    """The ID test accuracy of one evaluation run at one alpha, read straight from its records."""
    records = [json.loads(l) for l in records_file.read_text().splitlines()]
    ids = [r["acc1"] for r in records if r["alpha"] == alpha and r["dataset"].startswith("id_") and r["dataset"] != "id_val"]
    assert len(ids) == 1, records_file
    return ids[0]


def expected_id(root: Path, name: str, alpha: float) -> float:
    """What the report must say for a row: the base's record at alpha 0, else the method's at its alpha."""
    method = name.removesuffix("+wise")
    return id_test_acc(root / "results/eval" / ("zeroshot.jsonl" if alpha == 0 else f"{method}/seed0.jsonl"), alpha)


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


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        if rel.startswith(("pipeline/", "stages/", ".dvc/")) or rel in COPIED:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assets = tmp_path_factory.mktemp("assets")
    make_assets(assets)
    env = dict(os.environ, ARF_ASSETS_DIR=str(assets), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    env.pop("PYTHONPATH", None)
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "init"], root, env)
    first = timed_repro(root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "repro"], root, env)
    return root, env, first


def test_repro_runs_every_stage_and_writes_the_results(project):
    root, _, first = project
    ran = stages_run(first.stdout)
    assert {"build_data", "align", "embed_corpus", "caption", "embed_prompts", "retrieve", "pack", "gallery",
            "train@lpft-0", "train@arf-0", "zeroshot", "evaluate@lpft-0", "evaluate@arf-0", "report"} == ran
    full = json.loads((root / "results/summary_full.json").read_text())
    assert set(full["methods"]) == {"zeroshot", "lpft", "lpft+wise", "arf", "arf+wise"}
    for name, row in full["methods"].items():
        assert row["alpha"] == (0.0 if name == "zeroshot" else 1.0 if "+wise" not in name else row["alpha"])
        assert row["alpha"] in (0.0, 0.5, 1.0)
        assert row["id"]["mean"] == pytest.approx(expected_id(root, name, row["alpha"]), abs=1e-9)
        assert {f"shift/{d}" for d in ("twitter", "openmoji_color", "openmoji_black")} <= set(row)
        assert {f"zeroshot/{d}" for d in ("google", "twitter", "openmoji_color", "openmoji_black", "tuxpaint")} <= set(row)
        assert {"shift_avg", "zeroshot_avg", "zeroshot_retention", "i2t_r1", "t2i_r1", "id_val"} <= set(row)
    table = (root / "results/summary.md").read_text()
    assert "| arf | 1.0 |" in table and "| lpft + WiSE-FT |" in table
    assert (root / "results/plots/id_vs_shift.png").is_file() and (root / "results/plots/wise/arf.json").is_file()
    assert "<html" in (root / "results/gallery.html").read_text()
    records = [json.loads(l) for l in (root / "results/eval/arf/seed0.jsonl").read_text().splitlines()]
    assert sorted({r["alpha"] for r in records}) == [0.5, 1.0]
    anchors = [json.loads(l) for l in (root / "data/anchors/anchors.jsonl").read_text().splitlines()]
    assert anchors and all({"key", "caption", "class", "score"} <= set(a) for a in anchors)
    sizes = json.loads((root / "data/packed/anchors/sizes.json").read_text())
    assert sum(sizes.values()) == len(anchors)
    metrics = json.loads((root / "results/train/arf/seed0/metrics.json").read_text())
    model = json.loads((root / "models/arf/seed0/model.json").read_text())
    assert metrics["step"] == 2 and metrics["val"]["acc1"] == pytest.approx(model["final_val_acc1"])
    assert set(metrics["train"]) == {"loss", "loss_flyp", "loss_tca", "loss_ita", "lr"}


def test_second_repro_does_nothing(project):
    root, env, _ = project
    again = run(["dvc", "repro"], root, env)
    assert stages_run(again.stdout) == set()


def test_changing_a_method_param_reruns_only_its_training_and_evaluation(project, tmp_path):
    root, env, _ = project
    work = tmp_path / "work"
    shutil.copytree(root, work, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["methods"]["arf"]["lambda_ita"] = 0.5
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], work, env)
    assert stages_run(out.stdout) == {"train@arf-0", "evaluate@arf-0", "report"}


def test_more_seeds_as_an_experiment_run_only_the_new_seeds(project, tmp_path):
    root, env, _ = project
    work = tmp_path / "work"
    shutil.copytree(root, work, symlinks=True)
    out = run(["dvc", "exp", "run", "-S", "report.seeds=[0,1]"], work, env)
    assert stages_run(out.stdout) == {"train@lpft-1", "train@arf-1", "evaluate@lpft-1", "evaluate@arf-1", "report"}
    full = json.loads((work / "results/summary_full.json").read_text())
    assert full["seeds"] == [0, 1] and full["methods"]["arf"]["n_seeds"] == 2
    assert "2 seeds (0, 1)" in (work / "results/summary.md").read_text()


def test_ablation_script_queues_experiments_and_writes_the_table(project, tmp_path):
    root, env, _ = project
    work = tmp_path / "work"
    shutil.copytree(root, work, symlinks=True)
    run([sys.executable, "scripts/ablate.py", "--only", "captioner"], work, env)
    table = (work / "results/ablations.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| setting")]
    assert [r.split(" | ")[0] for r in rows] == ["| defaults (params.yaml)", "| caption.backend=classname"], table
    assert "Not run yet" not in table
    full = json.loads((root / "results/summary_full.json").read_text())
    assert rows[0].split(" | ")[1] == f"{full['methods']['arf']['id_val']['mean']:.1f}"  # the defaults are the main run
    # the workspace still holds the committed params: experiments ran from the queue, not in place
    assert yaml.safe_load((work / "params.yaml").read_text())["caption"]["backend"] == "nn"
    # scripts/controls.py reads each experiment's own summary from its commit (the same queue machinery)
    read = run([sys.executable, "-c", "import json, sys; sys.path.insert(0, 'scripts'); import controls; "
                "print(json.dumps({n: controls.summary_of(e['rev'])['methods']['arf']['id_val']['mean'] "
                "for n, e in controls.finished_experiments().items()}))"], work, env)
    id_vals = json.loads(read.stdout)
    assert set(id_vals) == {"abl-default", "abl-captioner-classname"}
    assert [f"{v:.1f}" for v in (id_vals["abl-default"], id_vals["abl-captioner-classname"])] == \
        [r.split(" | ")[1] for r in rows]


def test_remote_push_then_pull_in_a_fresh_clone_restores_anchor_shards(project, tmp_path):
    root, env, _ = project
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "lab", str(remote)], root, env)
    run(["dvc", "push"], root, env)
    run(["git", "commit", "-qam", "remote"], root, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / "data/packed").exists()
    run(["dvc", "pull"], clone, env)
    assert (clone / "data/packed/anchors/sizes.json").read_bytes() == (root / "data/packed/anchors/sizes.json").read_bytes()
    status = run(["dvc", "status"], clone, env).stdout
    for stage in ("caption", "retrieve", "pack"):
        assert stage not in status, status
    assert stages_run(run(["dvc", "repro"], clone, env).stdout) == set()


def test_the_readme_exp_show_command_fits_120_columns_and_metrics_are_compact(project):
    """DVC's own views stay readable: the README's `dvc exp show` line in 120 columns with the finding's
    numbers, and `dvc metrics show` one short row (per-step training logs are not metrics)."""
    import re
    import shlex

    root, env, _ = project
    line = next(l for l in (REPO / "README.md").read_text().splitlines() if l.startswith("dvc exp show "))
    shown = run(shlex.split(line), root, dict(env, COLUMNS="120")).stdout
    assert max(len(l) for l in shown.splitlines()) <= 120, shown
    header = next(l for l in shown.splitlines() if "Experiment" in l).split()
    assert header == ["Experiment", "Created", "arf.id", "arf.shift", "arf.zs", "report.seeds"], shown
    metrics = json.loads((root / "results/metrics.json").read_text())
    assert set(metrics) == {"zeroshot", "lpft", "arf"}
    assert all(set(row) == {"id_val", "id", "shift", "zs", "zs_ret"} for row in metrics.values())
    workspace = next(l for l in shown.splitlines() if "workspace" in l)
    shown_values = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", workspace)][:3]  # then report.seeds' 0
    assert shown_values == [metrics["arf"][k] for k in ("id", "shift", "zs")], shown
    rows = run(["dvc", "metrics", "show"], root, env).stdout.splitlines()
    assert len(rows) == 2 and rows[1].startswith("results/metrics.json") and max(map(len, rows)) < 400, rows
