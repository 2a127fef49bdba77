"""Per-member prediction cache of a scoring run: JSONL appended per batch, with an atomic checkpoint.

Layout of ``<run>/cache/``: ``<member>.jsonl`` (COCO results records, one per line) and ``progress.json``
(``{"fingerprint", "done", "offsets": {member: bytes}}``). A batch is appended to every member file and fsynced
BEFORE ``progress.json`` is replaced, so the checkpoint never claims more than is on disk. On resume every file is
truncated back to its checkpointed length (dropping a batch that was being written when the run died) and the run
continues after the ``done`` images; the results equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion.coco.predictions import Predictions, read_jsonl
from fusion.io import atomic_write_json

__all__ = ["MemberCache"]


class MemberCache:
    """The cache of one process (one shard under torchrun).

    Args:
        folder: Where the cache lives.
        member_names: The (virtual) members, in fusion order; also the file names.
        fingerprint: What the cached results depend on (member configs, images, shard); a cache with another
            fingerprint is never reused.
    """

    def __init__(self, folder: str | Path, member_names: list[str], fingerprint: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.member_names = list(member_names)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.done = 0
        self.offsets = dict.fromkeys(self.member_names, 0)

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.json"

    def path(self, member: str) -> Path:
        return self.folder / f"{member}.jsonl"

    def open(self, resume: bool = True) -> int:
        """Start or resume; returns how many images (in dataset order) are already cached.

        Raises:
            ValueError: ``resume`` and a cache made with another config or dataset exists.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if resume and self.progress_path.exists():
            progress = json.loads(self.progress_path.read_text())
            if progress.get("fingerprint") != self.fingerprint:
                raise ValueError(
                    f"{self.folder}: the cached predictions were made with another config or dataset; "
                    "use another run name or disable resuming (--no-resume) to start afresh"
                )
            self.done = int(progress["done"])
            self.offsets = {name: int(progress["offsets"][name]) for name in self.member_names}
            for name, offset in self.offsets.items():
                with open(
                    self.path(name), "ab"
                ) as handle:  # creates it if an earlier run died before writing
                    handle.truncate(offset)
            return self.done
        self.done = 0
        self.offsets = dict.fromkeys(self.member_names, 0)
        for name in self.member_names:
            self.path(name).write_bytes(b"")
        self._checkpoint()
        return 0

    def append(self, predictions: Mapping[str, Predictions], done: int) -> None:
        """Append one batch of every member, then checkpoint ``done`` images."""
        for name in self.member_names:
            with open(self.path(name), "ab") as handle:
                handle.write(predictions[name].json_lines())
                handle.flush()
                os.fsync(handle.fileno())
                self.offsets[name] = handle.tell()
        self.done = done
        self._checkpoint()

    def _checkpoint(self) -> None:
        atomic_write_json(
            self.progress_path, {"fingerprint": self.fingerprint, "done": self.done, "offsets": self.offsets}
        )

    def load(self) -> dict[str, Predictions]:
        """Every member's cached predictions."""
        return {
            name: Predictions.from_records(read_jsonl(self.path(name)), source=str(self.path(name)))
            for name in self.member_names
        }
