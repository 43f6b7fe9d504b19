"""DVC stage `embed_corpus`: image and caption embeddings of the corpus with clip-retrieval's inference.

Reads the corpus shards and the base model; writes clip-retrieval's embedding folder
(`img_emb/`, `text_emb/`, `metadata/`, `stats/`, `embed_report.json`). Params: `embed_corpus`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CORPUS_DIR = Path("data/corpus")
MODEL_JSON = Path("models/base/model.json")  # {"name": <open_clip architecture>, "checkpoint": ...}
MODEL_CKPT = Path("models/base/checkpoint.pt")
EMB_DIR = Path("data/corpus_emb")


def base_model_spec() -> str:
    """`NAME:/abs/path/checkpoint.pt` for the base model (a `pipeline.models` spec)."""
    try:
        name = json.loads(MODEL_JSON.read_text())["name"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{MODEL_JSON}: missing; run the stage that writes the base model") from None
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{MODEL_JSON}: expected a JSON object with a 'name' ({e})") from None
    if not MODEL_CKPT.is_file():
        raise FileNotFoundError(f"{MODEL_CKPT}: missing; run the stage that writes the base model")
    return f"{name}:{MODEL_CKPT.resolve()}"


def main() -> None:
    from pipeline.models import ModelNotAvailable
    from pipeline.params import ParamsError, load_stage_params
    from pipeline.retrieve import embed_corpus

    try:
        params = load_stage_params("embed_corpus")
        spec = base_model_spec()
        report = embed_corpus(CORPUS_DIR, spec, EMB_DIR, batch_size=params.batch_size,
                              num_workers=params.num_workers)
    except (ParamsError, ModelNotAvailable, FileNotFoundError, ValueError) as e:
        sys.exit(f"embed_corpus: {e}")
    print(f"\nembed_corpus: {report['samples_embedded']}/{report['samples_expected']} samples of {CORPUS_DIR} "
          f"embedded with {report['model']} (dim {report['dim']}) in {report['seconds']:.1f} s "
          f"({report['samples_per_s']} samples/s; {report['steady_samples_per_s']} samples/s after start-up) -> {EMB_DIR}")
    if report["skipped"]:
        print(f"embed_corpus: skipped {report['skipped']} bad sample(s):")
        for s in report["skipped_samples"][:20]:
            print(f"  {s['key']}: {s['reason']}")
        for s in report["unreadable_shards"]:
            print(f"  shard {s}")
    if report["duplicate_keys"]:
        print(f"embed_corpus: warning: {report['duplicate_keys']} duplicate sample key(s) in the corpus")


if __name__ == "__main__":  # required: clip-retrieval spawns helper processes that re-import this file
    main()
