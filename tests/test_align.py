"""LiT alignment of the default base on a tiny corpus: towers stay frozen, projections train, same seed = same model."""
import json

import torch
from helpers import make_corpus_shards

from pipeline.core.models import DEFAULT_MODEL, create_model
from pipeline.stages.align import AlignParams, align_base


def test_alignment_trains_only_projections_and_is_deterministic(tmp_path):
    corpus, _ = make_corpus_shards(tmp_path / "corpus", 24, corrupt=(5,), size=40)
    params = AlignParams(epochs=3, batch_size=8, feature_batch_size=8, lr=1e-2)
    report = align_base(corpus, tmp_path / "a", params)
    align_base(corpus, tmp_path / "b", params)
    assert report["pairs"] == 23 and report["skipped"] == 1
    assert report["loss_last"] < report["loss_first"]
    a = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    untrained = create_model(DEFAULT_MODEL).model.state_dict()
    changed = {k for k in a if not torch.equal(a[k], untrained[k])}
    assert changed == {"visual.head.proj.weight", "text.proj.weight", "logit_scale"}
    assert json.loads((tmp_path / "a/model.json").read_text())["name"] == DEFAULT_MODEL
