"""Expectations worked out by hand or by a second, plain implementation written here, never by the
code under test: ARF's loss terms, the learning-rate schedule, WiSE-FT's weight mixing, params range
checks and the benchmark's leak check."""
import json
import math

import pytest
import torch

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
    with dropout in training mode would.)"""
    texts = {**{f"{t}#0": v for t, v in TEXTS.items()}, "cap a#1": TEXTS["cap a"], "anc x#1": [1.0, 0.0]}

    def tokenizer(captions):  # each copy of a caption gets its own token
        return [f"{c}#{captions[:i].count(c)}" for i, c in enumerate(captions)]

    step = arf_step(texts, tokenizer)
    anc_img = [IMAGES[i] for i in (3, 4, 5)]
    txt = [texts[t] for t in tokenizer(ANCHOR_CAPTIONS)]
    expected = ref_group_clip(anc_img, txt, ANCHOR_CAPTIONS, ANCHOR_CAPTIONS, 2.0)
    as_negatives = ref_group_clip(anc_img, txt, [0, 1, 2], [0, 1, 2], 2.0)  # each image only its own caption
    assert abs(expected - as_negatives) > 0.05  # the case tells the two apart
    got = caption_loss(step.encode_image(step.anchor_images), ANCHOR_CAPTIONS, step)
    assert got.item() == pytest.approx(expected, rel=1e-5)
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
