"""The default data: an emoji robustness benchmark and a pretraining-style image-text corpus.

Emoji come in four styles (domains): google, twitter, openmoji_color and openmoji_black (black
line art, the sketch-like shift). A seeded, per-subcategory split halves them:

* the corpus half joins Open Clip Art and Tux Paint stamps in an image-text corpus (`corpus/`,
  img2dataset layout), one caption per emoji shared by its four styles; `corpus_heldout/` holds
  pairs kept out of everything, for a retention metric;
* the benchmark half becomes a classification benchmark whose classes are emoji subcategories:
  seen classes (finetuned on google train emoji, validated on google val emoji, tested on test
  emoji in all four styles) and unseen classes (zero-shot only, all four styles).

Splits move whole variant groups (`variant_key`: "teacher", "man teacher", "woman teacher"; hair
and family variants), so near-duplicates never straddle corpus / benchmark or train / val / test.
No benchmark emoji is in the corpus, and no test emoji is in train or val in any style: both are
checked on the samples actually written, and a violation raises `DataLeakError`.

Outputs under `out_root`: `corpus/`, `corpus_heldout/`, `benchmark/`, replaced together once all three
are written (`atomic_dirs`): when `benchmark/` (with its `build_data.json`, the counts) exists, all
three come from one run.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.config import ParamsError
from pipeline.data.assets import AssetPaths
from pipeline.data.classes import TEMPLATES, class_name
from pipeline.data.clipart import (
    Item,
    discover_openclipart,
    discover_tuxpaint,
    load_images,
)
from pipeline.data.emoji import SOURCE, STYLES, Emoji, load_emoji, render_emoji
from pipeline.data.local import LocalDataParams
from pipeline.data.writing import write_clip_benchmark_set, write_shards_fixed
from pipeline.io.atomic import atomic_dirs, write_json

SHIFT_STYLES = ("twitter", "openmoji_color", "openmoji_black")


EVAL_SETS = (
    "id_test",
    *(f"shift_{s}" for s in SHIFT_STYLES),
    *(f"zeroshot_{s}" for s in STYLES),
)


TUX_SET = "zeroshot_tuxpaint"


# readable class names of the Tux Paint stamp folders
TUX_CLASS_NAMES = {
    "animals": "animal", "clothes": "clothing", "food": "food", "hobbies": "hobby", "household": "household object",
    "medical": "medical object", "military": "military object", "naturalforces": "force of nature",
    "people": "person", "plants": "plant", "seasonal": "holiday decoration", "space": "space object",
    "sports": "sport", "symbols": "symbol", "town": "building in town", "vehicles": "vehicle",
}


ID_STYLE = "google"


SHARD_SIZE = 1000


LICENCES = {
    "emoji-datasource-google": "Apache-2.0",
    "emoji-datasource-twitter": "CC-BY-4.0",
    "openmoji": "CC-BY-SA-4.0",
    "tuxpaint": "GPL-2.0",
    "openclipart": "public-domain",
}


class DataLeakError(RuntimeError):
    """A benchmark emoji reached the corpus, or a test emoji reached train / val."""


@dataclass
class DataParams:
    # default: the embedded emoji benchmark and clip-art corpus (the keys below); local: datasets on
    # disk in the layouts of `local` (the paper's presets), which ignores the keys below.
    source: str = field(default="default", metadata={"choices": ("default", "local")})
    local: LocalDataParams = field(default_factory=LocalDataParams)
    # Fixed seed of every split (halves, seen / unseen, train / val / test, heldout pairs).
    seed: int = 0
    # Stored image side in px. 96 px is what the tower trains at on 2 cores (79 img/s fwd+bwd) and
    # above the 64 px emoji sources; larger costs storage without new detail.
    image_size: int = field(default=96, metadata={"min": 16, "max": 512})
    # Share of each subcategory's emoji drawn for the corpus. Half and half: the corpus gets emoji
    # concepts in every style, the benchmark draw ~820 emoji (~590 of them in classes).
    corpus_fraction: float = field(default=0.5, metadata={"gt": 0.0, "max": 0.9})
    # Members a subcategory needs in the benchmark half to become a class (it also needs 3 variant
    # groups): 8 gives 40 of the 95 subcategories (those with >= ~16 emoji) and leaves every seen
    # class at least 4 train, 1 val and 3 test emoji.
    min_class_size: int = field(default=8, metadata={"min": 3})
    # Share of classes held out of finetuning (zero-shot only): 1 in 4 gives 10 unseen classes
    # (~145 emoji per style), enough for zero-shot accuracy well above chance (10%) to mean something.
    unseen_fraction: float = field(default=0.25, metadata={"min": 0.0, "max": 0.5})
    # Shares of each seen class's benchmark emoji for validation and test (train is the rest): with
    # the defaults 241 train / 70 val / 136 test emoji; test is scored in four styles, val (google
    # only) is for early stopping and model selection.
    val_fraction: float = field(default=0.15, metadata={"gt": 0.0, "max": 0.4})
    test_fraction: float = field(default=0.3, metadata={"gt": 0.0, "max": 0.6})
    # Corpus pairs held out from everything, for a retention metric (image-text R@1 before / after
    # finetuning). 500 gives R@1 a standard error of about 2 points.
    heldout_pairs: int = field(default=500, metadata={"min": 0})
    # Cap on the images of each non-emoji source (Open Clip Art, Tux Paint), for quick tests;
    # null = all.
    max_clipart: int | None = field(default=None, metadata={"min": 1})
    # Most clip-art images kept per identical caption: Open Clip Art has 1,376 stars all captioned
    # "shapes, stars: star"; in-batch contrastive loss treats such duplicates as negatives.
    max_same_caption: int | None = field(default=20, metadata={"min": 1})
    # Emoji of the benchmark draw whose subcategory is too small to be a class (~230 with the
    # defaults) join the corpus instead of going unused; they are in no benchmark split.
    small_subcategories_to_corpus: bool = True
    # Tux Paint stamps (mostly photo cut-outs) become a zero-shot set of their own, by stamp folder,
    # and leave the corpus. The emoji zero-shot sets share the finetune domain and label scheme, so
    # finetuning on emoji helped them (first default run: FLYP raised every OOD number); the paper's
    # zero-shot axis is *other datasets*, which this set stands in for. false: stamps join the corpus.
    tuxpaint_zeroshot: bool = True
    # Emoji styles whose corpus-half images join the corpus (and its held-out slice). A style left
    # out is one the base is never aligned on and ARF never retrieves an anchor in: the control for
    # whether a shift gain needs the shift style in the corpus. Captions and clip art are unchanged.
    corpus_styles: list[str] = field(default_factory=lambda: list(STYLES))
    # Decoding processes; 0 = one per CPU core. Does not change the output.
    workers: int = field(default=0, metadata={"min": 0})

    def check(self, where: str) -> None:
        if self.source == "local":
            return
        unknown = [s for s in self.corpus_styles if s not in STYLES]
        if unknown or len(set(self.corpus_styles)) != len(self.corpus_styles):
            raise ParamsError(f"{where}.corpus_styles: expected distinct styles of {', '.join(STYLES)}, "
                              f"got {self.corpus_styles}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ParamsError(f"{where}.test_fraction: val_fraction + test_fraction must be < 0.9")
        if self.min_class_size * (1 - self.val_fraction - self.test_fraction) < 1:
            raise ParamsError(
                f"{where}.min_class_size: {self.min_class_size} leaves no train emoji with val_fraction "
                f"{self.val_fraction} and test_fraction {self.test_fraction}"
            )


@dataclass
class _Split:
    corpus_half: list[Emoji]
    bench_half: list[Emoji]
    seen: list[str]  # subcategories, in label order
    unseen: list[str]
    names: dict[str, str]  # subcategory -> class name
    split_of: dict[str, str]  # code -> train / val / test / zeroshot / unused
    unused: list[Emoji]  # in no class and not in the corpus
    moved: list[Emoji]  # drawn for the benchmark, in no class, given to the corpus


def _rng(seed: int, what: str) -> random.Random:
    """An independent stream per decision, so changing one split leaves the others alone."""
    return random.Random(f"{seed}:{what}")


# Code points that make variants of one concept: ZWJ, gender signs, and the man / woman / person
# bases of ZWJ sequences ("man teacher", "woman teacher", "teacher"; hair and family variants).
_VARIANT_PARTS = {"200D", "2640", "2642", "1F468", "1F469", "1F9D1"}


def variant_key(code: str) -> str:
    """Emoji that differ only in gender, person base or a family's parents share a key; such
    near-duplicates always land on the same side of every split."""
    parts = code.split("-")
    if len(parts) == 1:
        return code
    return "-".join(p for p in parts if p not in _VARIANT_PARTS) or code


def _variant_groups(members: list[Emoji], rng: random.Random) -> list[list[Emoji]]:
    groups: dict[str, list[Emoji]] = defaultdict(list)
    for e in sorted(members, key=lambda e: e.code):
        groups[variant_key(e.code)].append(e)
    out = [groups[k] for k in sorted(groups)]
    rng.shuffle(out)
    return out


def _assign(groups: list[list[Emoji]], targets: list[float], rng: random.Random) -> list[list[Emoji]]:
    """Whole groups, largest first, each to the part furthest below its target (ties at random)."""
    parts: list[list[Emoji]] = [[] for _ in targets]
    for group in sorted(groups, key=len, reverse=True):  # stable: shuffled order within a size
        tie = [rng.random() for _ in targets]
        i = max(range(len(targets)), key=lambda j: (targets[j] - len(parts[j]), tie[j]))
        parts[i] += group
    return parts


def split_emoji(emoji: list[Emoji], params: DataParams) -> _Split:
    by_sub: dict[str, list[Emoji]] = defaultdict(list)
    for e in emoji:
        by_sub[e.subcategory].append(e)
    rng = _rng(params.seed, "halves")
    corpus_half, bench_half = [], []
    bench_by_sub: dict[str, list[Emoji]] = {}
    for sub in sorted(by_sub):
        n = len(by_sub[sub])
        to_corpus, to_bench = _assign(
            _variant_groups(by_sub[sub], rng), [n * params.corpus_fraction, n * (1 - params.corpus_fraction)], rng
        )
        corpus_half += to_corpus
        bench_half += to_bench
        bench_by_sub[sub] = to_bench

    # a class needs enough emoji, and 3 variant groups so that train, val and test are all non-empty
    classes = sorted(
        s
        for s, m in bench_by_sub.items()
        if len(m) >= params.min_class_size and len({variant_key(e.code) for e in m}) >= 3
    )
    names = {s: class_name(s) for s in classes}
    dup = [n for n, c in Counter(names.values()).items() if c > 1]
    if dup:
        raise ValueError(f"two subcategories share the class name {dup[0]!r}")
    shuffled = list(classes)
    _rng(params.seed, "classes").shuffle(shuffled)
    n_unseen = round(len(classes) * params.unseen_fraction)
    if params.unseen_fraction > 0:
        n_unseen = max(2, n_unseen)
    unseen = sorted(shuffled[:n_unseen], key=lambda s: names[s])
    seen = sorted(shuffled[n_unseen:], key=lambda s: names[s])
    if len(seen) < 2 or (params.unseen_fraction > 0 and len(unseen) < 2):
        raise ValueError(
            f"only {len(classes)} subcategories have >= {params.min_class_size} benchmark emoji: "
            f"too few for {len(seen)} seen and {len(unseen)} unseen classes; lower build_data.min_class_size"
        )

    split_of: dict[str, str] = {}
    rng = _rng(params.seed, "train-val-test")
    for sub in seen:
        members = bench_by_sub[sub]
        n = len(members)
        targets = [n * params.test_fraction, n * params.val_fraction, n * (1 - params.test_fraction - params.val_fraction)]
        test, val, train = _assign(_variant_groups(members, rng), targets, rng)
        for part in (test, val):  # never empty: borrow train's smallest group
            if not part:
                groups = sorted(_variant_groups(train, rng), key=len)
                part += groups[0]
                train = [e for g in groups[1:] for e in g]
        if not train:
            raise ValueError(f"class {sub!r}: no train emoji left; lower build_data.test_fraction / val_fraction")
        for name, part in (("test", test), ("val", val), ("train", train)):
            for e in part:
                split_of[e.code] = name
    for sub in unseen:
        for e in bench_by_sub[sub]:
            split_of[e.code] = "zeroshot"
    # Benchmark-half emoji of subcategories too small to be a class: to the corpus, or unused.
    leftover = [e for e in bench_half if e.code not in split_of]
    bench_half = [e for e in bench_half if e.code in split_of]
    moved: list[Emoji] = []
    unused: list[Emoji] = []
    if params.small_subcategories_to_corpus:
        moved = leftover
        corpus_half = corpus_half + moved
    else:
        unused = leftover
        for e in unused:
            split_of[e.code] = "unused"
    return _Split(corpus_half, bench_half, seen, unseen, names, split_of, unused, moved)


def _cap_clipart(items: list[Item], params: DataParams, what: str) -> tuple[list[Item], int]:
    """At most `max_same_caption` per caption, then at most `max_clipart` in all (seeded picks)."""
    order = list(items)
    _rng(params.seed, f"cap-{what}").shuffle(order)
    dropped = 0
    if params.max_same_caption is not None:
        seen: Counter = Counter()
        kept = []
        for it in order:
            seen[it.caption] += 1
            if seen[it.caption] <= params.max_same_caption:
                kept.append(it)
            else:
                dropped += 1
        order = kept
    if params.max_clipart is not None:
        order = order[: params.max_clipart]
    return sorted(order, key=lambda it: it.key), dropped


def tuxpaint_zeroshot_items(items: list[Item], root: Path, min_size: int) -> tuple[list[tuple[Item, int]], list[str]]:
    """(stamp, label) pairs of the stamp folders with at least `min_size` stamps, and the class names.

    The `cartoon` folder holds drawings of any subject, so it is no class."""
    by_folder: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        folder = it.path.relative_to(root).parts[0]
        if folder != "cartoon" and len(it.path.relative_to(root).parts) > 1:
            by_folder[folder].append(it)
    folders = sorted(f for f, v in by_folder.items() if len(v) >= min_size)
    names = [TUX_CLASS_NAMES.get(f, f.replace("_", " ")) for f in folders]
    return [(it, label) for label, f in enumerate(folders) for it in by_folder[f]], names


def _tux_sample(it: Item, label: int, classname: str, png: bytes) -> dict:
    meta = {"classname": classname, "label": label, "emoji": None, "name": it.caption, "domain": "tuxpaint",
            "source": "tuxpaint", "licence": LICENCES["tuxpaint"]}
    return {"__key__": it.key, "png": png, "cls": str(label), "json": json.dumps(meta, sort_keys=True)}


def _corpus_sample(key: str, png: bytes, caption: str, source: str, style: str, emoji: str | None) -> dict:
    meta = {"source": source, "licence": LICENCES[source], "style": style, "emoji": emoji}
    return {"__key__": key, "png": png, "txt": caption, "json": json.dumps(meta, sort_keys=True)}


def _pick_heldout(samples: list[dict], n: int, seed: int) -> set[str]:
    """Keys of exactly `n` pairs (when possible), taking whole caption groups: a held-out caption
    never also trains (an emoji's four styles share one caption)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        groups[s["txt"]].append(s["__key__"])
    captions = sorted(groups)
    _rng(seed, "heldout").shuffle(captions)
    chosen: set[str] = set()
    for c in captions:
        if len(chosen) >= n:
            break
        if len(chosen) + len(groups[c]) <= n:
            chosen.update(groups[c])
    return chosen


def _bench_sample(e: Emoji, style: str, label: int, classname: str, png: bytes) -> dict:
    meta = {
        "classname": classname,
        "label": label,
        "emoji": e.code,
        "name": e.name,
        "domain": style,
        "subcategory": e.subcategory,
    }
    return {"__key__": f"emoji-{e.code}-{style}", "png": png, "cls": str(label), "json": json.dumps(meta, sort_keys=True)}


def _check_no_leaks(corpus: list[dict], heldout: list[dict], split: _Split, bench_sets: dict[str, list[dict]]) -> None:
    """Raise DataLeakError unless the corpus, train, val and test are disjoint, by emoji and by
    variant group (man / woman / person variants of one emoji within its subcategory)."""
    sub_of = {e.code: e.subcategory for e in split.corpus_half + split.bench_half}

    def group(code: str) -> tuple[str, str]:
        return sub_of.get(code, ""), variant_key(code)

    def emoji_of(samples: list[dict]) -> set[str]:
        return {c for c in (json.loads(s["json"])["emoji"] for s in samples) if c is not None}

    in_corpus = emoji_of(corpus) | emoji_of(heldout)
    bench = {name: emoji_of(samples) for name, samples in bench_sets.items()}
    parts = {
        "corpus": in_corpus,
        "train": bench["finetune"],
        "val": bench["val"],
        "test": set().union(*(bench[n] for n in EVAL_SETS if not n.startswith("zeroshot"))),
        "zero-shot": set().union(*(bench[n] for n in EVAL_SETS if n.startswith("zeroshot"))),
    }
    bench_codes = {e.code for e in split.bench_half}
    leak = sorted(in_corpus & bench_codes)
    if leak:
        raise DataLeakError(f"benchmark emoji {leak[0]} is in the corpus")
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same = sorted(parts[a] & parts[b])
            if same:
                raise DataLeakError(f"emoji {same[0]} is in both {a} and {b}")
            groups_b = {group(c) for c in parts[b]}
            near = sorted(c for c in parts[a] if group(c) in groups_b)
            if near:
                raise DataLeakError(f"{a} emoji {near[0]} is a variant of a {b} emoji")


def _se(n: int, p: float = 0.5) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def _card(counts: dict, split: _Split, params: DataParams, per_class: dict[str, Counter]) -> str:
    b = counts["benchmark"]
    lines = [
        "# Emoji robustness benchmark and clip-art corpus",
        "",
        "Built by `stages/build_data.py` (`pipeline/datasets/default.py`) from offline packages only.",
        f"Parameters: `{json.dumps({k: v for k, v in asdict(params).items() if k not in ('workers', 'source', 'local')}, sort_keys=True)}`.",
        "",
        "## Task",
        "",
        "Classify an emoji into its Unicode subcategory (given a readable class name). Finetuning",
        f"sees the **{len(split.seen)} seen classes** in the `google` style only; evaluation covers the",
        "same classes' held-out test emoji in four styles (in-distribution `google`, and the shifts",
        "`twitter`, `openmoji_color`, `openmoji_black` = black line art), plus",
        f"**{len(split.unseen)} unseen classes** scored zero-shot in every style.",
        "",
        "## Splits",
        "",
        "| set | style | classes | images | SE of accuracy at p=0.5 |",
        "|---|---|---|---|---|",
        f"| finetune (train) | google | {len(split.seen)} | {b['finetune']} | |",
        f"| val (ID validation) | google | {len(split.seen)} | {b['val']} | {_se(b['val']):.3f} |",
    ]
    for name in EVAL_SETS:
        style = name.split("_", 1)[1] if name != "id_test" else ID_STYLE
        k = len(split.unseen) if name.startswith("zeroshot") else len(split.seen)
        lines.append(f"| eval/{name} | {style} | {k} | {b[name]} | {_se(b[name]):.3f} |")
    if TUX_SET in b:
        tux = counts["tuxpaint_classes"]
        lines.append(f"| eval/{TUX_SET} | tuxpaint | {len(tux)} | {b[TUX_SET]} | {_se(b[TUX_SET]):.3f} |")
        lines += ["", f"`{TUX_SET}`: Tux Paint stamps (mostly photo cut-outs), classified by stamp folder into "
                  f"{len(tux)} classes ({', '.join(tux)}); no stamp is in the corpus. It stands in for the paper's "
                  "zero-shot *other datasets*: the emoji zero-shot sets share the finetune domain."]
    lines += [
        "",
        "The standard error of an accuracy p measured on n images is sqrt(p(1-p)/n), largest at",
        "p = 0.5 (the column above): differences between methods smaller than about twice that are",
        "not resolved by one evaluation set. Emoji of one class are correlated (a family of",
        "related glyphs), so the effective n is smaller still.",
        "",
        "No emoji is in two of train / val / test, in any style; no benchmark emoji is in the corpus;",
        "both are checked when the data is written. Variants of one emoji (person / man / woman",
        "forms, hair and family variants) always share a split, so a test emoji has no gendered twin",
        "in train or in the corpus.",
        "",
        "## Classes",
        "",
        "| label | class name | subcategory | train | val | test | zero-shot |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, sub in enumerate(split.seen):
        c = per_class[sub]
        lines.append(f"| {i} | {split.names[sub]} | {sub} | {c['train']} | {c['val']} | {c['test']} | |")
    for i, sub in enumerate(split.unseen):
        lines.append(f"| unseen {i} | {split.names[sub]} | {sub} | | | | {per_class[sub]['zeroshot']} |")
    lines += [
        "",
        f"Templates ({len(TEMPLATES)}, shared by the zero-shot head, FLYP prompts and CLIP_benchmark): "
        + ", ".join(f"`{t}`" for t in TEMPLATES),
        "",
        f"Emoji drawn for the benchmark whose subcategory has fewer than {params.min_class_size} of them",
        f"are in no class: {len(split.moved)} went to the corpus, {len(split.unused)} are unused.",
        "",
        "## Corpus",
        "",
        "| source | pairs |",
        "|---|---|",
    ]
    for source, n in sorted(counts["corpus"]["by_source"].items()):
        lines.append(f"| {source} | {n} |")
    lines += [
        f"| **total** (corpus/) | {counts['corpus']['total']} |",
        f"| held out (corpus_heldout/) | {counts['corpus_heldout']['total']} |",
        "",
        "Captions: emoji `name: tags` from the OpenMoji annotation and tags, identical for the four",
        "styles of an emoji; Open Clip Art `folders: title` cleaned from the file name (author names,",
        "counters and Italian / French words removed or translated); Tux Paint `folders: first line",
        "of the stamp's .txt`. Held-out pairs are whole caption groups: no held-out caption trains.",
        f"Skipped files: {json.dumps(counts['skipped'], sort_keys=True)}.",
        *([f"Emoji styles in the corpus (`corpus_styles`): {', '.join(params.corpus_styles)}; the others are "
           "in no corpus or held-out pair."] if set(params.corpus_styles) != set(STYLES) else []),
        "",
        "## Sources and licences",
        "",
        "| source | package | licence |",
        "|---|---|---|",
        "| Google emoji (Noto) | npm `emoji-datasource-google` | Apache-2.0 |",
        "| Twitter emoji (Twemoji) | npm `emoji-datasource-twitter` | CC-BY-4.0 |",
        "| OpenMoji (color, black) | npm `openmoji` | CC-BY-SA-4.0 |",
        "| Tux Paint stamps | Debian `tuxpaint-stamps-default` | GPL-2 |",
        "| Open Clip Art | Debian `openclipart-png` | public domain |",
        "",
        "Each corpus sample's `.json` names its source and licence. Redistributing the OpenMoji",
        "images requires attribution and share-alike; Twemoji requires attribution.",
        "",
    ]
    return "\n".join(lines)


def build_default_data(out_root: Path, params: DataParams, assets: AssetPaths | None = None) -> dict:
    """Build `corpus/`, `corpus_heldout/` and `benchmark/` under `out_root`; return the counts."""
    t_start = time.perf_counter()
    out_root = Path(out_root)
    assets = assets or AssetPaths.default()
    assets.check()
    workers = params.workers or os.cpu_count() or 1
    seconds: dict[str, float] = {}

    # 1. emoji in four styles, each image decoded / rendered once
    t = time.perf_counter()
    emoji, join_counts = load_emoji(assets)
    emoji, emoji_png, emoji_errors = render_emoji(emoji, params.image_size, workers)
    seconds["emoji_render"] = round(time.perf_counter() - t, 1)

    # 2. halves, classes, splits
    split = split_emoji(emoji, params)

    # 3-4. corpus: emoji corpus half in all styles, Open Clip Art, Tux Paint
    t = time.perf_counter()
    oca, oca_dup = _cap_clipart(discover_openclipart(assets.openclipart), params, "openclipart")
    tux_all = discover_tuxpaint(assets.tuxpaint_stamps)
    if params.tuxpaint_zeroshot:
        tux_eval, tux_classes = tuxpaint_zeroshot_items(tux_all, assets.tuxpaint_stamps, params.min_class_size)
        tux, tux_dup = [], 0
    else:
        tux_eval, tux_classes = [], []
        tux, tux_dup = _cap_clipart(tux_all, params, "tuxpaint")
    clip_png, clip_errors = load_images(oca + tux + [it for it, _ in tux_eval], params.image_size, workers)
    seconds["clipart_decode"] = round(time.perf_counter() - t, 1)
    print(f"[data] decoded {len(clip_png)} clip-art images in {seconds['clipart_decode']} s ({workers} processes)")

    samples: list[dict] = []
    for e in sorted(split.corpus_half, key=lambda e: e.code):
        for style in (s for s in STYLES if s in params.corpus_styles):  # canonical order, whatever the list's
            samples.append(
                _corpus_sample(f"emoji-{e.code}-{style}", emoji_png[(e.code, style)], e.caption, SOURCE[style][0], style, e.code)
            )
    for it in oca + tux:
        if it.key in clip_png:
            samples.append(_corpus_sample(it.key, clip_png[it.key], it.caption, it.source, it.source, None))
    keys = [s["__key__"] for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError("corpus keys are not unique")
    held = _pick_heldout(samples, params.heldout_pairs, params.seed)
    heldout = sorted((s for s in samples if s["__key__"] in held), key=lambda s: s["__key__"])
    corpus = [s for s in samples if s["__key__"] not in held]
    _rng(params.seed, "corpus-order").shuffle(corpus)  # mixed sources within every shard

    # 6. benchmark sets
    label_seen = {s: i for i, s in enumerate(split.seen)}
    label_unseen = {s: i for i, s in enumerate(split.unseen)}
    bench_sets: dict[str, list[dict]] = {n: [] for n in ("finetune", "val", *EVAL_SETS)}
    per_class: dict[str, Counter] = defaultdict(Counter)
    for e in sorted(split.bench_half, key=lambda e: (e.subcategory, e.code)):
        part = split.split_of[e.code]
        if part == "unused":
            continue
        per_class[e.subcategory][part] += 1
        if part == "zeroshot":
            label, cname = label_unseen[e.subcategory], split.names[e.subcategory]
            for style in STYLES:
                bench_sets[f"zeroshot_{style}"].append(_bench_sample(e, style, label, cname, emoji_png[(e.code, style)]))
            continue
        label, cname = label_seen[e.subcategory], split.names[e.subcategory]
        if part in ("train", "val"):
            name = "finetune" if part == "train" else "val"
            bench_sets[name].append(_bench_sample(e, ID_STYLE, label, cname, emoji_png[(e.code, ID_STYLE)]))
        else:
            bench_sets["id_test"].append(_bench_sample(e, ID_STYLE, label, cname, emoji_png[(e.code, ID_STYLE)]))
            for style in SHIFT_STYLES:
                bench_sets[f"shift_{style}"].append(_bench_sample(e, style, label, cname, emoji_png[(e.code, style)]))
    for name in EVAL_SETS:  # label order, then emoji
        bench_sets[name].sort(key=lambda s: (int(s["cls"]), s["__key__"]))
    tux_set = [_tux_sample(it, label, tux_classes[label], clip_png[it.key]) for it, label in tux_eval
               if it.key in clip_png]
    corpus_keys = {s["__key__"] for s in corpus} | {s["__key__"] for s in heldout}
    if any(s["__key__"] in corpus_keys for s in tux_set):
        raise DataLeakError("a Tux Paint zero-shot stamp is in the corpus")
    _rng(params.seed, "finetune-order").shuffle(bench_sets["finetune"])

    _check_no_leaks(corpus, heldout, split, bench_sets)

    # counts
    skipped = {
        "emoji_render_failed": len(emoji_errors),
        "clipart_undecodable": len(clip_errors),
        "openclipart_duplicate_caption": oca_dup,
        "tuxpaint_duplicate_caption": tux_dup,
    }
    counts = {
        "emoji": {
            **join_counts,
            "all_four_styles": len(emoji),
            "corpus_half": len(split.corpus_half),
            "benchmark_half": len(split.bench_half),
            "small_subcategories_to_corpus": len(split.moved),
            "benchmark_unused": len(split.unused),
        },
        "classes": {"seen": len(split.seen), "unseen": len(split.unseen)},
        "benchmark": {**{n: len(v) for n, v in bench_sets.items()}, **({TUX_SET: len(tux_set)} if tux_set else {})},
        "tuxpaint_classes": tux_classes,
        "corpus": {
            "total": len(corpus),
            "by_source": dict(sorted(Counter(json.loads(s["json"])["source"] for s in corpus).items())),
            "by_style": dict(sorted(Counter(json.loads(s["json"])["style"] for s in corpus).items())),
        },
        "corpus_heldout": {
            "total": len(heldout),
            "by_source": dict(sorted(Counter(json.loads(s["json"])["source"] for s in heldout).items())),
        },
        "skipped": skipped,
        "skipped_examples": dict(list(sorted({**emoji_errors, **clip_errors}.items()))[:10]),
    }
    for key, err in sorted({**emoji_errors, **clip_errors}.items()):
        print(f"[data] skipped {key}: {err}")

    # 5-7. write. benchmark/ (with build_data.json in it) is the marker: it goes first and comes
    # back last, so a crash never leaves a complete-looking benchmark beside a corpus of another run.
    t = time.perf_counter()
    with atomic_dirs(out_root / "corpus", out_root / "corpus_heldout", out_root / "benchmark") as (
            corpus_tmp, heldout_tmp, tmp):
        write_shards_fixed(corpus_tmp, corpus, SHARD_SIZE)
        write_shards_fixed(heldout_tmp, heldout, SHARD_SIZE)
        write_shards_fixed(tmp / "finetune", bench_sets["finetune"], SHARD_SIZE)
        write_shards_fixed(tmp / "val", bench_sets["val"], SHARD_SIZE)
        for name in EVAL_SETS:
            classes = split.unseen if name.startswith("zeroshot") else split.seen
            write_clip_benchmark_set(tmp / "eval" / name, bench_sets[name], [split.names[s] for s in classes], TEMPLATES, SHARD_SIZE)
        if tux_set:
            write_clip_benchmark_set(tmp / "eval" / TUX_SET, tux_set, tux_classes, TEMPLATES, SHARD_SIZE)
        classes_json = {
            "seen": [split.names[s] for s in split.seen],
            "unseen": [split.names[s] for s in split.unseen],
            "subcategory": {split.names[s]: s for s in split.seen + split.unseen},
            "templates": TEMPLATES,
        }
        (tmp / "classes.json").write_text(json.dumps(classes_json, indent=2) + "\n")
        (tmp / "card.md").write_text(_card(counts, split, params, per_class))
        write_json(tmp / "build_data.json", counts)
    seconds["write"] = round(time.perf_counter() - t, 1)
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    counts["seconds"] = seconds
    return counts
