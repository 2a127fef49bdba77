"""Files and run folders: atomic writes and ``runs/<verb>/<name>`` output directories."""

from __future__ import annotations

import gc
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_yaml",
    "paused_gc",
    "run_dir",
]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (restored on exit, also on error).

    Parsing a results file creates millions of dicts and lists, none of them garbage, and every few hundred
    allocations the collector re-scans them: a 40 MB COCO results file parses in 0.98 s with it and 0.38 s without.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def atomic_write_yaml(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def run_dir(verb: str, name: str, root: str | Path = "runs", exist_ok: bool = False) -> Path:
    """Create and return ``<root>/<verb>/<name>``.

    Args:
        verb: The command (``predict``, ``score``, ``fuse``, ...).
        name: The run name; when the folder exists and ``exist_ok`` is False, ``name2``, ``name3``, ... is used
            instead (ultralytics' habit), so earlier results are never overwritten.
        root: Where runs live.
        exist_ok: Reuse an existing folder (needed to resume an interrupted run).
    """
    base = Path(root) / verb
    candidate = base / name
    if not exist_ok:
        suffix = 2
        while candidate.exists():
            candidate = base / f"{name}{suffix}"
            suffix += 1
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate
