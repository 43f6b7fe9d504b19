"""Bad input against the `arf` command, as a hostile or careless user sends it: the figures.

    python scripts/probe_faults.py            # prints the table; --markdown for docs/reliability.md

Every probe runs one `arf` command in this process, through the same entry point and error boundary
as the shell (`pipeline.cli.run`), and is sorted into one outcome:

  correct        exit 0 and the result checked right (bad images skipped and counted, a hidden folder
                 not made a class, a CSV with a byte-order mark read)
  clear error    exit non-zero with one line on stderr naming what the probe expects it to name (the
                 file, key, line, sample or member)
  traceback      an exception escaped the boundary
  silent wrong   exit 0 where the input is unusable, or a result that fails its check, or an error line
                 that does not name what it should
  data lost      a failed command changed the outputs of an earlier good run in its output folder

The corpus: the malformed-params files of tests/faults/params (`arf check-params`); dataset folders
with bad images, key collisions, hidden and empty folders, CSVs with escaping paths, bad rows and
conflicting duplicates, CLIP_benchmark sets with out-of-range labels, hostile corpus tars
(`arf build_data`, with a good build in the output folder first, to catch data loss); model folders
with code-running pickles, truncated checkpoints and a model.json pointing outside (`arf export`).
The dataset and shard builders are the fault tests' (tests/fixtures_layouts.py).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures_layouts import _tar, hostile_shard, jpeg, make_clip_benchmark_wds, make_img2dataset_corpus  # noqa: E402

from pipeline.cli import run as arf  # noqa: E402

OUTCOMES = ("correct", "clear error", "traceback", "silent wrong", "data lost")


@dataclass
class Probe:
    name: str
    kind: str  # the class of defect
    args: Callable[[Path], list[str]]  # builds the input under a temp folder, returns the command line
    expect_error: str | None = None  # a substring of the one error line; None: the command must succeed
    check: Callable[[Path], bool] | None = None  # for a success: is the result right
    out: str | None = None  # output folder a good run fills first (data-loss check), relative to the temp folder


def call(args: list[str]) -> tuple[int, str, str | None]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            arf(args)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 (what escaped the boundary is the finding)
            return 1, err.getvalue(), traceback.format_exc()
    return code, err.getvalue(), None


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def classify(probe: Probe, tmp: Path) -> tuple[str, str]:
    args = probe.args(tmp)
    before = None
    if probe.out is not None:
        good = good_params(tmp)
        code, err, tb = call(["build_data", "--params", str(good), "--out", str(tmp / probe.out)])
        if code != 0 or tb:
            return "traceback" if tb else "silent wrong", f"the good build failed: {tb or err}"
        before = snapshot(tmp / probe.out)
    code, err, tb = call(args)
    lines = [l for l in err.strip().splitlines() if l.startswith("error: ")]
    if tb:
        return "traceback", tb.strip().splitlines()[-1]
    if before is not None and code != 0 and snapshot(tmp / probe.out) != before:
        return "data lost", f"{probe.out} changed by a failed run"
    if probe.expect_error is None:
        if code != 0:
            return "silent wrong", f"refused a usable input: {err.strip()[-200:]}"
        return ("correct", "checked") if probe.check is None or probe.check(tmp) else ("silent wrong", "result check failed")
    if code == 0:
        return "silent wrong", "exit 0 on unusable input"
    if len(lines) != 1 or probe.expect_error.format(tmp=tmp) not in lines[0]:
        return "silent wrong", f"the error line does not name it: {err.strip()[-200:]}"
    return "clear error", lines[0][:160]


# ---- inputs ---------------------------------------------------------------------------------------

CLASSES = ("cat", "dog", "owl")


def folder_set(root: Path, per_class: int = 6) -> Path:
    for c, cls in enumerate(CLASSES):
        for j in range(per_class):
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / f"{j}.jpg").write_bytes(jpeg(c, n_labels=3, seed=j))
    return root


def local_params(tmp: Path, finetune: dict, **local) -> Path:
    import yaml

    path = tmp / f"params-{len(list(tmp.glob('params-*')))}.yaml"
    entry = {"root": str(tmp), "finetune": finetune, "val_fraction": 0.3, "corpus": None, "heldout_pairs": 0, **local}
    path.write_text(yaml.safe_dump({"build_data": {"source": "local", "local": entry}}))
    return path


def good_params(tmp: Path) -> Path:
    folder_set(tmp / "good")
    return local_params(tmp, {"layout": "folder", "path": "good"})


def build(tmp: Path, params: Path, out: str = "data") -> list[str]:
    return ["build_data", "--params", str(params), "--out", str(tmp / out)]


def counts(tmp: Path, out: str = "data") -> dict:
    return json.loads((tmp / out / "benchmark" / "build_data.json").read_text())


def with_files(files: dict[str, bytes], **local):
    def make(tmp: Path) -> list[str]:
        folder_set(tmp / "train")
        for rel, data in files.items():
            (tmp / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "train" / rel).write_bytes(data)
        return build(tmp, local_params(tmp, {"layout": "folder", "path": "train"}, **local))
    return make


def csv_rows(rows: str, prefix: str = ""):
    def make(tmp: Path) -> list[str]:
        folder_set(tmp / "imgs")
        (tmp / "list.csv").write_text(prefix + "path,label\n" + rows.format(tmp=tmp), encoding="utf-8")
        return build(tmp, local_params(tmp, {"layout": "csv", "path": "list.csv"}))
    return make


def eval_label(label: int):
    def make(tmp: Path) -> list[str]:
        folder_set(tmp / "train")
        ds = make_clip_benchmark_wds(tmp, n_classes=3, per_class=2)
        _tar(ds / "test" / "2.tar", [{"__key__": "bad", "webp": jpeg(1), "cls": str(label)}])
        return build(tmp, local_params(tmp, {"layout": "folder", "path": "train"},
                                       eval={"zeroshot_flowers": {"layout": "clip_benchmark_wds", "path": str(ds)}}))
    return make


def corpus_shard(kind: str):
    def make(tmp: Path) -> list[str]:
        folder_set(tmp / "train")
        corpus = make_img2dataset_corpus(tmp, shards=2, per_shard=4)
        hostile_shard(corpus / "00000.tar", kind)
        return build(tmp, local_params(tmp, {"layout": "folder", "path": "train"}, corpus="cc3m", heldout_pairs=1,
                                       max_member_mb=2))
    return make


def bomb_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buf, format="PNG")
    return buf.getvalue()


def model_folder(fault: str):
    def make(tmp: Path) -> list[str]:
        import torch
        from helpers import make_tiny_checkpoint

        from pipeline.core.models import create_model, write_model_dir

        name, ckpt = make_tiny_checkpoint(tmp)
        model = tmp / "model"
        write_model_dir(create_model(f"{name}:{ckpt}").model, name, model)
        meta = json.loads((model / "model.json").read_text())
        if fault in ("pickle", "pickle-head"):
            file = "checkpoint.pt" if fault == "pickle" else "head.pt"
            if fault == "pickle-head":
                (model / "model.json").write_text(json.dumps({**meta, "head": "head.pt"}))
            os.environ["ARF_PROBE_MARKER"] = str(tmp / "pwned")
            torch.save({"state_dict": _Payload()}, model / file)
        elif fault == "no-model-json":
            (model / "model.json").unlink()
        elif fault == "truncated":
            (model / "checkpoint.pt").write_bytes((model / "checkpoint.pt").read_bytes()[:1000])
        else:
            (model / "model.json").write_text(json.dumps({**meta, "checkpoint": fault}))
        return ["export", str(model), str(tmp / "exported")]
    return make


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['ARF_PROBE_MARKER']}",))


def not_pwned(tmp: Path) -> bool:
    return not (tmp / "pwned").exists()


def probes() -> list[Probe]:
    out: list[Probe] = []
    for path in sorted((REPO / "tests" / "faults" / "params").glob("*.yaml")):
        first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
        expected = "not UTF-8 text" if path.name == "binary.yaml" else first.removeprefix("# expect: ")
        out.append(Probe(f"params/{path.stem}", "params", lambda tmp, p=path: ["check-params", str(p)], expected))
    good = jpeg(0, n_labels=3, seed=99)
    bad_images = {"cat/corrupt.jpg": b"\xff\xd8\xff\xe0" + b"\0" * 64, "dog/empty.png": b"", "owl/notes.jpg": b"text\n",
                  "cat/truncated.jpg": good[: len(good) // 2]}
    out += [
        Probe("images/corrupt-empty-truncated-nonimage", "images", with_files(bad_images), None,
              lambda tmp: counts(tmp)["skipped"] == 4 and sum(counts(tmp)["benchmark"].values()) == 18),
        Probe("images/decompression-bomb", "images", with_files({"cat/bomb.png": bomb_png()}), None,
              lambda tmp: counts(tmp)["skipped"] == 1 and "pixel cap" in json.dumps(counts(tmp)["skipped_examples"])),
        Probe("layout/key-collision", "keys", with_files({"cat/x.y.jpg": good, "cat/x_y.jpg": good}),
              "names two images", out="data"),
        Probe("layout/hidden-folder", "folders", with_files({".ipynb_checkpoints/a.jpg": good}), None,
              lambda tmp: json.loads((tmp / "data/benchmark/classes.json").read_text())["seen"] == list(CLASSES)),
        Probe("layout/empty-class-folder", "folders", lambda tmp: (with_files({})(tmp), (tmp / "train/empty").mkdir())[0],
              "a class folder with no images", out="data"),
        Probe("layout/class-with-one-image", "folders", with_files({"solo/0.jpg": good}), None,
              lambda tmp: any("have no" in w for w in counts(tmp)["warnings"])),
        Probe("csv/absolute-path-no-suffix", "paths", csv_rows("imgs/cat/0.jpg,cat\n/etc/passwd,dog\n"),
              "list.csv:3: '/etc/passwd' is not an image file", out="data"),
        Probe("csv/parent-path", "paths", csv_rows("imgs/cat/0.jpg,cat\n../secret.png,dog\n"), "list.csv:3: '../secret.png' is outside",
              out="data"),
        Probe("csv/absolute-path", "paths", csv_rows("imgs/cat/0.jpg,cat\n/tmp/x.jpg,dog\n"), "list.csv:3: '/tmp/x.jpg' is outside",
              out="data"),
        Probe("csv/row-without-label", "paths", csv_rows("imgs/cat/0.jpg,cat\nimgs/dog/0.jpg\n"), "list.csv:3: label is empty",
              out="data"),
        Probe("csv/empty-label", "paths", csv_rows("imgs/cat/0.jpg,cat\nimgs/dog/0.jpg,\n"), "list.csv:3: label is empty", out="data"),
        Probe("csv/conflicting-duplicate", "keys", csv_rows("imgs/cat/0.jpg,cat\nimgs/dog/0.jpg,dog\nimgs/cat/0.jpg,dog\n"),
              "list.csv:4: imgs/cat/0.jpg is listed again (first on line 2)", out="data"),
        Probe("csv/byte-order-mark", "paths", csv_rows("".join(f"imgs/{c}/{j}.jpg,{c}\n" for c in CLASSES for j in range(6)),
                                                      prefix="\ufeff"), None,
              lambda tmp: json.loads((tmp / "data/benchmark/classes.json").read_text())["seen"] == list(CLASSES)),
        Probe("eval/label-minus-one", "labels", eval_label(-1), "label -1 is not a class of the set", out="data"),
        Probe("eval/label-too-large", "labels", eval_label(3), "label 3 is not a class of the set", out="data"),
    ]
    out += [
        Probe("params/a-folder", "params", lambda tmp: ["check-params", str(tmp)], "is a folder; expected a params YAML file"),
        Probe("params/missing-file", "params", lambda tmp: ["check-params", str(tmp / "nope.yaml")], "nope.yaml"),
        Probe("images/none-decodes", "images", lambda tmp: (with_files({})(tmp), [
            (p.write_bytes(b"not an image")) for p in (tmp / "train").rglob("*.jpg")])[0],
            "gave 0 train and 0 val samples", out="data"),
    ]
    for kind, expected in (("gzip", "00000.tar: gzip-compressed"), ("symlink", "is not a file (a link or device)"),
                           ("device", "is not a file (a link or device)"), ("traversal", "names a path outside the shard"),
                           ("oversized", "over build_data.local.max_member_mb (2)")):
        out.append(Probe(f"corpus/{kind}", "tars", corpus_shard(kind), expected, out="data"))
    for fault, expected in (("pickle", "checkpoint.pt: refused: holds objects other than tensors"),
                            ("pickle-head", "head.pt: refused: holds objects other than tensors"),
                            ("truncated", "checkpoint.pt: not a readable torch checkpoint"),
                            ("../elsewhere.pt", "is not a file name inside the model folder"),
                            ("/etc/passwd", "is not a file name inside the model folder"),
                            ("no-model-json", "model.json")):
        out.append(Probe(f"model/{fault.strip('./').replace('/', '-')}", "files", model_folder(fault), expected))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print the per-probe table too")
    ap.add_argument("--only", help="probes whose name contains this")
    args = ap.parse_args()
    results, t0 = [], time.perf_counter()
    for probe in probes():
        if args.only and args.only not in probe.name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            outcome, detail = classify(probe, Path(tmp))
        results.append((probe, outcome, detail))
        if outcome not in ("correct", "clear error"):
            print(f"{outcome}: {probe.name}: {detail}", file=sys.stderr)
    tally = {o: sum(r[1] == o for r in results) for o in OUTCOMES}
    print(f"probes {len(results)} | " + " | ".join(f"{o} {n}" for o, n in tally.items())
          + f" | {time.perf_counter() - t0:.0f} s")
    kinds = sorted({p.kind for p, _, _ in results})
    print("\n| class | probes | " + " | ".join(OUTCOMES) + " |\n|---|---|" + "---|" * len(OUTCOMES))
    for k in kinds:
        rows = [o for p, o, _ in results if p.kind == k]
        print(f"| {k} | {len(rows)} | " + " | ".join(str(rows.count(o)) for o in OUTCOMES) + " |")
    if args.markdown:
        print("\n| probe | outcome | what it said |\n|---|---|---|")
        for p, o, d in results:
            print(f"| {p.name} | {o} | {d.replace('|', '/')[:140]} |")
    sys.exit(0 if tally["traceback"] == tally["silent wrong"] == tally["data lost"] == 0 else 1)


if __name__ == "__main__":
    main()
