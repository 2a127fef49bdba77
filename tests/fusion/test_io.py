"""``fusion.io``: atomic writes and the garbage-collector pause used while parsing results files."""

from __future__ import annotations

import gc

import pytest

from fusion.io import atomic_write_text, paused_gc


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
