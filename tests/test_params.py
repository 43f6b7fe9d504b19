import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError
from pipeline.stages import load_params

REPO = Path(__file__).resolve().parents[1]


def write_params(tmp_path, mutate) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_file_is_valid_and_read_as_written():
    """Every key of params.yaml reaches its dataclass with the value written in the file (nested
    sections too: methods.arf.lambda_ita, build_data.local...)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    sections = load_params(REPO / "params.yaml")
    assert {"build_data", "align", "caption", "embed_corpus", "retrieve", "pack", "train", "methods"} <= set(raw)

    def compare(parsed, written, where):
        if dataclasses.is_dataclass(parsed):
            assert isinstance(written, dict), where
            for key, value in written.items():
                compare(getattr(parsed, key), value, f"{where}.{key}")
        else:  # the same value, and the same type but for an int given where a float is expected
            assert parsed == written, where
            assert type(parsed) in (type(written), float if type(written) is int else None), where

    for section, written in raw.items():
        compare(sections[section], written or {}, section)


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["train"].update(stepz=3), "train.stepz: unknown key"),
    (lambda r: r["train"].update(steps="many"), "train.steps: expected int"),
    (lambda r: r["methods"]["arf"].update(lambda_ita=-0.5), "methods.arf.lambda_ita: must be >= 0"),
    (lambda r: r["retrieve"].update(k_per_class=0), "retrieve.k_per_class"),
    (lambda r: r.update(trian={"steps": 1}), "trian: unknown section"),
    (lambda r: r["caption"].update(backend="gpt"), "caption.backend: 'gpt' is not one of"),
    (lambda r: r["caption"].update(backend="blip", model_path=None), "caption.model_path: required"),
    # sections of earlier releases name the section they became, the one named after its stage
    (lambda r: r.update(sweep=r.pop("report")), "sweep: renamed to report"),
    (lambda r: r.update(data=r.pop("build_data")), "data: renamed to build_data"),
])
def test_bad_params_fail_with_one_line_naming_the_key(tmp_path, mutate, key):
    path = write_params(tmp_path, mutate)
    with pytest.raises(ParamsError) as err:
        load_params(path)["train"]
    message = str(err.value)
    assert key in message and "\n" not in message and str(path) in message


def test_cli_stops_before_writing_anything(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    path = write_params(tmp_path, lambda r: r["methods"]["arf"].update(lambda_tca=-1))
    out = tmp_path / "models" / "arf"
    result = CliRunner().invoke(app, ["train", "arf", "--params", str(path), "--out", str(out),
                                      "--packed", str(tmp_path / "nope"), "--base", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "methods.arf.lambda_tca: must be >= 0" in result.output
    assert not (tmp_path / "models").exists()
