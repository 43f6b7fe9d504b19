import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import contrastive_loss, group_ids
from pipeline.methods import get_method, list_methods


def test_contrastive_loss_matches_hand_computed_clip_loss():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # logits = 2 * img @ txt.T = [[2, 1.2], [0, 1.6]]
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    col1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert contrastive_loss(img, txt, scale).item() == pytest.approx(expected, rel=1e-6)


def test_group_targets_equal_clip_loss_for_unique_groups_and_spread_over_positives():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    ids = torch.arange(4)
    assert contrastive_loss(img, txt, scale, ids, ids).item() == pytest.approx(contrastive_loss(img, txt, scale).item())
    # two images of class 0 against one prompt of class 0 and one of class 1
    img2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = contrastive_loss(img2, txt2, torch.tensor(1.0), torch.tensor([0, 0, 1]), torch.tensor([0, 1]))
    lsm_rows = F.log_softmax(img2 @ txt2.t(), dim=1)
    lsm_cols = F.log_softmax(img2 @ txt2.t(), dim=0)
    i2t = -(lsm_rows[0, 0] + lsm_rows[1, 0] + lsm_rows[2, 1]) / 3
    t2i = -((lsm_cols[0, 0] + lsm_cols[1, 0]) / 2 + lsm_cols[2, 1]) / 2
    assert loss.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)


def test_contrastive_loss_rejects_rows_without_positive():
    with pytest.raises(ValueError, match="positive"):
        contrastive_loss(torch.eye(2), torch.eye(2), torch.tensor(1.0), torch.tensor([0, 1]), torch.tensor([0, 0]))


def test_group_ids_share_ids_for_equal_values():
    assert group_ids(["a", "b", "a", "c"]).tolist() == [0, 1, 0, 2]


def test_method_registry():
    assert {"flyp", "arf"} <= set(list_methods())
    assert get_method("arf").needs_anchors and not get_method("flyp").needs_anchors
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        get_method("nope")
