"""Labelled image sets on local disk, in the layouts people already have.

A layout reader turns a folder (or a CSV) into a `LabelledSet`: image samples with integer labels,
the class names those labels index and, for sets scored through another label space (ImageNet-A and
-R: 200 of ImageNet's 1000 classes; ObjectNet: 113 classes, each one or more ImageNet classes), a
`Projection`: eval class i scores max(logits[:, projection.map[i]]) of a classifier over
`projection.classnames`, as wise-ft and the robust-finetuning papers score them.

Readers register by name (`@register_layout`) and take the keys of their entry in params.yaml as
keyword arguments, so an unknown key is a one-line error naming it. Class names and label orders come
from the packages and files that ship them (timm's ImageNet synset list, open_clip's CLIP class
names, the dataset's own split and mapping files), never re-typed here.

Sets are read lazily: `samples()` yields one encoded image at a time, so ImageNet's 1.28M training
images never sit in memory as pixels; only the (path, label) list does (about 150 MB for ImageNet).
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pipeline.data.templates import template_set

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class LayoutError(ValueError):
    """A dataset folder does not have the layout its entry names; the message names the path."""


@dataclass(frozen=True)
class Projection:
    classnames: list[str]  # the classifier's classes (ImageNet's 1000)
    map: list[list[int]]  # eval class -> the classifier classes it takes the max over

    def to_json(self) -> dict:
        return {"classnames": self.classnames, "map": self.map}


@dataclass
class Sample:
    key: str
    ext: str  # webdataset member extension of the image bytes
    read: Callable[[], bytes]
    label: int
    caption: str | None = None


@dataclass
class LabelledSet:
    name: str
    root: Path
    classnames: list[str]
    samples: Callable[[], Iterator[Sample]]
    size: int | None = None
    templates: list[str] | None = None  # None: the preset's templates
    projection: Projection | None = None
    notes: list[str] = field(default_factory=list)


_LAYOUTS: dict[str, Callable[..., LabelledSet]] = {}


def register_layout(name: str):
    def deco(fn):
        _LAYOUTS[name] = fn
        return fn
    return deco


def list_layouts() -> list[str]:
    return sorted(_LAYOUTS)


def layout_doc(name: str) -> str:
    return (inspect.getdoc(_LAYOUTS[name]) or "").splitlines()[0]


def read_layout(name: str, spec: dict, root: Path | None = None) -> LabelledSet:
    """Build set `name` from its params entry `{layout: ..., path: ..., ...}`; relative paths are under root.
    Every layout also takes `templates:` (see `templates.template_set`), which replaces the set's own."""
    spec = dict(spec)
    templates = template_set(spec.pop("templates"), f"{name}.templates") if "templates" in spec else None
    layout = spec.pop("layout", None)
    if layout not in _LAYOUTS:
        raise LayoutError(f"{name}.layout: {layout!r} is not one of {', '.join(list_layouts())}")
    fn = _LAYOUTS[layout]
    accepted = set(inspect.signature(fn).parameters) - {"name", "path"}
    if "path" not in spec:
        raise LayoutError(f"{name}.path: missing (layout {layout}: {layout_doc(layout)})")
    unknown = sorted(set(spec) - accepted - {"path"})
    if unknown:
        raise LayoutError(f"{name}.{unknown[0]}: unknown key for layout {layout} (known: path, templates, {', '.join(sorted(accepted))})")
    path = Path(os.path.expanduser(str(spec.pop("path"))))
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    if not path.exists():
        raise LayoutError(f"{path}: not found; {name} expects layout {layout}: {layout_doc(layout)}")
    ls = fn(name=name, path=path, **spec)
    if templates is not None:
        ls.templates = templates
    return ls


def _key(name: str, rel: str) -> str:
    """A webdataset key (no dots: webdataset splits a member name at the first one) unique per file."""
    stem = os.path.splitext(rel)[0].replace(os.sep, "/").replace(".", "_")
    return f"{name}/{stem}".replace("/", "--")


def _file_sample(name: str, root: Path, rel: str, label: int, caption: str | None = None) -> Sample:
    path = root / rel
    ext = path.suffix.lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    return Sample(key=_key(name, rel), ext=ext, read=path.read_bytes, label=label, caption=caption)


def _image_files(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))


def _files_set(name: str, root: Path, items: list[tuple[str, int, str | None]], classnames: list[str],
               listed_in: Path | None = None, **kwargs) -> LabelledSet:
    """A set of image files under root. Items read from a listing file (`listed_in`) are checked to
    exist, so a stale listing fails here, naming the first missing image, not mid-import."""
    if not items:
        raise LayoutError(f"{root}: no images found for {name}")
    if listed_in is not None:
        missing = next((rel for rel, _, _ in items if not (root / rel).is_file()), None)
        if missing is not None:
            raise LayoutError(f"image {root / missing} not found (listed in {listed_in})")
    return LabelledSet(name=name, root=root, classnames=classnames, size=len(items),
                       samples=lambda: (_file_sample(name, root, rel, y, c) for rel, y, c in items), **kwargs)


def _name_label(names: dict[int, str], y: int, name: str, where: str) -> None:
    """Record class `name` for label y; a listing that gives one label two names is refused."""
    if names.setdefault(y, name) != name:
        raise LayoutError(f"{where}: label {y} is {names[y]!r} elsewhere, {name!r} here")


def _names_in_label_order(names: dict[int, str], where: str) -> list[str]:
    if sorted(names) != list(range(len(names))):
        raise LayoutError(f"{where}: labels are not 0..{len(names) - 1}")
    return [names[y] for y in range(len(names))]


def _subfolders(path: Path) -> list[str]:
    """Visible subfolders: `.ipynb_checkpoints`, `.git` and the like are not classes."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in label order, from timm's packaged list."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def imagenet_classnames() -> list[str]:
    """CLIP's ImageNet class names (index-aligned with the synsets), from open_clip."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _wnid_items(name: str, root: Path, index: dict[str, int], what: str) -> list[tuple[str, int, None]]:
    folders = _subfolders(root)
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise LayoutError(f"{root / unknown[0]}: not an ImageNet-1k WordNet id folder ({what})")
    return [(f"{f}/{img}", index[f], None) for f in folders for img in _image_files(root / f)]


@register_layout("folder")
def folder(name: str, path: Path, classnames: list[str] | None = None) -> LabelledSet:
    """PATH/<class>/<image>: one subfolder per class, label order = sorted folder names (underscores read as spaces)."""
    folders = _subfolders(path)
    if not folders:
        raise LayoutError(f"{path}: no class subfolders; expected PATH/<class>/<image>")
    if classnames is not None and len(classnames) != len(folders):
        raise LayoutError(f"{path}: {len(folders)} class folders but {len(classnames)} classnames given")
    names = classnames or [f.replace("_", " ") for f in folders]
    images = {f: _image_files(path / f) for f in folders}
    empty = [f for f in folders if not images[f]]
    if empty:
        raise LayoutError(f"{path / empty[0]}: a class folder with no images ({', '.join(IMAGE_SUFFIXES)}); "
                          f"add images or remove it")
    items = [(f"{f}/{img}", y, None) for y, f in enumerate(folders) for img in images[f]]
    return _files_set(name, path, items, names)


@register_layout("csv")
def csv_table(name: str, path: Path, classnames: list[str] | None = None, allow_outside: bool = False) -> LabelledSet:
    """A CSV file with a header `path,label[,caption]`: image paths relative to the file, label = class
    name. Paths must stay inside the file's folder (allow_outside: true lifts that): the shards are
    shared through DVC remotes, and a third-party CSV must not pull a key file into them."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise LayoutError(f"{path}: not UTF-8 text (byte {e.start}); expected a CSV file path,label[,caption]") from None
    if "path" not in cols or "label" not in cols:
        raise LayoutError(f"{path}: header {cols}; expected path,label[,caption]")
    root = path.parent.resolve()
    first_line: dict[str, int] = {}
    for line, r in enumerate(rows, start=2):
        rel, label = r.get("path") or "", r.get("label") or ""
        if not rel.strip() or not label.strip():
            raise LayoutError(f"{path}:{line}: {'path' if not rel.strip() else 'label'} is empty")
        if not rel.lower().endswith(IMAGE_SUFFIXES):
            raise LayoutError(f"{path}:{line}: {rel!r} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        if not allow_outside and (Path(rel).is_absolute() or not (root / rel).resolve().is_relative_to(root)):
            raise LayoutError(f"{path}:{line}: {rel!r} is outside {root}; set allow_outside: true to import it")
        if rel in first_line:
            raise LayoutError(f"{path}:{line}: {rel} is listed again (first on line {first_line[rel]})")
        first_line[rel] = line
    names = classnames or sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(names)}
    items = []
    for line, r in enumerate(rows, start=2):
        if r["label"] not in index:
            raise LayoutError(f"{path}:{line}: label {r['label']!r} is not one of the {len(names)} classnames")
        items.append((r["path"], index[r["label"]], r.get("caption") or None))
    return _files_set(name, path.parent, items, names, listed_in=path)


@register_layout("imagenet")
def imagenet(name: str, path: Path, split: str = "val") -> LabelledSet:
    """PATH/SPLIT/<wnid>/<image> (ImageNet train/val as torchvision's ImageFolder has them; ImageNet-Sketch with split sketch)."""
    root = path / split if split else path
    if not root.is_dir():
        raise LayoutError(f"{root}: not found; expected {path}/{split}/<wnid>/<image>")
    synsets = imagenet_synsets()
    items = _wnid_items(name, root, {s: i for i, s in enumerate(synsets)}, "layout imagenet")
    return _files_set(name, root, items, imagenet_classnames())


@register_layout("imagenet_v2")
def imagenet_v2(name: str, path: Path) -> LabelledSet:
    """PATH/<label 0..999>/<image>: an ImageNetV2 release folder (e.g. imagenetv2-matched-frequency-format-val)."""
    folders = _subfolders(path)
    bad = [f for f in folders if not (f.isdigit() and int(f) < 1000)]
    if bad or not folders:
        raise LayoutError(f"{path / (bad[0] if bad else '')}: expected PATH/<label 0..999>/<image> (ImageNetV2)")
    items = [(f"{f}/{img}", int(f), None) for f in folders for img in _image_files(path / f)]
    return _files_set(name, path, items, imagenet_classnames())


@register_layout("imagenet_subset")
def imagenet_subset(name: str, path: Path) -> LabelledSet:
    """PATH/<wnid>/<image> over a subset of ImageNet's classes (ImageNet-A, ImageNet-R: 200): scored on the 1000-class logits restricted to them."""
    synsets, names = imagenet_synsets(), imagenet_classnames()
    index = {s: i for i, s in enumerate(synsets)}
    folders = _subfolders(path)
    unknown = [f for f in folders if f not in index]
    if unknown or not folders:
        raise LayoutError(f"{path / (unknown[0] if unknown else '')}: expected PATH/<ImageNet-1k wnid>/<image>")
    items = [(f"{f}/{img}", y, None) for y, f in enumerate(folders) for img in _image_files(path / f)]
    projection = Projection(classnames=names, map=[[index[f]] for f in folders])
    return _files_set(name, path, items, [names[index[f]] for f in folders], projection=projection)


def _cropped(read: Callable[[], bytes], border: int) -> Callable[[], bytes]:
    def read_cropped() -> bytes:
        import io

        from PIL import Image

        img = Image.open(io.BytesIO(read()))
        img = img.crop((border, border, img.width - border, img.height - border))
        buf = io.BytesIO()
        img.save(buf, format="PNG")  # lossless: the crop is the only change
        return buf.getvalue()
    return read_cropped


@register_layout("objectnet")
def objectnet(name: str, path: Path, crop_border: int = 2) -> LabelledSet:
    """PATH/images/<folder>/<image> with the release's PATH/mappings/ (folder_to_objectnet_label.json, objectnet_to_imagenet_1k.json, pytorch_to_imagenet_2012_id.json, imagenet_to_label_2012_v2): the 113 classes that map onto ImageNet."""
    maps = path / "mappings"
    files = ["folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json",
             "imagenet_to_label_2012_v2"]
    for f in files:
        if not (maps / f).is_file():
            raise LayoutError(f"{maps / f}: not found; expected ObjectNet's release layout {path}/mappings/{{{', '.join(files)}}}")
    folder_of = {label: folder for folder, label in json.loads((maps / files[0]).read_text()).items()}
    to_imagenet = json.loads((maps / files[1]).read_text())
    # imagenet_to_label_2012_v2 lists the 1000 names in ImageNet-2012 id order; pytorch_to_imagenet_2012_id
    # maps a torchvision label (sorted wnids) to that id.
    id_of_pytorch = {int(k): int(v) for k, v in json.loads((maps / files[2]).read_text()).items()}
    pytorch_of_id = {v: k for k, v in id_of_pytorch.items()}
    label_names = [line.strip() for line in (maps / files[3]).read_text().splitlines() if line.strip()]
    pytorch_of_name = {n: pytorch_of_id[i] for i, n in enumerate(label_names) if i in pytorch_of_id}
    classnames, mapping, items = [], [], []
    for y, (onet_name, imnet_names) in enumerate(sorted(to_imagenet.items())):
        ids = []
        for n in imnet_names.split("; "):
            if n not in pytorch_of_name:
                raise LayoutError(f"{maps / files[1]}: {onet_name!r} maps to {n!r}, not in {files[3]}")
            ids.append(pytorch_of_name[n])
        if onet_name not in folder_of:
            raise LayoutError(f"{maps / files[0]}: no folder for ObjectNet class {onet_name!r}")
        folder = folder_of[onet_name]
        classnames.append(onet_name.lower())
        mapping.append(sorted(ids))
        img_dir = path / "images" / folder
        if img_dir.is_dir():
            items += [(f"images/{folder}/{img}", y, None) for img in _image_files(img_dir)]
    ls = _files_set(name, path, items, classnames, projection=Projection(imagenet_classnames(), mapping))
    if crop_border:
        # ObjectNet's images carry a thin border its authors ask to crop; wise-ft crops 2 px a side.
        samples = ls.samples
        ls.samples = lambda: (Sample(s.key, "png", _cropped(s.read, crop_border), s.label) for s in samples())
    return ls


@register_layout("domainnet")
def domainnet(name: str, path: Path, domain: str, split: str = "test") -> LabelledSet:
    """PATH/<domain>/<class>/<image> with the official split files PATH/<domain>_<split>.txt ('<domain>/<class>/<file> <label>' per line)."""
    split_file = path / f"{domain}_{split}.txt"
    if not split_file.is_file():
        raise LayoutError(f"{split_file}: not found; expected DomainNet's split file beside {path}/{domain}/")
    items, names = [], {}
    for line_no, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rel, label = line.rsplit(maxsplit=1)
            y = int(label)
        except ValueError:
            raise LayoutError(f"{split_file}:{line_no}: expected '<domain>/<class>/<file> <label>', got {line!r}") from None
        parts = rel.split("/")
        if len(parts) != 3:
            raise LayoutError(f"{split_file}:{line_no}: expected '<domain>/<class>/<file> <label>', got {line!r}")
        _name_label(names, y, parts[1], f"{split_file}:{line_no}")
        items.append((rel, y, None))
    classnames = [c.replace("_", " ") for c in _names_in_label_order(names, str(split_file))]
    return _files_set(name, path, items, classnames, listed_in=split_file)


@register_layout("coop_split")
def coop_split(name: str, path: Path, split_file: str, images: str, split: str = "test") -> LabelledSet:
    """PATH/IMAGES/... with CoOp's split file PATH/SPLIT_FILE ({"train"|"val"|"test": [[path under IMAGES, label, classname], ...]}): the folder layout of the 10 zero-shot sets in the CLIP-finetuning literature."""
    split_path, image_dir = path / split_file, path / images
    if not split_path.is_file() or not image_dir.is_dir():
        raise LayoutError(f"{path}: expected {split_file} and {images}/ (CoOp's dataset layout)")
    try:
        entries = json.loads(split_path.read_text())[split]
    except (KeyError, json.JSONDecodeError) as e:
        raise LayoutError(f"{split_path}: no {split!r} list of [path, label, classname] ({e})") from None
    names: dict[int, str] = {}
    items = []
    for i, entry in enumerate(entries):
        try:
            rel, y, cname = entry
            y = int(y)
        except (TypeError, ValueError):
            raise LayoutError(f"{split_path}: {split}[{i}]: expected [path, label, classname], got {entry!r}") from None
        _name_label(names, y, cname, f"{split_path}: {split}[{i}]")
        items.append((rel, y, None))
    classnames = _names_in_label_order(names, f"{split_path}: {split}")
    return _files_set(name, image_dir, items, classnames, listed_in=split_path)


@register_layout("fgvc_aircraft")
def fgvc_aircraft(name: str, path: Path, split: str = "test") -> LabelledSet:
    """FGVC-Aircraft as released (PATH = fgvc-aircraft-2013b/data): images/<id>.jpg, variants.txt (the 100 classes) and images_variant_SPLIT.txt ('<id> <variant>' per line); CoOp reads it this way too."""
    variants_file, split_file = path / "variants.txt", path / f"images_variant_{split}.txt"
    for f in (variants_file, split_file):
        if not f.is_file():
            raise LayoutError(f"{f}: not found; expected FGVC-Aircraft's data folder (variants.txt, images_variant_{split}.txt, images/)")
    classnames = [v.strip() for v in variants_file.read_text().splitlines() if v.strip()]
    index = {c: i for i, c in enumerate(classnames)}
    items = []
    for line_no, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in index:
            raise LayoutError(f"{split_file}:{line_no}: variant {variant!r} is not in variants.txt")
        items.append((f"images/{image_id}.jpg", index[variant], None))
    return _files_set(name, path, items, classnames, listed_in=split_file)


@register_layout("clip_benchmark_wds")
def clip_benchmark_wds(name: str, path: Path, split: str = "test") -> LabelledSet:
    """A CLIP_benchmark webdataset export: PATH/{classnames.txt, zeroshot_classification_templates.txt, SPLIT/{0..N-1}.tar}, labels in .cls."""
    import webdataset as wds

    from pipeline.io.shards import SkipCounter, sample_image_bytes

    names_file, split_dir = path / "classnames.txt", path / split
    if not names_file.is_file() or not split_dir.is_dir():
        raise LayoutError(f"{path}: expected classnames.txt and {split}/*.tar (a CLIP_benchmark webdataset export)")
    tars = sorted(split_dir.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
    if not tars:
        raise LayoutError(f"{split_dir}: no .tar shards")
    templates_file = path / "zeroshot_classification_templates.txt"
    templates = [t for t in templates_file.read_text().splitlines() if t.strip()] if templates_file.is_file() else None
    classnames = [c for c in names_file.read_text().splitlines() if c.strip()]

    def samples() -> Iterator[Sample]:
        skips = SkipCounter()
        for s in wds.WebDataset([str(t) for t in tars], shardshuffle=False, handler=skips, empty_check=False):
            try:
                ext, data = sample_image_bytes(s)
                label = int(s["cls"])
            except (KeyError, ValueError) as e:
                skips(e)
                continue
            yield Sample(key=_key(name, s["__key__"]), ext=ext, read=lambda d=data: d, label=label)

    return LabelledSet(name=name, root=path, classnames=classnames, samples=samples, templates=templates)


def in_val_split(key: str, fraction: float, seed: int) -> bool:
    """Deterministic per-sample draw: the same key always lands on the same side, whatever the order
    or size of the set, so a validation split needs no listing of the set and is stable across runs."""
    h = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64 < fraction
