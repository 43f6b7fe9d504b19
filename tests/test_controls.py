"""scripts/controls.py (issue 15's style-held-out controls): its overrides are valid DVC `-S` values that
pass the params check and change only what each control says; its tables read each experiment's numbers
and take FT and FLYP from the reference where a control trains ARF alone."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import ablate  # noqa: E402
import controls  # noqa: E402

from pipeline.stages import load_params  # noqa: E402  (every stage's params section registered)


def test_each_control_is_one_valid_override_of_params_yaml(tmp_path):
    from dvc.utils.hydra import apply_overrides

    runs = controls.settings(["twitter"])
    assert [name for name, _, _ in runs] == ["ctl-reference", "ctl-anchors-without-twitter", "ctl-corpus-without-twitter"]
    base = load_params(ROOT / "params.yaml")
    for name, overrides, methods in runs:
        path = tmp_path / f"{name}.yaml"
        shutil.copy(ROOT / "params.yaml", path)
        apply_overrides(str(path), overrides + [f"report.methods=[{','.join(methods)}]"])
        p = load_params(path)
        changed = {s for s in base if s != "report" and base[s] != p[s]}
        if name.startswith("ctl-anchors"):
            assert changed == {"retrieve"} and p["retrieve"].exclude == {"style": ["twitter"]} and methods == ("arf",)
        elif name.startswith("ctl-corpus"):
            assert changed == {"build_data"}
            assert p["build_data"].corpus_styles == ["google", "openmoji_color", "openmoji_black"]
        else:
            assert changed == set()


def _summary(seeds, **methods):
    """A summary_full.json with per-method {metric: mean} (std 0.5)."""
    return {"seeds": seeds, "methods": {m: {k: {"mean": v, "std": 0.5} for k, v in metrics.items()}
                                        for m, metrics in methods.items()}}


def _row(shift, zs, id_=50.0, r1=30.0, google=45.0, tux=25.0):
    return {"shift/twitter": shift, "zeroshot/twitter": zs, "zeroshot/google": google, "zeroshot/tuxpaint": tux,
            "id": id_, "i2t_r1": r1}


def test_tables_take_ft_and_flyp_from_the_reference_where_only_arf_trained():
    summaries = {
        "ctl-reference": _summary([0], zeroshot=_row(30, 40), ft=_row(45, 41), flyp=_row(40, 38), arf=_row(52, 45)),
        "ctl-anchors-without-twitter": _summary([0], zeroshot=_row(30, 40), arf=_row(44, 43)),
        "ctl-corpus-without-twitter": _summary([0], zeroshot=_row(20, 25), ft=_row(35, 30), flyp=_row(33, 28),
                                               arf=_row(36, 31, google=52.0)),
    }
    text, record = controls.tables(["twitter"], summaries)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "setting" not in line]
    gaps = [line for line in rows if "ARF - FLYP" in line]
    assert gaps == ["| full corpus (reference) | **ARF - FLYP** | +12.0 | +7.0 | +0.0 | +0.0 | +0.0 | |",
                    "| anchors without twitter | **ARF - FLYP** | +4.0 | +5.0 | +0.0 | +0.0 | +0.0 | |",
                    "| corpus without twitter (base too) | **ARF - FLYP** | +3.0 | +3.0 | +7.0 | +0.0 | +0.0 | |"]
    same = "45.0 ± 0.5 | 25.0 ± 0.5 | 50.0 ± 0.5 | 30.0 ± 0.5 |"
    assert f"| anchors without twitter | flyp (reference run) | 40.0 ± 0.5 | 38.0 ± 0.5 | {same}" in rows
    assert f"| anchors without twitter | arf | 44.0 ± 0.5 | 43.0 ± 0.5 | {same}" in rows
    assert f"| corpus without twitter (base too) | zeroshot | 20.0 ± 0.5 | 25.0 ± 0.5 | {same}" in rows
    # the summary: ARF - FLYP per setting
    assert "| twitter | +12.0 / +7.0 / +0.0 / +0.0 | +4.0 / +5.0 / +0.0 / +0.0 | +3.0 / +3.0 / +7.0 / +0.0 |" in rows
    assert record["styles"]["twitter"]["anchors without twitter"]["ft"]["reference_run"] is True
    assert record["styles"]["twitter"]["corpus without twitter (base too)"]["arf"]["shift"]["mean"] == 36
    assert "Not run yet" not in text

    del summaries["ctl-corpus-without-twitter"]
    text, _ = controls.tables(["twitter"], summaries)
    assert text.rstrip().endswith("Not run yet: ctl-corpus-without-twitter.")
    assert "| twitter | +12.0 / +7.0 / +0.0 / +0.0 | +4.0 / +5.0 / +0.0 / +0.0 | – |" in text


@pytest.mark.parametrize("style", ["google", "tuxpaint"])
def test_only_shift_styles_can_be_held_out(style, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["controls.py", "--table-only", "--styles", style])
    with pytest.raises(SystemExit):
        controls.main()
    assert "invalid choice" in capsys.readouterr().err


def test_only_finished_experiments_are_read(monkeypatch):
    """A queued or running experiment's entry in `dvc exp show` carries the baseline's commit (and the
    workspace's numbers): taken for its own, the table would show the reference as the control."""
    def entry(name, rev, state, data_rev=None):
        return {"revs": [{"rev": rev, "name": name, "data": {"rev": data_rev or rev, "metrics": {
            "results/metrics.json": {"data": {"arf": {"id": 1.0}}}}}}],
            "executor": {"state": state, "name": "dvc-task"}, "name": name}

    shown = [{"rev": "workspace", "data": {"rev": "workspace"}},
             {"rev": "base", "name": "main", "experiments": [
                 entry("ctl-done", "aaa", "success"), entry("ctl-running", "bbb", "running", data_rev="workspace"),
                 entry("ctl-queued", "ccc", "queued"), entry("ctl-failed", "ddd", "failed")]}]
    monkeypatch.setattr(ablate, "dvc", lambda *args: json.dumps(shown))
    assert {name: e["rev"] for name, e in ablate.finished_experiments().items()} == {"ctl-done": "aaa"}


def test_ablation_settings_by_knob_or_value_and_the_defaults_row_from_a_finished_run(tmp_path, monkeypatch):
    runs = ablate.settings(["k=32", "captioner"], "abl3")
    assert runs == [("abl3-default", []), ("abl3-k-32", ["retrieve.k_per_class=32"]),
                    ("abl3-captioner-classname", ["caption.backend=classname"])]
    cell = lambda m, s: {"mean": m, "std": s}  # noqa: E731
    keys = [k for k, _ in ablate.COLUMNS]
    main = {"seeds": [0, 1, 2], "methods": {"arf": {k: cell(40.0 + i, 1.0) for i, k in enumerate(keys)}}}
    (tmp_path / "summary_full.json").write_text(json.dumps(main))
    k32 = {"seeds": [0, 1, 2], "methods": {"arf": {k: cell(50.0, 0.5) for k in keys}}}
    monkeypatch.setattr(ablate, "summary_of", lambda rev: {"rev-k32": k32}[rev])
    text = ablate.table(runs, {"abl3-k-32": {"rev": "rev-k32"}}, tmp_path / "summary_full.json")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert rows[0] == f"| defaults (params.yaml; the run in {tmp_path / 'summary_full.json'}) | " + \
        " | ".join(f"{40 + i:.1f} ± 1.0" for i in range(len(keys))) + " |"
    assert rows[1] == "| retrieve.k_per_class=32 | " + " | ".join(["50.0 ± 0.5"] * len(keys)) + " |"
    assert text.endswith("Not run yet: abl3-captioner-classname.\n") and "mean ± sample std over seeds [0, 1, 2]" in text
