"""The retrieve stage: embed the corpus with clip-retrieval, index it with autofaiss, pick anchors per class.

Three steps, each writing a folder in the layout of the tool users already know:

* `embed_corpus`  runs clip-retrieval's inference in-process on the corpus shards and writes its standard
  output: `img_emb/img_emb_N.npy`, `text_emb/text_emb_N.npy` (fp16, L2-normalised),
  `metadata/metadata_N.parquet` (row order = npy row order; `image_path` holds the WebDataset sample key,
  `caption` the caption and the sample's JSON fields are flattened into columns), plus `stats/` and our
  `embed_report.json` (counts, skipped samples).
* `build_index`   builds `image.index` / `text.index` (+ autofaiss's `image.json` / `text.json`) with
  autofaiss and copies `metadata/` beside them: clip-retrieval's index-folder convention, so
  `clip-retrieval back` can serve it. Below `flat_below` vectors a flat inner-product index is forced
  (exact, and faster than autofaiss's HNSW pick at that size; see the toolchain notes).
* `retrieve_anchors` searches each class's prompt embedding against the image (or caption) index, keeps
  the top k per class and de-duplicates across classes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .atomic import atomic_dir, atomic_file, write_json
from .params import ParamsError, register_params
from .shards import IMAGE_EXTS, decode_image, flatten_on_white, read_shard_info

log = logging.getLogger(__name__)

TARGETS = ("image", "text")
DISTRIBUTIONS = ("sequential", "pyspark")
EMB_SUBDIR = {"image": "img_emb", "text": "text_emb"}
EMBED_REPORT = "embed_report.json"
INDEX_REPORT = "index_report.json"
# The all_clip loader prefix under which `embed_corpus` makes clip-retrieval load models through
# `pipeline.models.create_model` (see `_all_clip_uses_our_models`).
ALL_CLIP_PREFIX = "arf:"

_MEM_RE = re.compile(r"^\d+(\.\d+)?[KMGT]?B?$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- params
@register_params("embed_corpus")
@dataclass
class EmbedCorpusParams:
    """`embed_corpus` section. Kept apart from `retrieve` so that changing k or the index does not re-embed."""

    batch_size: int = field(default=64, metadata={"gt": 0})
    num_workers: int = field(default=0, metadata={"min": 0})  # DataLoader workers for decoding
    # clip-retrieval's distribution: `sequential` (this process) or `pyspark` (one Spark task per
    # output partition, on the Spark master below).
    distribution: str = field(default="sequential", metadata={"choices": DISTRIBUTIONS})
    # pyspark only: `local[N]`, `spark://HOST:7077`, `yarn`...; null: spark-submit's or spark-defaults.conf's
    spark_master: str | None = "local[2]"
    # output partitions = tasks; null: one per million samples, and under pyspark at least one per Spark
    # core (never more than there are shards)
    partitions: int | None = field(default=None, metadata={"gt": 0})


@register_params("retrieve")
@dataclass
class RetrieveParams:
    k_per_class: int = field(default=16, metadata={"gt": 0})
    target: str = field(default="image", metadata={"choices": TARGETS})
    dedup: bool = True
    index_key: str | None = None  # a faiss index factory string; null: Flat below flat_below, else autofaiss picks
    flat_below: int = field(default=100_000, metadata={"min": 0})
    max_index_memory_usage: str = "4G"
    current_memory_available: str = "16G"

    def check(self, where: str) -> None:
        for name in ("max_index_memory_usage", "current_memory_available"):
            value = getattr(self, name)
            if not _MEM_RE.match(value):
                raise ParamsError(f"{where}.{name}: expected a size such as '4G' or '512M', got {value!r}")
        if self.index_key is not None and not self.index_key.strip():
            raise ParamsError(f"{where}.index_key: empty; use null to let the size decide")


# ------------------------------------------------------------------------------------- embed_corpus
class _FlattenThenPreprocess:
    """Composite transparency on white (as `pipeline.shards.decode_image` does), then the model transform.

    clip-retrieval hands the transform a lazily opened PIL image; open_clip's `_convert_to_rgb` would drop
    the alpha channel (transparent pixels keep whatever colour they store, often black), which is not what
    the rest of this project sees for the same sample. A class, not a closure, so DataLoader workers can
    pickle it.
    """

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, img):
        img.load()  # a corrupt image raises here; clip-retrieval's handler then skips the sample
        return self.preprocess(flatten_on_white(img))


def _load_for_all_clip(spec: str, use_jit: bool, device: str, clip_cache_path: str | None):
    """An all_clip loader: (model, preprocess, tokenizer) built by our one model factory."""
    from all_clip.open_clip import OpenClipWrapper

    from .models import create_model

    loaded = create_model(spec, device=device)
    # open_clip's create_model returns the model in train mode, and all_clip never calls eval():
    # BatchNorm (the EfficientNet tower) would use batch statistics and dropout would be live.
    loaded.model.eval()
    # OpenClipWrapper is what all_clip's own open_clip loader returns (autocast on GPU, fp32 on CPU).
    model = OpenClipWrapper(inner_model=loaded.model, device=device)
    return model, _FlattenThenPreprocess(loaded.preprocess), loaded.tokenizer


@contextlib.contextmanager
def _all_clip_uses_our_models():
    """Let clip-retrieval load `arf:SPEC` through `pipeline.models.create_model`, for the duration of a run.

    Why a loader instead of all_clip's `open_clip:NAME//path/ckpt.pt`: all_clip then calls
    `open_clip.create_model_and_transforms(NAME, pretrained=ckpt)` itself, which (1) uses OpenAI's mean/std
    for our local configs (our `preprocess_cfg`, e.g. mean/std 0.5 for arf-lite0-minilm, is applied only by
    `create_model`), (2) leaves the model in train mode (BatchNorm!), (3) cannot build the default model
    without a checkpoint (it looks the name up in open_clip's pretrained list) and (4) would skip our
    packaged image-tower weights. all_clip dispatches on prefixes in `all_clip.main._CLIP_REGISTRY`, its
    only loading hook; the catch-all "" prefix (OpenAI clip) is matched last, so ours goes first.
    all_clip caches loaded models with lru_cache (keyed by the spec string, so a retrained checkpoint at
    the same path would be served stale); the caches are cleared on entry and exit.
    """
    import all_clip.main as ac

    saved = _install_our_loader()
    try:
        yield
    finally:
        ac._CLIP_REGISTRY.clear()
        ac._CLIP_REGISTRY.update(saved)
        _clear_all_clip_caches()


def _install_our_loader() -> dict:
    """Put our loader first in all_clip's registry and drop its cached models; returns the registry
    as it was."""
    import all_clip.main as ac

    registry = ac._CLIP_REGISTRY
    saved = dict(registry)
    registry.clear()
    registry[ALL_CLIP_PREFIX] = _load_for_all_clip
    registry.update({k: v for k, v in saved.items() if k != ALL_CLIP_PREFIX})
    _clear_all_clip_caches()
    return saved


def _clear_all_clip_caches() -> None:
    import all_clip.main as ac

    ac.load_clip.cache_clear()
    ac.load_clip_without_warmup.cache_clear()


def _install_loader_in_worker(spec: str, config_folders: list[str]) -> str:
    """Run where a Spark task unpickles the model spec: our configs and all_clip loader, for this process
    (which runs many tasks: the model cache is dropped, as a checkpoint may change between runs)."""
    from .models import register_model_configs

    register_model_configs()
    for folder in config_folders:
        register_model_configs(Path(folder))
    _install_our_loader()
    return spec


class _SpecThatInstallsLoader(str):
    """The `clip_model` string handed to clip-retrieval's pyspark distributor.

    Spark runs each task in a fresh Python worker, where all_clip's registry holds only its own loaders
    (`_all_clip_uses_our_models` patches the driver's). The distributor pickles its worker arguments
    into every task, and the model spec is the one value of ours among them: unpickling this string
    registers our config folders (the driver's, so custom and test architectures work too) and our
    loader in the worker, then it reads as a plain string. all_clip has no plugin mechanism to use
    instead; Spark's `spark.python.worker.module` would be one, but only for sessions we configure.
    """

    def __new__(cls, spec: str, config_folders: list[str]):
        obj = super().__new__(cls, spec)
        obj.config_folders = config_folders
        return obj

    def __reduce__(self):
        return _install_loader_in_worker, (str(self), self.config_folders)


@contextlib.contextmanager
def _spark_session(master: str | None):
    """The active Spark session (spark-submit's), or a new one on `master` stopped on exit.

    Workers are started with this interpreter unless $PYSPARK_PYTHON names another, so that they import
    the same packages (`pipeline` included); on a cluster, that path must hold the same environment on
    every worker node.
    """
    try:
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession
    except ImportError:
        raise RuntimeError("embed_corpus.distribution: pyspark needs the pyspark package "
                           "(pip install 'pyspark>=3.5,<5') and Java 17") from None
    active = SparkSession.getActiveSession()
    spark = active or _start_spark(SparkSession, master)
    try:
        yield spark
    except PySparkException as e:  # its message is the JVM's and the worker's stack traces
        raise RuntimeError(f"embed_corpus: a Spark task failed: {_python_error_line(str(e))}") from None
    finally:
        if active is None:
            spark.stop()


def _start_spark(SparkSession, master: str | None):
    # pyspark reads the workers' interpreter from $PYSPARK_PYTHON only (else "python3" on PATH)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("arf-embed-corpus").config("spark.ui.enabled", "false")
    if master:
        builder = builder.master(master)
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # pyspark raises a bare PySparkRuntimeError when the JVM does not start
        raise RuntimeError(f"embed_corpus.distribution: pyspark could not start Spark on {master!r} "
                           f"(Java 17+ on PATH or JAVA_HOME?): {str(e).splitlines()[0]}") from None
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _python_error_line(text: str) -> str:
    """The last `module.Error: message` line of a Python traceback quoted inside `text`."""
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^[A-Za-z_][\w.]*: \S", ln)]
    return lines[-1] if lines else text.strip().splitlines()[0]


@contextlib.contextmanager
def _reap_children_on_error():
    """Stop the helper processes clip-retrieval started if the run fails.

    Its inference starts stats-logger processes (multiprocessing "spawn") and stops them only on success;
    after an exception they would keep polling and block interpreter exit. Only children started inside
    this block are touched, by their Process handle.
    """
    import multiprocessing

    before = set(multiprocessing.active_children())
    try:
        yield
    except BaseException:
        for p in set(multiprocessing.active_children()) - before:
            p.terminate()
            p.join(10)
        raise


def _brace_escape(s: str) -> str:
    return re.sub(r"([\\{},])", r"\\\1", s)


def _shard_pattern(urls: Sequence[str]) -> str:
    """One braceexpand pattern for a list of shard paths in one folder (clip-retrieval takes a string)."""
    from braceexpand import braceexpand

    if len(urls) == 1:
        pattern = _brace_escape(urls[0])
    else:
        root = os.path.dirname(urls[0])
        names = [os.path.basename(u) for u in urls]
        pattern = _brace_escape(root) + "/{" + ",".join(_brace_escape(n) for n in names) + "}"
    if list(braceexpand(pattern)) != list(urls):
        raise ValueError(f"cannot express the shard list as a braceexpand pattern: {pattern}")
    return pattern


def _wds_key(member: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the extension starts at the first dot of the file name."""
    d, base = os.path.split(member)
    stem, _, ext = base.partition(".")
    return (os.path.join(d, stem) if d else stem), ext


def shard_members(urls: Sequence[str]) -> tuple[dict[str, set[str]], list[str]]:
    """key -> member extensions for every sample of the shards (tar headers only), and unreadable shards."""
    members: dict[str, set[str]] = {}
    broken = []
    for url in urls:
        try:
            with tarfile.open(url) as tar:
                for m in tar:
                    if m.isfile():
                        key, ext = _wds_key(m.name)
                        members.setdefault(key, set()).add(ext)
        except (tarfile.TarError, OSError) as e:
            broken.append(f"{os.path.basename(url)}: {e}")
    return members, broken


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
                key, ext = _wds_key(m.name)
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


def _partition_files(folder: Path, prefix: str, ext: str) -> list[Path]:
    files = sorted(folder.glob(f"{prefix}_*.{ext}"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return files


def load_embeddings(emb_dir: str | os.PathLike, target: str = "image") -> np.ndarray:
    """All partitions of one modality as float32, in row order (the order of the metadata rows)."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {TARGETS}")
    sub = Path(emb_dir) / EMB_SUBDIR[target]
    files = _partition_files(sub, EMB_SUBDIR[target], "npy")
    if not files:
        raise FileNotFoundError(f"{sub}: no {EMB_SUBDIR[target]}_N.npy files")
    return np.concatenate([np.load(f).astype(np.float32) for f in files])


def _metadata_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    meta = folder / "metadata" if (folder / "metadata").is_dir() else folder
    files = _partition_files(meta, "metadata", "parquet")
    if not files:
        raise FileNotFoundError(f"{meta}: no metadata_N.parquet files")
    return files


def load_metadata(folder: str | os.PathLike):
    """clip-retrieval's metadata parquet partitions as one DataFrame (row i = embedding / index id i).
    The whole table: for small corpora and tests; the stages read columns and rows as they need them."""
    import pandas as pd

    return pd.concat([pd.read_parquet(f) for f in _metadata_files(folder)], ignore_index=True)


def metadata_row_counts(folder: str | os.PathLike) -> list[int]:
    """Rows per metadata partition, from the parquet footers (nothing else is read)."""
    import pyarrow.parquet as pq

    return [pq.ParquetFile(f).metadata.num_rows for f in _metadata_files(folder)]


def iter_metadata_column(folder: str | os.PathLike, column: str) -> Iterator[np.ndarray]:
    """One column, partition by partition (a million rows at most each, as clip-retrieval writes them)."""
    import pyarrow.parquet as pq

    for f in _metadata_files(folder):
        yield pq.read_table(f, columns=[column]).column(column).to_numpy(zero_copy_only=False)


def metadata_rows(folder: str | os.PathLike, rows: Sequence[int], columns: Sequence[str]) -> dict[str, list]:
    """`columns` of the given global rows (in the order given), reading only the partitions that hold
    them; a column a partition lacks reads as ""."""
    import pyarrow.parquet as pq

    files = _metadata_files(folder)
    counts = metadata_row_counts(folder)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rows = np.asarray(rows, dtype=np.int64)
    out = {c: [None] * len(rows) for c in columns}
    part_of = np.searchsorted(starts, rows, side="right") - 1
    for part in np.unique(part_of):
        where = np.flatnonzero(part_of == part)
        present = [c for c in columns if c in pq.ParquetFile(files[part]).schema_arrow.names]
        table = pq.read_table(files[part], columns=present).take(rows[where] - starts[part])
        for c in columns:
            values = table.column(c).to_pylist() if c in present else [""] * len(where)
            for i, v in zip(where, values):
                out[c][i] = v
    return out


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

    `model_spec` is a `pipeline.models` spec (`NAME`, `NAME:TAG`, `NAME:/path/ckpt.pt`); an architecture
    from a custom config folder must already be registered (`register_model_configs(folder)`).
    Bad samples (undecodable image, missing member) are skipped by clip-retrieval's reader; they are
    counted and named in the returned report (also written as `embed_report.json`). The output folder
    appears only when everything succeeded. `distribution="pyspark"` runs one Spark task per output
    partition (see `EmbedCorpusParams`); the output folder must then be on storage every worker writes to.
    """
    # (`import clip_retrieval.clip_inference.main as m` fails: the package rebinds `main` to the function)
    from clip_retrieval.clip_inference.main import main as clip_inference

    from .models import ModelSpec, portable_spec, register_model_configs, registered_config_folders

    register_model_configs()
    spec = ModelSpec.parse(model_spec)
    if spec.is_local_checkpoint:
        spec = ModelSpec(spec.name, str(Path(spec.pretrained).resolve()))
    info = read_shard_info(Path(corpus_dir).resolve())
    urls = info.urls
    if not urls:
        raise ValueError(f"{corpus_dir}: sizes.json lists no shards")
    image_key = _image_key(urls)
    n_expected = info.num_samples
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution {distribution!r}: expected one of {DISTRIBUTIONS}")
    clip_model = ALL_CLIP_PREFIX + str(spec)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    spark = _spark_session(spark_master) if distribution == "pyspark" else contextlib.nullcontext()
    with atomic_dir(out_dir) as tmp, _all_clip_uses_our_models(), _reap_children_on_error(), spark as session:
        # clip-retrieval gives partition i every n-th shard, one task each: more partitions than shards
        # would only add empty ones, and under Spark fewer than its cores would leave cores idle.
        wanted = partitions or max(math.ceil(n_expected / write_batch_size),
                                   session.sparkContext.defaultParallelism if session else 1)
        n_parts = max(1, min(len(urls), wanted))
        if session is not None:
            clip_model = _SpecThatInstallsLoader(clip_model, [str(f) for f in registered_config_folders()])
        clip_inference(
            input_dataset=_shard_pattern(urls),
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
        (n_img, dim), (n_txt, _) = _count_vectors(tmp / "img_emb", "img_emb"), _count_vectors(tmp / "text_emb", "text_emb")
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


# ---------------------------------------------------------------------------------------- build_index
def _count_vectors(sub: Path, prefix: str) -> tuple[int, int]:
    n, dim = 0, 0
    for f in _partition_files(sub, prefix, "npy"):
        arr = np.load(f, mmap_mode="r")
        n, dim = n + arr.shape[0], arr.shape[1]
    return n, dim


def build_index(
    emb_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    index_key: str | None = None,
    flat_below: int = 100_000,
    max_index_memory_usage: str = "4G",
    current_memory_available: str = "16G",
    nb_cores: int | None = None,
) -> dict[str, Any]:
    """Build `image.index` and `text.index` with autofaiss (inner product) and copy `metadata/` beside them.

    `index_key`: a faiss factory string used for both; None: "Flat" below `flat_below` vectors, else
    autofaiss's own choice under `max_index_memory_usage`. Returns (and writes as `index_report.json`)
    the key used and vector counts per modality.
    """
    import faiss
    from autofaiss import build_index as autofaiss_build_index

    emb_dir = Path(emb_dir)
    if not (emb_dir / "metadata").is_dir():
        raise FileNotFoundError(f"{emb_dir}/metadata: missing; expected embed_corpus output")
    report: dict[str, Any] = {"embeddings": str(emb_dir)}
    with atomic_dir(index_dir) as tmp:
        for target in TARGETS:
            sub = emb_dir / EMB_SUBDIR[target]
            n, dim = _count_vectors(sub, EMB_SUBDIR[target])
            if n == 0:
                raise FileNotFoundError(f"{sub}: no embeddings")
            if index_key is not None:
                key, chosen_by = index_key, "index_key param"
            elif n < flat_below:
                key, chosen_by = "Flat", f"{n} < flat_below={flat_below}"
            else:
                key, chosen_by = None, "autofaiss"
            t0 = time.perf_counter()
            index, _ = autofaiss_build_index(
                embeddings=str(sub),
                index_path=str(tmp / f"{target}.index"),
                index_infos_path=str(tmp / f"{target}.json"),
                index_key=key,
                metric_type="ip",
                max_index_memory_usage=max_index_memory_usage,
                current_memory_available=current_memory_available,
                nb_cores=nb_cores,
                verbose=logging.WARNING,
            )
            # autofaiss reports most failures by logging and returning None, not by raising
            if index is None or not (tmp / f"{target}.index").is_file():
                raise RuntimeError(f"autofaiss could not build the {target} index (key {key or 'auto'}, "
                                   f"{n} x {dim}); see its log above")
            infos_path = tmp / f"{target}.json"
            infos = json.loads(infos_path.read_text())
            infos["index_path"] = str(Path(index_dir).resolve() / f"{target}.index")  # not the temp folder
            write_json(infos_path, infos)
            if key is None:
                key = infos.get("index_key", "?")
            ntotal = faiss.read_index(str(tmp / f"{target}.index")).ntotal
            if ntotal != n:
                raise RuntimeError(f"{target}.index holds {ntotal} vectors, embeddings have {n}")
            report[target] = {"vectors": n, "dim": dim, "index_key": key, "chosen_by": chosen_by,
                              "seconds": round(time.perf_counter() - t0, 2)}
        shutil.copytree(emb_dir / "metadata", tmp / "metadata")
        write_json(tmp / INDEX_REPORT, report)
    return report


# ----------------------------------------------------------------------------------- retrieve_anchors
def load_prompts(prompts_npz: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Class prompt embeddings (C x D, L2-normalised) and class names from an .npz."""
    with np.load(prompts_npz, allow_pickle=False) as z:
        missing = {"embeddings", "classnames"} - set(z.files)
        if missing:
            raise KeyError(f"{prompts_npz}: missing array(s) {', '.join(sorted(missing))}")
        emb = np.asarray(z["embeddings"], dtype=np.float32)
        names = [str(c) for c in z["classnames"]]
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise ValueError(f"{prompts_npz}: embeddings {emb.shape} do not match {len(names)} classnames")
    # Names may repeat: CLIP's ImageNet list has 'missile' (657, 744) and 'sunglasses' (836, 837). A
    # class is its row; anchor records name it, so per-class statistics merge such twins.
    norms = np.linalg.norm(emb, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        bad = int(np.argmax(np.abs(norms - 1)))
        raise ValueError(f"{prompts_npz}: embeddings must be L2-normalised (class {names[bad]!r} has norm "
                         f"{norms[bad]:.4f})")
    return emb, names


def _assign(scores: np.ndarray, ids: np.ndarray, k: int, dedup: bool, excluded: np.ndarray):
    """Per class, its kept (row, score) pairs, best first; and whether each class saw all its candidates.

    With dedup, candidates are taken in global score order (ties: class order, then row): a row goes to
    the first class that reaches it, i.e. the class with the highest score among those that still have
    room, and the class that lost it takes its next candidate instead.
    """
    C = scores.shape[0]
    kept: list[list[tuple[int, float]]] = [[] for _ in range(C)]
    valid = (ids >= 0) & ~excluded[np.clip(ids, 0, None)]
    if not dedup:
        for c in range(C):
            sel = np.flatnonzero(valid[c])[:k]
            kept[c] = [(int(ids[c, j]), float(scores[c, j])) for j in sel]
        return kept
    cls, col = np.nonzero(valid)
    order = np.lexsort((ids[cls, col], cls, -scores[cls, col]))
    taken: set[int] = set()
    full = 0
    for i in order:
        c, j = cls[i], col[i]
        if len(kept[c]) >= k:
            continue
        row = int(ids[c, j])
        if row in taken:
            continue
        taken.add(row)
        kept[c].append((row, float(scores[c, j])))
        if len(kept[c]) == k:
            full += 1
            if full == C:
                break
    return kept


def retrieve_anchors(
    index_dir: str | os.PathLike,
    prompts_npz: str | os.PathLike,
    k_per_class: int,
    target: str = "image",
    dedup: bool = True,
    exclude_keys: Iterable[str] = (),
) -> list[dict]:
    """Top `k_per_class` corpus pairs per class by prompt-embedding similarity; records sorted by class, rank.

    `target="image"` searches the corpus image index, `"text"` the caption index. With `dedup`, a pair
    found for several classes is kept once, under the class where it scores highest, and the other
    classes take their next candidates, so each class keeps k as far as the corpus allows. Samples whose
    key is in `exclude_keys` are never returned. Records: key, caption, class, score (inner product =
    cosine), rank (1 = best within the class).
    """
    import faiss

    if target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    if not isinstance(k_per_class, int) or k_per_class <= 0:
        raise ValueError(f"k_per_class must be a positive integer, got {k_per_class!r}")
    index_dir = Path(index_dir)
    index = faiss.read_index(str(index_dir / f"{target}.index"))
    n_meta = sum(metadata_row_counts(index_dir))
    if n_meta != index.ntotal:
        raise RuntimeError(f"{index_dir}: {target}.index has {index.ntotal} vectors but metadata {n_meta} rows")
    queries, classnames = load_prompts(prompts_npz)
    if queries.shape[1] != index.d:
        raise ValueError(f"{prompts_npz}: embedding dim {queries.shape[1]} != index dim {index.d} "
                         "(prompts and corpus embedded with different models?)")
    excluded = np.zeros(n_meta, dtype=bool)
    if exclude_keys:
        unwanted, start = np.array(sorted(set(exclude_keys)), dtype=object), 0
        for keys in iter_metadata_column(index_dir, "image_path"):
            excluded[start:start + len(keys)] = np.isin(keys.astype(str).astype(object), unwanted)
            start += len(keys)
    n_avail = int((~excluded).sum())
    # Search deep enough that every class can still fill k after losing rows to other classes and to the
    # exclusion list; deepen and redo while a class came up short and has unseen candidates.
    depth = min(index.ntotal, k_per_class * (2 if dedup and len(classnames) > 1 else 1) + int(excluded.sum()))
    while True:
        scores, ids = index.search(np.ascontiguousarray(queries), depth)
        kept = _assign(scores, ids, k_per_class, dedup, excluded)
        short = [c for c in range(len(classnames)) if len(kept[c]) < k_per_class]
        if not short or depth >= index.ntotal:
            break
        depth = min(index.ntotal, depth * 2)
    rows = sorted({int(row) for c in range(len(classnames)) for row, _ in kept[c]})
    meta = metadata_rows(index_dir, rows, ["image_path", "caption"])  # the retrieved rows only
    at = {row: i for i, row in enumerate(rows)}
    records = []
    for c, name in enumerate(classnames):
        for rank, (row, score) in enumerate(kept[c], start=1):
            i = at[int(row)]
            records.append({"key": str(meta["image_path"][i]), "caption": str(meta["caption"][i]), "class": name,
                            "score": round(score, 6), "rank": rank})
    if short:
        log.warning("retrieve_anchors: %d class(es) got fewer than k=%d (corpus has %d usable samples)",
                    len(short), k_per_class, n_avail)
    return records


def write_anchors(records: Sequence[dict], path: str | os.PathLike) -> None:
    """Anchors as JSON lines, written atomically."""
    with atomic_file(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_anchors(path: str | os.PathLike) -> list[dict]:
    """Anchor records; a malformed line fails with one line naming the file and line number."""
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                missing = [k for k in ("key", "caption", "class", "score") if k not in r]
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: bad anchor record ({e})") from None
            if missing:
                raise ValueError(f"{path}:{i}: bad anchor record (missing {', '.join(missing)})")
            out.append(r)
    return out


def anchor_stats(records: Sequence[dict], classnames: Sequence[str] | None = None) -> dict[str, dict]:
    """Per class: count and score min / mean / max (classes with no anchor included when named)."""
    by_class: dict[str, list[float]] = {c: [] for c in (classnames or ())}
    for r in records:
        by_class.setdefault(r["class"], []).append(r["score"])
    out = {}
    for c, s in by_class.items():
        out[c] = {"count": len(s), "score_min": min(s) if s else None,
                  "score_mean": round(float(np.mean(s)), 6) if s else None, "score_max": max(s) if s else None}
    return out


def format_anchor_report(stats: dict[str, dict], k: int) -> str:
    lines = [f"{'class':<24} {'n':>4} {'min':>7} {'mean':>7} {'max':>7}"]
    for c, s in stats.items():
        if s["count"]:
            lines.append(f"{c[:24]:<24} {s['count']:>4} {s['score_min']:>7.3f} {s['score_mean']:>7.3f} "
                         f"{s['score_max']:>7.3f}")
        else:
            lines.append(f"{c[:24]:<24} {0:>4}       -       -       -")
    short = [c for c, s in stats.items() if s["count"] < k]
    lines.append(f"{sum(s['count'] for s in stats.values())} anchors over {len(stats)} classes"
                 + (f"; {len(short)} class(es) below k={k}: {', '.join(short[:5])}" if short else ""))
    return "\n".join(lines)
