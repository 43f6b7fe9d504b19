"""Expectations worked out by hand or by a second, plain implementation written here, never by the
code under test: ARF's loss terms, the learning-rate schedule, WiSE-FT's weight mixing, params range
checks and the benchmark's leak check; then the smaller behaviours the mutation run (docs/mutation.md)
found unchecked: refused inputs, metrics, retrieval top-k / dedup, params types and files, the
emoji split's edges and skip counting."""
import dataclasses
import json
import math
import typing

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.methods import ArfParams, Step, caption_loss, get_method

# ------------------------------------------------------------------------------------------ losses


def ref_group_clip(img: list, txt: list, img_keys: list, txt_keys: list, scale: float) -> float:
    """Symmetric InfoNCE by formula, in Python floats: logit_ij = scale * img_i . txt_j; image i's
    positives are the texts whose key equals its key (and the other way round), and each row's
    (column's) cross-entropy is -log softmax averaged over its positives."""
    logits = [[scale * sum(a * b for a, b in zip(u, v)) for v in txt] for u in img]

    def ce(values: list, positives: list) -> float:
        assert positives
        log_z = math.log(sum(math.exp(v) for v in values))
        return -sum(values[p] - log_z for p in positives) / len(positives)

    rows = [ce(logits[i], [j for j, k in enumerate(txt_keys) if k == img_keys[i]]) for i in range(len(img))]
    cols = [ce([row[j] for row in logits], [i for i, k in enumerate(img_keys) if k == txt_keys[j]])
            for j in range(len(txt))]
    return (sum(rows) / len(rows) + sum(cols) / len(cols)) / 2


def test_reference_loss_matches_a_hand_computed_value():
    # images (1,0), (0,1), (1,0) with captions x, y, x; texts x = (1,0), y = (0,1); scale 1.
    # Rows 0 and 2: logits (1, 0, 1) with positives {0, 2}: -log(e / (2e + 1)); row 1: (0, 1, 0): -log(e / (e + 2)).
    # Columns are the same vectors, so t2i = i2t.
    expected = (2 * (math.log(2 * math.e + 1) - 1) + (math.log(math.e + 2) - 1)) / 3
    got = ref_group_clip([[1, 0], [0, 1], [1, 0]], [[1, 0], [0, 1], [1, 0]], list("xyx"), list("xyx"), 1.0)
    assert got == pytest.approx(expected, rel=1e-12)


IMAGES = {  # image id -> embedding (unit vectors): 0-2 finetune images, 3-5 retrieved anchors
    0: [1.0, 0.0], 1: [0.0, 1.0], 2: [0.6, 0.8], 3: [0.8, 0.6], 4: [-0.6, 0.8], 5: [0.0, 1.0],
}
TEXTS = {  # class prompts, finetune captions, anchor captions
    "p0": [1.0, 0.0], "p1": [0.0, 1.0], "cap a": [0.8, 0.6], "cap b": [0.0, 1.0],
    "anc x": [0.6, 0.8], "anc y": [-0.8, 0.6],
}
FT_CAPTIONS = ["cap a", "cap b", "cap a"]  # images 0 and 2 share a caption (and class 0)
ANCHOR_CAPTIONS = ["anc x", "anc y", "anc x"]  # anchors 3 and 5 share a caption


class StubModel(torch.nn.Module):
    """encode_image / encode_text as fixed lookups (image id in the first pixel; tokens = the texts)."""

    def __init__(self, texts: dict, scale: float = 2.0):
        super().__init__()
        self.texts = texts
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))

    def encode_image(self, x):
        return torch.stack([torch.tensor(IMAGES[int(i)]) for i in x[:, 0, 0, 0]])

    def encode_text(self, tokens):
        return torch.stack([torch.tensor(self.texts[t]) for t in tokens])


def image_ids(*ids):
    return torch.tensor(ids, dtype=torch.float).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)


def arf_step(texts=TEXTS, tokenizer=lambda t: list(t)) -> Step:
    return Step(model=StubModel(texts), tokenizer=tokenizer, images=image_ids(0, 1, 2), labels=torch.tensor([0, 1, 0]),
                captions=list(FT_CAPTIONS), prompts=["p0", "p1"], prompt_labels=torch.tensor([0, 1]),
                anchor_images=image_ids(3, 4, 5), anchor_captions=list(ANCHOR_CAPTIONS))


def test_arf_with_three_anchor_pairs_and_repeated_captions_by_a_second_implementation():
    ft_img, anc_img = [IMAGES[i] for i in (0, 1, 2)], [IMAGES[i] for i in (3, 4, 5)]
    flyp = ref_group_clip(ft_img, [TEXTS["p0"], TEXTS["p1"]], [0, 1, 0], [0, 1], 2.0)
    tca = ref_group_clip(ft_img, [TEXTS[c] for c in FT_CAPTIONS], FT_CAPTIONS, FT_CAPTIONS, 2.0)
    ita = ref_group_clip(anc_img, [TEXTS[c] for c in ANCHOR_CAPTIONS], ANCHOR_CAPTIONS, ANCHOR_CAPTIONS, 2.0)
    assert ita > 0.5 and tca > 0.5 and flyp > 0.5  # three pairs: no term is trivially 0

    terms = get_method("arf").loss(arf_step(), ArfParams(lambda_tca=0.5, lambda_ita=2.0))
    assert set(terms) == {"flyp", "tca", "ita"}
    assert terms["flyp"].item() == pytest.approx(flyp, rel=1e-5)
    assert terms["tca"].item() == pytest.approx(0.5 * tca, rel=1e-5)
    assert terms["ita"].item() == pytest.approx(2.0 * ita, rel=1e-5)

    ablation = get_method("arf_ita").loss(arf_step(), get_method("arf_ita").params(lambda_ita=3.0))
    assert set(ablation) == {"flyp", "ita"} and ablation["ita"].item() == pytest.approx(3.0 * ita, rel=1e-5)

    fixed = get_method("arf").loss(arf_step(), ArfParams(anchor_logit_scale=5.0))  # anchor terms at scale 5
    assert fixed["ita"].item() == pytest.approx(
        ref_group_clip(anc_img, [TEXTS[c] for c in ANCHOR_CAPTIONS], ANCHOR_CAPTIONS, ANCHOR_CAPTIONS, 5.0), rel=1e-5)
    assert fixed["flyp"].item() == pytest.approx(flyp, rel=1e-5)  # FLYP keeps the model's scale

    joint = get_method("arf").loss(arf_step(), ArfParams(lambda_tca=1.0, lambda_ita=4.0, mixing="joint"))
    captions = FT_CAPTIONS + ANCHOR_CAPTIONS
    union = ref_group_clip(ft_img + anc_img, [TEXTS[c] for c in captions], captions, captions, 2.0)
    assert set(joint) == {"flyp", "anchors"}
    assert joint["anchors"].item() == pytest.approx((1.0 * 3 + 4.0 * 3) / 6 * union, rel=1e-5)


def test_caption_loss_takes_every_image_with_the_same_caption_as_a_positive():
    """Positives are decided by the caption text, not by the embeddings. (When the text tower gives
    every copy of a caption the same embedding, spreading the target over the copies and targeting
    one's own copy give the same loss, so the stub here encodes the copies differently, as a tower
    with dropout in training mode would if each copy went through it.)"""
    texts = {**{f"{t}#0": v for t, v in TEXTS.items()}, "cap a#1": TEXTS["cap a"], "anc x#1": [1.0, 0.0]}

    def tokenizer(captions):  # each copy of a caption gets its own token
        return [f"{c}#{captions[:i].count(c)}" for i, c in enumerate(captions)]

    step = arf_step(texts, tokenizer)
    step.encode_text = lambda captions: F.normalize(step.model.encode_text(tokenizer(captions)), dim=-1)
    anc_img = [IMAGES[i] for i in (3, 4, 5)]
    txt = [texts[t] for t in tokenizer(ANCHOR_CAPTIONS)]
    expected = ref_group_clip(anc_img, txt, ANCHOR_CAPTIONS, ANCHOR_CAPTIONS, 2.0)
    as_negatives = ref_group_clip(anc_img, txt, [0, 1, 2], [0, 1, 2], 2.0)  # each image only its own caption
    assert abs(expected - as_negatives) > 0.05  # the case tells the two apart
    got = caption_loss(step.encode_image(step.anchor_images), ANCHOR_CAPTIONS, step)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_a_step_encodes_each_distinct_caption_once_so_copies_share_an_embedding():
    """The trainer's step sends each distinct text through the tower once (`Step.encode_texts`): the
    copies of a caption share its embedding, so the ita term is the group loss on shared rows."""
    texts = {**{f"{t}#0": v for t, v in TEXTS.items()}, "cap a#1": TEXTS["cap a"], "anc x#1": [1.0, 0.0]}

    def tokenizer(captions):  # each copy of a caption would get its own token
        return [f"{c}#{captions[:i].count(c)}" for i, c in enumerate(captions)]

    step = arf_step(texts, tokenizer)
    anc_img = [IMAGES[i] for i in (3, 4, 5)]
    shared = [texts[f"{c}#0"] for c in ANCHOR_CAPTIONS]
    expected = ref_group_clip(anc_img, shared, ANCHOR_CAPTIONS, ANCHOR_CAPTIONS, 2.0)
    per_copy = ref_group_clip(anc_img, [texts[t] for t in tokenizer(ANCHOR_CAPTIONS)], ANCHOR_CAPTIONS,
                              ANCHOR_CAPTIONS, 2.0)
    assert abs(expected - per_copy) > 0.05  # the case tells the two apart
    terms = get_method("arf").loss(step, ArfParams(lambda_tca=0.0, lambda_ita=1.0))
    assert terms["ita"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- lr schedule


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    from pipeline.core.schedule import lr_factor

    # 4 steps, warm-up 2: warm-up (s + 1) / 2 = 0.5, 1, 1, 1; cosine 0.5 (1 + cos(pi s / 4)) =
    # 1, (1 + 0.7071068) / 2, 0.5, (1 - 0.7071068) / 2; their products:
    assert [lr_factor(s, 4, 2) for s in range(5)] == pytest.approx([0.5, 0.8535534, 0.5, 0.1464466, 0.0], abs=1e-7)
    # warm-up 3 over 6 steps: 1/3, 2/3, then 1; cosine at s = 1, 2: 0.5 (1 + cos(pi/6)) = 0.9330127, 0.75
    assert [lr_factor(s, 6, 3) for s in range(3)] == pytest.approx([1 / 3, 2 / 3 * 0.9330127, 0.75], abs=1e-7)
    # no warm-up (0 or 1): the cosine alone, 1 at the first step
    assert lr_factor(0, 10, 0) == lr_factor(0, 10, 1) == 1.0
    assert lr_factor(5, 10, 0) == pytest.approx(0.5, abs=1e-12)
    # a warm-up longer than the phase: still rising when the cosine ends it
    assert lr_factor(1, 4, 8) == pytest.approx(2 / 8 * 0.8535534, abs=1e-7)


# ------------------------------------------------------------------------------------------ WiSE


def test_wise_interpolation_at_mixing_alphas_against_weights_averaged_by_hand():
    from pipeline.core.wise import interpolate

    # "same" is equal in both models, so it passes through bit-identical; mixed, it would round:
    # in float32 (1 - alpha) x + alpha x != x for x = 0.1 at alpha 0.8 and x = 0.47477773 at alpha 0.3
    same = [0.1, 0.4747777283191681, 7.0]
    base = {"w": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([[0.0, 4.0]]), "same": torch.tensor(same),
            "count": torch.tensor(5)}
    tuned = {"w": torch.tensor([3.0, 2.0, -1.0]), "b": torch.tensor([[1.0, -4.0]]), "same": torch.tensor(same),
             "count": torch.tensor(9)}
    by_hand = {
        0.5: {"w": [2.0, 2.0, 1.0], "b": [[0.5, 0.0]]},
        0.3: {"w": [1.6, 2.0, 1.8], "b": [[0.3, 1.6]]},  # 0.7 * base + 0.3 * tuned
        0.8: {"w": [2.6, 2.0, -0.2], "b": [[0.8, -2.4]]},
    }
    for alpha, expected in by_hand.items():
        out = interpolate(base, tuned, alpha)
        assert set(out) == set(base)
        for k, v in expected.items():
            assert out[k].shape == base[k].shape and out[k].dtype == torch.float32
            assert out[k].flatten().tolist() == pytest.approx(torch.tensor(v).flatten().tolist(), abs=1e-6), (alpha, k)
        assert torch.equal(out["same"], base["same"]) and out["count"].item() == 9  # integer buffers: finetuned
    assert torch.equal(interpolate(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(interpolate(base, tuned, 1.0)["w"], tuned["w"])


# --------------------------------------------------------------------------------------- params


@pytest.mark.parametrize("key, value, bound", [
    ("image_size", 513, "<= 512"),
    ("corpus_fraction", 0.95, "<= 0.9"),
    ("unseen_fraction", 0.6, "<= 0.5"),
])
def test_a_value_above_a_max_is_refused_naming_the_key(tmp_path, key, value, bound):
    from pipeline.config import ParamsError
    from pipeline.stages import load_params

    path = tmp_path / "params.yaml"
    path.write_text(f"build_data:\n  {key}: {value}\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert f"build_data.{key}: must be {bound}, got {value}" in message and str(path) in message
    assert "\n" not in message


def test_a_value_at_its_max_is_accepted(tmp_path):
    from pipeline.stages import load_params

    path = tmp_path / "params.yaml"
    path.write_text("build_data:\n  image_size: 512\n  unseen_fraction: 0.5\n")
    data = load_params(path)["build_data"]
    assert data.image_size == 512 and data.unseen_fraction == 0.5


# ----------------------------------------------------------------------------------- leak check

# the benchmark's zero-shot sets, one per style, named here rather than taken from the code
ZERO_SHOT_SETS = ["zeroshot_google", "zeroshot_twitter", "zeroshot_openmoji_color", "zeroshot_openmoji_black"]


def _bench_sets(**members):
    from pipeline.data.default import EVAL_SETS

    sets = {name: [] for name in ("finetune", "val", *EVAL_SETS, *ZERO_SHOT_SETS)}
    for name, codes in members.items():
        sets[name] = [{"__key__": f"emoji-{c}-{name}", "json": json.dumps({"emoji": c})} for c in codes]
    return sets


@pytest.mark.parametrize("zs_set", ZERO_SHOT_SETS)
def test_a_seen_emoji_in_any_zero_shot_set_is_refused(zs_set):
    import pipeline.data.default as default_mod

    split = default_mod._Split([], [], [], [], {}, {}, [], [])
    default_mod._check_no_leaks([], [], split, _bench_sets(finetune=["1F600"], val=["1F601"], **{zs_set: ["1F602"]}))
    with pytest.raises(default_mod.DataLeakError, match="emoji 1F600 is in both train and zero-shot"):
        default_mod._check_no_leaks([], [], split, _bench_sets(finetune=["1F600"], **{zs_set: ["1F600"]}))
    with pytest.raises(default_mod.DataLeakError, match="emoji 1F601 is in both val and zero-shot"):
        default_mod._check_no_leaks([], [], split, _bench_sets(val=["1F601"], **{zs_set: ["1F601"]}))


# ------------------------------------------------------------------------ losses: refused inputs


def test_contrastive_loss_without_groups_needs_as_many_texts_as_images():
    """Without groups image i's positive is text i: 2 images and 3 texts cannot pair; the message names both."""
    from pipeline.core.losses import contrastive_loss

    with pytest.raises(ValueError, match="2 images vs 3 texts need groups"):
        contrastive_loss(torch.eye(2, 4), torch.eye(3, 4), torch.tensor(1.0))


def test_contrastive_loss_refuses_a_text_without_a_positive():
    """Images in group 0 only, texts in groups 0 and 1: column 1 (text 1) matches no image."""
    from pipeline.core.losses import contrastive_loss

    with pytest.raises(ValueError, match="positive"):
        contrastive_loss(torch.eye(2), torch.eye(2), torch.tensor(1.0),
                         image_groups=torch.tensor([0, 0]), text_groups=torch.tensor([0, 1]))


def test_contrastive_loss_with_groups_for_one_side_only_does_not_fall_back_to_plain_clip():
    """Image groups [0, 0] say both images share a positive; silently pairing image i with text i would ignore that."""
    from pipeline.core.losses import contrastive_loss

    with pytest.raises((TypeError, ValueError)):
        contrastive_loss(torch.eye(2), torch.eye(2), torch.tensor(1.0), image_groups=torch.tensor([0, 0]))


def test_group_ids_of_no_values_is_an_empty_long_tensor():
    """Group ids index and compare as integers; torch.tensor([]) alone would be float32."""
    from pipeline.core.losses import group_ids

    ids = group_ids([])
    assert ids.dtype == torch.long and ids.shape == (0,)


# ------------------------------------------------------------------- methods: joint mixing, towers


def test_joint_mixing_needs_both_anchor_weights_above_zero_and_keeps_the_anchor_scale():
    """Joint needs both lambdas > 0 (else separate terms); weight: the lambdas averaged over 3 + 3 pairs."""
    arf = get_method("arf").loss
    assert set(arf(arf_step(), ArfParams(lambda_tca=0.0, lambda_ita=1.0, mixing="joint"))) == {"flyp", "ita"}
    assert set(arf(arf_step(), ArfParams(lambda_tca=1.0, lambda_ita=0.0, mixing="joint"))) == {"flyp", "tca"}

    captions = FT_CAPTIONS + ANCHOR_CAPTIONS
    images = [IMAGES[i] for i in (0, 1, 2, 3, 4, 5)]

    def union(scale):
        return ref_group_clip(images, [TEXTS[c] for c in captions], captions, captions, scale)

    assert abs(union(5.0) - union(2.0)) > 0.05  # the case tells the model's scale 2 from the anchor scale 5
    equal = arf(arf_step(), ArfParams(lambda_tca=1.0, lambda_ita=1.0, mixing="joint"))  # lambdas of 1: weight 1
    assert set(equal) == {"flyp", "anchors"}
    assert equal["anchors"].item() == pytest.approx(union(2.0), rel=1e-5)
    fixed = arf(arf_step(), ArfParams(lambda_tca=1.0, lambda_ita=4.0, mixing="joint", anchor_logit_scale=5.0))
    assert fixed["anchors"].item() == pytest.approx((1.0 * 3 + 4.0 * 3) / 6 * union(5.0), rel=1e-5)


class TokenTableModel(torch.nn.Module):
    """Token ids (a LongTensor, as open_clip's tokenizer returns) and image ids (first pixel) look up rows of the
    identity; the image tower holds a weight, so it builds a graph when it is trained."""

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(2.0)))
        self.w = torch.nn.Parameter(torch.tensor(1.0))
        self.table = torch.eye(2)

    def encode_image(self, x):
        return self.w * self.table[x[:, 0, 0, 0].long()]

    def encode_text(self, tokens):
        return self.table[tokens]


def token_table_step(**kw) -> Step:
    vocab = {"p0": 0, "p1": 1}
    return Step(model=TokenTableModel(), tokenizer=lambda texts: torch.tensor([vocab[t] for t in texts]),
                images=image_ids(0, 1), labels=torch.tensor([0, 1]), captions=["p0", "p1"], prompts=["p0", "p1"],
                prompt_labels=torch.tensor([0, 1]), **kw)


def test_a_tokenizer_returning_a_tensor_feeds_the_text_tower():
    """Images and prompts embed as the identity at scale 2: every row and column has logits (2, 0): log(1 + e^-2)."""
    from pipeline.core.methods import flyp_loss

    assert flyp_loss(token_table_step()).item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-5)


def test_a_frozen_image_tower_builds_no_graph_under_grad_mode():
    """The stub image tower multiplies by a Parameter: its output needs grad exactly when the tower trains."""
    with torch.enable_grad():
        assert token_table_step().image_emb.requires_grad
        assert not token_table_step(train_image=False).image_emb.requires_grad


# ----------------------------------------------------------------------------- WiSE: the others


def test_changed_parts_names_the_text_tower_when_only_a_non_visual_tensor_changes():
    """Everything outside `visual.` counts as the text side; here only head.w differs (2 vs 3)."""
    from pipeline.core.wise import changed_parts

    t0, t1 = torch.tensor([1.0]), torch.tensor([2.0])
    assert changed_parts({"visual.w": t0, "head.w": t1}, {"visual.w": t0, "head.w": t1 + 1}) == {"text"}


def test_interpolate_names_the_tensors_only_one_model_has():
    """Base has a, b and the finetuned model a, c: the keys in one only are b and c, sorted."""
    from pipeline.core.wise import interpolate

    t = torch.tensor([1.0])
    with pytest.raises(ValueError, match=r"\(b, c \.\.\.\)"):
        interpolate({"a": t, "b": t}, {"a": t, "c": t}, 0.5)


def test_retrieval_r1_is_zero_when_every_pick_is_wrong():
    """Image 0 = (0, 1) is nearest caption b = (0, 1) but paired with a, image 1 the other way round, both ways."""
    from pipeline.core.wise import retrieval_r1

    r = retrieval_r1(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["a", "b"])
    assert r["i2t_r1"] == 0 and r["t2i_r1"] == 0


def test_lr_factor_stays_zero_past_the_end_of_the_phase():
    """Step 6 of 4: the cosine argument is capped at pi: 0.5 (1 + cos(pi)) = 0 (uncapped, cos(1.5 pi) gives 0.5)."""
    from pipeline.core.schedule import lr_factor

    assert lr_factor(6, 4, 1) == 0.0


# --------------------------------------------------------------------------------------- metrics

# logits over 7 classes; a row's rank order is its values' order (6 highest)
METRIC_ROWS = {
    "r0": [6, 5, 4, 3, 2, 1, 0],  # top-5: 0 1 2 3 4
    "r1": [5, 6, 4, 3, 2, 1, 0],  # top-5: 1 0 2 3 4
    "r2": [0, 6, 1, 2, 3, 4, 5],  # top-5: 1 6 5 4 3
    "r3": [6, 4, 5, 3, 2, 1, 0],  # top-5: 0 2 1 3 4
    "r4": [6, 5, 4, 1, 3, 2, 0],  # top-5: 0 1 2 4 5 (3 is sixth)
    "r5": [5, 4, 6, 3, 2, 1, 0],  # top-5: 2 0 1 3 4
    "r6": [5, 4, 3, 6, 2, 1, 0],  # top-5: 3 0 1 2 4
}


@pytest.mark.parametrize("rows, labels, acc1, acc5, recall", [
    # hits at top-1: r0 (0), r1 (1), r2 (1); r3 has 2 second, r4 has 3 sixth; per class 1, 1, 0, 0
    (["r0", "r1", "r2", "r3", "r4"], [0, 1, 1, 2, 3], 3 / 5, 4 / 5, (1 + 1 + 0 + 0) / 4),
    # hits at top-1: r0, r1, r5, r6; r0 for class 1 has it second, r4 sixth; per class 1, 1/2, 1, 1/2
    (["r0", "r1", "r0", "r5", "r4", "r6"], [0, 1, 1, 2, 3, 3], 4 / 6, 5 / 6, (1 + 0.5 + 1 + 0.5) / 4),
])
def test_classification_metrics_on_ranks_counted_by_hand(rows, labels, acc1, acc5, recall):
    """Top-1 / top-5 hits and per-class recall counted from the rank orders; se = sqrt(acc1 (1 - acc1) / n)."""
    from pipeline.core.scoring import classification_metrics

    m = classification_metrics(torch.tensor([METRIC_ROWS[r] for r in rows], dtype=torch.float), torch.tensor(labels))
    assert m["acc1"] == pytest.approx(100 * acc1) and m["acc5"] == pytest.approx(100 * acc5)
    assert m["mean_per_class_recall"] == pytest.approx(100 * recall)
    assert m["se"] == pytest.approx(100 * math.sqrt(acc1 * (1 - acc1) / len(rows)))


def test_mcnemar_p_of_a_tie_is_capped_at_one():
    """One disagreement each way: n 2, k 1, 2 * (C(2,0) + C(2,1)) / 2^2 = 1.5, which as a probability is 1."""
    from pipeline.core.scoring import mcnemar_p

    assert mcnemar_p(torch.tensor([True, False]), torch.tensor([False, True]))["p"] == 1.0


# ------------------------------------------------------------------------ retrieval top-k / dedup


def test_retrieve_params_refuse_a_blank_index_key_and_a_non_mapping():
    """A blank index_key is neither a faiss factory string nor null; a section must be a mapping."""
    from pipeline.config import ParamsError, parse_section
    from pipeline.stages.retrieve import RetrieveParams

    with pytest.raises(ParamsError, match="retrieve.index_key: empty"):
        parse_section(RetrieveParams, {"index_key": "  "}, "retrieve")
    assert parse_section(RetrieveParams, {"index_key": "Flat"}, "retrieve").index_key == "Flat"
    assert parse_section(RetrieveParams, {"target": "text"}, "retrieve").target == "text"
    with pytest.raises(ParamsError, match="retrieve: expected a mapping, got list"):
        parse_section(RetrieveParams, [1], "retrieve")


def _kept(scores, ids, k, dedup, excluded=()):
    """retrieve._assign on small lists, scores rounded to 2 places; `excluded`: rows (of 10) never taken."""
    import numpy as np

    from pipeline.stages.retrieve import _assign

    mask = np.zeros(10, dtype=bool)
    mask[list(excluded)] = True
    kept = _assign(np.array(scores, dtype=np.float32), np.array(ids), k, dedup, mask)
    return [[(row, round(s, 2)) for row, s in c] for c in kept]


def test_retrieve_top_k_per_class_with_and_without_dedup_by_hand():
    """Each class in score order; with dedup a row goes to the class scoring it higher, the other takes its next."""
    scores, ids = [[0.9, 0.8, 0.1], [0.95, 0.5, 0.4]], [[5, 7, 9], [5, 9, 7]]
    assert _kept(scores, ids, 2, False) == [[(5, 0.9), (7, 0.8)], [(5, 0.95), (9, 0.5)]]
    assert _kept(scores, ids, 2, True) == [[(7, 0.8)], [(5, 0.95), (9, 0.5)]]
    assert _kept(scores, ids, 2, True, excluded=[7]) == [[], [(5, 0.95), (9, 0.5)]]  # class 0's 5 and 9 go to class 1
    # faiss pads with -1: dropped; row 0 is a row like any other
    assert _kept([[0.9, 0.8, 0.0]], [[5, 7, -1]], 3, True) == [[(5, 0.9), (7, 0.8)]]
    assert _kept([[0.9, 0.8, 0.0]], [[0, 7, -1]], 3, True) == [[(0, 0.9), (7, 0.8)]]
    assert _kept([[0.9, 0.8]], [[0, 1]], 2, True, excluded=[0]) == [[(1, 0.8)]]
    # a tie goes to the lower class index
    assert _kept([[0.5], [0.5]], [[3], [3]], 1, True) == [[(3, 0.5)], []]


def test_retrieve_dedup_a_full_class_does_not_stop_the_others():
    """Disjoint candidates: each class keeps its own best k whichever class fills first."""
    # class 0 (.9, .8) fills before class 1 has taken its .85
    assert _kept([[0.9, 0.8], [0.95, 0.85]], [[1, 2], [3, 4]], 2, True) == [[(1, 0.9), (2, 0.8)],
                                                                             [(3, 0.95), (4, 0.85)]]
    # k 1: class 0 is full after .9; its .8 is skipped and class 1 still takes .5
    assert _kept([[0.9, 0.8], [0.5, 0.4]], [[1, 2], [3, 4]], 1, True) == [[(1, 0.9)], [(3, 0.5)]]


# ------------------------------------------------------------------------- params: types, files


@dataclasses.dataclass
class TypedFields:
    """One field per kind of type hint parse_section checks."""

    opt: int | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    table: dict[str, int] = dataclasses.field(default_factory=dict)
    anything: typing.Any = None
    ratio: float = 1.0
    raw: list = dataclasses.field(default_factory=list)
    bare: typing.List = dataclasses.field(default_factory=list)  # noqa: UP006 (origin list, no item type)
    mode: typing.Literal["a", "b"] = "a"
    xs: list[typing.Any] | None = None


@pytest.mark.parametrize("raw", [
    {"opt": "x"}, {"names": ["a", 1]}, {"names": "ab"}, {"table": {"a": "x"}}, {"table": {1: 1}}, {"ratio": True},
])
def test_a_value_of_the_wrong_type_is_refused(raw):
    """A str is no int, 1 no str, a str no list, a bool no float (though True == 1)."""
    from pipeline.config import ParamsError, parse_section

    with pytest.raises(ParamsError):
        parse_section(TypedFields, raw, "t")


@pytest.mark.parametrize("raw", [
    {"opt": None}, {"opt": 3}, {"names": ["a"]}, {"table": {"a": 1}}, {"anything": {"x": 1}}, {"raw": [1, "a"]},
    {"bare": [1, "a"]}, {"mode": "a"},
])
def test_a_value_of_the_hinted_type_is_accepted(raw):
    """Each value matches its hint; a bare list / typing.List takes any items, a Literal is not checked as a type."""
    from pipeline.config import parse_section

    (name, value), = raw.items()
    assert getattr(parse_section(TypedFields, raw, "t"), name) == value


def test_a_type_error_names_the_hint_as_written():
    """str() of list[typing.Any] | None spells typing.Any; the message drops the module."""
    from pipeline.config import ParamsError, parse_section

    with pytest.raises(ParamsError, match=r"t.opt: expected int \| None, got 'x'"):
        parse_section(TypedFields, {"opt": "x"}, "t")
    with pytest.raises(ParamsError) as err:
        parse_section(TypedFields, {"xs": "x"}, "t")
    assert str(err.value) == "t.xs: expected list[Any] | None, got 'x'"


@dataclasses.dataclass
class PositiveDefault:
    x: int = dataclasses.field(default=0, metadata={"gt": 0})


def test_a_default_that_breaks_a_constraint_is_refused():
    """Defaults are checked like given values: 0 is not > 0."""
    from pipeline.config import ParamsError, parse_section

    with pytest.raises(ParamsError, match="d.x: must be > 0, got 0"):
        parse_section(PositiveDefault, {}, "d")


def test_a_field_after_a_nested_section_is_still_read():
    """methods.arf is a nested section; arf_tca after it keeps its given 0.5 (default 1.0)."""
    from pipeline.config import parse_section
    from pipeline.core.methods import MethodsParams

    p = parse_section(MethodsParams, {"arf": {"lambda_ita": 2.0}, "arf_tca": {"lambda_tca": 0.5}}, "methods")
    assert p.arf.lambda_ita == 2.0 and p.arf_tca.lambda_tca == 0.5


def test_load_params_file_errors_and_the_default_path(tmp_path, monkeypatch):
    """An unclosed [, a top-level list, a missing file: each its one-line reason; no argument reads ./params.yaml."""
    import pipeline.stages
    from pipeline.config import ParamsError, list_param_sections, load_params_file

    for text, reason in (("a: [1", "not valid YAML at line 1 (expected ',' or ']', but got '<stream end>')"),
                         ("- 1", "expected a mapping of sections")):
        (tmp_path / "p.yaml").write_text(text)
        with pytest.raises(ParamsError) as err:
            load_params_file(tmp_path / "p.yaml")
        assert f"{tmp_path / 'p.yaml'}: {reason}" in str(err.value)
    with pytest.raises(ParamsError, match="none.yaml: not found"):
        load_params_file(tmp_path / "none.yaml")
    pipeline.stages.load_all()
    (tmp_path / "params.yaml").write_text("retrieve:\n  k_per_class: 3\n")
    monkeypatch.chdir(tmp_path)
    assert load_params_file()["retrieve"].k_per_class == 3
    sections = list_param_sections()
    assert sections == sorted(sections) and {"build_data", "retrieve", "train", "methods"} <= set(sections)


def test_a_yaml_error_without_a_position_is_named_by_its_first_line(tmp_path):
    """PyYAML's reader refuses BEL (x07) by an error without line mark or `problem`: str(error)'s first line."""
    from pipeline.config import ParamsError, load_params_file

    path = tmp_path / "bell.yaml"
    path.write_text("a: \x07\n")
    with pytest.raises(ParamsError) as err:
        load_params_file(path)
    reason = "unacceptable character #x0007: special characters are not allowed"
    assert str(err.value) == f"{path}: not valid YAML ({reason})"


def test_an_unreadable_params_file_is_named(tmp_path, monkeypatch):
    """Reading raises PermissionError (simulated: root reads any file whatever its mode): one line naming the file."""
    from pathlib import Path

    from pipeline.config import ParamsError, load_params_file

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    path = tmp_path / "params.yaml"
    path.write_text("train: {}\n")
    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ParamsError) as err:
        load_params_file(path)
    assert str(err.value) == f"{path}: cannot be read (permission denied)"


@dataclasses.dataclass
class OneOrMore:
    items: list = dataclasses.field(default_factory=lambda: ["a"], metadata={"min_items": 1})


def test_min_items_accepts_exactly_that_many():
    """min_items 1: one item is enough, none is refused with the count."""
    from pipeline.config import ParamsError, parse_section

    assert parse_section(OneOrMore, {"items": ["b"]}, "t").items == ["b"]
    with pytest.raises(ParamsError) as err:
        parse_section(OneOrMore, {"items": []}, "t")
    assert str(err.value) == "t.items: needs at least 1 item(s), got []"


# --------------------------------------------------------------------------- splits: small parts


def test_data_params_fraction_limits_at_their_edges():
    """0.4 + 0.5 is exactly 0.9 in floats (refused); 4 * (1 - 0.25 - 0.5) = 1 train emoji suffices; local: no check."""
    from pipeline.config import ParamsError, parse_section
    from pipeline.data.default import DataParams

    parse_section(DataParams, {"source": "local", "val_fraction": 0.4, "test_fraction": 0.6}, "build_data")
    parse_section(DataParams, {"min_class_size": 4, "val_fraction": 0.25, "test_fraction": 0.5}, "build_data")
    with pytest.raises(ParamsError, match=r"val_fraction \+ test_fraction must be < 0.9"):
        parse_section(DataParams, {"val_fraction": 0.4, "test_fraction": 0.5}, "build_data")


def test_variant_key_drops_gender_and_person_parts():
    """2642 (male sign), 1F469 (woman) and 200D (ZWJ) are variant parts; 2764 (heart) and FE0F stay."""
    from pipeline.data.default import variant_key

    assert variant_key("1F46E-2642") == "1F46E"
    assert variant_key("1F469-200D-2764-FE0F-200D-1F468") == "2764-FE0F"


def test_assign_places_the_largest_group_first():
    """Targets 2.5 / 3: b c d to part 1 (deficit 3), a, e to part 0 (2.5, 1.5 > 0); smallest first: [[e b c d], [a]]"""
    import random

    from pipeline.data.default import _assign

    assert _assign([["a"], ["b", "c", "d"], ["e"]], [2.5, 3], random.Random(0)) == [["a", "e"], ["b", "c", "d"]]


def test_pick_heldout_takes_whole_caption_groups():
    """Groups a (2) and b (1) fill n 3 exactly; with two groups of 2 only one fits in 3."""
    from pipeline.data.default import _pick_heldout

    def samples(*pairs):
        return [{"txt": caption, "__key__": key} for caption, key in pairs]

    assert _pick_heldout(samples(("a", "k1"), ("a", "k2"), ("b", "k3")), 3, 0) == {"k1", "k2", "k3"}
    got = _pick_heldout(samples(("a", "k1"), ("a", "k2"), ("b", "k3"), ("b", "k4")), 3, 0)
    assert got in ({"k1", "k2"}, {"k3", "k4"})


def test_leak_check_by_variant_key_stays_within_a_subcategory():
    """Man teacher and school share variant key 1F3EB, not a subcategory: no leak; one emoji in two parts is one."""
    import pipeline.data.default as default_mod
    from pipeline.data.emoji import Emoji

    bench = [Emoji("1F468-200D-1F3EB", "man teacher", [], "People & Body", "person-role", 0),
             Emoji("1F3EB", "school", [], "Travel & Places", "place-building", 1)]
    with_bench = default_mod._Split([], bench, [], [], {}, {}, [], [])
    default_mod._check_no_leaks([], [], with_bench, _bench_sets(finetune=["1F468-200D-1F3EB"], id_test=["1F3EB"]))
    empty = default_mod._Split([], [], [], [], {}, {}, [], [])
    with pytest.raises(default_mod.DataLeakError, match="emoji 1F600 is in both train and val"):
        default_mod._check_no_leaks([], [], empty, _bench_sets(finetune=["1F600"], val=["1F600"]))
    corpus = [{"__key__": "c", "json": json.dumps({"emoji": "1F601"})}]
    with pytest.raises(default_mod.DataLeakError, match="emoji 1F601 is in both corpus and train"):
        default_mod._check_no_leaks(corpus, [], empty, _bench_sets(finetune=["1F601"]))


# ------------------------------------------------------------------- splits: split_emoji, synthetic

# ten codes of one concept (school): every one has variant key 1F3EB
ONE_CONCEPT = ["1F468-200D-1F3EB", "1F469-200D-1F3EB", "1F9D1-200D-1F3EB", "1F3EB", "1F3EB-2640", "1F3EB-2642",
               "1F3EB-200D-2640", "1F3EB-200D-2642", "1F468-1F3EB", "1F469-1F3EB"]


def single_emoji(counts: dict) -> list:
    """`n` synthetic emoji per subcategory, each a code point of its own (so its own variant group)."""
    from pipeline.data.emoji import Emoji

    out = []
    for sub, n in counts.items():
        for _ in range(n):
            i = len(out) + 1
            out.append(Emoji(f"{0x1F000 + i:X}", f"e{i}", [], "Cat", sub, i))
    return out


def concept_emoji(sub: str, n: int) -> list:
    from pipeline.data.emoji import Emoji

    return [Emoji(code, code, [], "Cat", sub, i) for i, code in enumerate(ONE_CONCEPT[:n])]


def split_params(**kw):
    from pipeline.data.default import DataParams

    base = {"seed": 3, "corpus_fraction": 0.1, "min_class_size": 3, "unseen_fraction": 0.0, "val_fraction": 0.15,
            "test_fraction": 0.3}
    return DataParams(**{**base, **kw})


def test_a_subcategory_of_one_variant_group_is_no_class():
    """Six codes of one concept go to one side whole and make one variant group; a class needs three."""
    from pipeline.data.default import split_emoji

    s = split_emoji(single_emoji({"alphanum": 10, "arrow": 10}) + concept_emoji("solo", 6), split_params())
    assert "solo" not in s.seen + s.unseen and set(s.seen) == {"alphanum", "arrow"}


def test_a_subcategory_of_exactly_min_class_size_is_a_class():
    """4 singles, targets 0.4 / 3.6: deficits 3.6, 2.6, 1.6, 0.6 all beat 0.4, so all 4 go to the benchmark; 4 >= 4."""
    from pipeline.data.default import split_emoji

    s = split_emoji(single_emoji({"alphanum": 10, "arrow": 10, "animal-bird": 4}), split_params(min_class_size=4))
    assert len([e for e in s.bench_half + s.moved if e.subcategory == "animal-bird"]) == 4 and "animal-bird" in s.seen


def test_two_subcategories_with_one_class_name_are_refused():
    """'x-y' and 'x y' both read 'x y' (a dash becomes a space)."""
    from pipeline.data.default import split_emoji

    with pytest.raises(ValueError, match="two subcategories share the class name 'x y'"):
        split_emoji(single_emoji({"x-y": 10, "x y": 10, "arrow": 10}), split_params())


def test_unseen_class_counts_and_order():
    """n_unseen = round(classes * fraction), at least 2 when > 0; seen and unseen each in class-name order."""
    from pipeline.data.default import split_emoji

    four = ["alphanum", "animal-amphibian", "animal-bird", "arrow"]  # names: letters in a box, frog, bird, arrow
    s = split_emoji(single_emoji(dict.fromkeys(four[:2], 10)), split_params(unseen_fraction=0.0))
    assert s.unseen == [] and len(s.seen) == 2
    s = split_emoji(single_emoji(dict.fromkeys(four + ["hotel"], 10)), split_params(unseen_fraction=0.1))
    assert len(s.unseen) == 2 and len(s.seen) == 3  # round(0.5) = 0, raised to 2
    with pytest.raises(ValueError, match="too few for 1 seen and 2 unseen"):  # round(0.75) = 1, raised to 2
        split_emoji(single_emoji(dict.fromkeys(four[:3], 10)), split_params(unseen_fraction=0.25))
    s = split_emoji(single_emoji(dict.fromkeys(four, 10)), split_params(unseen_fraction=0.25))
    assert len(s.unseen) == 2 and len(s.seen) == 2
    # the names sort in the reverse order of the slugs, so any two in name order are out of slug order
    s = split_emoji(single_emoji(dict.fromkeys(four, 10)), split_params(unseen_fraction=0.5))
    names = [s.names[x] for x in s.seen], [s.names[x] for x in s.unseen]
    assert all(n == sorted(n) for n in names)
    assert s.seen != sorted(s.seen) and s.unseen != sorted(s.unseen)


def test_a_class_splits_into_test_val_train_by_its_fractions():
    """22 singles: 2 to the corpus (target 2.2); of 20, 20 * 0.3 = 6 test, 20 * 0.15 = 3 val, 11 train, met exactly."""
    from collections import Counter

    from pipeline.data.default import split_emoji

    s = split_emoji(single_emoji({"alphanum": 22, "arrow": 10}), split_params())
    bench = [e for e in s.bench_half if e.subcategory == "alphanum"]
    assert len(bench) == 20
    assert Counter(s.split_of[e.code] for e in bench) == {"test": 6, "val": 3, "train": 11}


def test_a_class_with_no_train_emoji_left_is_refused():
    """Targets 6 / 2.9 / 1.1: the 8-code concept group goes to test, the 2 singles to val (2.9, 1.9 > 1.1)."""
    from pipeline.data.default import split_emoji

    emoji = concept_emoji("alphanum", 8) + single_emoji({"alphanum": 2, "arrow": 12})
    with pytest.raises(ValueError, match="no train emoji left"):
        split_emoji(emoji, split_params(corpus_fraction=0.01, test_fraction=0.6, val_fraction=0.29, min_class_size=10))


def test_small_subcategories_can_be_left_unused():
    """hotel has 2 emoji (< min_class_size 3): not moved to the corpus, each marked unused."""
    from pipeline.data.default import split_emoji

    emoji = single_emoji({"alphanum": 10, "arrow": 10, "hotel": 2})
    s = split_emoji(emoji, split_params(small_subcategories_to_corpus=False))
    assert s.moved == [] and s.unused and all(s.split_of[e.code] == "unused" for e in s.unused)


def test_each_split_decision_draws_from_its_own_named_stream(monkeypatch):
    """The stream names and the seed fix the published split (dvc.lock): halves, classes, train-val-test, heldout."""
    import pipeline.data.default as default_mod

    calls = []
    real = default_mod._rng

    def spy(seed, what):
        calls.append((seed, what))
        return real(seed, what)

    monkeypatch.setattr(default_mod, "_rng", spy)
    default_mod.split_emoji(single_emoji({"alphanum": 10, "arrow": 10}), split_params(seed=11))
    default_mod._pick_heldout([{"txt": "a", "__key__": "k"}], 1, 11)
    assert set(calls) == {(11, "halves"), (11, "classes"), (11, "train-val-test"), (11, "heldout")}


# -------------------------------------------------------------------------------- skip counting


def test_skip_counter_counts_every_bad_sample_and_keeps_five_short_examples(caplog):
    """7 bad samples: all counted and logged, the first 5 kept, each repr cut to 200 characters."""
    import logging

    from pipeline.io.shards import SkipCounter

    s = SkipCounter()
    assert s.report("d") is None
    with caplog.at_level(logging.WARNING):
        assert s(ValueError("x" * 300)) is True
        for i in range(6):
            s(ValueError(f"bad {i}"))
    assert s.skipped == 7 and len(s.examples) == 5 and len(s.examples[0]) == 200
    assert s.examples[1] == "ValueError('bad 0')"
    assert s.report("d") == f"d: skipped 7 bad sample(s), e.g. {s.examples[0]}"
    assert "skipping bad sample: ValueError('bad 0')" in caplog.text
