"""The default-data stage on a tiny fake asset tree (no installed packages needed, a few seconds)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import ParamsError, parse_section
from pipeline.data import default as default_mod
from pipeline.data.assets import ASSETS_ENV, AssetPaths
from pipeline.data.clipart import clean_oca_caption, tux_caption
from pipeline.data.default import (
    EVAL_SETS,
    DataLeakError,
    DataParams,
    build_default_data,
)
from pipeline.data.emoji import STYLES
from pipeline.io.shards import iter_samples, read_shard_info
from fake_assets import SUBCATS, VARIANTS, make_fake_assets

PARAMS = dict(
    seed=3, image_size=24, min_class_size=3, unseen_fraction=0.4, val_fraction=0.15, test_fraction=0.3,
    heldout_pairs=6, max_same_caption=2, workers=1,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> AssetPaths:
    return make_fake_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, assets):
    out = tmp_path_factory.mktemp("data")
    counts = build_default_data(out, DataParams(**PARAMS), assets)
    return out, counts


def read_tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            samples[key][ext] = tf.extractfile(m).read()
    return dict(samples)


def read_folder(folder: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(folder.glob("*.tar")):
        part = read_tar_samples(tar)
        assert not set(part) & set(out), f"duplicate keys across shards in {folder}"
        out.update(part)
    return out


def bench_sets(root: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    b = root / "benchmark"
    sets = {"finetune": read_folder(b / "finetune"), "val": read_folder(b / "val")}
    for name in EVAL_SETS:
        sets[name] = read_folder(b / "eval" / name / "test")
    return sets


def codes(samples: dict[str, dict[str, bytes]]) -> set[str]:
    return {json.loads(s["json"])["emoji"] for s in samples.values()}


# ---------------------------------------------------------------------------------------------


def test_emoji_join_filters_and_counts(built):
    _, counts = built
    e = counts["emoji"]
    assert e["excluded_category"] == 2  # Component and Flags
    assert e["missing_file"] == 1  # no OpenMoji black SVG
    assert e["all_four_styles"] == sum(SUBCATS.values()) + len(VARIANTS)
    assert counts["classes"] == {"seen": 4, "unseen": 2}
    # 5 subcategories x 8 emoji and 6 x 3 role variants, half to the benchmark; the small "hotel"
    # subcategory's benchmark emoji joins the corpus
    assert e["benchmark_half"] == 20 + 9
    assert e["small_subcategories_to_corpus"] == 1
    assert e["corpus_half"] + e["benchmark_half"] == e["all_four_styles"]


def test_benchmark_emoji_never_in_corpus(built):
    root, _ = built
    corpus, heldout = read_folder(root / "corpus"), read_folder(root / "corpus_heldout")
    bench = set().union(*(codes(s) for s in bench_sets(root).values()))
    assert len(bench) == 29
    in_corpus = codes(corpus) | codes(heldout)
    assert not bench & in_corpus
    # every corpus-side emoji is there in all four styles (corpus + heldout together)
    per_code = defaultdict(set)
    for s in list(corpus.values()) + list(heldout.values()):
        meta = json.loads(s["json"])
        if meta["emoji"]:
            per_code[meta["emoji"]].add(meta["style"])
    assert per_code and all(v == set(STYLES) for v in per_code.values())


def test_test_emoji_never_in_train_or_val_in_any_style(built):
    root, _ = built
    sets = bench_sets(root)
    train, val = codes(sets["finetune"]), codes(sets["val"])
    test = set().union(*(codes(sets[n]) for n in EVAL_SETS if not n.startswith("zeroshot")))
    zeroshot = set().union(*(codes(sets[n]) for n in EVAL_SETS if n.startswith("zeroshot")))
    assert train and val and test and zeroshot
    assert not test & (train | val) and not train & val
    assert not zeroshot & (train | val | test)
    # the four test styles hold the same emoji; the four zero-shot styles too
    assert all(codes(sets[n]) == codes(sets["id_test"]) for n in EVAL_SETS if n.startswith("shift_"))
    assert all(codes(sets[n]) == zeroshot for n in EVAL_SETS if n.startswith("zeroshot_"))
    for name, samples in sets.items():
        domains = {json.loads(s["json"])["domain"] for s in samples.values()}
        want = name.split("_", 1)[1] if name.startswith(("shift_", "zeroshot_")) else "google"
        assert domains == {want}, name


def test_variants_of_one_emoji_stay_on_one_side(built):
    root, _ = built
    place = {}
    for name, folder in (("corpus", root / "corpus"), ("corpus", root / "corpus_heldout")):
        for c in codes(read_folder(folder)):
            place[c] = {name}
    for name, samples in bench_sets(root).items():
        part = "test" if name == "id_test" or name.startswith("shift_") else name.split("_")[0]
        for c in codes(samples):
            place.setdefault(c, set()).add(part)
    assert all(len(p) == 1 for p in place.values()), {c: p for c, p in place.items() if len(p) != 1}
    by_role = defaultdict(set)
    for code in VARIANTS:
        by_role[code.split("-")[-1]] |= place[code]
    assert all(len(p) == 1 for p in by_role.values()), by_role  # person, man, woman together
    assert len(set().union(*by_role.values())) >= 2  # the roles themselves are spread out


def test_clip_benchmark_layout_is_consistent(built):
    root, counts = built
    classes = json.loads((root / "benchmark/classes.json").read_text())
    assert len(classes["seen"]) == 4 and len(classes["unseen"]) == 2
    assert all("{c}" in t for t in classes["templates"])
    for name in EVAL_SETS:
        d = root / "benchmark/eval" / name
        assert (d / "dataset_type.txt").read_text().strip() == "classification"
        names = (d / "classnames.txt").read_text().splitlines()
        assert names == classes["unseen" if name.startswith("zeroshot") else "seen"]
        assert (d / "zeroshot_classification_templates.txt").read_text().splitlines() == classes["templates"]
        nshards = int((d / "test/nshards.txt").read_text())
        assert sorted(p.name for p in (d / "test").glob("*.tar")) == sorted(f"{i}.tar" for i in range(nshards))
        samples = read_folder(d / "test")
        assert len(samples) == counts["benchmark"][name] > 0
        for key, s in samples.items():
            assert set(s) == {"png", "cls", "json"}, key
            label, meta = int(s["cls"].decode("ascii")), json.loads(s["json"])
            assert 0 <= label < len(names) and meta["label"] == label and meta["classname"] == names[label]
            assert classes["subcategory"][meta["classname"]] == meta["subcategory"]
            with Image.open(io.BytesIO(s["png"])) as img:
                assert img.size == (PARAMS["image_size"],) * 2 and img.mode == "RGB"


def test_sizes_json_matches_tar_contents(built):
    root, counts = built
    folders = [root / "corpus", root / "corpus_heldout", root / "benchmark/finetune", root / "benchmark/val"]
    folders += [root / "benchmark/eval" / n / "test" for n in EVAL_SETS]
    for folder in folders:
        info = read_shard_info(folder)
        for name, n in info.sizes.items():
            assert len(read_tar_samples(folder / name)) == n, folder / name
        assert sum(1 for _ in iter_samples(folder)) == info.num_samples  # through webdataset
    assert read_shard_info(root / "corpus").num_samples == counts["corpus"]["total"]
    assert read_shard_info(root / "corpus_heldout").num_samples == counts["corpus_heldout"]["total"] == 6
    assert read_shard_info(root / "benchmark/finetune").num_samples == counts["benchmark"]["finetune"]


def test_corrupt_image_skipped_and_counted(built, assets):
    root, counts = built
    assert counts["skipped"]["clipart_undecodable"] == 1
    assert counts["skipped"]["openclipart_duplicate_caption"] == 1
    (message,) = counts["skipped_examples"].values()
    assert "broken_png_01.png" in message and str(assets.openclipart) not in message  # no absolute path
    corpus = {**read_folder(root / "corpus"), **read_folder(root / "corpus_heldout")}
    oca = {k for k, s in corpus.items() if json.loads(s["json"])["source"] == "openclipart"}
    assert len(oca) == 4  # 6 files - 1 corrupt - 1 duplicate caption
    assert not [k for k, s in corpus.items() if json.loads(s["json"])["source"] == "tuxpaint"]


def test_tuxpaint_stamps_form_their_own_zero_shot_set(built):
    root, counts = built
    tux = root / "benchmark/eval/zeroshot_tuxpaint"
    assert (tux / "classnames.txt").read_text().splitlines() == ["animal", "vehicle"]
    samples = read_folder(tux / "test")
    labels = sorted(int(s["cls"]) for s in samples.values())
    assert labels == [0, 0, 0, 0, 1, 1, 1, 1]  # lion + 3 animals (no mirrored copy), car + 3 trucks
    assert counts["benchmark"]["zeroshot_tuxpaint"] == 8


def test_tuxpaint_can_stay_in_the_corpus(assets, tmp_path):
    counts = build_default_data(tmp_path, DataParams(**PARAMS, tuxpaint_zeroshot=False), assets)
    corpus = {**read_folder(tmp_path / "corpus"), **read_folder(tmp_path / "corpus_heldout")}
    tux = sorted(s["txt"].decode() for s in corpus.values() if json.loads(s["json"])["source"] == "tuxpaint")
    assert "animals: a happy lion!" in tux and "vehicles: a red car" in tux
    # no mirrored copy; 3 identical "animals: animal" (and trucks) captions capped at max_same_caption = 2
    assert len(tux) == 6 and not (tmp_path / "benchmark/eval/zeroshot_tuxpaint").exists()
    assert "zeroshot_tuxpaint" not in counts["benchmark"]


def test_corpus_styles_leave_a_style_out_of_corpus_and_heldout_only(built, assets, tmp_path):
    """The style-held-out control: no corpus or held-out pair in the left-out style, the other styles'
    pairs as before, and the benchmark byte-identical (the control changes the corpus only)."""
    root, _ = built
    styles = ["google", "openmoji_color", "openmoji_black"]
    counts = build_default_data(tmp_path, DataParams(**PARAMS, corpus_styles=styles), assets)
    style_of = lambda folder: {k: json.loads(s["json"])["style"] for k, s in read_folder(folder).items()}  # noqa: E731
    full = {**style_of(root / "corpus"), **style_of(root / "corpus_heldout")}
    held_out = {**style_of(tmp_path / "corpus"), **style_of(tmp_path / "corpus_heldout")}
    assert "twitter" in full.values() and "twitter" not in held_out.values()
    assert set(held_out) == {k for k, style in full.items() if style != "twitter"}
    assert "twitter" not in counts["corpus"]["by_style"] and counts["corpus"]["by_style"]["google"] > 0
    assert bench_sets(tmp_path) == bench_sets(root)
    assert "Emoji styles in the corpus (`corpus_styles`): google, openmoji_color, openmoji_black" in \
        (tmp_path / "benchmark" / "card.md").read_text()
    with pytest.raises(ParamsError, match=r"data.corpus_styles: expected distinct styles of google, "):
        parse_section(DataParams, {"corpus_styles": ["google", "tweeter"]}, "params.yaml: data")


def test_corpus_samples_and_shared_emoji_captions(built):
    root, _ = built
    corpus = {**read_folder(root / "corpus"), **read_folder(root / "corpus_heldout")}
    captions = defaultdict(set)
    for key, s in corpus.items():
        assert set(s) == {"png", "txt", "json"}
        meta = json.loads(s["json"])
        assert set(meta) == {"source", "licence", "style", "emoji"} and meta["licence"]
        if meta["emoji"]:
            assert key == f"emoji-{meta['emoji']}-{meta['style']}"
            captions[meta["emoji"]].add(s["txt"].decode())
    assert captions
    for code, caps in captions.items():
        assert len(caps) == 1, code  # one caption for the four styles
        cap = next(iter(caps))
        assert ": " in cap and not any(w in cap for w in ("google", "twitter", "openmoji", "emoji", "icon"))
    # held-out pairs never share a caption with training pairs
    train_caps = {s["txt"] for s in read_folder(root / "corpus").values()}
    held_caps = {s["txt"] for s in read_folder(root / "corpus_heldout").values()}
    assert not train_caps & held_caps


def test_card_and_counts_file(built):
    root, counts = built
    card = (root / "benchmark/card.md").read_text()
    for needle in ("Apache-2.0", "CC-BY-4.0", "CC-BY-SA-4.0", "GPL-2", "public domain", "sqrt(p(1-p)/n)"):
        assert needle in card
    assert f"| eval/id_test | google | 4 | {counts['benchmark']['id_test']} |" in card
    stored = json.loads((root / "benchmark/build_data.json").read_text())
    assert stored["benchmark"] == counts["benchmark"] and stored["corpus"] == counts["corpus"]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_output(built, assets, tmp_path):
    root, _ = built
    # a second build, with a process pool this time: same bytes, tar timestamps included
    build_default_data(tmp_path, DataParams(**{**PARAMS, "workers": 2}), assets)
    assert _digest(tmp_path) == _digest(root)
    other = tmp_path / "other"
    build_default_data(other, DataParams(**{**PARAMS, "seed": 4}), assets)
    a, b = _digest(root), _digest(other)
    assert a.keys() == b.keys() and a != b  # another seed, other splits


def test_a_failed_write_keeps_the_previous_run_whole(assets, tmp_path, monkeypatch):
    """All three folders are replaced together once written: a failure leaves the last run's, and no temp."""
    build_default_data(tmp_path, DataParams(**PARAMS), assets)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(default_mod, "write_clip_benchmark_set", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_default_data(tmp_path, DataParams(**PARAMS), assets)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before and not list(tmp_path.glob(".tmp-*"))


def test_leak_check_raises(built, monkeypatch, tmp_path, assets):
    # Sabotage the split so that a benchmark emoji also goes to the corpus: the build must refuse.
    real_split = default_mod.split_emoji

    def leaky(emoji, params):
        s = real_split(emoji, params)
        s.corpus_half = s.corpus_half + s.bench_half[:1]
        return s

    monkeypatch.setattr(default_mod, "split_emoji", leaky)
    with pytest.raises(DataLeakError, match="benchmark emoji"):
        build_default_data(tmp_path, DataParams(**PARAMS), assets)
    assert not (tmp_path / "corpus").exists()


def test_params_checked():
    p = parse_section(DataParams, {"seed": 1, "max_clipart": None}, "params.yaml: data")
    assert p.seed == 1 and p.image_size == 96 and p.max_clipart is None
    with pytest.raises(ParamsError, match="data.imag_size: unknown key"):
        parse_section(DataParams, {"imag_size": 64}, "params.yaml: data")
    with pytest.raises(ParamsError, match="corpus_fraction: must be > 0"):
        parse_section(DataParams, {"corpus_fraction": 0}, "params.yaml: data")
    with pytest.raises(ParamsError, match="min_class_size: 3 leaves no train emoji"):
        parse_section(DataParams, {"min_class_size": 3, "test_fraction": 0.5, "val_fraction": 0.3}, "params.yaml: data")


def test_caption_cleaning():
    assert clean_oca_caption("food/desserts/glace_06_jean-victor_bal_01.png") == "food, desserts: ice cream"
    assert clean_oca_caption("animals/mammals/housecats/gatto_cat_architetto_fra_03.png") == "animals, mammals, house cats: cat"
    assert clean_oca_caption("shapes/stars/star_93pt13step.png") == "shapes, stars: star"
    assert clean_oca_caption("computer/icons/flat-theme/action/unsortedList.png") == "computer, icons, actions: unsorted list"
    assert clean_oca_caption("recreation/games/cards/white/white_h_k.png") == "recreation, games, cards: king of hearts playing card"
    assert clean_oca_caption("tools/broom_nicu_buculei_01.png") == "tools: broom"


def test_tux_caption(tmp_path):
    stamp = tmp_path / "animals/mammals/cats/cartoon/lion.png"
    stamp.parent.mkdir(parents=True)
    stamp.write_bytes(b"")
    stamp.with_suffix(".txt").write_text("A happy lion! It roars.\nde.utf8=Ein Löwe\n")
    assert tux_caption(stamp, tmp_path) == "animals, mammals, cats: a happy lion!"
    (tmp_path / "symbols").mkdir()
    coin = tmp_path / "symbols/quarter.png"
    coin.with_suffix(".txt").write_text("US 25 cent piece.\n")
    assert tux_caption(coin, tmp_path) == "symbols: US 25 cent piece"


def test_leak_check_catches_test_emoji_in_train():
    def sample(code, style="google"):
        return {"__key__": f"emoji-{code}-{style}", "json": json.dumps({"emoji": code})}

    sets = {name: [] for name in ("finetune", "val", *EVAL_SETS)}
    sets["finetune"] = [sample("1F600")]
    sets["val"] = [sample("1F601")]
    sets["shift_openmoji_black"] = [sample("1F600", "openmoji_black")]  # a train emoji, other style
    split = default_mod._Split([], [], [], [], {}, {}, [], [])
    with pytest.raises(DataLeakError, match="emoji 1F600 is in both train and test"):
        default_mod._check_no_leaks([], [], split, sets)
    sets["shift_openmoji_black"] = [sample("1F602", "openmoji_black")]
    default_mod._check_no_leaks([], [], split, sets)  # clean: no error


def test_leak_check_catches_near_duplicate_variants():
    from pipeline.data.emoji import Emoji

    man, woman = "1F468-200D-1F3EB", "1F469-200D-1F3EB"
    sets = {name: [] for name in ("finetune", "val", *EVAL_SETS)}
    sets["finetune"] = [{"__key__": "a", "json": json.dumps({"emoji": man})}]
    sets["id_test"] = [{"__key__": "b", "json": json.dumps({"emoji": woman})}]
    bench = [Emoji(c, c, [], "People & Body", "person-role", 0) for c in (man, woman)]
    split = default_mod._Split([], bench, [], [], {}, {}, [], [])
    with pytest.raises(DataLeakError, match="is a variant of a test emoji"):
        default_mod._check_no_leaks([], [], split, sets)


def test_stage_entry_point_reads_params_and_asset_dir(assets, tmp_path):
    """`python stages/build_data.py` in a project folder: params.yaml's build_data section, ARF_ASSETS_DIR."""
    root = assets.google.parent
    assert AssetPaths.under(root) == assets
    (tmp_path / "params.yaml").write_text("build_data:\n" + "".join(f"  {k}: {v}\n" for k, v in PARAMS.items()))
    stage = Path(__file__).resolve().parents[1] / "stages" / "build_data.py"
    env = dict(os.environ, **{ASSETS_ENV: str(root)})
    proc = subprocess.run([sys.executable, str(stage), "--out", "data"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads((tmp_path / "data/benchmark/build_data.json").read_text())
    assert counts["classes"] == {"seen": 4, "unseen": 2}
    assert '"finetune"' in proc.stdout  # the counts are printed


def test_default_assets_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ASSETS_ENV, raising=False)
    assert AssetPaths.default().openclipart == Path("/usr/share/openclipart/png")
    monkeypatch.setenv(ASSETS_ENV, str(tmp_path))
    assert AssetPaths.default() == AssetPaths.under(tmp_path)
    with pytest.raises(FileNotFoundError, match=ASSETS_ENV):
        AssetPaths.default().check()
