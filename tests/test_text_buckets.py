"""Texts through the tower in length buckets: every text once, the same embeddings as one text at a time."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.encode import _cheapest_cuts, encode_texts, id_length_buckets, in_text_order, length_buckets

TEXTS = ["a cat", "a photo of a small dog sitting on a red chair", "tree", "a cat",
         "signs and symbols, weather: snow, cold, winter", "x", "a photo of a tree"]


@pytest.fixture(scope="module")
def default_model():
    from pipeline.core.models import DEFAULT_MODEL, create_model

    torch.manual_seed(0)
    return create_model(DEFAULT_MODEL)


def _padded_cost(lengths, cuts):
    return sum((b - a) * lengths[b - 1] for a, b in zip(cuts, cuts[1:]))


def test_cheapest_cuts_are_the_cheapest_of_every_split():
    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 12) for _ in range(rng.randint(1, 9)))
        cost = rng.choice([0, 3, 10, 40])
        cuts = _cheapest_cuts(lengths, cost)
        assert cuts[0] == 0 and cuts[-1] == len(lengths) and cuts == sorted(set(cuts))
        found = _padded_cost(lengths, cuts) + cost * (len(cuts) - 1)
        inner = range(1, len(lengths))
        brute = min(_padded_cost(lengths, [0, *c, len(lengths)]) + cost * (len(c) + 1)
                    for r in range(len(lengths)) for c in itertools.combinations(inner, r))
        assert found == brute


def test_buckets_hold_every_position_once_cut_to_their_longest_row():
    pad = 0
    lengths = [3, 9, 4, 3, 12, 2, 9]
    ids = torch.tensor([[7] * n + [pad] * (16 - n) for n in lengths])
    for kw in ({"call_cost": 0}, {"call_cost": 1000}, {"max_rows": 3}, {}):
        groups = id_length_buckets(ids, pad, **kw)
        assert sorted(p for g, _ in groups for p in g) == list(range(len(lengths)))
        for positions, rows in groups:
            assert rows.shape == (len(positions), max(lengths[p] for p in positions))
            assert torch.equal(rows, ids[positions, :rows.shape[1]])
        if "max_rows" in kw:
            assert all(len(g) <= 3 for g, _ in groups)
    assert len(id_length_buckets(ids, pad, call_cost=1000)) == 1  # a call dearer than any padding
    assert len(id_length_buckets(ids, pad, call_cost=0)) == len(set(lengths))  # free calls: one per length
    rows = torch.arange(7.0)[:, None]
    assert torch.equal(in_text_order([([3, 1], rows[[3, 1]]), ([0, 2, 4, 6, 5], rows[[0, 2, 4, 6, 5]])]), rows[:7])


def test_a_tokenizer_that_needs_full_rows_keeps_them_in_order():
    calls = []

    def tokenizer(texts):
        calls.append(list(texts))
        return torch.ones(len(texts), 16, dtype=torch.long)

    groups = length_buckets(tokenizer, TEXTS, max_rows=3)
    assert [g for g, _ in groups] == [[0, 1, 2], [3, 4, 5], [6]] and calls == [TEXTS[:3], TEXTS[3:6], TEXTS[6:]]
    assert all(rows.shape[1] == 16 for _, rows in groups)


def test_inference_encodes_each_distinct_text_once_as_one_at_a_time(default_model):
    model, tokenizer = default_model.model, default_model.tokenizer
    seen = []
    original = model.encode_text
    model.encode_text = lambda ids: seen.append(ids.shape) or original(ids)
    try:
        emb = encode_texts(model, tokenizer, TEXTS, batch_size=3)
    finally:
        model.encode_text = original
    assert sum(s[0] for s in seen) == len(set(TEXTS)) and max(s[0] for s in seen) <= 3
    with torch.inference_mode():
        alone = torch.cat([F.normalize(model.encode_text(tokenizer([t])), dim=-1) for t in TEXTS])
    assert torch.allclose(emb, alone, atol=1e-5)
    assert torch.equal(emb[0], emb[3])  # the repeated text: one row, shared


def test_a_step_encodes_its_text_sets_in_one_pass_with_each_text_once(default_model):
    from pipeline.core.methods import Step

    model, tokenizer = default_model.model, default_model.tokenizer
    model.eval()  # no dropout: the bucketed pass must give what separate calls give
    prompts, captions, anchors = TEXTS[:2], TEXTS[2:5], TEXTS[3:]
    step = Step(model=model, tokenizer=tokenizer, images=torch.zeros(1, 3, 96, 96), labels=torch.tensor([0]),
                captions=captions, prompts=prompts, prompt_labels=torch.tensor([0, 1]), anchor_captions=anchors)
    rows = []
    original = model.encode_text
    model.encode_text = lambda ids: rows.append(ids.shape[0]) or original(ids)
    try:
        together = step.encode_texts(prompts, captions, anchors)
        again = step.encode_text(anchors)
    finally:
        model.encode_text = original
    assert sum(rows) == len(set(prompts + captions + anchors))  # each distinct text once, none again
    for texts, emb in zip((prompts, captions, anchors), together):
        separate = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        assert emb.shape == separate.shape and torch.allclose(emb, separate, atol=1e-5)
    assert torch.equal(again, together[2])
    # gradients reach the tower through the shared rows
    (together[0].sum() + together[2].sum()).backward()
    assert model.text.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_clip_retrieval_encodes_a_repeated_caption_once_as_one_at_a_time():
    from pipeline.core.models import DEFAULT_MODEL
    from pipeline.io.clip_retrieval import _load_for_all_clip

    torch.manual_seed(0)
    model, _, tokenizer = _load_for_all_clip(DEFAULT_MODEL, False, "cpu", None)
    rows = []
    inner = model.inner_model
    original = inner.encode_text
    inner.encode_text = lambda ids: rows.append(ids.shape[0]) or original(ids)
    batches = [TEXTS[:4], TEXTS[3:]]  # "a cat" twice in the first batch, "a cat" again in the second
    with torch.no_grad():
        got = [model.encode_text(tokenizer(b)) for b in batches]
    inner.encode_text = original
    assert sum(rows) == len(set(TEXTS))
    with torch.no_grad():
        for b, emb in zip(batches, got):
            alone = torch.cat([original(tokenizer([t])) for t in b])
            assert torch.allclose(emb, alone, atol=1e-5)
