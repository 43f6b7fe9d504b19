"""The malformed-params corpus (tests/faults/params/): every file is refused with one line that names
the file and the key, before any stage writes anything. Each file's first line says what the error
must contain."""
from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError
from pipeline.stages import load_params

CORPUS = Path(__file__).parent / "faults" / "params"
REPO = Path(__file__).resolve().parents[1]


def expectation(path: Path) -> str:
    if path.name == "binary.yaml":
        return "not UTF-8 text (byte 0)"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    return first.removeprefix("# expect: ")


def test_the_corpus_covers_forty_kinds_of_bad_file():
    assert len(list(CORPUS.glob("*.yaml"))) >= 40


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_bad_params_file_is_refused_with_one_line_naming_file_and_key(path):
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert expectation(path) in message


def test_a_folder_given_as_params_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match=f"^{tmp_path}: is a folder; expected a params YAML file$"):
        load_params(tmp_path)


def test_numbers_read_as_dvc_reads_them(tmp_path):
    """PyYAML alone reads 1e-4 as text; DVC (YAML 1.2) as a number. `dvc exp run -S train.lr=1e-4` must
    mean the same to both."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-4\n  weight_decay: 2.5E-2\nmethods:\n  arf:\n    lambda_ita: 1_0\n")
    p = load_params(path)
    assert (p["train"].lr, p["train"].weight_decay, p["methods"].arf.lambda_ita) == (0.0001, 0.025, 10.0)


def test_every_corpus_file_differs_from_a_valid_file_only_in_its_fault():
    """Without the fault the same sections load: the errors above come from the fault, not from a
    stray problem elsewhere in the file (spot-checked by repairing three of them)."""
    for name, repair in [("lr-inf", ("lr: .inf", "lr: 0.001")), ("device-tpu", ("tpu:7", "cpu")),
                         ("duplicate-key", ("  lr: 0.1\n", ""))]:
        text = (CORPUS / f"{name}.yaml").read_text().replace(*repair)
        assert isinstance(yaml.safe_load(text), dict)
        path = REPO / ".tmp-test-params.yaml"
        try:
            path.write_text(text)
            load_params(path)
        finally:
            path.unlink()
