"""Tuning: search fusion settings (policy, thresholds, member weights) that maximise fused COCO AP.

:func:`~fusion.tuning.search.tune` searches in memory; :func:`~fusion.tuning.heldout.tune_heldout` runs one search
per policy and fold and measures each on held-out images; :func:`~fusion.tuning.files.tune_files` (``fusion tune``)
does that on saved results files, writing ``best.yaml`` and the report.
"""

from __future__ import annotations

from fusion.tuning.files import tune_files
from fusion.tuning.heldout import PolicyResult, tune_heldout
from fusion.tuning.search import Scorer, SearchSpace, Trial, tune

__all__ = ["PolicyResult", "Scorer", "SearchSpace", "Trial", "tune", "tune_files", "tune_heldout"]
