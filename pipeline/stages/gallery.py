"""The anchor gallery: one static HTML page per run, the first thing to look at after retrieval.

For a seeded sample of classes it shows the retrieved anchors (image, corpus caption, score, rank, key)
next to finetune images of the same class with their generated captions, so a bad retrieval or a bad
captioner is visible at a glance. Images are inlined as PNG data URIs: the page is a single file that
works offline, and it holds nothing run-specific (no time, no absolute path), so the same inputs give a
byte-identical page that DVC can cache and diff.
"""
from __future__ import annotations

import base64
import html
import json
import os
import random
import time
from pathlib import Path

import typer

from pipeline.io.atomic import atomic_file
from pipeline.io.records import anchor_stats, read_anchors, read_captions
from pipeline.io.shards import (
    SkipCounter,
    decode_image,
    encode_png,
    iter_samples,
    read_shard_info,
    sample_image_bytes,
)
from pipeline.stages import _command as cmd

THUMB = 96  # the corpus is stored at 96 px; larger images are shrunk so the page stays small


CSS = """body{font-family:sans-serif;margin:1em 2em;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px;margin-bottom:1em}
.tile{border:1px solid #ccc;border-radius:4px;padding:4px;font-size:12px;word-wrap:break-word}
.tile img{width:96px;height:96px;object-fit:contain;display:block;margin:auto;background:#fff}
.ft{background:#f3f7ff}.meta{color:#666}.warn{color:#a40}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child{text-align:left}"""


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _thumb_uri(sample: dict, skips: SkipCounter) -> str | None:
    """A PNG data URI of the sample's image, or None (counted) if it does not decode.

    Re-encoding (rather than inlining the stored bytes) validates the image, flattens transparency the
    way the rest of the pipeline sees it, and handles jpg/webp members the same way.
    """
    try:
        _, data = sample_image_bytes(sample)
        img = decode_image(data, sample["__key__"])
    except (KeyError, ValueError) as e:
        skips(e)
        return None
    img.thumbnail((THUMB, THUMB))
    return "data:image/png;base64," + base64.b64encode(encode_png(img)).decode("ascii")


def _tile(uri: str | None, lines: list[str], cls: str = "tile") -> str:
    img = f'<img src="{uri}" alt="">' if uri else '<div class="warn">image unreadable or missing</div>'
    return f'<div class="{cls}">{img}' + "".join(f"<div>{line}</div>" for line in lines) + "</div>"


def write_gallery(anchors_path, corpus_dir, captions_path, finetune_dir, classes_path, out_html,
                  classes_per_page: int = 12, anchors_per_class: int = 8, finetune_per_class: int = 4,
                  seed: int = 0) -> dict:
    for p in (anchors_path, captions_path, classes_path):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: missing")
    read_shard_info(corpus_dir), read_shard_info(finetune_dir)  # fail before any work, naming the path

    anchors = read_anchors(anchors_path)
    captions = read_captions(Path(captions_path))
    seen = json.loads(Path(classes_path).read_text())["seen"]
    stats = anchor_stats(anchors, seen)
    names = sorted(stats)
    sample = sorted(random.Random(seed).sample(names, min(classes_per_page, len(names))))

    # Top anchors per sampled class, best first; rank may be absent in older anchor files.
    best_first = sorted(anchors, key=lambda a: (-a["score"], a["key"]))
    shown = {c: [a for a in best_first if a["class"] == c][:anchors_per_class] for c in sample}
    wanted = {a["key"] for rows in shown.values() for a in rows}

    # One pass over each shard folder, decoding and keeping only the images the page shows.
    skips, skipped_keys = SkipCounter(), []
    corpus_uris: dict[str, str | None] = {}
    for s in iter_samples(corpus_dir, skips):
        if s["__key__"] in wanted and s["__key__"] not in corpus_uris:
            corpus_uris[s["__key__"]] = uri = _thumb_uri(s, skips)
            if uri is None:
                skipped_keys.append(s["__key__"])
    finetune: dict[str, list[tuple[str, str]]] = {c: [] for c in sample}
    n_finetune = 0
    for s in iter_samples(finetune_dir, skips):
        n_finetune += 1
        try:
            idx = int(_text(s["cls"]))
            if not 0 <= idx < len(seen):  # checked, since a negative index would silently wrap around
                raise IndexError(f"label {idx} not in 0..{len(seen) - 1}")
            c = seen[idx]
        except (KeyError, ValueError, IndexError) as e:
            skips(ValueError(f"sample {s['__key__']}: no valid .cls ({e!r})"))
            skipped_keys.append(s["__key__"])
            continue
        if c in finetune and len(finetune[c]) < finetune_per_class:
            uri = _thumb_uri(s, skips)
            if uri is None:
                skipped_keys.append(s["__key__"])
            else:
                finetune[c].append((s["__key__"], uri))

    n_caps = [len(v) for v in captions.values()]
    out = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Anchor gallery</title><style>{CSS}</style>"
           "</head><body><h1>Anchor gallery</h1>",
           f"<p>{len(anchors)} anchors over {sum(1 for c in names if stats[c]['count'])} of {len(names)} classes; "
           f"{n_finetune} finetune images; {len(captions)} captioned, "
           f"{(sum(n_caps) / len(n_caps) if n_caps else 0):.2f} captions per image. "
           f"Showing {len(sample)} classes (seed {seed}), up to {anchors_per_class} anchors and "
           f"{finetune_per_class} finetune images each.</p>"]
    missing = sorted(wanted - corpus_uris.keys())
    if skips.skipped or missing:
        out.append(f'<p class="warn">Skipped {skips.skipped} bad sample(s): {_esc(", ".join(skipped_keys[:20]))}. '
                   f'{len(missing)} shown anchor key(s) not found in the corpus: {_esc(", ".join(missing[:20]))}</p>')
    for c in sample:
        st = stats[c]
        mean = f"{st['score_mean']:.3f}" if st["count"] else "n/a"
        out.append(f'<h2>{_esc(c)}</h2><p class="meta">{st["count"]} anchors, mean score {mean}</p>'
                   '<div class="grid">')
        for a in shown[c]:
            rank = a["rank"] if a.get("rank") is not None else "-"
            out.append(_tile(corpus_uris.get(a["key"]), [
                _esc(a["caption"]),
                f'<span class="meta">score {a["score"]:.3f} &middot; rank {_esc(rank)}</span>',
                f'<span class="meta">{_esc(a["key"])}</span>']))
        out.append('</div><h3>Finetune images</h3><div class="grid">')
        for key, uri in finetune[c]:
            caps = captions.get(key) or ["(no caption)"]
            out.append(_tile(uri, [_esc(t) for t in caps] + [f'<span class="meta">{_esc(key)}</span>'], "tile ft"))
        out.append("</div>")
    out.append("<h2>All classes</h2><table><tr><th>class</th><th>anchors</th><th>mean score</th></tr>")
    for c in names:
        mean = f"{stats[c]['score_mean']:.3f}" if stats[c]["count"] else "-"
        out.append(f"<tr><td>{_esc(c)}</td><td>{stats[c]['count']}</td><td>{mean}</td></tr>")
    out.append("</table></body></html>\n")

    # ASCII with character references: the bytes do not depend on the locale's default encoding.
    page = "\n".join(out).encode("ascii", "xmlcharrefreplace")
    with atomic_file(out_html, "wb") as f:
        f.write(page)
    n_images = sum(corpus_uris.get(a["key"]) is not None for rows in shown.values() for a in rows)
    n_images += sum(len(v) for v in finetune.values())
    return {"classes": len(names), "sampled": sample, "anchors": len(anchors), "finetune": n_finetune,
            "images": n_images, "skipped": skips.skipped, "missing_anchor_images": len(missing),
            "bytes": len(page), "path": os.fspath(out_html)}


def command(anchors: Path = typer.Option(...), corpus: Path = typer.Option(...), captions: Path = typer.Option(...),
            finetune: Path = typer.Option(...), classes: Path = typer.Option(...), out: Path = typer.Option(...),
            num_classes: int = typer.Option(12, help="classes shown (seeded sample); the count table lists all"),
            params: Path = cmd.PARAMS) -> None:
    """A static HTML page: retrieved anchors (caption, score, rank) and captioned finetune images per class."""
    cmd.section(params, None)
    t = time.time()
    cmd.report("gallery", t, write_gallery(anchors, corpus, captions, finetune, classes, out, classes_per_page=num_classes))
