"""Append-only JSONL caches of a long run, checkpointed atomically and verified on resume.

Layout of a cache folder: one ``<stream>.jsonl`` per stream (a scoring run's members; ``fusion predict``'s
records, images and skipped files) and ``progress.json``::

    {"version": 2, "fingerprint": {...}, "done": images every stream holds,
     "streams": {name: {"bytes": length, "sha256": hex digest of those bytes, "done": images}}}

A batch is appended to its streams and fsynced BEFORE ``progress.json`` is replaced, so the checkpoint never claims
more than is on disk. On resume every stream must start with exactly the bytes the checkpoint describes (length and
SHA-256, hashed incrementally while writing): bytes past the checkpoint are a batch that was being written when the
run died and are cut off; a stream that is shorter or differs (deleted, truncated, edited) was not written by this
cache as recorded, so none of it is trusted: with independent streams (a scoring run's members) that stream alone
starts again from the first image, otherwise every stream does (a warning names the file). The run then continues
where each stream stopped, and the results equal an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion.coco.predictions import Predictions, load_predictions
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
    """Named append-only streams of bytes, each checkpointed with the number of images it holds.

    Args:
        folder: Where the cache lives.
        names: The streams, in order; also the file names (``<name>.jsonl``).
        fingerprint: What the cached results depend on (configs, images, shard); a cache with another fingerprint
            is never reused.
        independent: A damaged stream is redone alone (each stream is one member's results); otherwise the streams
            describe the same images together and a damaged one restarts them all.
    """

    def __init__(
        self, folder: str | Path, names: list[str], fingerprint: Mapping[str, Any], independent: bool = False
    ) -> None:
        self.folder = Path(folder)
        self.names = list(names)
        self.fingerprint = canonical(fingerprint)
        self.independent = independent
        self.done_by = dict.fromkeys(self.names, 0)
        self.lengths = dict.fromkeys(self.names, 0)
        self._digests = {name: hashlib.sha256() for name in self.names}

    @property
    def done(self) -> int:
        """Images every stream holds."""
        return min(self.done_by.values(), default=0)

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.json"

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.jsonl"

    def open(self, resume: bool = True) -> int:
        """Start or resume; returns how many images (in dataset order) every stream already holds.

        Raises:
            ValueError: ``resume`` and a cache made with another config or dataset exists, or its checkpoint is
                unreadable.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (resume and self.progress_path.exists()):
            self._reset(self.names)
            return 0
        progress = read_progress(self.progress_path)
        if progress.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.folder}: the cached predictions were made with another config or dataset; "
                "use another run name or disable resuming (--no-resume) to start afresh"
            )
        streams = progress.get("streams")
        if progress.get("version") != _VERSION or not isinstance(streams, dict):
            self._warn(f"{self.progress_path}: written by another version of the cache", "every image")
            self._reset(self.names)
            return 0
        problems = {name: p for name in self.names if (p := self._adopt(name, streams.get(name))) is not None}
        for name, problem in problems.items():
            self._warn(problem, f"member {name!r} on its images" if self.independent else "every image")
        if problems:
            self._reset(list(problems) if self.independent else self.names)
        return self.done

    def _warn(self, problem: str, whose: str) -> None:
        warnings.warn(
            f"{problem}: the cache no longer holds what its checkpoint recorded; running {whose} again",
            CacheMismatchWarning,
            stacklevel=3,
        )

    def _adopt(self, name: str, record: Any) -> str | None:
        """Take over the checkpoint of stream ``name`` when its file holds the recorded bytes (cutting off any
        unrecorded tail); else the problem, naming the file."""
        path = self.path(name)
        if not isinstance(record, dict) or not all(isinstance(record.get(k), int) for k in ("bytes", "done")):
            return f"{self.progress_path}: no checkpoint of {name!r}"
        if not path.is_file():
            return f"{path} is missing"
        digest, got = _hash_prefix(path, record["bytes"])
        if got < record["bytes"]:
            return f"{path} is shorter ({got} bytes) than the {record['bytes']} bytes checkpointed"
        if digest.hexdigest() != record.get("sha256"):
            return f"{path} differs from the checkpointed bytes (SHA-256 mismatch)"
        with open(path, "r+b") as handle:  # a batch being appended when the run died
            handle.truncate(record["bytes"])
        self.lengths[name], self._digests[name], self.done_by[name] = record["bytes"], digest, record["done"]
        return None

    def _reset(self, names: list[str]) -> None:
        for name in names:
            self.done_by[name], self.lengths[name], self._digests[name] = 0, 0, hashlib.sha256()
            self.path(name).write_bytes(b"")
        self._checkpoint()

    def append_bytes(self, chunks: Mapping[str, bytes], done: int) -> None:
        """Append one batch to the streams in ``chunks`` (``b""`` where one has nothing; with dependent streams
        every stream must be given), then checkpoint that they hold ``done`` images."""
        if not self.independent and set(chunks) != set(self.names):
            raise ValueError(f"a batch must be appended to every stream {self.names}, got {sorted(chunks)}")
        for name, data in chunks.items():
            with open(self.path(name), "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._digests[name].update(data)
            self.lengths[name] += len(data)
            self.done_by[name] = done
        self._checkpoint()

    def _checkpoint(self) -> None:
        streams = {
            name: {
                "bytes": self.lengths[name],
                "sha256": self._digests[name].hexdigest(),
                "done": self.done_by[name],
            }
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
    """The per-member prediction cache of one scoring process (one shard under torchrun); members are independent
    streams, so a member whose file was damaged is redone alone.

    Args:
        folder: Where the cache lives.
        names: The (virtual) members, in fusion order; also the file names.
        fingerprint: What the cached results depend on (member configs, images, shard).
    """

    def __init__(self, folder: str | Path, names: list[str], fingerprint: Mapping[str, Any]) -> None:
        super().__init__(folder, names, fingerprint, independent=True)

    @property
    def member_names(self) -> list[str]:
        return self.names

    def append(self, predictions: Mapping[str, Predictions], done: int) -> None:
        """Append one batch of the members in ``predictions``, then checkpoint that they hold ``done`` images."""
        self.append_bytes({name: preds.json_lines() for name, preds in predictions.items()}, done)

    def load(self) -> dict[str, Predictions]:
        """Every member's cached predictions."""
        return {name: load_predictions(self.path(name)) for name in self.names}
