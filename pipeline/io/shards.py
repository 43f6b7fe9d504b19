"""WebDataset shard folders in the img2dataset / open_clip convention.

A shard folder holds `{00000..N}.tar` and a `sizes.json` (shard file name -> sample count), which
open_clip reads for sample counts. Samples are dicts of `KEY.ext -> bytes`, as webdataset writes them.

Reading goes through webdataset with a log-and-continue handler: one corrupt member is skipped,
counted and reported, never fatal (the open_clip data path does the same).
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import webdataset as wds
from PIL import Image

from pipeline.io.atomic import atomic_dir, read_json

log = logging.getLogger(__name__)


IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class ShardInfo:
    """What a shard folder holds, read from its `sizes.json`."""

    root: Path
    sizes: dict[str, int]

    @property
    def urls(self) -> list[str]:
        return [str(self.root / name) for name in sorted(self.sizes)]

    @property
    def num_samples(self) -> int:
        return sum(self.sizes.values())


def read_shard_info(root: str | os.PathLike) -> ShardInfo:
    root = Path(root)
    sizes = read_json(root / "sizes.json", "a WebDataset shard folder with sizes.json")
    missing = [n for n in sizes if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{root / missing[0]}: listed in sizes.json but missing")
    return ShardInfo(root=root, sizes=sizes)


def read_corpus_info(root: str | os.PathLike, needed_by: str) -> ShardInfo:
    """A corpus shard folder. build_data writes an empty one when the params name no corpus
    (`build_data.local.corpus: null`), so the stage that needs pairs stops saying which key to set."""
    info = read_shard_info(root)
    if not info.sizes:
        raise ValueError(f"{root}: no corpus pairs, which {needed_by} needs: set build_data.local.corpus to an "
                         "img2dataset output folder ({00000..}.tar with .jpg/.txt)")
    return info


def write_shards(root: str | os.PathLike, samples: Iterable[dict], max_per_shard: int = 1000) -> ShardInfo:
    """Write samples (each with `__key__` and `ext -> bytes|str` members) atomically to `root`."""
    root = Path(root)
    with atomic_dir(root) as tmp:
        sizes: dict[str, int] = {}
        pattern = str(tmp / "%05d.tar")
        with wds.ShardWriter(pattern, maxcount=max_per_shard, verbose=0, mtime=0) as sink:  # reproducible tars
            for sample in samples:
                sink.write(sample)
                name = os.path.basename(sink.fname)
                sizes[name] = sizes.get(name, 0) + 1
        (tmp / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    return ShardInfo(root=root, sizes=sizes)


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass
class SkipCounter:
    """A webdataset handler that logs and counts bad samples instead of failing."""

    skipped: int = 0
    examples: list[str] = field(default_factory=list)

    def __call__(self, exn: Exception) -> bool:
        self.skipped += 1
        if len(self.examples) < 5:
            self.examples.append(repr(exn)[:200])
        log.warning("skipping bad sample: %r", exn)
        return True

    def report(self, what: str) -> str | None:
        if not self.skipped:
            return None
        return f"{what}: skipped {self.skipped} bad sample(s), e.g. {self.examples[0]}"


# Decoded pixels per image, checked from the header before decoding: a 0.2 MB PNG of 13000 x 13000
# costs ~800 MB and seconds to decode. 64 MP is above any ImageNet, CC3M or DomainNet image; PIL's
# own bomb limit only warns below 179 MP.
MAX_PIXELS = 64_000_000


def decode_image(data: bytes, key: str = "?") -> Image.Image:
    """Decode image bytes to RGB, composited on white; raises ValueError naming the key if corrupt or
    over MAX_PIXELS (callers skip and count such samples)."""
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types for a corrupt file
        raise ValueError(f"sample {key}: undecodable image ({e})") from e
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"sample {key}: {img.width}x{img.height} px is over the {MAX_PIXELS:,} pixel cap")
    try:
        img.load()
    except Exception as e:
        raise ValueError(f"sample {key}: undecodable image ({e})") from e
    return flatten_on_white(img)


def flatten_on_white(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (a plain RGB convert keeps hidden colours)."""
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def every_shard(urls):
    """webdataset nodesplitter that keeps every shard: its default refuses to run under torchrun, and
    the callers here either want every shard on every rank (evaluation, validation, the exact
    `sample` split) or have picked this rank's shards themselves."""
    yield from urls


def iter_samples(root: str | os.PathLike, skips: SkipCounter | None = None, urls: list[str] | None = None) -> Iterator[dict]:
    """Raw samples (key -> bytes) of a shard folder (or of some of its shards), in order; bad tar
    members are skipped and counted."""
    urls = urls if urls is not None else read_shard_info(root).urls
    handler = skips if skips is not None else SkipCounter()
    ds = wds.WebDataset(urls, shardshuffle=False, handler=handler, empty_check=False, nodesplitter=every_shard)
    yield from ds


def sample_image_bytes(sample: dict) -> tuple[str, bytes]:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    raise KeyError(f"sample {sample.get('__key__')}: no image member (looked for {IMAGE_EXTS})")


def iter_shard_images(root: str | os.PathLike, skips: SkipCounter | None = None, urls: list[str] | None = None,
                      part: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, "Image", dict]]:
    """(key, RGB image, sample) for each decodable sample; undecodable ones are skipped and counted.

    `part=(i, n)` keeps every n-th sample from the i-th, before decoding (one rank's share), and
    `sample["__index__"]` is the sample's position in the whole stream.
    """
    skips = skips if skips is not None else SkipCounter()
    rank, world = part
    for index, sample in enumerate(iter_samples(root, skips, urls)):
        if index % world != rank:
            continue
        sample["__index__"] = index
        key = sample["__key__"]
        try:
            _, data = sample_image_bytes(sample)
            image = decode_image(data, key)
        except (KeyError, ValueError) as e:
            skips(e)
            continue
        yield key, image, sample


def _brace_escape(s: str) -> str:
    return re.sub(r"([\\{},])", r"\\\1", s)


def shard_pattern(urls: Sequence[str]) -> str:
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


def wds_key(member: str) -> tuple[str, str]:
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
                        key, ext = wds_key(m.name)
                        members.setdefault(key, set()).add(ext)
        except (tarfile.TarError, OSError) as e:
            broken.append(f"{os.path.basename(url)}: {e}")
    return members, broken
