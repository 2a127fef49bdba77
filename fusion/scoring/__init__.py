"""Batch dataset scoring: COCO mAP of every ensemble member and of the fused output, from models or saved files.

* :func:`score` (``fusion score``): run the members over a COCO dataset (cached, resumable, ``torchrun``-sharded),
  fuse, evaluate;
* :func:`~fusion.scoring.fuse_files.fuse_files` (``fusion fuse``): the same from saved COCO results files;
* :func:`~fusion.scoring.tune.tune` (``fusion tune``): search fusion settings that maximise fused AP;
* :func:`~fusion.scoring.evaluate.evaluate`: the 12 COCO stats with an exact fast backend.
"""

from __future__ import annotations

from fusion.scoring.annotations import CocoGroundTruth, load_annotations
from fusion.scoring.evaluate import STAT_KEYS, EvalResult, evaluate
from fusion.scoring.fuse_files import fuse_files, fuse_predictions
from fusion.scoring.predictions import Predictions, load_predictions
from fusion.scoring.score import score

__all__ = [
    "STAT_KEYS",
    "CocoGroundTruth",
    "EvalResult",
    "Predictions",
    "evaluate",
    "fuse_files",
    "fuse_predictions",
    "load_annotations",
    "load_predictions",
    "score",
]
