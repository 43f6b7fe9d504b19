"""The whole DVC pipeline on tiny data, and the lab workflows around it, on this module's copy of the
tiny project (fixtures_project.py: every stage run for real by `dvc repro`).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_project import REPO, run, stages_run


@pytest.fixture(scope="module")
def project(built_project, tmp_path_factory):
    """This module's own copy of the built project (its tests change it)."""
    src, env, first = built_project
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(src, root, symlinks=True, dirs_exist_ok=True)
    return root, env, first


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
    # one knob at one value: the cheapest experiment (ARF's training and evaluation, the report)
    run([sys.executable, "scripts/ablate.py", "--only", "lambda_tca=0.5"], work, env)
    table = (work / "results/ablations.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| setting")]
    assert [r.split(" | ")[0] for r in rows] == ["| defaults (params.yaml)", "| methods.arf.lambda_tca=0.5"], table
    assert "Not run yet" not in table
    full = json.loads((root / "results/summary_full.json").read_text())
    assert rows[0].split(" | ")[1] == f"{full['methods']['arf']['id_val']['mean']:.1f}"  # the defaults are the main run
    # the workspace still holds the committed params: experiments ran from the queue, not in place
    assert yaml.safe_load((work / "params.yaml").read_text())["methods"]["arf"]["lambda_tca"] == 1.0
    # scripts/controls.py reads each experiment's own summary from its commit (the same queue machinery)
    read = run([sys.executable, "-c", "import json, sys; sys.path.insert(0, 'scripts'); import controls; "
                "print(json.dumps({n: controls.summary_of(e['rev'])['methods']['arf']['id_val']['mean'] "
                "for n, e in controls.finished_experiments().items()}))"], work, env)
    id_vals = json.loads(read.stdout)
    assert set(id_vals) == {"abl-default", "abl-lambda_tca-0p5"}
    assert [f"{v:.1f}" for v in (id_vals["abl-default"], id_vals["abl-lambda_tca-0p5"])] == \
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
