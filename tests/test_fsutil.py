"""swap_dir: the one way whole-directory artifacts are replaced (datasets, exports, checkpoints, models)."""

import os

import pytest

from twotower import fsutil
from twotower.fsutil import swap_dir


def make(path, text):
    path.mkdir()
    (path / "f").write_text(text)


def test_swap_replaces_and_removes_the_previous_copy(tmp_path):
    out, tmp, old = tmp_path / "out", tmp_path / ".out.tmp", tmp_path / ".out.old"
    make(out, "v1")
    make(tmp, "v2")
    swap_dir(tmp, out, old)
    assert (out / "f").read_text() == "v2" and not tmp.exists() and not old.exists()


def test_interrupted_after_the_first_rename_the_swap_finishes(tmp_path, monkeypatch):
    out, tmp, old = tmp_path / "out", tmp_path / ".out.tmp", tmp_path / ".out.old"
    make(out, "v1")
    make(tmp, "v2")
    real, calls = os.replace, []

    def rename_then_interrupt(src, dst):
        real(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(fsutil.os, "replace", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        swap_dir(tmp, out, old)
    assert (out / "f").read_text() == "v2" and not old.exists()


def test_a_lone_older_copy_is_kept_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    """A kill between the renames left only `old` (readers fall back to it); a save that then fails must not
    delete it, and one that succeeds does."""
    out, tmp, old = tmp_path / "out", tmp_path / ".out.tmp", tmp_path / ".out.old"
    make(old, "v1")
    make(tmp, "v2")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fsutil.os, "replace", fail)
    with pytest.raises(OSError):
        swap_dir(tmp, out, old)
    assert (old / "f").read_text() == "v1" and not out.exists()
    monkeypatch.undo()
    make(tmp, "v3")
    swap_dir(tmp, out, old)
    assert (out / "f").read_text() == "v3" and not old.exists()


DEAD_PID = 4_194_305  # above Linux's largest pid_max: never a live process


def test_leftovers_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    """Only `.<name>.tmp|old-<pid>[-x]` directories of dead pids holding nothing but the writer's files go."""
    tmp, old = fsutil.sibling_names(tmp_path / "out")
    assert tmp.name.startswith(f".out.tmp-{os.getpid()}-") and old.name.startswith(f".out.old-{os.getpid()}-")
    make(dead := tmp_path / f".out.tmp-{DEAD_PID}-ab_1", "x")
    (dead_old := tmp_path / f".out.old-{DEAD_PID}").mkdir()
    make(other_name := tmp_path / f".other.tmp-{DEAD_PID}", "x")
    (foreign := tmp_path / f".out.tmp-{DEAD_PID - 1}").mkdir()
    (foreign / "thesis.tex").write_text("not ours")
    (not_a_dir := tmp_path / f".out.tmp-{DEAD_PID - 2}").write_text("a file")
    live = tmp_path / f".out.tmp-{os.getppid()}"  # our parent (pytest's launcher) is alive
    make(live, "x")
    removed = fsutil.remove_leftovers(tmp_path, {"f"}, "out", what="thing", job="test")
    assert sorted(removed) == sorted([dead, dead_old, tmp, old])  # our own pid on a leftover: another namespace
    assert other_name.exists() and foreign.exists() and not_a_dir.exists() and live.exists()
    assert fsutil.remove_leftovers(tmp_path, {"f"}) == [other_name]  # any name
    assert fsutil.pid_alive(os.getppid()) and not fsutil.pid_alive(DEAD_PID) and not fsutil.pid_alive(2**80)
