"""Dataset runs: score an ensemble on a COCO dataset (cached, resumable, ``torchrun``-sharded), or fuse saved files.

* :func:`score` (``fusion score``): run the members over a COCO dataset, cache, fuse, evaluate;
* :func:`~fusion.scoring.fuse_files.fuse_files` (``fusion fuse``): the same from saved COCO results files;
* :func:`~fusion.scoring.run.fuse_and_evaluate` and :class:`~fusion.scoring.run.ScoredRun`: the step both share
  and its result; :mod:`fusion.scoring.report` writes it (``metrics.json``, ``report.md``, plots).

COCO formats and evaluation live in :mod:`fusion.coco`; the search of fusion settings in :mod:`fusion.tuning`.
"""

from __future__ import annotations

from fusion.scoring.fuse_files import fuse_files
from fusion.scoring.run import ScoredRun, fuse_and_evaluate
from fusion.scoring.score import score

__all__ = ["ScoredRun", "fuse_and_evaluate", "fuse_files", "score"]
