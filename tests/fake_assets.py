"""A tiny fake asset tree with the layout and quirks of the real packages, for tests and smoke runs.

`make_fake_assets(root)` writes, in seconds, what `build_default_data` needs (point `ARF_ASSETS_DIR`
at `root` to use it from a stage): 5 emoji subcategories of 8 plus 6 roles in person / man / woman
ZWJ variants and a 2-emoji subcategory, each in the four styles (64 px PNGs, 72-unit SVGs; some codes
with FE0F); a Component, a Flag and an emoji without a black SVG (all left out); 6 clip-art PNGs
with noisy names (3 sharing a caption, 1 corrupt); 2 Tux Paint stamps with `.txt` captions, 1
pre-mirrored copy. With `min_class_size` 3 it gives 6 classes.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from PIL import Image

from pipeline.data.assets import AssetPaths

# Five class-sized subcategories of 8 emoji (4 reach the benchmark half each), one small one.
SUBCATS = {
    ("Animals & Nature", "animal-mammal"): 8,
    ("Animals & Nature", "animal-bird"): 8,
    ("Food & Drink", "food-fruit"): 8,
    ("Travel & Places", "transport-ground"): 8,
    ("Animals & Nature", "plant-flower"): 8,
    ("Travel & Places", "hotel"): 2,
}


# Six roles, each as person / man / woman ZWJ variants: near-duplicates that must stay together.
ROLES = ["1F3EB", "1F3ED", "1F4BB", "1F527", "1F680", "1F692"]


VARIANTS = [f"{base}-200D-{role}" for role in ROLES for base in ("1F9D1", "1F468", "1F469")]


def _png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (size[0] // 2, size[1] // 2), (*color, 255)), (size[0] // 4, size[1] // 4))
    img.save(path)


def _svg(path: Path, color: str, fill: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    style = f'fill="{color}"' if fill else 'fill="none" stroke="#000" stroke-width="3"'
    path.write_text(
        f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"><circle cx="36" cy="36" r="23" {style}/></svg>'
    )


def make_fake_assets(root: str | os.PathLike) -> AssetPaths:
    """Write the fake asset tree under `root` (the `AssetPaths.under` layout) and return its paths."""
    paths = AssetPaths.under(root)
    g, t, om = paths.google, paths.twitter, paths.openmoji
    tux, oca = paths.tuxpaint_stamps, paths.openclipart
    entries, om_entries = [], []
    todo = [(cat, sub, None) for (cat, sub), count in SUBCATS.items() for _ in range(count)]
    todo += [("People & Body", "person-role", code) for code in VARIANTS]
    counter: dict[str, int] = defaultdict(int)
    for n, (cat, sub, fixed) in enumerate(todo, start=1):
        i = counter[sub]
        counter[sub] += 1
        code = fixed or f"1F{n:03X}"
        # every third emoji carries FE0F in emoji.json and OpenMoji, as the real data does
        unified = f"{code}-FE0F" if n % 3 == 0 and not fixed else code
        image = unified.lower() + ".png"
        entries.append({
            "name": f"{sub.upper()} THING {i}", "unified": unified, "image": image, "category": cat,
            "subcategory": sub, "sort_order": n, "has_img_google": True, "has_img_twitter": True,
        })
        om_entries.append({"hexcode": unified, "annotation": f"{sub} thing {i}", "tags": f"tag{i}, {sub}, shared"})
        color = ((n * 37) % 256, (n * 91) % 256, (n * 53) % 256)
        _png(g / "img/google/64" / image, (64, 64), color)
        _png(t / "img/twitter/64" / image, (64, 64), color[::-1])
        _svg(om / "color/svg" / f"{unified}.svg", "#%02x%02x%02x" % color)
        _svg(om / "black/svg" / f"{unified}.svg", "#000", fill=False)
    # left out: a Component, a Flag, and an emoji without an OpenMoji black SVG
    entries.append({"name": "SKIN", "unified": "1F3FB", "image": "1f3fb.png", "category": "Component",
                    "subcategory": "skin-tone", "sort_order": 900, "has_img_google": True, "has_img_twitter": True})
    entries.append({"name": "FLAG", "unified": "1F1E6-1F1E8", "image": "1f1e6-1f1e8.png", "category": "Flags",
                    "subcategory": "country-flag", "sort_order": 901, "has_img_google": True, "has_img_twitter": True})
    entries.append({"name": "NO BLACK", "unified": "1F9FF", "image": "1f9ff.png", "category": "Objects",
                    "subcategory": "tool", "sort_order": 902, "has_img_google": True, "has_img_twitter": True})
    om_entries.append({"hexcode": "1F9FF", "annotation": "no black", "tags": ""})
    for d in (g / "img/google/64", t / "img/twitter/64"):
        for name in ("1f3fb.png", "1f1e6-1f1e8.png", "1f9ff.png"):
            _png(d / name, (64, 64), (1, 2, 3))
    _svg(om / "color/svg/1F9FF.svg", "#123456")
    (g / "emoji.json").write_text(json.dumps(entries))
    (t / "emoji.json").write_text(json.dumps(entries))
    (om / "data").mkdir(parents=True, exist_ok=True)
    (om / "data/openmoji.json").write_text(json.dumps(om_entries))

    _png(oca / "animals/mammals/housecats/black_cat_sitting_nicu_buculei_01.png", (300, 120), (20, 20, 20))
    _png(oca / "food/fruit/bananaSplit_02.png", (90, 200), (250, 220, 30))
    for i in range(3):  # three identical captions: one is dropped with max_same_caption = 2
        _png(oca / f"shapes/stars/star_{40 + i}pt0{i}step.png", (50, 50), (200, 200, 0))
    (oca / "animals/broken_png_01.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a png" * 10)

    _png(tux / "animals/lion.png", (80, 60), (200, 150, 50))
    (tux / "animals/lion.txt").write_text("A happy lion!\nfr.utf8=Un lion heureux !\n")
    _png(tux / "animals/lion_mirror.png", (80, 60), (200, 150, 50))
    _svg(tux / "vehicles/car.svg", "#ff0000")
    (tux / "vehicles/car.txt").write_text("A red car.\n")
    for i in range(3):  # enough stamps per folder for the Tux Paint zero-shot set (min_class_size 3)
        _png(tux / f"animals/animal_{i}.png", (40, 50), (100 + 40 * i, 80, 30))
        _png(tux / f"vehicles/truck_{i}.png", (60, 40), (30, 80, 100 + 40 * i))
    return paths
