"""``fusion.io``: atomic writes and the garbage-collector pause used while parsing results files."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys

import pytest

from fusion.io import RunLockedError, atomic_write_text, paused_gc, run_dir


def test_paused_gc_restores_the_collector_also_after_an_error() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("parse failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a caller's own pause is left in place
    finally:
        gc.enable()


def test_atomic_write_leaves_no_temporary_file(tmp_path) -> None:
    path = atomic_write_text(tmp_path / "sub" / "out.txt", "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/b", "a\\b", "x\x00"])
def test_run_dir_refuses_names_that_leave_the_runs_folder(tmp_path, name):
    with pytest.raises(ValueError, match="not a plain folder name"):
        run_dir("score", name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_dir_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="it is a file, not a folder"):
        run_dir("score", "x", tmp_path / "file")


def test_a_second_process_cannot_take_a_run_folder_until_the_first_dies(tmp_path):
    folder = tmp_path / "score" / "same"
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from fusion.io import lock_run_dir; lock_run_dir({str(folder)!r}); print('held', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {holder.pid}\)"):
            run_dir("score", "same", tmp_path, exist_ok=True)
        # Without resuming, a new name is picked instead of waiting.
        assert run_dir("score", "same", tmp_path).name == "same2"
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock, nothing stale is left
        holder.wait()
    assert run_dir("score", "same", tmp_path, exist_ok=True) == folder
    assert run_dir("score", "same", tmp_path, exist_ok=True) == folder  # re-entrant in this process


def test_a_folder_left_by_a_failed_start_is_reused_not_skipped(tmp_path):
    # A job that failed before writing anything leaves only its (released) lock: the next start takes the name.
    abandoned = tmp_path / "train" / "exp"
    abandoned.mkdir(parents=True)
    (abandoned / ".lock").write_text("12345")
    assert run_dir("train", "exp", tmp_path) == abandoned
    # A folder with results is never reused: the next free name is taken.
    (abandoned / "metrics.jsonl").write_text("{}\n")
    assert run_dir("train", "exp", tmp_path).name == "exp2"
