"""Emoji in four styles: Google and Twitter (emoji-datasource PNGs) and OpenMoji color / black SVGs.

The join key is emoji-datasource's `unified`, upper-cased with `-FE0F` removed, which equals the
OpenMoji `hexcode` with `-FE0F` removed. Every image is decoded or rendered once (cairosvg for the
SVGs) into a square RGB PNG on white; only emoji present in all four styles are kept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

from pipeline.data.assets import AssetPaths
from pipeline.data.imaging import load_any

STYLES = ("google", "twitter", "openmoji_color", "openmoji_black")


EXCLUDED_CATEGORIES = ("Component", "Flags")


SOURCE = {  # style -> (package, licence)
    "google": ("emoji-datasource-google", "Apache-2.0"),
    "twitter": ("emoji-datasource-twitter", "CC-BY-4.0"),
    "openmoji_color": ("openmoji", "CC-BY-SA-4.0"),
    "openmoji_black": ("openmoji", "CC-BY-SA-4.0"),
}


MAX_TAGS = 8  # keeps a caption within ~32 text tokens (the text tower's training context)


@dataclass
class Emoji:
    code: str  # unified, upper case, without FE0F: "1F629", "1F468-200D-1F4BC"
    name: str  # OpenMoji annotation ("weary face"), else the emoji.json name in lower case
    tags: list[str]
    category: str
    subcategory: str
    sort_order: int
    paths: dict[str, Path] = field(default_factory=dict)  # style -> image file

    @property
    def caption(self) -> str:
        """One caption for every style: 'weary face: crying, fail, feels, hungry, ...'."""
        name = self.name.replace(":", "")
        tags = [t for t in self.tags if t != self.name and t not in name.split()][:MAX_TAGS]
        return f"{name}: {', '.join(tags)}" if tags else name


def norm_code(code: str) -> str:
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


def _split_tags(*fields: str) -> list[str]:
    out: list[str] = []
    for f in fields:
        for t in (f or "").split(","):
            t = " ".join(t.strip().lower().split())
            if t and t not in out:
                out.append(t)
    return out


def load_emoji(assets: AssetPaths) -> tuple[list[Emoji], dict[str, int]]:
    """Joined metadata of the emoji that have a file in all four styles, in emoji.json order.

    Returns (emoji, counts) with counts of what the join dropped and why.
    """
    google = json.loads((assets.google / "emoji.json").read_text(encoding="utf-8"))
    twitter = {e["unified"]: e for e in json.loads((assets.twitter / "emoji.json").read_text(encoding="utf-8"))}
    openmoji: dict[str, dict] = {}
    for e in json.loads((assets.openmoji / "data" / "openmoji.json").read_text(encoding="utf-8")):
        openmoji.setdefault(norm_code(e["hexcode"]), e)
    counts = {"emoji_json": len(google), "excluded_category": 0, "no_openmoji": 0, "missing_file": 0}
    out: list[Emoji] = []
    for e in sorted(google, key=lambda e: e.get("sort_order", 0)):
        if e.get("category") in EXCLUDED_CATEGORIES:
            counts["excluded_category"] += 1
            continue
        code = norm_code(e["unified"])
        om = openmoji.get(code)
        if om is None:
            counts["no_openmoji"] += 1
            continue
        t = twitter.get(e["unified"], {})
        paths = {
            "google": assets.google / "img" / "google" / "64" / e["image"],
            "twitter": assets.twitter / "img" / "twitter" / "64" / t.get("image", e["image"]),
            "openmoji_color": assets.openmoji / "color" / "svg" / f"{om['hexcode']}.svg",
            "openmoji_black": assets.openmoji / "black" / "svg" / f"{om['hexcode']}.svg",
        }
        if not (e.get("has_img_google", True) and t.get("has_img_twitter", bool(t))) or not all(
            p.is_file() for p in paths.values()
        ):
            counts["missing_file"] += 1
            continue
        name = (om.get("annotation") or e.get("name") or e.get("short_name") or code).lower().strip()
        out.append(
            Emoji(
                code=code,
                name=name,
                tags=_split_tags(om.get("tags", ""), om.get("openmoji_tags", "")),
                category=e["category"],
                subcategory=e["subcategory"],
                sort_order=int(e.get("sort_order", 0)),
                paths=paths,
            )
        )
    codes = [x.code for x in out]
    if len(set(codes)) != len(codes):
        raise ValueError("emoji join produced duplicate codes")
    return out, counts


def _render(job: tuple[str, str, str, int]) -> tuple[str, str, bytes | None, str | None]:
    code, style, path, size = job
    try:
        return code, style, load_any(Path(path), size), None
    except Exception as e:  # a broken file drops the emoji, reported by the caller
        return code, style, None, f"{type(e).__name__}: {str(e).replace(path, Path(path).name)[:160]}"


def render_emoji(
    emoji: list[Emoji], size: int, processes: int = 2
) -> tuple[list[Emoji], dict[tuple[str, str], bytes], dict[str, str]]:
    """Decode / render every emoji in every style once.

    Returns (emoji rendered in all four styles, (code, style) -> PNG bytes, "code/style" -> error).
    """
    jobs = [(e.code, s, str(e.paths[s]), size) for e in emoji for s in STYLES]
    if processes > 1 and len(jobs) > 64:
        with Pool(processes) as pool:
            results = list(pool.imap(_render, jobs, chunksize=32))
    else:
        results = [_render(j) for j in jobs]
    images: dict[tuple[str, str], bytes] = {}
    errors: dict[str, str] = {}
    for code, style, png, err in results:
        if png is None:
            errors[f"{code}/{style}"] = err or "unknown error"
        else:
            images[(code, style)] = png
    kept = [e for e in emoji if all((e.code, s) in images for s in STYLES)]
    keep = {e.code for e in kept}
    images = {k: v for k, v in images.items() if k[0] in keep}
    return kept, images, errors
