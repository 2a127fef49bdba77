"""COCO formats and evaluation: annotation files, results files, and the 12 COCO bbox stats.

* :func:`~fusion.coco.annotations.load_annotations` -> :class:`~fusion.coco.annotations.CocoGroundTruth`;
* :func:`~fusion.coco.predictions.load_predictions` -> :class:`~fusion.coco.predictions.Predictions` (columns);
* :func:`~fusion.coco.evaluate.evaluate`: the 12 COCO stats with an exact fast backend;
* :func:`~fusion.coco.rounding.round_decimals`: rounding like a results file written with Python's ``round``.
"""

from __future__ import annotations

from fusion.coco.annotations import CocoGroundTruth, load_annotations
from fusion.coco.evaluate import STAT_KEYS, EvalResult, evaluate
from fusion.coco.predictions import Predictions, load_predictions

__all__ = [
    "STAT_KEYS",
    "CocoGroundTruth",
    "EvalResult",
    "Predictions",
    "evaluate",
    "load_annotations",
    "load_predictions",
]
