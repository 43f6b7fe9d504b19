"""Glue that makes clip-retrieval (all_clip) build models through `pipeline.core.models.create_model`,
in this process and in Spark workers.

clip-retrieval's inference loads its model by a spec string through all_clip's loader registry. Our
architectures are open_clip configs registered per process, so `all_clip_uses_our_models()` puts our
loader first under the `arf:` prefix; under pyspark the spec string itself (`SpecThatInstallsLoader`,
a `str` subclass) installs the loader and our model configs when a worker unpickles it.
"""
from __future__ import annotations

import contextlib
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from pipeline.io.shards import flatten_on_white

# The all_clip loader prefix under which `embed_corpus` makes clip-retrieval load models through
# `pipeline.core.models.create_model` (see `all_clip_uses_our_models`).
ALL_CLIP_PREFIX = "arf:"
# Caption embeddings `embed_corpus` remembers to skip repeated captions: the default corpus needs 5,724;
# a CC3M-scale corpus, whose captions barely repeat, stops adding at this many (~64 MB at 256 dims).
_TEXT_MEMO_ROWS = 1 << 16


class _FlattenThenPreprocess:
    """Composite transparency on white (as `pipeline.io.shards.decode_image` does), then the model transform.

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
    import torch

    from pipeline.core.encode import TEXT_CALL_COST_TOKENS, channels_last, id_length_buckets, in_text_order
    from pipeline.core.models import TrimmedTokenizer, create_model, import_open_clip

    import_open_clip()  # before all_clip imports it
    from all_clip.open_clip import OpenClipWrapper

    class TrimmingWrapper(OpenClipWrapper):
        """clip-retrieval tokenizes text by text and stacks the ids in its DataLoader, so each needs
        the full context: a batch goes through the tower in length buckets, here, instead. A caption
        already encoded in this run is not encoded again (the default corpus's 10,322 captions are
        5,724 texts: an emoji's four styles share one), up to `_TEXT_MEMO_ROWS` remembered."""

        memo: dict = {}  # a class per loaded model, so one memo per model

        def encode_text(self, text):
            keys = [row.tobytes() for row in text.cpu().numpy()]
            new = {k: i for i, k in enumerate(keys) if k not in self.memo}  # each new text's row
            fresh = {}
            if new:
                buckets = id_length_buckets(text[list(new.values())], tokenizer.pad_id,
                                            TEXT_CALL_COST_TOKENS.get(text.device.type))
                emb = in_text_order([(group, super(TrimmingWrapper, self).encode_text(ids)) for group, ids in buckets])
                fresh = dict(zip(new, emb))
                if len(self.memo) < _TEXT_MEMO_ROWS:
                    self.memo.update(fresh)
            return torch.stack([fresh[k] if k in fresh else self.memo[k] for k in keys])

    loaded = create_model(spec, device=device)
    # open_clip's create_model returns the model in train mode, and all_clip never calls eval():
    # BatchNorm (the EfficientNet tower) would use batch statistics and dropout would be live.
    loaded.model.eval()
    channels_last(loaded.model)  # the batches stay NCHW; oneDNN follows the weights' format
    # OpenClipWrapper is what all_clip's own open_clip loader returns (autocast on GPU, fp32 on CPU).
    tokenizer = loaded.tokenizer
    if isinstance(tokenizer, TrimmedTokenizer):
        model = TrimmingWrapper(inner_model=loaded.model, device=device)
        return model, _FlattenThenPreprocess(loaded.preprocess), tokenizer.tokenizer
    model = OpenClipWrapper(inner_model=loaded.model, device=device)
    return model, _FlattenThenPreprocess(loaded.preprocess), tokenizer


@contextlib.contextmanager
def all_clip_uses_our_models():
    """Let clip-retrieval load `arf:SPEC` through `pipeline.core.models.create_model`, for the duration of a run.

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
    from pipeline.core.models import register_model_configs

    register_model_configs()
    for folder in config_folders:
        register_model_configs(Path(folder))
    _install_our_loader()
    _loggers_as_threads([])  # for good: the worker process is Spark's, and its tasks all embed
    return spec


class SpecThatInstallsLoader(str):
    """The `clip_model` string handed to clip-retrieval's pyspark distributor.

    Spark runs each task in a fresh Python worker, where all_clip's registry holds only its own loaders
    (`all_clip_uses_our_models` patches the driver's). The distributor pickles its worker arguments
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
def spark_session(master: str | None):
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


class _ClosableQueue(queue.Queue):
    """The queue the loggers talk through: `end()` closes it, as it would a multiprocessing queue."""

    def close(self) -> None:
        pass


@contextlib.contextmanager
def stats_loggers_in_threads():
    """clip-retrieval's stats loggers run as threads of this process, for the duration of a run.

    Its inference starts a `LoggerReader` per run and a `LoggerWriter` per output partition, each as a
    spawned Python process whose only work is to write and sum timing JSON under stats/. A spawned
    process imports the clip_retrieval package again, whose __init__ imports its web back-end and its
    indexer too: ~5 s of CPU each on 2 cores, taken from the inference, and a partition does not end
    before its writer has started. On a small corpus that was most of the run (a 3-partition test
    corpus: 22 s -> 0.8 s). As threads, the loggers run their own loops unchanged on a queue.Queue.
    A run that fails never ends its loggers: they are ended on the way out, so no thread is left
    waiting. Spark's Python workers get the same threads (`_install_loader_in_worker`).
    """
    started: list[tuple[threading.Thread, queue.Queue, object]] = []
    restore = _loggers_as_threads(started)
    try:
        yield
    finally:
        restore()
        for thread, q, end_sentinel in started:
            if thread.is_alive():
                q.put(end_sentinel)
                thread.join(10)


def _loggers_as_threads(started: list) -> Callable[[], None]:
    """Make clip-retrieval's LoggerWriter and LoggerReader start a daemon thread instead of a process
    (each thread, its queue and its end sentinel are appended to `started`); returns what undoes it."""
    from clip_retrieval.clip_inference.logger import LoggerReader, LoggerWriter

    def start_writer(self):
        self.queue = _ClosableQueue()
        self.updater_process = threading.Thread(target=self.updater, name="clip-retrieval stats writer", daemon=True)
        started.append((self.updater_process, self.queue, None))
        self.updater_process.start()

    def start_reader(self):
        self.queue = _ClosableQueue()
        self.start_time = time.perf_counter()
        self.reader_process = threading.Thread(target=self.reader, name="clip-retrieval stats reader", daemon=True)
        started.append((self.reader_process, self.queue, "end"))
        self.reader_process.start()

    saved = LoggerWriter.start, LoggerReader.start
    LoggerWriter.start, LoggerReader.start = start_writer, start_reader

    def restore() -> None:
        LoggerWriter.start, LoggerReader.start = saved

    return restore
