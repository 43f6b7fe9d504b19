"""Tiny dataset folders in the real layouts (ImageNet and its shifts, ObjectNet, DomainNet, a
CLIP_benchmark export, a CSV, an img2dataset corpus), built in a second from coloured JPEGs.

Class k's images are a flat colour of hue k, so a model can learn the fixture's classes.
"""
from __future__ import annotations

import colorsys
import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from pipeline.data.layouts import imagenet_classnames, imagenet_synsets

# ImageNet classes the fixture finetunes on (indices into the 1000): tench, goldfish, great white shark, ...
FINETUNE_IDX = [0, 1, 2, 6]
SUBSET_IDX = [1, 6, 9]  # the ImageNet-A/R fixture's classes: two shared with finetuning, one not
DOMAINNET_CLASSES = ["aircraft_carrier", "alarm_clock", "ant"]


def jpeg(label: int, n_labels: int = 10, size: int = 24, seed: int = 0) -> bytes:
    r, g, b = colorsys.hsv_to_rgb((label % n_labels) / n_labels, 0.8, 0.6 + 0.1 * (seed % 3))
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (int(r * 255), int(g * 255), int(b * 255))).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_imagenet(root: Path, per_class: int = 4) -> Path:
    syn = imagenet_synsets()
    for split, n in (("train", per_class * 3), ("val", per_class)):
        for i in FINETUNE_IDX:
            for j in range(n):
                _write(root / "imagenet" / split / syn[i] / f"{syn[i]}_{split}_{j}.JPEG", jpeg(i, seed=j))
    for i in FINETUNE_IDX:  # ImageNetV2: folders named by label; ImageNet-Sketch: wnid folders under sketch/
        for j in range(per_class):
            _write(root / "imagenetv2-matched-frequency-format-val" / str(i) / f"{j:04x}.jpeg", jpeg(i, seed=j + 1))
            _write(root / "imagenet-sketch" / "sketch" / syn[i] / f"sketch_{j}.JPEG", jpeg(i, seed=j + 2))
    for i in SUBSET_IDX:
        for j in range(per_class):
            _write(root / "imagenet-r" / syn[i] / f"art_{j}.jpg", jpeg(i, seed=j))
            _write(root / "imagenet-a" / syn[i] / f"natural_adv_{j}.jpg", jpeg(i, seed=j + 1))
    return root


def make_objectnet(root: Path, per_class: int = 3) -> Path:
    """ObjectNet's release layout with hand-made mappings.

    2012 ids are a rotation of the torchvision labels (id = label + 1 mod 1000) and the label file
    lists ImageNet names by 2012 id, so a mapping bug shows up as an off-by-one. Two ObjectNet
    classes map onto ImageNet: 'Alarm clock' -> labels {1, 6}, 'Banana' -> {9}; 'Bench' maps to none
    (its images must be left out).
    """
    on = root / "objectnet-1.0"
    names = imagenet_classnames()
    label_file = [""] * 1000
    for label in range(1000):
        label_file[(label + 1) % 1000] = f"in-{label}-{names[label]}"
    mappings = {
        "folder_to_objectnet_label.json": {"alarm_clock": "Alarm clock", "banana": "Banana", "bench": "Bench"},
        "objectnet_to_imagenet_1k.json": {"Alarm clock": f"{label_file[2]}; {label_file[7]}", "Banana": label_file[10]},
        "pytorch_to_imagenet_2012_id.json": {str(label): (label + 1) % 1000 for label in range(1000)},
    }
    for name, obj in mappings.items():
        _write(on / "mappings" / name, json.dumps(obj).encode())
    _write(on / "mappings" / "imagenet_to_label_2012_v2", ("\n".join(label_file) + "\n").encode())
    for folder, label in (("alarm_clock", 1), ("banana", 9), ("bench", 3)):
        for j in range(per_class):
            _write(on / "images" / folder / f"{j:03d}.png", jpeg(label, seed=j))
    return on


DOMAINS = ("real", "clipart", "infograph", "painting", "quickdraw", "sketch")


def make_domainnet(root: Path, per_class: int = 3, domains=DOMAINS) -> Path:
    dn = root / "domainnet"
    for domain in domains:
        for split in ("train", "test"):
            lines = []
            n = per_class * (3 if split == "train" else 1)
            for y, c in enumerate(DOMAINNET_CLASSES):
                for j in range(n):
                    rel = f"{domain}/{c}/{domain}_{y:03d}_{split}{j:03d}.jpg"
                    _write(dn / rel, jpeg(y, n_labels=3, seed=j))
                    lines.append(f"{rel} {y}")
            (dn / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return dn


def _tar(path: Path, samples: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as t:
        for s in samples:
            for ext, data in s.items():
                if ext == "__key__":
                    continue
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def make_clip_benchmark_wds(root: Path, name: str = "wds_vtab-flowers", n_classes: int = 3, per_class: int = 3) -> Path:
    ds = root / name
    classnames = [f"flower {k}" for k in range(n_classes)]
    (ds / "test").mkdir(parents=True)
    (ds / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (ds / "zeroshot_classification_templates.txt").write_text("a photo of a {c}, a type of flower.\n")
    samples = [{"__key__": f"s{y}{j:03d}", "webp": jpeg(y + 3, seed=j), "cls": str(y)}
               for y in range(n_classes) for j in range(per_class)]
    _tar(ds / "test" / "0.tar", samples[: len(samples) // 2])
    _tar(ds / "test" / "1.tar", samples[len(samples) // 2:])
    (ds / "test" / "nshards.txt").write_text("2\n")
    return ds


def make_coop(root: Path, per_class: int = 2) -> Path:
    """CoOp's layout for UCF101: UCF-101-midframes/<Class>/<frame>.jpg and split_zhou_UCF101.json."""
    ds = root / "ucf101"
    split = {"train": [], "val": [], "test": []}
    for y, c in enumerate(["Apply_Eye_Makeup", "Archery"]):
        for j in range(per_class):
            rel = f"{c}/v_{c}_g{j:02d}_c01.jpg"
            _write(ds / "UCF-101-midframes" / rel, jpeg(y + 5, seed=j))
            split["test"].append([rel, y, c.replace("_", " ")])
    (ds / "split_zhou_UCF101.json").write_text(json.dumps(split))
    return ds


def make_aircraft(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A320", "Boeing 717"]
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = []
    for y, v in enumerate(variants):
        for j in range(2):
            image_id = f"{y}{j:06d}"
            _write(data / "images" / f"{image_id}.jpg", jpeg(y + 2, seed=j))
            lines.append(f"{image_id} {v}")
    (data / "images_variant_test.txt").write_text("\n".join(lines) + "\n")
    return data


def make_csv(root: Path, classnames: list[str], per_class: int = 3) -> Path:
    rows = ["path,label,caption"]
    for y, c in enumerate(classnames):
        for j in range(per_class):
            rel = f"images/{y}_{j}.jpg"
            _write(root / "byo" / rel, jpeg(y, seed=j))
            rows.append(f"{rel},{c},a picture of a {c} number {j}")
    (root / "byo" / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "byo" / "labels.csv"


def make_img2dataset_corpus(root: Path, shards: int = 3, per_shard: int = 20) -> Path:
    """img2dataset's output: {00000..}.tar with .jpg/.txt/.json members and {00000..}_stats.json."""
    corpus = root / "cc3m"
    names = imagenet_classnames()
    for s in range(shards):
        samples = []
        for j in range(per_shard):
            i = FINETUNE_IDX[(s * per_shard + j) % len(FINETUNE_IDX)] if j % 2 == 0 else 10 + j
            key = f"{s:05d}{j:04d}"
            samples.append({"__key__": key, "jpg": jpeg(i, seed=j), "txt": f"a photo of a {names[i]} in a scene {j}",
                            "json": json.dumps({"key": key, "status": "success"})})
        _tar(corpus / f"{s:05d}.tar", samples)
        (corpus / f"{s:05d}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))
    return corpus


def make_preset_tree(root: Path, preset: dict) -> Path:
    """Every dataset a preset's build_data.local names, in its layout, at its path under `root`."""
    local = preset["build_data"]["local"]
    entries = [local["finetune"], *local["eval"].values()]
    layouts = {e["layout"] for e in entries}
    if layouts & {"imagenet", "imagenet_v2", "imagenet_subset"}:
        make_imagenet(root)
    if "objectnet" in layouts:
        make_objectnet(root)
    if "domainnet" in layouts:
        make_domainnet(root)
    for e in entries:
        if e["layout"] == "clip_benchmark_wds":
            make_clip_benchmark_wds(root / Path(e["path"]).parent, Path(e["path"]).name)
        elif e["layout"] == "coop_split":
            make_coop(root)
    make_img2dataset_corpus(root)
    return root


def make_all(root: Path) -> dict[str, Path]:
    make_imagenet(root)
    return {
        "root": root,
        "objectnet": make_objectnet(root),
        "domainnet": make_domainnet(root),
        "wds": make_clip_benchmark_wds(root),
        "coop": make_coop(root),
        "aircraft": make_aircraft(root),
        "csv": make_csv(root, [imagenet_classnames()[i] for i in FINETUNE_IDX]),
        "corpus": make_img2dataset_corpus(root),
    }


def hostile_shard(path: Path, kind: str) -> str | None:
    """A corpus shard as a hostile or careless source might send it; returns the member the error names."""
    import gzip

    def add(tar, name, data=b"x", **attrs):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        for k, v in attrs.items():
            setattr(info, k, v)
        tar.addfile(info, io.BytesIO(data) if info.isfile() else None)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar, "000000000.txt", b"a caption")
        if kind == "symlink":
            add(tar, "000000001.jpg", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd", size=0)
        elif kind == "device":
            add(tar, "000000001.jpg", b"", type=tarfile.CHRTYPE, size=0)
        elif kind == "traversal":
            add(tar, "../../000000001.jpg", jpeg(1))
        elif kind == "oversized":
            add(tar, "000000001.jpg", b"\0" * (2 * 2 ** 20 + 1))
        else:
            add(tar, "000000001.jpg", jpeg(1))
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data) if kind == "gzip" else data)
    return {"symlink": "000000001.jpg", "device": "000000001.jpg", "traversal": "../../000000001.jpg",
            "oversized": "000000001.jpg"}.get(kind)
