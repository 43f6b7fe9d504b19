"""Writes that replace an output whole: with the user's umask, and cleaning up only after writers
that died (a killed run), never under one that is still writing."""
import os
import subprocess
import sys

import pytest

from pipeline.io.atomic import atomic_dir, atomic_dirs, atomic_file


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_outputs_get_the_permissions_of_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        with atomic_file(tmp_path / "out.json") as f:
            f.write("{}")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "a").write_text("a")
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "folder").stat().st_mode & 0o777 == dir_mode


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_writers_temps_are_removed_and_a_live_writers_kept(tmp_path):
    dead = dead_pid()
    (tmp_path / f".tmp-folder-{dead}-x1").mkdir()
    (tmp_path / f".tmp-folder-{os.getpid()}-x2").mkdir()  # a writer still running (this process)
    (tmp_path / f".tmp-out.json-{dead}-x3").write_text("half")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "a").write_text("a")
    with atomic_file(tmp_path / "out.json") as f:
        f.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".tmp-folder-{os.getpid()}-x2", "folder", "out.json"])


def test_a_failed_write_leaves_the_old_output_and_no_temp(tmp_path):
    with atomic_file(tmp_path / "out.json") as f:
        f.write("old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "out.json") as f:
            f.write("half")
            raise RuntimeError
    assert (tmp_path / "out.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def old_outputs(tmp_path):
    for name in ("corpus", "heldout", "benchmark"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run").write_text("old")
    return [tmp_path / n for n in ("corpus", "heldout", "benchmark")]


def test_a_stages_folders_are_replaced_together_once_all_are_written(tmp_path):
    paths = old_outputs(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_dirs(*paths) as temps:
            for t in temps[:2]:
                (t / "run").write_text("new")
            raise RuntimeError("the third one failed")
    assert [(p / "run").read_text() for p in paths] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmark", "corpus", "heldout"]
    with atomic_dirs(*paths) as temps:
        for t in temps:
            (t / "run").write_text("new")
    assert [(p / "run").read_text() for p in paths] == ["new"] * 3


def test_a_kill_between_the_renames_never_leaves_the_marker_beside_folders_of_another_run(tmp_path, monkeypatch):
    """The last folder (the stage's record) goes first and comes back last."""
    import pipeline.io.atomic as atomic

    paths = old_outputs(tmp_path)
    real_replace, calls = os.replace, []

    def dies_on_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for the kill
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dies_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dirs(*paths) as temps:
            for t in temps:
                (t / "run").write_text("new")
    assert (paths[0] / "run").read_text() == "new"  # replaced before the kill
    assert not paths[1].exists() and not paths[2].exists()  # the one being replaced, and the marker
