"""Hostile and careless dataset folders: a label outside the classes or a key two images share makes
a set unusable, and the import refuses it with one line naming the sample, whatever the layout."""
import pytest
from fixtures_layouts import _tar, hostile_shard, jpeg, make_clip_benchmark_wds

from pipeline.data.layouts import LayoutError, read_layout
from pipeline.data.local import _samples
from pipeline.io.shards import SkipCounter


def shards_of(name, spec):
    return list(_samples(read_layout(name, spec), None, SkipCounter()))


@pytest.mark.parametrize("label", [-1, 3, 99])
def test_a_clip_benchmark_label_outside_the_classes_is_refused(tmp_path, label):
    """A -1 used to wrap to the last class name (a 2-class set scored acc5 33.3); >= C was a traceback."""
    ds = make_clip_benchmark_wds(tmp_path, n_classes=3, per_class=2)
    _tar(ds / "test" / "2.tar", [{"__key__": "bad", "webp": jpeg(1), "cls": str(label)}])
    with pytest.raises(LayoutError) as err:
        shards_of("zeroshot_flowers", {"layout": "clip_benchmark_wds", "path": str(ds)})
    assert str(err.value) == (f"zeroshot_flowers: sample zeroshot_flowers--bad: label {label} is not a class of the set "
                              f"(0..2, 3 classnames under {ds})")


def test_the_labels_of_a_clean_set_all_pass(tmp_path):
    ds = make_clip_benchmark_wds(tmp_path, n_classes=3, per_class=2)
    samples = shards_of("zeroshot_flowers", {"layout": "clip_benchmark_wds", "path": str(ds)})
    assert sorted(int(s["cls"]) for s in samples) == [0, 0, 1, 1, 2, 2]


def test_two_files_that_map_to_one_key_are_refused(tmp_path):
    """`x.y.jpg` and `x_y.jpg` both become key ..x_y (webdataset splits names at the first dot): one
    image would silently replace the other in the shards."""
    for name in ("x.y.jpg", "x_y.jpg"):
        (tmp_path / "cat").mkdir(exist_ok=True)
        (tmp_path / "cat" / name).write_bytes(jpeg(0))
    with pytest.raises(LayoutError) as err:
        shards_of("finetune", {"layout": "folder", "path": str(tmp_path)})
    assert str(err.value) == f"finetune: sample key finetune--cat--x_y names two images under {tmp_path}; rename one of them"


def test_hidden_folders_are_not_classes_and_an_empty_class_is_refused(tmp_path):
    for cls in ("cat", "dog", ".ipynb_checkpoints"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "a.jpg").write_bytes(jpeg(0))
    ls = read_layout("finetune", {"layout": "folder", "path": str(tmp_path)})
    assert ls.classnames == ["cat", "dog"] and ls.size == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError) as err:
        read_layout("finetune", {"layout": "folder", "path": str(tmp_path)})
    assert str(err.value).startswith(f"{tmp_path / 'empty'}: a class folder with no images (.jpg, ")


def csv_set(tmp_path, rows: str, prefix: str = "", **spec):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for n in ("a.jpg", "b.jpg"):
        (tmp_path / "imgs" / n).write_bytes(jpeg(0))
    (tmp_path / "list.csv").write_text(prefix + "path,label\n" + rows, encoding="utf-8")
    return read_layout("finetune", {"layout": "csv", "path": str(tmp_path / "list.csv"), **spec})


@pytest.mark.parametrize("rows, error", [
    ("imgs/a.jpg,cat\n/etc/passwd,dog\n", ":3: '/etc/passwd' is not an image file (.jpg, "),
    ("imgs/a.jpg,cat\n../secret.png,dog\n", ":3: '../secret.png' is outside {root}; set allow_outside: true to import it"),
    ("imgs/a.jpg,cat\n{root}/imgs/b.jpg,dog\n", ":3: '{root}/imgs/b.jpg' is outside {root}; set allow_outside: true"),
    ("imgs/a.jpg,cat\nimgs/b.jpg\n", ":3: label is empty"),
    ("imgs/a.jpg,cat\nimgs/b.jpg,\n", ":3: label is empty"),
    ("imgs/a.jpg,cat\n,dog\n", ":3: path is empty"),
    ("imgs/a.jpg,cat\nimgs/b.jpg,dog\nimgs/a.jpg,dog\n", ":4: imgs/a.jpg is listed again (first on line 2)"),
])
def test_a_bad_csv_row_is_refused_naming_file_and_line(tmp_path, rows, error):
    root = tmp_path.resolve()
    with pytest.raises(LayoutError) as err:
        csv_set(tmp_path, rows.format(root=root))
    assert str(err.value).startswith(f"{tmp_path / 'list.csv'}{error.format(root=root)}")


def test_a_csv_with_a_byte_order_mark_reads_and_outside_paths_need_allow_outside(tmp_path):
    ls = csv_set(tmp_path, "imgs/a.jpg,cat\nimgs/b.jpg,dog\n", prefix="\ufeff")
    assert ls.classnames == ["cat", "dog"] and ls.size == 2
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "c.jpg").write_bytes(jpeg(1))
    sub = tmp_path / "sub"
    sub.mkdir()
    ls = csv_set(sub, f"imgs/a.jpg,cat\n../elsewhere/c.jpg,dog\n", allow_outside=True)
    assert [s.read() for s in ls.samples()][1] == jpeg(1)


def test_an_image_over_the_pixel_cap_is_refused_before_decoding(monkeypatch):
    """A 13000 x 13000 PNG of one colour is ~0.2 MB on disk and ~800 MB decoded: it is refused from its
    header, as a bad sample (ValueError, which every stage skips and counts)."""
    import io
    import time

    from PIL import Image

    import pipeline.io.shards as shards

    buf = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buf, format="PNG")
    started = time.process_time()
    with pytest.raises(ValueError) as err:
        shards.decode_image(buf.getvalue(), "bomb")
    assert str(err.value) == "sample bomb: 13000x13000 px is over the 64,000,000 pixel cap"
    assert time.process_time() - started < 0.5  # the header only: a decode takes seconds
    monkeypatch.setattr(shards, "MAX_PIXELS", 13000 * 13000)
    assert shards.decode_image(buf.getvalue(), "bomb").size == (13000, 13000)


def test_an_eval_set_written_by_hand_with_a_label_out_of_range_is_refused_when_read(tmp_path):
    """Eval sets in the CLIP_benchmark layout can be put in place without the import: reading checks
    the labels again (a -1 scored acc5 33.3 on a 2-class set)."""
    import torch

    from pipeline.io.eval_sets import read_labelled_shards
    from pipeline.io.shards import write_shards

    write_shards(tmp_path / "test", [{"__key__": f"s{i}", "jpg": jpeg(i), "cls": str(y)} for i, y in enumerate([0, 1, -1])])
    with pytest.raises(ValueError) as err:
        read_labelled_shards(tmp_path / "test", "shift_x", ["a", "b"], ["{c}"], lambda im: torch.zeros(3, 2, 2))
    assert str(err.value) == f"{tmp_path / 'test'}: sample s2: label -1 is not one of the 2 classes of shift_x (1 such sample(s))"


@pytest.mark.parametrize("kind", ["gzip", "symlink", "device", "traversal", "oversized"])
def test_a_hostile_corpus_shard_is_refused_before_anything_is_written(tmp_path, kind):
    """Corpus tars come from elsewhere: a gzip "tar" (0.4 MB that became 400 MB in memory), links and
    devices, a name climbing out of the shard, a member over build_data.local.max_member_mb."""
    from fixtures_layouts import make_img2dataset_corpus

    from pipeline.data.local import LocalDataParams, import_local_data

    corpus = make_img2dataset_corpus(tmp_path / "mine", shards=2, per_shard=4)
    (tmp_path / "mine/train/a").mkdir(parents=True)
    (tmp_path / "mine/train/a/x.jpg").write_bytes(jpeg(0))
    bad = corpus / "00000.tar"
    member = hostile_shard(bad, kind)
    params = LocalDataParams(root=str(tmp_path / "mine"), finetune={"layout": "folder", "path": "train"},
                             corpus="cc3m", heldout_pairs=1, max_member_mb=2)
    with pytest.raises(LayoutError) as err:
        import_local_data(tmp_path / "data", params)
    expected = {
        "gzip": f"{bad}: gzip-compressed; build_data.local.corpus expects plain .tar shards (img2dataset's); decompress it",
        "symlink": f"{bad}: member {member!r} is not a file (a link or device); a corpus shard holds image and text files only",
        "device": f"{bad}: member {member!r} is not a file (a link or device); a corpus shard holds image and text files only",
        "traversal": f"{bad}: member {member!r} names a path outside the shard",
        "oversized": f"{bad}: member {member!r} is 2 MB, over build_data.local.max_member_mb (2)",
    }[kind]
    assert str(err.value) == expected
    assert not (tmp_path / "data").exists()


def test_a_plain_corpus_shard_passes_the_check_and_is_counted(tmp_path):
    from pipeline.data.local import corpus_shards

    hostile_shard(tmp_path / "00000.tar", "plain")  # two keys: 000000000 (.txt) and 000000001 (.jpg)
    assert corpus_shards(tmp_path, max_member_mb=1) == {str((tmp_path / "00000.tar").resolve()): 2}
