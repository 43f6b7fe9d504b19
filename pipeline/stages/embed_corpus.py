"""Stage `embed_corpus`: clip-retrieval's inference, in-process, on the corpus shards (`data/corpus_emb`).

It writes clip-retrieval's standard output (see `pipeline.io.embeddings`), plus `stats/` and our
`embed_report.json` (counts, skipped samples). Its params are kept apart from `retrieve`'s so that
changing k or the index does not re-embed the corpus.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import typer

from pipeline.config import register_params
from pipeline.core.models import model_dir_spec
from pipeline.io.atomic import atomic_dir, write_json
from pipeline.io.clip_retrieval import (
    ALL_CLIP_PREFIX,
    SpecThatInstallsLoader,
    all_clip_uses_our_models,
    spark_session,
    stats_loggers_in_threads,
)
from pipeline.io.embeddings import (
    count_vectors,
    iter_metadata_column,
    metadata_row_counts,
)
from pipeline.io.shards import (
    IMAGE_EXTS,
    decode_image,
    read_corpus_info,
    shard_members,
    shard_pattern,
    wds_key,
)
from pipeline.stages import _command as cmd

log = logging.getLogger(__name__)


DISTRIBUTIONS = ("sequential", "pyspark")


EMBED_REPORT = "embed_report.json"


@register_params("embed_corpus")
@dataclass
class EmbedCorpusParams:
    """`embed_corpus` section. Kept apart from `retrieve` so that changing k or the index does not re-embed."""

    batch_size: int = field(default=32, metadata={"gt": 0})
    num_workers: int = field(default=0, metadata={"min": 0})  # DataLoader workers for decoding
    # clip-retrieval's distribution: `sequential` (this process) or `pyspark` (one Spark task per
    # output partition, on the Spark master below).
    distribution: str = field(default="sequential", metadata={"choices": DISTRIBUTIONS})
    # pyspark only: `local[N]`, `spark://HOST:7077`, `yarn`...; null: spark-submit's or spark-defaults.conf's
    spark_master: str | None = "local[2]"
    # output partitions = tasks; null: one per million samples, and under pyspark at least one per Spark
    # core (never more than there are shards)
    partitions: int | None = field(default=None, metadata={"gt": 0})


def _image_key(urls: Sequence[str]) -> str:
    """The image extension most samples of the first readable shard carry (png for the default corpus,
    jpg for img2dataset's): clip-retrieval reads one key, and samples under another are reported as
    skipped. One shard: reading every tar header of a large corpus costs a pass over all its files."""
    for url in urls:
        members, broken = shard_members([url])
        counts = Counter(e for exts in members.values() for e in exts if e in IMAGE_EXTS)
        if counts:
            return counts.most_common(1)[0][0]
    return "png"


def _why_skipped(urls: Sequence[str], keys: set[str], members: dict[str, set[str]], image_key: str) -> dict[str, str]:
    reasons = {}
    for key in sorted(keys):
        missing = [e for e in (image_key, "txt", "json") if e not in members.get(key, ())]
        if missing:
            reasons[key] = "missing member(s) " + ", ".join("." + e for e in missing)
    todo = keys - set(reasons)
    for url in urls:  # decode the images of the remaining skipped keys to say what is wrong
        if not todo:
            break
        with tarfile.open(url) as tar:
            for m in tar:
                key, ext = wds_key(m.name)
                if key in todo and ext == image_key:
                    data = tar.extractfile(m).read()
                    try:
                        decode_image(data, key)
                        reasons[key] = "rejected by clip-retrieval's reader (see its warning)"
                    except ValueError as e:
                        reasons[key] = str(e)
                    todo.discard(key)
    for key in todo:
        reasons[key] = "not read (see clip-retrieval's warnings)"
    return reasons


def _steady_rate(stats_dir: Path) -> float | None:
    n = busy = 0.0
    for f in stats_dir.glob("[0-9]*.json"):
        st = json.loads(f.read_text())
        n += st.get("sample_count", 0)
        busy += st.get("read_duration", 0) + st.get("inference_duration", 0)
    return round(n / busy, 2) if busy > 0 else None


def embed_corpus(
    corpus_dir: str | os.PathLike,
    model_spec: str,
    out_dir: str | os.PathLike,
    batch_size: int = 64,
    num_workers: int = 0,
    distribution: str = "sequential",
    spark_master: str | None = "local[2]",
    partitions: int | None = None,
    write_batch_size: int = 10**6,
) -> dict[str, Any]:
    """Embed a WebDataset corpus (KEY.png or KEY.jpg, KEY.txt, KEY.json) with clip-retrieval's inference.

    `model_spec` is a `pipeline.core.models` spec (`NAME`, `NAME:TAG`, `NAME:/path/ckpt.pt`); an architecture
    from a custom config folder must already be registered (`register_model_configs(folder)`).
    Bad samples (undecodable image, missing member) are skipped by clip-retrieval's reader; they are
    counted and named in the returned report (also written as `embed_report.json`). The output folder
    appears only when everything succeeded. `distribution="pyspark"` runs one Spark task per output
    partition (see `EmbedCorpusParams`); the output folder must then be on storage every worker writes to.
    """
    # (`import clip_retrieval.clip_inference.main as m` fails: the package rebinds `main` to the function)
    from clip_retrieval.clip_inference.main import main as clip_inference

    from pipeline.core.models import (
        ModelSpec,
        portable_spec,
        register_model_configs,
        registered_config_folders,
    )

    register_model_configs()
    spec = ModelSpec.parse(model_spec)
    if spec.is_local_checkpoint:
        spec = ModelSpec(spec.name, str(Path(spec.pretrained).resolve()))
    info = read_corpus_info(Path(corpus_dir).resolve(), "embed_corpus (ARF's anchors are retrieved from it)")
    urls = info.urls
    image_key = _image_key(urls)
    n_expected = info.num_samples
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution {distribution!r}: expected one of {DISTRIBUTIONS}")
    clip_model = ALL_CLIP_PREFIX + str(spec)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    spark = spark_session(spark_master) if distribution == "pyspark" else contextlib.nullcontext()
    with atomic_dir(out_dir) as tmp, all_clip_uses_our_models(), stats_loggers_in_threads(), spark as session:
        # clip-retrieval gives partition i every n-th shard, one task each: more partitions than shards
        # would only add empty ones, and under Spark fewer than its cores would leave cores idle.
        wanted = partitions or max(math.ceil(n_expected / write_batch_size),
                                   session.sparkContext.defaultParallelism if session else 1)
        n_parts = max(1, min(len(urls), wanted))
        if session is not None:
            clip_model = SpecThatInstallsLoader(clip_model, [str(f) for f in registered_config_folders()])
        clip_inference(
            input_dataset=shard_pattern(urls),
            output_folder=str(tmp),
            input_format="webdataset",
            batch_size=batch_size,
            num_prepro_workers=num_workers,
            enable_text=True,
            enable_image=True,
            enable_metadata=True,
            wds_image_key=image_key,
            wds_caption_key="txt",
            clip_model=clip_model,
            use_jit=False,
            output_partition_count=n_parts,
            distribution_strategy=distribution,
            enable_wandb=False,
        )
        seconds = time.perf_counter() - t0
        if not list((tmp / "metadata").glob("metadata_*.parquet")):  # clip-retrieval writes nothing then
            raise RuntimeError(f"{corpus_dir}: none of {n_expected} samples could be embedded; see the warnings")
        # counts from the files' headers and keys column by column: the embeddings of a large corpus
        # do not fit in memory, and are not needed here
        (n_img, dim), (n_txt, _) = count_vectors(tmp / "img_emb", "img_emb"), count_vectors(tmp / "text_emb", "text_emb")
        n_meta = sum(metadata_row_counts(tmp))
        if not (n_img == n_txt == n_meta):
            raise RuntimeError(f"clip-retrieval wrote {n_img} image, {n_txt} text embeddings and "
                               f"{n_meta} metadata rows; expected equal counts")
        done: set[str] = set()
        for keys in iter_metadata_column(tmp, "image_path"):
            done.update(keys.tolist())
        n_skipped = n_expected - n_meta
        reasons, broken = {}, []
        if n_skipped:  # name what is missing and why: read every tar header (only now)
            members, broken = shard_members(urls)
            skipped_keys = set(members) - done
            reasons = _why_skipped(urls, skipped_keys, members, image_key) if skipped_keys else {}
        steady = _steady_rate(tmp / "stats")
        # clip-retrieval's stats/ holds timings: a property of the run, not of the data. Kept in the
        # output, every rerun would change its DVC hash and rerun everything downstream.
        shutil.rmtree(tmp / "stats", ignore_errors=True)
        report = {
            "corpus": str(corpus_dir),
            "model": portable_spec(spec),
            "samples_expected": n_expected,
            "samples_embedded": int(n_meta),
            "skipped": int(n_skipped),
            "skipped_samples": [{"key": k, "reason": r} for k, r in sorted(reasons.items())],
            "unreadable_shards": broken,
            "duplicate_keys": int(n_meta - len(done)),
            "dim": int(dim) if n_img else None,
            "partitions": n_parts,
            "batch_size": batch_size,
        }
        write_json(tmp / EMBED_REPORT, report)  # timings stay out of the output (see above)
        report |= {
            "distribution": distribution if session is None else f"pyspark on {session.sparkContext.master}",
            "seconds": round(seconds, 2),
            "samples_per_s": round(n_meta / seconds, 2) if seconds > 0 else None,
            # read + inference only (clip-retrieval's stats): without model loading, warm-up, start-up
            "steady_samples_per_s": steady,
        }
    if n_skipped:
        log.warning("embed_corpus: skipped %d bad sample(s): %s", n_skipped,
                    ", ".join(f"{s['key']} ({s['reason']})" for s in report["skipped_samples"][:5]))
    return report


def command(corpus: Path = typer.Option(...), base: Path = typer.Option(..., help="base model folder"),
            out: Path = typer.Option(...), params: Path = cmd.PARAMS) -> None:
    """Embed corpus images and captions with clip-retrieval's inference (webdataset input)."""
    p, t = cmd.section(params, "embed_corpus"), time.time()
    report = embed_corpus(corpus, model_dir_spec(base), out, batch_size=p.batch_size, num_workers=p.num_workers,
                          distribution=p.distribution, spark_master=p.spark_master, partitions=p.partitions)
    for s in report["skipped_samples"][:20]:
        typer.echo(f"skipped {s['key']}: {s['reason']}")
    keep = ("samples_expected", "samples_embedded", "skipped", "dim", "partitions", "distribution", "samples_per_s",
            "steady_samples_per_s", "duplicate_keys", "unreadable_shards")
    cmd.report("embed_corpus", t, {k: report[k] for k in keep if k in report})
