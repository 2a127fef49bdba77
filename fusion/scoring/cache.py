"""Append-only JSONL caches of a long run, checkpointed atomically and verified on resume.

Layout of a cache folder: one ``<stream>.jsonl`` per stream (a scoring run's members; ``fusion predict``'s
records, images and skipped files) and ``progress.json``::

    {"version": 2, "fingerprint": {...}, "done": images,
     "streams": {name: {"bytes": length, "sha256": hex digest of those bytes}}}

A batch is appended to every stream and fsynced BEFORE ``progress.json`` is replaced, so the checkpoint never
claims more than is on disk. On resume every stream must start with exactly the bytes the checkpoint describes
(length and SHA-256, hashed incrementally while writing): bytes past the checkpoint are a batch that was being
written when the run died and are cut off; a stream that is shorter or differs (deleted, truncated, edited) was
not written by this cache as recorded, so nothing cached is trusted and the run starts again from the first image
(with a warning naming the file). The run then continues after the ``done`` images, and the results equal an
uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion.coco.predictions import Predictions, read_jsonl
from fusion.io import atomic_write_json

__all__ = ["CacheMismatchWarning", "JsonlCache", "MemberCache", "canonical", "read_progress"]

_VERSION = 2
_CHUNK = 1 << 20


class CacheMismatchWarning(UserWarning):
    """A cached file does not hold the bytes its checkpoint recorded; the cached work is done again."""


def read_progress(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``; ``ValueError`` naming the file when it is empty or not the expected JSON."""
    try:
        progress = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: the run's checkpoint is unreadable ({_short(exc)}); "
            "delete the run folder or start afresh (--no-resume)"
        ) from None
    if not isinstance(progress, dict) or not isinstance(progress.get("done"), int):
        raise ValueError(
            f"{path}: the run's checkpoint is not a checkpoint of this version (no integer 'done'); "
            "delete the run folder or start afresh (--no-resume)"
        )
    return progress


def canonical(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """``fingerprint`` as it reads back from ``progress.json`` (JSON types, sorted keys), for comparison."""
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _hash_prefix(path: Path, length: int) -> tuple[Any, int]:
    """SHA-256 object fed with the first ``length`` bytes of ``path`` (fewer when shorter) and how many it got."""
    digest = hashlib.sha256()
    got = 0
    with open(path, "rb") as handle:
        while got < length:
            chunk = handle.read(min(_CHUNK, length - got))
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
    return digest, got


class JsonlCache:
    """Named append-only streams of bytes, checkpointed together with a count of ``done`` images.

    Args:
        folder: Where the cache lives.
        names: The streams, in order; also the file names (``<name>.jsonl``).
        fingerprint: What the cached results depend on (configs, images, shard); a cache with another fingerprint
            is never reused.
    """

    def __init__(self, folder: str | Path, names: list[str], fingerprint: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.names = list(names)
        self.fingerprint = canonical(fingerprint)
        self.done = 0
        self.lengths = dict.fromkeys(self.names, 0)
        self._digests = {name: hashlib.sha256() for name in self.names}

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.json"

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.jsonl"

    def open(self, resume: bool = True) -> int:
        """Start or resume; returns how many images (in dataset order) are already cached.

        Raises:
            ValueError: ``resume`` and a cache made with another config or dataset exists, or its checkpoint is
                unreadable.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if resume and self.progress_path.exists():
            progress = read_progress(self.progress_path)
            if progress.get("fingerprint") != self.fingerprint:
                raise ValueError(
                    f"{self.folder}: the cached predictions were made with another config or dataset; "
                    "use another run name or disable resuming (--no-resume) to start afresh"
                )
            problem = self._verify(progress)
            if problem is None:
                return self.done
            warnings.warn(
                f"{problem}: the cache no longer holds what its checkpoint recorded; running every image again",
                CacheMismatchWarning,
                stacklevel=2,
            )
        self._reset()
        return 0

    def _verify(self, progress: Mapping[str, Any]) -> str | None:
        """Adopt the checkpoint when every stream holds its recorded bytes (cutting off any unrecorded tail);
        else the first problem found, naming the file."""
        streams = progress.get("streams")
        if progress.get("version") != _VERSION or not isinstance(streams, dict):
            return f"{self.progress_path}: written by another version of the cache"
        digests, lengths = {}, {}
        for name in self.names:
            record, path = streams.get(name), self.path(name)
            if not isinstance(record, dict) or not isinstance(record.get("bytes"), int):
                return f"{self.progress_path}: no checkpoint of {name!r}"
            if not path.is_file():
                return f"{path} is missing"
            digest, got = _hash_prefix(path, record["bytes"])
            if got < record["bytes"]:
                return f"{path} is shorter ({got} bytes) than the {record['bytes']} bytes checkpointed"
            if digest.hexdigest() != record.get("sha256"):
                return f"{path} differs from the checkpointed bytes (SHA-256 mismatch)"
            digests[name], lengths[name] = digest, record["bytes"]
        for name, length in lengths.items():
            with open(self.path(name), "r+b") as handle:  # a batch being appended when the run died
                handle.truncate(length)
        self.done, self.lengths, self._digests = int(progress["done"]), lengths, digests
        return None

    def _reset(self) -> None:
        self.done = 0
        self.lengths = dict.fromkeys(self.names, 0)
        self._digests = {name: hashlib.sha256() for name in self.names}
        for name in self.names:
            self.path(name).write_bytes(b"")
        self._checkpoint()

    def append_bytes(self, chunks: Mapping[str, bytes], done: int) -> None:
        """Append one batch to every stream (``b""`` where a stream has nothing), then checkpoint ``done``."""
        for name in self.names:
            data = chunks.get(name, b"")
            with open(self.path(name), "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._digests[name].update(data)
            self.lengths[name] += len(data)
        self.done = done
        self._checkpoint()

    def _checkpoint(self) -> None:
        streams = {
            name: {"bytes": self.lengths[name], "sha256": self._digests[name].hexdigest()}
            for name in self.names
        }
        atomic_write_json(
            self.progress_path,
            {"version": _VERSION, "fingerprint": self.fingerprint, "done": self.done, "streams": streams},
        )

    def read_lines(self, name: str) -> list[str]:
        """The lines of one stream (as checkpointed: ``open`` cut off anything past it)."""
        return self.path(name).read_bytes()[: self.lengths[name]].decode("utf-8").splitlines()


class MemberCache(JsonlCache):
    """The per-member prediction cache of one scoring process (one shard under torchrun).

    Args:
        folder: Where the cache lives.
        names: The (virtual) members, in fusion order; also the file names.
        fingerprint: What the cached results depend on (member configs, images, shard).
    """

    @property
    def member_names(self) -> list[str]:
        return self.names

    def append(self, predictions: Mapping[str, Predictions], done: int) -> None:
        """Append one batch of every member (``Predictions``), then checkpoint ``done`` images."""
        self.append_bytes({name: predictions[name].json_lines() for name in self.names}, done)

    def load(self) -> dict[str, Predictions]:
        """Every member's cached predictions."""
        return {
            name: Predictions.from_records(read_jsonl(self.path(name)), source=str(self.path(name)))
            for name in self.names
        }
