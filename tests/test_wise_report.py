"""WiSE-FT interpolation, per-alpha evaluation (heads, retention R@1) and the results report."""
import json
import statistics

import pytest
import torch
from helpers import make_corpus_shards, make_tiny_checkpoint

from pipeline.core.models import create_model, model_dir_spec, write_model_dir
from pipeline.core.wise import changed_parts, evaluate_wise, interpolate, retrieval_r1
from pipeline.io.shards import iter_samples, write_shards
from pipeline.stages.report import markdown_table, summarize, write_report

CLASSES = ["red", "green", "blue", "yellow", "purple"]


def test_interpolate_is_exact_at_the_ends_and_linear_between():
    base = {"visual.w": torch.tensor([1.0, 2.0]), "text.w": torch.tensor([0.5]), "bn.count": torch.tensor(3)}
    tuned = {"visual.w": torch.tensor([3.0, -2.0]), "text.w": torch.tensor([0.5]), "bn.count": torch.tensor(7)}
    at0, at1, mid = (interpolate(base, tuned, a) for a in (0.0, 1.0, 0.25))
    assert all(torch.equal(at0[k], base[k]) for k in base if base[k].is_floating_point())
    assert all(torch.equal(at1[k], tuned[k]) for k in tuned)
    assert torch.allclose(mid["visual.w"], torch.tensor([1.5, 1.0]))  # 0.75 * base + 0.25 * tuned
    assert mid["text.w"] is tuned["text.w"]  # an unchanged tensor passes through untouched
    assert mid["bn.count"].item() == 7  # integer buffers are the finetuned model's
    assert changed_parts(base, tuned) == {"image"}
    with pytest.raises(ValueError, match="different tensors"):
        interpolate(base, {"visual.w": tuned["visual.w"]}, 0.5)
    with pytest.raises(ValueError, match="visual.w is"):
        interpolate(base, {**tuned, "visual.w": torch.zeros(3)}, 0.5)


def test_retrieval_r1_by_hand_with_a_repeated_caption():
    # images 0 and 1 share caption "a"; image 2 has "b". Captions embedded as a, a, b (rows 0, 1, 2).
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    cap = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r = retrieval_r1(img, cap, ["a", "a", "b"])
    # distinct captions: a = [1, 0], b = [0, 1]. i2t: img0 -> a (hit), img1 -> b (miss), img2 -> b (hit)
    assert r["i2t_r1"] == pytest.approx(200 / 3)
    # t2i: a -> img0 (an "a" image: hit); b -> first of img1/img2 by argmax = img1 ("a": miss)
    assert r["t2i_r1"] == pytest.approx(50.0)
    assert (r["n"], r["distinct_captions"]) == (3, 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny base model, a perturbed 'finetuned' one with a head, eval sets, val and held-out pairs."""
    tmp = tmp_path_factory.mktemp("wise")
    name, ckpt = make_tiny_checkpoint(tmp)
    base = create_model(f"{name}:{ckpt}")
    write_model_dir(base.model, name, tmp / "base")
    src, metas = make_corpus_shards(tmp / "src", 40, size=32)
    raw = list(iter_samples(src))

    def labelled(rows):
        for s, m in rows:
            yield {"__key__": s["__key__"], "png": s["png"], "cls": str(CLASSES.index(m.meta["color"]))}

    eval_root = tmp / "eval"
    for i, set_name in enumerate(("id_test", "shift_x", "zeroshot_y")):
        root = eval_root / set_name
        write_shards(root / "test", labelled(zip(raw[10 * i:10 * i + 10], metas[10 * i:10 * i + 10])))
        (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("a {c} thing.\n")
    # other class names than the head's: scored with the text tower
    (eval_root / "zeroshot_y" / "classnames.txt").write_text("\n".join(c.upper() for c in CLASSES) + "\n")
    packed = tmp / "packed"
    write_shards(packed / "val", labelled(zip(raw[30:], metas[30:])))
    (packed / "classes.json").write_text(json.dumps({"classnames": CLASSES, "templates": ["a {c} thing."]}))
    write_shards(tmp / "heldout", ({"__key__": s["__key__"], "png": s["png"], "txt": s["txt"]} for s in raw[:12]))

    torch.manual_seed(1)
    tuned = create_model(f"{name}:{ckpt}").model
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if n.startswith("visual."):
                p.add_(0.5 * torch.randn_like(p))
    with torch.no_grad():
        dim = tuned.encode_image(torch.zeros(1, 3, 32, 32)).shape[1]
    init = torch.randn(len(CLASSES), dim)
    write_model_dir(tuned, name, tmp / "ft", head={"weight": init + 1.0, "init": init, "classnames": CLASSES})
    return tmp, eval_root, packed


def _eval(tiny, model, alphas, out):
    tmp, eval_root, packed = tiny
    return evaluate_wise(tmp / model, tmp / "base", eval_root, packed, tmp / "heldout", alphas, tmp / out, {"method": model})


def test_wise_alpha_zero_is_the_base_and_alpha_one_the_finetuned_model(tiny):
    import io

    import torch.nn.functional as F
    from PIL import Image

    from pipeline.core.scoring import classification_metrics, image_features
    from pipeline.io.eval_sets import read_eval_set

    tmp, eval_root, _ = tiny
    base = {(r["dataset"]): r for r in _eval(tiny, "base", [0.0], "base.jsonl")}
    records = _eval(tiny, "ft", [0.0, 0.5, 1.0], "ft.jsonl")
    at0 = {r["dataset"]: r for r in records if r["alpha"] == 0.0}
    for d, r in base.items():  # alpha 0 of the finetuned model scores like the base (head init aside)
        if d in ("zeroshot_y", "corpus_heldout"):
            assert {k: v for k, v in at0[d].items() if k != "method"} == {k: v for k, v in r.items() if k != "method"}
    ft = create_model(model_dir_spec(tmp / "ft"))
    head = torch.load(tmp / "ft" / "head.pt", weights_only=True)
    at1 = {r["dataset"]: r for r in records if r["alpha"] == 1.0}
    for name in ("id_test", "shift_x"):  # finetune classes: the trained head
        es = read_eval_set(eval_root / name, ft.preprocess)
        expected = classification_metrics(image_features(ft.model, es.images) @ head["weight"].t(), es.labels)
        assert at1[name]["acc1"] == pytest.approx(expected["acc1"])
    es = read_eval_set(eval_root / "zeroshot_y", ft.preprocess)  # other classes: the (frozen) text tower
    with torch.inference_mode():  # the zero-shot head by definition: normalised mean of normalised prompt embeddings
        zs = []
        for c in es.classnames:
            emb = ft.model.encode_text(ft.tokenizer([t.replace("{c}", c) for t in es.templates]))
            mean = (emb / emb.norm(dim=-1, keepdim=True)).mean(0)
            zs.append(mean / mean.norm())
        zs = torch.stack(zs)
    assert at1["zeroshot_y"]["acc1"] == pytest.approx(classification_metrics(image_features(ft.model, es.images) @ zs.t(), es.labels)["acc1"])
    # retention at alpha 1, recomputed: the 12 held-out captions are distinct, so image i is a hit when
    # its own caption scores highest of the 12, and caption i when its own image does
    pairs = list(iter_samples(tmp / "heldout"))
    images = torch.stack([ft.preprocess(Image.open(io.BytesIO(s["png"])).convert("RGB")) for s in pairs])
    with torch.inference_mode():
        sims = image_features(ft.model, images) @ F.normalize(ft.model.encode_text(ft.tokenizer(
            [s["txt"].decode() for s in pairs])), dim=-1).t()
    own = torch.arange(len(pairs))
    assert len({s["txt"] for s in pairs}) == len(pairs) == at1["corpus_heldout"]["n"] == 12
    assert at1["corpus_heldout"]["i2t_r1"] == pytest.approx(100 * (sims.argmax(1) == own).float().mean().item())
    assert at1["corpus_heldout"]["t2i_r1"] == pytest.approx(100 * (sims.argmax(0) == own).float().mean().item())
    assert "id_val" in at1 and 0 < at1["corpus_heldout"]["i2t_r1"] < 100  # the case is not degenerate
    lines = (tmp / "ft.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 5 and json.loads(lines[0])["method"] == "ft"


def test_wise_evaluation_is_deterministic(tiny):
    tmp = tiny[0]
    _eval(tiny, "ft", [0.5, 1.0], "a.jsonl")
    _eval(tiny, "ft", [0.5, 1.0], "b.jsonl")
    assert (tmp / "a.jsonl").read_bytes() == (tmp / "b.jsonl").read_bytes()


DDP_EVAL_SCRIPT = """
import json, os, sys
from pathlib import Path
import pipeline.core.scoring as scoring
import pipeline.core.wise as wise

tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
encoded = {}
def counting(model, images, batch_size=256):
    feats = scoring.image_features(model, images, batch_size)
    encoded[len(encoded)] = len(feats)
    return feats
wise.image_features = counting
wise.evaluate_wise(tmp / "ft", tmp / "base", tmp / "eval", tmp / "packed", tmp / "heldout", [0.5, 1.0], out,
                   {"method": "ft"})
Path(f"{out}.rank{os.environ.get('RANK', 0)}.json").write_text(json.dumps(list(encoded.values())))
"""


def test_two_gloo_processes_score_like_one(tiny, tmp_path):
    """Evaluation under torchrun: each rank encodes every other image of each set, rank 0 writes, and
    the records equal a one-process run's."""
    import os
    import subprocess
    import sys

    from helpers import TEST_MODEL_CONFIGS

    tmp = tiny[0]
    script = tmp_path / "ddp_eval.py"
    script.write_text(DDP_EVAL_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["ARF_MODEL_CONFIGS"] = str(TEST_MODEL_CONFIGS)
    one = subprocess.run([sys.executable, str(script), str(tmp), str(tmp_path / "one.jsonl")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp), str(tmp_path / "two.jsonl")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()] == rows
    assert len(rows) == 2 * 5 and not list(tmp_path.glob(".tmp*"))
    whole = json.loads((tmp_path / "one.jsonl.rank0.json").read_text())
    halves = [json.loads((tmp_path / f"two.jsonl.rank{r}.json").read_text()) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == whole  # the images were split, not repeated
    assert all(abs(a - b) <= 1 for a, b in zip(*halves))


def _records(method, seed, alpha, id_val, id_acc, shift, zs, extra=None):
    base = {"method": method, "seed": seed, "alpha": alpha}
    return [dict(base, dataset="id_test", acc1=id_acc), dict(base, dataset="id_val", acc1=id_val),
            dict(base, dataset="shift_a", acc1=shift), dict(base, dataset="shift_b", acc1=shift + 2),
            dict(base, dataset="zeroshot_c", acc1=zs), dict(base, dataset="corpus_heldout", i2t_r1=30.0, t2i_r1=20.0)]


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_means_stds_retention_and_the_alpha_chosen_on_id_val(tmp_path):
    ev = tmp_path / "eval"
    _write(ev / "zeroshot.jsonl", _records("zeroshot", None, 0.0, 40, 40, 30, 50))
    # two seeds; val ties between alpha 0.5 and 1.0 (mean 60) -> the larger alpha is chosen
    _write(ev / "ft" / "seed0.jsonl", _records("ft", 0, 0.5, 58, 55, 35, 45) + _records("ft", 0, 1.0, 62, 70, 30, 40))
    _write(ev / "ft" / "seed1.jsonl", _records("ft", 1, 0.5, 62, 57, 37, 47) + _records("ft", 1, 1.0, 58, 72, 32, 36))
    s = summarize(ev, ["ft"], [0, 1])
    ft = s["methods"]["ft"]
    assert ft["id"] == {"mean": 71.0, "std": pytest.approx(statistics.stdev([70, 72]))}
    assert ft["shift_avg"]["mean"] == pytest.approx(32.0)  # seeds: (30+32)/2 = 31, (32+34)/2 = 33
    assert ft["zeroshot_retention"]["mean"] == pytest.approx(100 * 38 / 50)
    assert s["methods"]["ft+wise"]["alpha"] == 1.0
    assert s["methods"]["zeroshot"]["zeroshot_retention"]["mean"] == 100.0
    assert list(s["curves"]["ft"]) == [0.0, 0.5, 1.0] and s["curves"]["ft"][0.0]["id"] == 40
    # make alpha 0.5 the best on val: it is chosen, whatever the OOD numbers say
    _write(ev / "ft" / "seed1.jsonl", _records("ft", 1, 0.5, 70, 57, 37, 47) + _records("ft", 1, 1.0, 58, 72, 32, 36))
    assert summarize(ev, ["ft"], [0, 1])["methods"]["ft+wise"]["alpha"] == 0.5
    table = markdown_table(s)
    assert "| ft | 1.0 | 71.0 ± 1.4 |" in table and "ft + WiSE-FT" in table and "2 seeds (0, 1)" in table
    out = write_report(ev, ["ft"], [0, 1], tmp_path / "results")
    assert (tmp_path / "results/plots/id_vs_shift.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "results/plots/id_vs_zeroshot.png").is_file()
    curve = json.loads((tmp_path / "results/plots/wise/ft.json").read_text())
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0]
    metrics = json.loads((tmp_path / "results/summary.json").read_text())
    assert metrics["methods"]["ft"]["id"] == 71.0 and out["seeds"] == [0, 1]


def test_report_names_a_missing_run(tmp_path):
    _write(tmp_path / "zeroshot.jsonl", _records("zeroshot", None, 0.0, 40, 40, 30, 50))
    with pytest.raises(FileNotFoundError, match="seed3.jsonl"):
        summarize(tmp_path, ["ft"], [3])


def test_report_of_a_benchmark_without_zeroshot_sets_leaves_that_axis_out(tmp_path):
    """Your own data may have no zeroshot_ (or shift_) eval sets: the report leaves the axis out of the
    table, the metrics and the curves, and its declared plot says there is nothing to plot."""
    ev = tmp_path / "eval"
    no_zs = lambda recs: [r for r in recs if not r["dataset"].startswith("zeroshot_")]  # noqa: E731
    _write(ev / "zeroshot.jsonl", no_zs(_records("zeroshot", None, 0.0, 40, 40, 30, 50)))
    _write(ev / "ft" / "seed0.jsonl", no_zs(_records("ft", 0, 0.5, 58, 55, 35, 45) + _records("ft", 0, 1.0, 62, 70, 30, 40)))
    s = write_report(ev, ["ft"], [0], tmp_path / "results")
    for name, row in s["methods"].items():
        assert not [k for k in row if k.startswith("zeroshot")], name
        assert row["shift_avg"]["mean"] == {"zeroshot": 31.0, "ft": 31.0, "ft+wise": 31.0}[name]
    assert s["curves"]["ft"][1.0] == {"id": 70.0, "id_val": 62.0, "shift_avg": 31.0}
    header = (tmp_path / "results/summary.md").read_text().split("\n\n")[1].splitlines()[0]
    assert header == "| method | α | ID | shift a | shift b | shift avg | corpus i2t R@1 | corpus t2i R@1 |"
    assert json.loads((tmp_path / "results/metrics.json").read_text())["ft"] == {"id_val": 62.0, "id": 70.0, "shift": 31.0}
    assert (tmp_path / "results/plots/id_vs_zeroshot.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "results/plots/wise/zeroshot.json").read_text()) == [
        {"alpha": 0.0, "id": 40.0, "id_val": 40.0, "shift_avg": 31.0}]
