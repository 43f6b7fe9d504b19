"""Hostile and careless dataset folders: a label outside the classes or a key two images share makes
a set unusable, and the import refuses it with one line naming the sample, whatever the layout."""
import pytest
from fixtures_layouts import _tar, jpeg, make_clip_benchmark_wds

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
