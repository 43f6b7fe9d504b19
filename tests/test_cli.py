"""The `arf` command: its listing imports no stage (so neither torch nor open_clip), a stage's command is
imported when it runs (by its name or the dashed name of earlier releases), `check-params` takes the file
as argument or option, `list` names every caption backend, `plan` without a preset plans params.yaml."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.stages import stage_names

REPO = Path(__file__).resolve().parents[1]
TOOLS = ["check-params", "plan", "layouts", "list", "export", "serve"]


def test_help_lists_every_command_and_imports_neither_torch_nor_open_clip():
    code = ("import sys\nfrom pipeline.cli import run\ntry:\n    run(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nprint([m for m in ('torch', 'open_clip') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
    listed = re.findall(r"^│ ([a-z][\w-]*) ", out, flags=re.M)
    assert listed == [*stage_names(), *TOOLS]
    assert "Finetune the base model with one method on the packed shards." in out  # train's help, read from its source


def test_a_stage_runs_by_its_dashed_name_of_earlier_releases():
    result = CliRunner().invoke(app, ["build-data", "--help"])
    assert result.exit_code == 0, result.output
    assert "Build the benchmark and corpus" in result.output and "--out" in result.output


def _params(tmp_path: Path, **report) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["report"].update(report)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


def test_check_params_takes_the_file_as_argument_or_option(tmp_path, monkeypatch):
    path = _params(tmp_path)
    monkeypatch.chdir(tmp_path)
    sections = "align, build_data, caption, embed_corpus, evaluate, methods, pack, report, retrieve, train, zeroshot"
    runner = CliRunner()
    for args, shown in (([str(path)], path), (["--params", str(path)], path), ([], "params.yaml")):
        result = runner.invoke(app, ["check-params", *args])
        assert (result.exit_code, result.output) == (0, f"{shown}: ok ({sections})\n")
    result = runner.invoke(app, ["check-params", str(path), "--params", str(path)])
    assert result.exit_code == 2 and "give the params file once" in result.output


def test_list_names_every_caption_backend_classname_included():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "captioners (caption.backend): blip, blip2, nn, classname\n" in result.output


def test_plan_without_a_preset_plans_the_default_params(tmp_path, monkeypatch):
    _params(tmp_path, methods=["lp", "arf"], seeds=[0, 1])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARF_ASSETS_DIR", str(tmp_path / "assets"))  # absent: every image source is missing
    result = CliRunner().invoke(app, ["plan"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Plan for params.yaml"
    assert [line.split()[:3] for line in lines if line.startswith("  [")] == \
        [["[MISSING]", "build_data", "images"]] * 5 + [["[ok", "]", "align"]] * 2
    rows = {line.split()[0]: line for line in lines[lines.index("") + 1:] if line and not line.startswith(" ")}
    measured = json.loads((REPO / "presets/default_measured.json").read_text())["stages"]
    seconds = {k: v["seconds"] for k, v in measured.items()}
    assert rows["align"].split() == ["align", "0.0", "0.1", "2", "CPU", "cores:", str(seconds["align"]), "s", "(measured)"]
    assert rows["train@arf"].split()[-3:] == [str(2 * seconds["train@arf"]), "s", "(measured)"]  # 2 seeds
    once = ("build_data", "align", "embed_corpus", "caption", "embed_prompts", "retrieve", "pack")
    total = sum(seconds[k] for k in once) + 2 * sum(seconds[f"{s}@{m}"] for s in ("train", "evaluate") for m in ("lp", "arf"))
    assert rows["total"].split() == ["total", "0.0", "0.7", "2", "CPU", "cores:", f"{total / 60:.0f}", "min", "(measured)"]


FAST_EXIT_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
from pipeline.stages._command import main

def command(mode: str, out: str):
    atexit.register(lambda: Path(out, "atexit").write_text("ran"))
    def late():  # a non-daemon thread still writing when the command returns
        time.sleep(0.3)
        Path(out, "thread").write_text("done")
    threading.Thread(target=late).start()
    sys.stdout.write("no newline, still buffered")
    if mode == "bad":
        raise ValueError("bad input: one line")
    if mode == "usage":
        sys.exit(2)

main(command)
"""


def test_the_entry_points_fast_exit_keeps_exit_codes_output_threads_and_atexit(tmp_path):
    """Stages and `arf` end with os._exit after the command (pipeline.stages._command.main): what the
    interpreter's teardown would still do that matters must happen first."""
    for mode, code in (("ok", 0), ("bad", 1), ("usage", 2)):
        out = tmp_path / mode
        out.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as in a pipe
        proc = subprocess.run([sys.executable, "-c", FAST_EXIT_PROBE, mode, str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == code, (mode, proc.stderr[-2000:])
        assert proc.stdout == "no newline, still buffered", mode
        assert (out / "atexit").read_text() == "ran" and (out / "thread").read_text() == "done", mode
        assert proc.stderr.strip() == ("error: bad input: one line" if mode == "bad" else ""), (mode, proc.stderr)


def test_stage_entry_points_and_the_arf_script_use_the_fast_exit():
    for script in sorted((REPO / "stages").glob("*.py")):
        assert "_command.main(" in script.read_text() and "_command.run(" not in script.read_text(), script.name
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"arf": "pipeline.cli:main"}


def test_the_fast_exit_lets_a_profiler_write_its_file(tmp_path):
    """`scripts/bench_cpu.py --profile` runs a stage under `python -m cProfile -o`, which writes the
    profile after the script returns: os._exit there would leave no file."""
    script = tmp_path / "probe.py"
    script.write_text(FAST_EXIT_PROBE)
    (tmp_path / "out").mkdir()
    prof = tmp_path / "probe.prof"
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), str(script), "bad", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.stderr.strip() == "error: bad input: one line"  # (cProfile's own exit status is 0: it catches SystemExit)
    import pstats
    assert any(fn == "command" for (_, _, fn) in pstats.Stats(str(prof)).stats), "the profile misses the command"
