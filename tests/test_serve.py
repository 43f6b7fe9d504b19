"""`arf serve`: clip-retrieval's back end on a tiny index, in its own process, queried over HTTP on loopback."""
from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from helpers import (
    TEST_MODEL_CONFIGS,
    encode_texts,
    make_corpus_shards,
    make_tiny_checkpoint,
    write_corpus_embeddings,
)
from PIL import Image

from pipeline.io.embeddings import load_embeddings, load_metadata
from pipeline.io.shards import decode_image
from pipeline.stages.retrieve import build_index

ROOT = Path(__file__).resolve().parents[1]
CORRUPT, RGBA = 3, 5
FP16_ATOL = 2e-3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A 20-sample corpus (one corrupt PNG, one transparent) in 3 shards, embedded with a tiny model and
    indexed by the retrieve stage's `build_index`, served by `arf serve --port 0` in a subprocess."""
    tmp = tmp_path_factory.mktemp("serve")
    name, ckpt = make_tiny_checkpoint(tmp)
    (tmp / "model.json").write_text(json.dumps({"name": name, "checkpoint": ckpt.name}))
    corpus, samples = make_corpus_shards(tmp / "corpus", 20, corrupt=(CORRUPT,), rgba=(RGBA,))
    write_corpus_embeddings(tmp / "emb", f"{name}:{ckpt}", samples)
    build_index(tmp / "emb", tmp / "index")
    # the server's working folder holds a file named after each sample key: clip_back would inline
    # such a file into the results if the key stayed its `image_path`
    cwd = tmp / "cwd"
    cwd.mkdir()
    for s in samples:
        (cwd / s.key).write_bytes(s.png)
    env = dict(os.environ, ARF_MODEL_CONFIGS=str(TEST_MODEL_CONFIGS),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    with open(tmp / "server.err", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", "from pipeline.cli import run; run()", "serve",
                                 "--index", str(tmp / "index"), "--corpus", str(corpus), "--base", str(tmp),
                                 "--port", "0"],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=cwd)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)], daemon=True).start()
    ready = None
    while ready is None:
        line = lines.get(timeout=120)
        assert line is not None, f"arf serve exited with {proc.wait()}: {(tmp / 'server.err').read_text()[-3000:]}"
        ready = line if line.startswith("serving ") else None
    url = re.search(r" on (http://\S+?)/ ", ready).group(1)
    yield {"proc": proc, "url": url, "ready": ready, "tmp": tmp, "corpus": corpus, "samples": samples,
           "spec": f"{name}:{ckpt}", "meta": load_metadata(tmp / "emb")}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, whatever $http_proxy says


def post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with HTTP.open(req, timeout=60) as r:
        return json.load(r)


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with HTTP.open(url, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_listens_on_loopback_only(server):
    host, port = server["url"].removeprefix("http://").split(":")
    assert host == "127.0.0.1"
    assert server["ready"].startswith(f"serving {server['tmp'] / 'index'} (19 samples) as index 'corpus' on ")
    with pytest.raises(ConnectionRefusedError):  # another loopback address: bound to 127.0.0.1, not 0.0.0.0
        socket.create_connection(("127.0.0.2", int(port)), timeout=5)
    assert json.loads(get(server["url"] + "/indices-list")[2]) == ["corpus"]
    assert json.loads(get(server["url"] + "/config.json")[2]) == {
        "defaultBackend": server["url"] + "/", "defaultIndex": "corpus", "urlColumn": "url"}


def test_text_query_returns_the_nearest_samples(server):
    url, samples, meta = server["url"], server["samples"], server["meta"]
    # a caption as the query, against the caption index: that sample first, at cosine 1
    target = samples[7]
    hits = post(url + "/knn-service", {"text": target.caption, "modality": "text", "num_images": 3,
                                       "indice_name": "corpus"})
    assert len(hits) == 3
    assert (hits[0]["key"], hits[0]["caption"]) == (target.key, target.caption)
    assert hits[0]["similarity"] == pytest.approx(1.0, abs=FP16_ATOL)
    # against the image index: the order of the tiny model's own cosines, computed here
    query = "a blue circle pattern"
    scores = load_embeddings(server["tmp"] / "emb", "image") @ encode_texts(server["spec"], [query])[0]
    best = np.argsort(-scores)[:5]
    hits = post(url + "/knn-service", {"text": query, "modality": "image", "num_images": 5, "indice_name": "corpus"})
    assert [h["id"] for h in hits] == best.tolist()
    assert [h["key"] for h in hits] == meta["image_path"][best].tolist()
    assert [h["caption"] for h in hits] == meta["caption"][best].tolist()
    assert [h["similarity"] for h in hits] == pytest.approx(scores[best].tolist(), abs=1e-4)
    for h in hits:
        assert "image_path" not in h and "image" not in h
        assert h["url"] == f"{url}/image/{quote(h['key'], safe='')}"
        assert (h["style"], h["licence"]) == (meta["style"][h["id"]], meta["licence"][h["id"]])
    # clip-front's later pages come from /metadata, with the same columns
    rows = post(url + "/metadata", {"ids": best[:2].tolist(), "indice_name": "corpus"})
    assert [r["metadata"]["url"] for r in rows] == [h["url"] for h in hits[:2]]


def test_image_route_serves_shard_images_and_nothing_else(server):
    url, samples, corpus = server["url"], server["samples"], server["corpus"]
    decoded = {s.key: np.asarray(decode_image(s.png), dtype=np.float32) for s in samples if not s.corrupt}
    for s in (samples[0], samples[RGBA], samples[-1]):  # the first, a transparent one, one in the last shard
        status, ctype, data = get(f"{url}/image/{s.key}")
        assert (status, ctype) == (200, "image/jpeg")
        img = Image.open(io.BytesIO(data))
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (48, 48))
        # JPEG is lossy: the nearest of the corpus images (composited on white) is this sample's
        px = np.asarray(img, dtype=np.float32)
        assert min(decoded, key=lambda k: np.abs(decoded[k] - px).mean()) == s.key
    assert np.asarray(Image.open(io.BytesIO(get(f"{url}/image/{samples[RGBA].key}")[2])))[0, 0].min() > 245
    assert get(f"{url}/image/{samples[CORRUPT].key}")[0] == 500  # in the shard, but undecodable
    escapes = ["nope", samples[0].key + ".png", "../../../../../../etc/passwd", quote("../../etc/passwd", safe=""),
               quote(str(corpus / "00000.tar"), safe=""), "00000.tar", "sizes.json", quote("/etc/passwd", safe="")]
    for key in escapes:
        assert get(f"{url}/image/{key}")[0] == 404, key


def test_sigterm_stops_the_server(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    port = int(server["url"].rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
