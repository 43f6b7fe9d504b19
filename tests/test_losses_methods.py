import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.losses import contrastive_loss, group_ids
from pipeline.core.methods import get_method, list_methods


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


class StubModel(torch.nn.Module):
    """encode_image / encode_text as fixed lookups, so every loss term can be computed by hand."""

    def __init__(self, images: dict, texts: dict, scale: float = 2.0):
        super().__init__()
        self.images, self.texts = images, texts
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))

    def encode_image(self, x):
        return torch.stack([self.images[int(i)] for i in x[:, 0, 0, 0]])

    def encode_text(self, tokens):
        return torch.stack([self.texts[t] for t in tokens])


def _step(**kw):
    from pipeline.core.methods import Step

    images = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 1.0]), 2: torch.tensor([0.6, 0.8])}
    texts = {"p0": torch.tensor([1.0, 0.0]), "p1": torch.tensor([0.0, 1.0]), "cap a": torch.tensor([0.8, 0.6]),
             "cap b": torch.tensor([0.0, 1.0]), "anc": torch.tensor([0.6, 0.8])}
    ids = lambda *i: torch.tensor(i, dtype=torch.float).view(-1, 1, 1, 1).expand(-1, 3, 1, 1)
    base = dict(model=StubModel(images, texts), tokenizer=lambda t: t, images=ids(0, 1), labels=torch.tensor([0, 1]),
                captions=["cap a", "cap b"], prompts=["p0", "p1"], prompt_labels=torch.tensor([0, 1]))
    return Step(**{**base, **kw}), ids


def test_head_cross_entropy_by_hand():
    from pipeline.core.methods import head_ce_loss

    step, _ = _step(head=torch.tensor([[1.0, 0.0], [0.6, 0.8]]), head_scale=3.0)
    # logits = 3 * [[1, 0.6], [0, 0.8]]; labels 0, 1
    row0 = -math.log(math.exp(3) / (math.exp(3) + math.exp(1.8)))
    row1 = -math.log(math.exp(2.4) / (math.exp(0) + math.exp(2.4)))
    assert head_ce_loss(step).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_arf_terms_are_flyp_plus_weighted_caption_and_anchor_losses_by_hand():
    from pipeline.core.methods import ArfItaParams, ArfParams, ArfTcaParams

    step, ids = _step(anchor_images=None, anchor_captions=["anc"])
    step.anchor_images = ids(2)
    arf, arf_tca, arf_ita = (get_method(m).loss for m in ("arf", "arf_tca", "arf_ita"))
    terms = arf(step, ArfParams(lambda_tca=0.5, lambda_ita=2.0))

    def clip(img, txt):  # symmetric CLIP loss with unique pairs, scale 2, by hand
        logits = 2 * torch.tensor(img) @ torch.tensor(txt).t()
        n = logits.shape[0]
        rows = sum(-math.log(math.exp(logits[i, i]) / sum(math.exp(logits[i, j]) for j in range(n))) for i in range(n)) / n
        cols = sum(-math.log(math.exp(logits[i, i]) / sum(math.exp(logits[j, i]) for j in range(n))) for i in range(n)) / n
        return (rows + cols) / 2

    flyp = clip([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
    tca = clip([[1.0, 0.0], [0.0, 1.0]], [[0.8, 0.6], [0.0, 1.0]])
    ita = clip([[0.6, 0.8]], [[0.6, 0.8]])  # one anchor pair: its own positive, loss 0
    assert terms["flyp"].item() == pytest.approx(flyp, rel=1e-5)
    assert terms["tca"].item() == pytest.approx(0.5 * tca, rel=1e-5)
    assert terms["ita"].item() == pytest.approx(2.0 * ita, abs=1e-6)
    assert set(arf_tca(step, ArfTcaParams(1.0))) == {"flyp", "tca"}
    assert set(arf_ita(step, ArfItaParams(1.0))) == {"flyp", "ita"}
    assert set(arf(step, ArfParams(lambda_tca=0.0, lambda_ita=1.0))) == {"flyp", "ita"}


def test_registry_holds_every_method_with_its_parts():
    from pipeline.core.methods import HEAD, IMAGE, TEXT, MethodsParams

    assert list_methods() == ["arf", "arf_ita", "arf_tca", "flyp", "ft", "lp", "lpft", "zeroshot"]
    assert get_method("zeroshot").phases == () and not get_method("zeroshot").trains
    assert get_method("lp").phases == (frozenset({HEAD}),)
    assert get_method("lpft").phases == (frozenset({HEAD}), frozenset({IMAGE, HEAD}))
    assert all(get_method(m).phases == (frozenset({IMAGE, TEXT}),) for m in ("flyp", "arf", "arf_tca", "arf_ita"))
    assert {m for m in list_methods() if get_method(m).needs_anchors} == {"arf", "arf_ita"}
    assert {m for m in list_methods() if get_method(m).uses_head} == {"lp", "ft", "lpft"}
    fields = MethodsParams()
    assert all(isinstance(getattr(fields, m), get_method(m).params) for m in list_methods())


def test_anchor_temperature_and_joint_mixing_by_hand():
    from pipeline.core.methods import ArfParams

    step, ids = _step(anchor_captions=["anc"])
    step.anchor_images = ids(2)
    arf = get_method("arf").loss

    def clip(img, txt, scale):
        logits = scale * torch.tensor(img) @ torch.tensor(txt).t()
        n = logits.shape[0]
        rows = sum(-math.log(math.exp(logits[i, i]) / sum(math.exp(logits[i, j]) for j in range(n))) for i in range(n)) / n
        cols = sum(-math.log(math.exp(logits[i, i]) / sum(math.exp(logits[j, i]) for j in range(n))) for i in range(n)) / n
        return (rows + cols) / 2

    fixed = arf(step, ArfParams(anchor_logit_scale=5.0))  # anchor terms at scale 5, FLYP at the model's 2
    assert fixed["tca"].item() == pytest.approx(clip([[1.0, 0.0], [0.0, 1.0]], [[0.8, 0.6], [0.0, 1.0]], 5.0), rel=1e-5)
    assert fixed["flyp"].item() == pytest.approx(clip([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], 2.0), rel=1e-5)
    joint = arf(step, ArfParams(lambda_tca=1.0, lambda_ita=4.0, mixing="joint"))
    assert set(joint) == {"flyp", "anchors"}
    union = clip([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], [[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], 2.0)
    assert joint["anchors"].item() == pytest.approx((1.0 * 2 + 4.0 * 1) / 3 * union, rel=1e-5)
