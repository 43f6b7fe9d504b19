"""`arf serve`: clip-retrieval's back end on the corpus index, with our model, offline, on loopback.

`clip-retrieval back` cannot serve the index as installed: it loads the model by name through all_clip's
own loaders, in a process where our open_clip configs are not registered. `serve` builds the same
service from clip_back's own parts (`load_clip_index`, `KnnService`, `MetadataService`, `IndicesList`,
clip-front's static pages) inside `all_clip_uses_our_models`, and binds where it is told (clip_back
always binds 0.0.0.0). The index's metadata holds WebDataset sample keys where clip-front expects image
paths or URLs, so every result carries `url`, a link to `GET /image/KEY`, which returns the sample's
image as JPEG read straight out of the corpus shards.
"""
from __future__ import annotations

import io
import logging
import os
import signal
import tarfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from pipeline.core.errors import ModelNotAvailable
from pipeline.io.clip_retrieval import ALL_CLIP_PREFIX, all_clip_uses_our_models
from pipeline.io.embeddings import iter_metadata_column, metadata_row_counts
from pipeline.io.shards import IMAGE_EXTS, decode_image, read_shard_info, wds_key

log = logging.getLogger(__name__)


INDEX_NAME = "corpus"  # the `indice_name` of /knn-service requests


IMAGE_ROUTE = "image"


# clip_back's options, set so that nothing is downloaded and nothing is written into the index folder
# (a DVC output). Its own defaults would fetch M-CLIP from the Hugging Face hub (enable_mclip_option)
# and the aesthetic embeddings from GitHub (provide_aesthetic_embeddings); the safety model and the
# violence detector are downloaded too when asked for. hdf5 and the IVF reordering write new files
# beside the index; arrow expects metadata the retrieve stage does not write.
OFFLINE_CLIP_OPTIONS = {
    "enable_mclip_option": False,
    "provide_aesthetic_embeddings": False,
    "provide_safety_model": False,
    "provide_violence_detector": False,
    "enable_hdf5": False,
    "reorder_metadata_by_ivf_index": False,
    "use_arrow": False,
    "enable_faiss_memory_mapping": False,
    "use_jit": False,
}


class ShardImages:
    """The image of each sample key of a WebDataset folder, read from its shard at the offset its tar
    header gives: nothing is extracted, and a key is only ever looked up, never used as a path."""

    def __init__(self, corpus_dir: str | os.PathLike):
        info = read_shard_info(corpus_dir)
        root = os.path.normpath(os.path.abspath(info.root))
        self.shards: list[str] = []
        self.where: dict[str, tuple[int, int, int, str]] = {}  # key -> (shard, offset, size, extension)
        for url in info.urls:
            path = os.path.normpath(os.path.abspath(url))
            # sizes.json names the shards; checked by name, not resolved, as DVC may link them into its cache
            if os.path.dirname(path) != root:
                raise ValueError(f"{corpus_dir}/sizes.json: shard {url} is not a file of the corpus folder")
            self.shards.append(path)
            # "r:": offsets into a compressed tar would not be offsets into the file
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    key, ext = wds_key(m.name)
                    if m.isfile() and ext in IMAGE_EXTS:
                        self.where.setdefault(key, (len(self.shards) - 1, m.offset_data, m.size, ext))

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def jpeg(self, key: str) -> bytes | None:
        """The sample's image as JPEG (a stored JPEG as is; others composited on white, as the model
        sees them); None for a key the corpus does not hold. Raises ValueError if it does not decode."""
        if key not in self.where:
            return None
        shard, offset, size, ext = self.where[key]
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if ext in ("jpg", "jpeg"):
            return data
        buf = io.BytesIO()
        decode_image(data, key).save(buf, format="JPEG", quality=90)
        return buf.getvalue()


class KeysAsImageUrls:
    """clip_back's metadata provider, with each row's sample key as `key` and a link to its image as
    `url` (the column clip-front shows) in place of `image_path`.

    clip_back opens `image_path` as a file when one of that name exists (relative to the server's
    working folder) and inlines it; a sample key must never be read as a path.
    """

    def __init__(self, provider):
        self.provider = provider

    def get(self, ids, cols=None):
        from flask import request

        rows = self.provider.get(ids, cols)
        for row in rows:
            key = row.pop("image_path", None)
            if key is not None:
                row["key"] = key
                row["url"] = f"{request.host_url}{IMAGE_ROUTE}/{quote(key, safe='')}"
        return rows


def load_index(index_dir: str | os.PathLike, model_spec: str):
    """clip_back's resource for the index folder (faiss indices, metadata, model) with our model;
    call inside `all_clip_uses_our_models()`."""
    import torch
    from clip_retrieval.clip_back import ClipOptions, load_clip_index

    index_dir = Path(index_dir)
    for name in ("image.index", "text.index", "metadata"):
        if not (index_dir / name).exists():
            raise FileNotFoundError(f"{index_dir / name}: missing; expected the retrieve stage's index folder")
    try:
        resource = load_clip_index(ClipOptions(
            indice_folder=str(index_dir), clip_model=ALL_CLIP_PREFIX + model_spec,
            columns_to_return=None,  # the parquet provider reads None as every column
            **OFFLINE_CLIP_OPTIONS))
    except RuntimeError as e:  # faiss's reader on a truncated or foreign index file
        if isinstance(e, ModelNotAvailable):
            raise
        raise ValueError(f"{index_dir}: an index file is not a readable faiss index "
                         f"({str(e).strip().splitlines()[-1][:160]})") from None
    n_meta = sum(metadata_row_counts(index_dir))
    for name, index in (("image", resource.image_index), ("text", resource.text_index)):
        if index.ntotal != n_meta:
            raise ValueError(f"{index_dir}: {name}.index has {index.ntotal} vectors but metadata {n_meta} rows")
    with torch.no_grad():
        dim = resource.model.encode_text(resource.tokenizer(["a"]).to(resource.device)).shape[-1]
    if dim != resource.image_index.d:
        raise ValueError(f"model {model_spec}: embedding dim {dim} != index dim {resource.image_index.d} "
                         f"({index_dir} was built with another model?)")
    resource.metadata_provider = KeysAsImageUrls(resource.metadata_provider)
    return resource


def make_app(resource, images: ShardImages):
    """clip_back's Flask app (clip-front at /, /indices-list, /knn-service, /metadata, /metrics-summary)
    for one index, plus `GET /image/KEY`."""
    from clip_retrieval.clip_back import (
        IndicesList,
        KnnService,
        MetadataService,
        MetricsSummary,
    )
    from clip_retrieval.clip_front import add_static_endpoints
    from flask import Flask, Response, abort
    from flask_cors import CORS
    from flask_restful import Api

    app = Flask(__name__)
    add_static_endpoints(app, default_index=INDEX_NAME, url_column="url")
    resources = {INDEX_NAME: resource}
    api = Api(app)
    api.add_resource(MetricsSummary, "/metrics-summary")
    api.add_resource(IndicesList, "/indices-list", resource_class_kwargs={"indices": [INDEX_NAME]})
    api.add_resource(MetadataService, "/metadata", resource_class_kwargs={"clip_resources": resources})
    api.add_resource(KnnService, "/knn-service", resource_class_kwargs={"clip_resources": resources})

    # <path:...>: a WebDataset key holds "/" when its tar member sits in a sub-folder
    @app.route(f"/{IMAGE_ROUTE}/<path:key>")
    def image(key: str):
        try:
            data = images.jpeg(key)
        except ValueError as e:
            log.warning("%s", e)
            abort(500)
        if data is None:
            abort(404)
        return Response(data, mimetype="image/jpeg")

    CORS(app)
    return app


def serve(index_dir: str | os.PathLike, corpus_dir: str | os.PathLike, model_spec: str,
          ready: Callable[[str], None], host: str = "127.0.0.1", port: int = 1234) -> None:
    """Serve the index until interrupted (Ctrl-C or SIGTERM); `port=0` picks a free port. `ready` gets
    one line naming the address once the server listens."""
    from werkzeug.serving import make_server

    images = ShardImages(corpus_dir)
    n_meta, unknown = 0, 0
    for keys in iter_metadata_column(index_dir, "image_path"):
        n_meta += len(keys)
        unknown += sum(str(k) not in images for k in keys)
    if n_meta and unknown == n_meta:
        raise ValueError(f"{corpus_dir} holds none of the samples of {index_dir}; "
                         "expected the corpus it was built from")
    if unknown:
        log.warning("serve: %d of %d indexed samples have no image in %s (/image answers 404)",
                    unknown, n_meta, corpus_dir)
    with all_clip_uses_our_models():
        resource = load_index(index_dir, model_spec)
        server = make_server(host, port, make_app(resource, images), threaded=True)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a clean stop for service managers too
        url = f"http://{host}:{server.server_port}"
        ready(f"serving {index_dir} ({n_meta} samples) as index {INDEX_NAME!r} on {url}/ "
              f"(POST {url}/knn-service, GET {url}/{IMAGE_ROUTE}/KEY)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
