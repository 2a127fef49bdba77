"""Calibration measured on images it was not fitted on: per-fold fits, held-out numbers, the final fit.

:class:`CalibrationTask` holds what ``fusion calibrate`` works on: the ground truth, each member's saved results and
the ensemble's (uncalibrated) :class:`~fusion.pipeline.Pipeline`. For a :class:`Candidate` (a method, applied to the
members and/or to the fused output) :meth:`CalibrationTask.fit` fits a :class:`~fusion.calibration.CalibratorSet` on
some images and :meth:`CalibrationTask.measure` runs the pipeline with it on other images: held-out fused AP and
D-ECE, every member's D-ECE, and the ties the calibrators introduced. :func:`cross_validate` does both over the folds
of :mod:`fusion.holdout` and summarises each candidate as a :class:`~fusion.calibration.select.MethodResult`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fusion.calibration.calibrators import CALIBRATORS, Calibrator, fit_calibrator, introduced_ties
from fusion.calibration.dece import CalibrationProtocol, MatchedPairs, matched_pairs
from fusion.calibration.select import MethodResult
from fusion.calibration.sets import CalibratorSet
from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth
from fusion.coco.evaluate import evaluate
from fusion.coco.predictions import Predictions
from fusion.detections import Detections
from fusion.holdout import Fold, spread
from fusion.pipeline import Calibration, Pipeline

__all__ = ["CalibrationTask", "Candidate", "FoldNumbers", "auto_candidates", "cross_validate"]


@dataclass(frozen=True)
class Candidate:
    """A calibration method and where it is applied: the members before fusion, the fused output after it."""

    method: str
    members: bool = True
    fused: bool = True

    @property
    def name(self) -> str:
        if self.members and self.fused:
            return self.method
        return f"{self.method}, {'members' if self.members else 'fused'} only"


def auto_candidates(fused: bool = True) -> list[Candidate]:
    """What ``--method auto`` compares: every method on members + fused output, and (with a fused calibrator) every
    method on the fused output alone, which cannot reorder a class's detections and so keeps AP."""
    out = [Candidate(m, True, fused) for m in CALIBRATORS]
    if fused:
        out += [Candidate(m, False, True) for m in CALIBRATORS]
    return out


@dataclass
class FoldNumbers:
    """Held-out numbers of one fit: fused AP and D-ECE, each member's D-ECE, and introduced ties."""

    ap: float
    dece: float
    members: dict[str, float] = field(default_factory=dict)
    ties: int = 0


@dataclass
class CalibrationTask:
    """Members' saved results, the ground truth and the ensemble's pipeline: everything fits and measures need.

    Attributes:
        gt: The ground truth (all images any fold uses).
        members: ``{member name: results}`` in ``gt``'s category ids, in the ensemble's fusion order.
        pipeline: The ensemble's policy and weights, uncalibrated; labels index ``vocabulary``.
        vocabulary: The ensemble's classes (what calibrators' labels index).
        iou_thr: IoU for a detection to count as correct when fitting.
        per_class: Fit per-class curves too, blended with the class-agnostic one by ``shrinkage``.
        shrinkage: Pseudo-count of the class-agnostic curve in a class curve's blend.
        protocol: How D-ECE is measured.
        backend: COCO evaluation backend.
    """

    gt: CocoGroundTruth
    members: dict[str, Predictions]
    pipeline: Pipeline
    vocabulary: ClassMap
    iou_thr: float = 0.5
    per_class: bool = False
    shrinkage: float = 100.0
    protocol: CalibrationProtocol = field(default_factory=CalibrationProtocol)
    backend: str = "auto"
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from fusion.scoring.run import ground_truth_detections

        table = self.gt.class_map.translation_to(self.vocabulary, strict=False)
        self._table = table
        self._position = {int(i): p for p, i in enumerate(self.gt.image_ids.tolist())}
        self._truth = [t.replace(labels=table[t.labels]) for t in ground_truth_detections(self.gt)]
        self._dets: dict[str, list[Detections]] = {}
        for name, preds in self.members.items():
            dets = preds.split_by_image(self.gt)
            for det, image_id in zip(dets, self.gt.image_ids.tolist()):
                if bool((table[det.labels] < 0).any()):
                    raise ValueError(
                        f"member {name!r}: image {image_id} has detections of a class the ensemble vocabulary lacks"
                    )
            self._dets[name] = [d.replace(labels=table[d.labels]) for d in dets]

    @property
    def image_ids(self) -> list[int]:
        return [int(i) for i in self.gt.image_ids.tolist()]

    # ------------------------------------------------------------------ fitting
    def _rows(self, ids: Sequence[Hashable]) -> list[int]:
        return [self._position[int(i)] for i in ids]

    def _pairs(self, key: Any, ids: Sequence[Hashable], detections: Any) -> MatchedPairs:
        """Matched pairs of ``detections()`` (one per image of ``ids``), cached under ``(key, ids)``."""
        cache_key = ("pairs", key, tuple(ids))
        if cache_key not in self._cache:
            truth = [self._truth[r] for r in self._rows(ids)]
            self._cache[cache_key] = matched_pairs(detections(), truth, self.iou_thr)
        return self._cache[cache_key]

    def _fit(self, method: str, pairs: MatchedPairs, where: str) -> Calibrator:
        if len(pairs) == 0:
            raise ValueError(f"{where}: no detections to fit a calibrator on")
        return fit_calibrator(
            method, pairs.scores, pairs.is_tp, pairs.labels, self.per_class, shrinkage=self.shrinkage
        )

    def fit(self, candidate: Candidate, ids: Sequence[Hashable]) -> CalibratorSet:
        """Fit ``candidate``'s calibrators on the images ``ids`` (member curves on each member's raw detections, the
        fused curve on the fusion of the calibrated members, as the ensemble produces it)."""
        rows = self._rows(ids)
        members: dict[str, Calibrator] = {}
        if candidate.members:
            for name, dets in self._dets.items():
                pairs = self._pairs(name, ids, lambda d=dets: [d[r] for r in rows])
                members[name] = self._fit(candidate.method, pairs, f"member {name!r}")
        fused = None
        if candidate.fused:
            pipe = Pipeline(self.pipeline.policy, Calibration(members, tuple(self.vocabulary.names)))
            batch = {name: [dets[r] for r in rows] for name, dets in self._dets.items()}
            key = ("fused", candidate.method if candidate.members else None)
            pairs = self._pairs(key, ids, lambda: pipe.fuse(pipe.calibrate(batch)))
            fused = self._fit(candidate.method, pairs, "fused output")
        fit = {"policy": self.pipeline.describe(), "members": list(self.members)} if fused else None
        record = {"iou_thr": self.iou_thr, "method": candidate.method, "per_class": self.per_class}
        if self.per_class:
            record["shrinkage"] = self.shrinkage
        return CalibratorSet(members, self.vocabulary.names, record, fused, fit)

    # ------------------------------------------------------------------ measuring
    def _subset(self, ids: Sequence[Hashable]) -> tuple[CocoGroundTruth, dict[str, Predictions]]:
        key = ("subset", tuple(ids))
        if key not in self._cache:
            wanted = np.asarray(sorted(int(i) for i in ids), dtype=np.int64)
            members = {n: p.select(np.isin(p.image_ids, wanted)) for n, p in self.members.items()}
            self._cache[key] = (self.gt.subset(wanted), members)
        return self._cache[key]

    def measure(self, calibrators: CalibratorSet | None, ids: Sequence[Hashable]) -> FoldNumbers:
        """Run the pipeline with ``calibrators`` (``None``: uncalibrated) on the images ``ids`` and measure it."""
        from fusion.scoring.run import dece_of

        gt, members = self._subset(ids)
        calibration = Calibration(protocol=self.protocol)
        if calibrators is not None:
            calibration = Calibration(
                dict(calibrators), tuple(self.vocabulary.names), calibrators.fused, self.protocol
            )
        pipe = Pipeline(self.pipeline.policy, calibration, self.vocabulary).in_vocabulary(gt.class_map)
        calibrated = pipe.calibrate_columns(members, gt)
        # Without member calibrators the fusion (and the members' D-ECE) is the uncalibrated one: computed once.
        key = ("raw fusion", tuple(ids)) if not calibration.members else None
        if key not in self._cache:
            before = pipe.fuse({n: c.split_by_image(gt) for n, c in calibrated.items()})
            member_dece = {n: _value(dece_of(c, gt, self.protocol)) for n, c in calibrated.items()}
            if key is not None:
                self._cache[key] = before, member_dece
        else:
            before, member_dece = self._cache[key]
        fused = Predictions.from_detections(pipe.calibrate_fused(before), gt.image_ids, gt.class_map)
        ties = 0
        for name in calibration.members:
            raw, cal = members[name], calibrated[name]
            ties += introduced_ties(
                torch.from_numpy(raw.scores), torch.from_numpy(cal.scores), torch.from_numpy(raw.category_ids)
            )
        if calibration.fused is not None and before:
            scores = torch.cat([d.scores for d in before])
            labels = self._table[torch.cat([d.labels for d in before])]
            ties += introduced_ties(scores, calibration.fused.apply(scores, labels), labels)
        return FoldNumbers(
            ap=evaluate(gt, fused, self.backend, source="fused").stats["AP"],
            dece=_value(dece_of(fused, gt, self.protocol)),
            members=member_dece,
            ties=ties,
        )


def _value(result: Any) -> float:
    return float(result.value)


@dataclass
class CrossValidation:
    """Per-candidate held-out summaries and the uncalibrated baseline over the same folds."""

    results: dict[str, MethodResult]
    members: dict[str, dict[str, Any]]
    uncalibrated: MethodResult
    uncalibrated_members: dict[str, Any]


def cross_validate(
    task: CalibrationTask, candidates: Sequence[Candidate], folds: Sequence[Fold], progress: Any = None
) -> CrossValidation:
    """Fit every candidate on each fold's ``fit`` images and measure it on its ``held_out`` images.

    Raises:
        ValueError: a fold's fit images give a member (or the fusion) nothing to fit on; the message names the fold.
    """
    per: dict[str, list[FoldNumbers]] = {c.name: [] for c in candidates}
    base: list[FoldNumbers] = []
    for k, fold in enumerate(folds):
        base.append(task.measure(None, fold.held_out))
        for candidate in candidates:
            try:
                fitted = task.fit(candidate, fold.fit)
            except ValueError as exc:
                raise ValueError(f"fold {k + 1}/{len(folds)}, {candidate.name}: {exc}") from None
            per[candidate.name].append(task.measure(fitted, fold.held_out))
            if progress is not None:
                progress()
    return CrossValidation(
        {name: _summary(numbers) for name, numbers in per.items()},
        {name: _member_spreads(numbers) for name, numbers in per.items()},
        _summary(base),
        _member_spreads(base),
    )


def _summary(numbers: Sequence[FoldNumbers]) -> MethodResult:
    return MethodResult(
        spread([n.dece for n in numbers]), spread([n.ap for n in numbers]), sum(n.ties for n in numbers)
    )


def _member_spreads(numbers: Sequence[FoldNumbers]) -> dict[str, Any]:
    return {name: spread([n.members[name] for n in numbers]) for name in numbers[0].members}
