"""DVC stage `retrieve`: index the corpus embeddings with autofaiss and retrieve k anchors per seen class.

Reads `data/corpus_emb` (stage embed_corpus) and the seen-class prompt embeddings; writes the index
folder (`image.index`, `text.index`, `metadata/`: servable by `clip-retrieval back`) and the anchors
(JSON lines: key, caption, class, score, rank), plus per-class counts and score statistics.
Params: `retrieve`.
"""
from __future__ import annotations

import sys
from pathlib import Path

EMB_DIR = Path("data/corpus_emb")
INDEX_DIR = Path("data/corpus_index")
PROMPTS = Path("data/prompts/seen.npz")
ANCHORS = Path("data/anchors/anchors.jsonl")
ANCHOR_STATS = Path("data/anchors/stats.json")


def main() -> None:
    from pipeline.atomic import write_json
    from pipeline.params import ParamsError, load_stage_params
    from pipeline.retrieve import (anchor_stats, build_index, format_anchor_report, load_prompts,
                                   retrieve_anchors, write_anchors)

    try:
        p = load_stage_params("retrieve")
        _, classnames = load_prompts(PROMPTS)
        index_report = build_index(EMB_DIR, INDEX_DIR, index_key=p.index_key, flat_below=p.flat_below,
                                   max_index_memory_usage=p.max_index_memory_usage,
                                   current_memory_available=p.current_memory_available)
        records = retrieve_anchors(INDEX_DIR, PROMPTS, p.k_per_class, target=p.target, dedup=p.dedup)
    except (ParamsError, FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"retrieve: {e}")
    for target in ("image", "text"):
        r = index_report[target]
        print(f"retrieve: {target}.index: {r['index_key']} ({r['chosen_by']}), {r['vectors']} x {r['dim']}, "
              f"built in {r['seconds']} s")
    write_anchors(records, ANCHORS)
    stats = anchor_stats(records, classnames)
    write_json(ANCHOR_STATS, {"k_per_class": p.k_per_class, "target": p.target, "dedup": p.dedup,
                              "anchors": len(records), "classes": stats})
    print(f"retrieve: {len(records)} anchors (k={p.k_per_class}, target={p.target}, dedup={p.dedup}) -> {ANCHORS}")
    print(format_anchor_report(stats, p.k_per_class))


if __name__ == "__main__":
    main()
