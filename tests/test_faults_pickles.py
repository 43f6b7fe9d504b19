"""Hostile files in every loader: a pickle that would run code is refused before it runs, with one
line naming the file; a truncated checkpoint is named too."""
import json
import os

import pytest
import torch
from helpers import make_tiny_checkpoint

from pipeline.core.models import create_model, read_head, read_state_dict, write_model_dir


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['ARF_PWNED']}",))


@pytest.fixture
def model_dir(tmp_path):
    name, ckpt = make_tiny_checkpoint(tmp_path)
    write_model_dir(create_model(f"{name}:{ckpt}").model, name, tmp_path / "model")
    return tmp_path / "model"


def plant(path, monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ARF_PWNED", str(marker))
    torch.save({"state_dict": Payload()}, path)
    return marker


@pytest.mark.parametrize("loader, file", [(read_state_dict, "checkpoint.pt"), (read_head, "head.pt")])
def test_a_code_running_pickle_is_refused_by_the_model_folder_loaders(model_dir, monkeypatch, tmp_path, loader, file):
    meta = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**meta, "head": "head.pt"}))
    marker = plant(model_dir / file, monkeypatch, tmp_path)
    with pytest.raises(ValueError) as err:
        loader(model_dir)
    assert str(err.value).startswith(f"{model_dir / file}: refused: holds objects other than tensors (")
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_code_running_resume_state_is_refused(monkeypatch, tmp_path):
    import pipeline.stages.train as tr

    state = tmp_path / ".out.resume.pt"
    marker = plant(state, monkeypatch, tmp_path)
    with pytest.raises(ValueError, match=f"^{state}: refused: holds objects other than tensors"):
        tr._load_resume(state, {"run": "x"})
    assert not marker.exists()


def test_a_truncated_checkpoint_is_named(model_dir):
    ckpt = model_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError) as err:
        read_state_dict(model_dir)
    assert str(err.value).startswith(f"{ckpt}: not a readable torch checkpoint (") and "\n" not in str(err.value)


@pytest.mark.parametrize("key, name", [("checkpoint", "../elsewhere.pt"), ("checkpoint", "/etc/passwd"),
                                       ("checkpoint", "sub/checkpoint.pt"), ("head", "../../head.pt"), ("checkpoint", "")])
def test_model_json_naming_a_file_outside_its_folder_is_refused(model_dir, tmp_path, key, name):
    """A model folder can arrive from a lab's DVC remote: its model.json must not make a stage read a
    file elsewhere on the machine (nor a stray copy beside the folder)."""
    from pipeline.core.models import model_dir_spec

    (tmp_path / "elsewhere.pt").write_bytes((model_dir / "checkpoint.pt").read_bytes())
    meta = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**meta, "head": "head.pt", key: name}))
    expected = (f"{model_dir / 'model.json'}: {key} {name!r} is not a file name inside the model folder; "
                f'expected e.g. "{key}.pt" beside model.json')
    for loader in ((read_state_dict, model_dir_spec) if key == "checkpoint" else (read_head,)):
        with pytest.raises(ValueError) as err:
            loader(model_dir)
        assert str(err.value) == expected
