"""Tuning: search fusion settings (policy, thresholds, member weights) that maximise fused COCO AP.

:func:`~fusion.tuning.search.tune` searches in memory; :func:`~fusion.tuning.search.tune_files` (``fusion tune``)
on saved results files, writing ``best.yaml``.
"""

from __future__ import annotations

from fusion.tuning.search import SearchSpace, Trial, tune, tune_files

__all__ = ["SearchSpace", "Trial", "tune", "tune_files"]
