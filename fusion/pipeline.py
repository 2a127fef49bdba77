"""The pipeline: calibrate members -> fuse -> calibrate the fused output, written once for every path.

:class:`Pipeline` has two entry points that give the same fused output:

* per batch, :meth:`Pipeline.__call__` on ``{member name: [Detections per image]}`` (``Ensemble.predict``,
  ``fusion predict``, the fused-calibrator fit of ``fusion calibrate``);
* column-wise, :meth:`Pipeline.run_columns` on ``{member name: Predictions}`` of a whole COCO dataset (``fusion
  score``, ``fuse``, ``tune``, ``demo``). It calibrates each member's score column in one call, splits it into
  the per-image :class:`~fusion.Detections` the per-batch path takes, and runs the same :meth:`Pipeline.fuse` and
  :meth:`Pipeline.calibrate_fused` on them; only at the end are the fused results rounded like a results file.

Both agree exactly because a calibrator maps each score on its own (``Calibrator.apply`` is element-wise): one
call on a whole column gives each detection the value a call on its batch gives it, and a policy fuses each image
on its own. ``tests/fusion/test_pipeline.py`` checks it.

Labels: the Detections the pipeline sees index its ``vocabulary`` (the ensemble's, or the dataset's in scoring),
while calibrators index the vocabulary they were fitted in (``Calibration.classes``); the two meet by class NAME
(a class the calibrators lack gets their default, all-class curve).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusion.calibration.calibrators import Calibrator
from fusion.calibration.dece import CalibrationProtocol
from fusion.calibration.sets import CalibratorSet, apply_calibrators, calibrate_fused
from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth
from fusion.coco.predictions import Predictions
from fusion.detections import Detections
from fusion.fuse import make_policy
from fusion.policy import FusionPolicy

__all__ = [
    "DEFAULT_POLICY",
    "Calibration",
    "Pipeline",
    "fuse_predictions",
    "vocabulary_weights",
]

# ensemble-boxes' own defaults for weighted_boxes_fusion.
DEFAULT_POLICY: dict[str, Any] = {"type": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}


@dataclass
class Calibration:
    """The calibrators of a pipeline, and how scoring measures D-ECE.

    Attributes:
        members: ``{member name: calibrator}``; members absent here are fused with their raw scores.
        classes: Class names the calibrators' labels index (``None``: the vocabulary of the detections they see).
        fused: Optional calibrator of the fused output (applied after fusion).
        protocol: The D-ECE protocol reported beside every value (``metrics.json``'s ``calibration_protocol``).
        sources: ``{member name or "fused": file}`` the calibrators came from, for the record.
        fused_fit: What ``fused`` was fitted under (``calibrators.json``'s ``fused_fit``: ``{"policy": {...},
            "members": [...]}``), or ``None`` when the file does not say.
    """

    members: dict[str, Calibrator] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    fused: Calibrator | None = None
    protocol: CalibrationProtocol = field(default_factory=CalibrationProtocol)
    sources: dict[str, str] = field(default_factory=dict)
    fused_fit: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        """Whether anything is calibrated (otherwise only D-ECE is measured)."""
        return bool(self.members) or self.fused is not None

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        protocol: CalibrationProtocol | None = None,
        fused: bool = True,
        members: bool = True,
        class_names: Sequence[str] | None = None,
    ) -> Calibration:
        """From a ``calibrators.json`` written by ``fusion calibrate`` (its members and/or its fused entry).

        Raises:
            ValueError: ``class_names`` given and the file was fitted for another class list.
        """
        found = CalibratorSet.load(path, class_names)
        sources = {name: str(path) for name in found} if members else {}
        if fused and found.fused is not None:
            sources["fused"] = str(path)
        return cls(
            dict(found) if members else {},
            found.classes,
            found.fused if fused else None,
            protocol or CalibrationProtocol(),
            sources,
            found.fused_fit if fused else None,
        )


class _Relabelled:
    """A calibrator seen through a label table: detections' labels -> the calibrator's labels (-1: default curve)."""

    def __init__(self, calibrator: Calibrator, table: Tensor) -> None:
        self.calibrator, self.table = calibrator, table

    def apply(self, scores: Tensor, labels: Tensor) -> Tensor:
        table = self.table.to(labels.device)
        mapped = torch.where(labels >= 0, table[labels.clamp(min=0)], torch.full_like(labels, -1))
        return self.calibrator.apply(scores, mapped)


@dataclass
class Pipeline:
    """Calibrate members -> fuse -> calibrate the fused output.

    Attributes:
        policy: The fusion policy (weights included, in :attr:`vocabulary`'s labels for per-class weights).
        calibration: The member and fused calibrators (none: the pipeline only fuses).
        vocabulary: What the detections' labels index; ``None``: the calibrators' own ``classes``.
    """

    policy: FusionPolicy
    calibration: Calibration = field(default_factory=Calibration)
    vocabulary: ClassMap | None = None

    @classmethod
    def build(
        cls,
        policy: Any = None,
        params: Mapping[str, Any] | None = None,
        calibration: Calibration | None = None,
        vocabulary: ClassMap | None = None,
    ) -> Pipeline:
        """From a policy spec (name, mapping, Params or instance; ``None`` = WBF at ensemble-boxes' defaults)."""
        built = make_policy(DEFAULT_POLICY if policy is None else policy, **dict(params or {}))
        return cls(built, calibration or Calibration(), vocabulary)

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """The fully resolved policy parameters (``metrics.json``'s ``policy``, ``calibrators.json``'s record)."""
        return self.policy.params.model_dump(mode="json")

    def check_fused_fit(self, where: str = "fused calibrator") -> None:
        """Warn when the fused calibrator was fitted under another policy or other parameters than this one's.

        A fused calibrator maps the score distribution of ONE fusion: under another policy, IoU threshold or set
        of weights the fused scores mean something else and its curve no longer calibrates them.
        """
        fit = self.calibration.fused_fit
        if self.calibration.fused is None or not fit or "policy" not in fit:
            return
        if fit["policy"] != self.describe():
            differs = sorted(
                k
                for k in set(fit["policy"]) | set(self.describe())
                if fit["policy"].get(k) != self.describe().get(k)
            )
            warnings.warn(
                f"{where}: fitted under fusion {fit['policy']} but applied under {self.describe()} "
                f"(differs in {', '.join(differs)}); refit it with `fusion calibrate` for this policy",
                UserWarning,
                stacklevel=2,
            )

    def uncalibrated(self) -> Pipeline:
        """The same fusion without any calibrator (the baseline a calibrated run is compared with)."""
        return dataclasses.replace(self, calibration=Calibration(protocol=self.calibration.protocol))

    def with_policy(self, policy: Any, params: Mapping[str, Any] | None = None) -> Pipeline:
        """The same calibrators under another policy (``tune``'s trials)."""
        return dataclasses.replace(self, policy=make_policy(policy, **dict(params or {})))

    def in_vocabulary(self, class_map: ClassMap) -> Pipeline:
        """The same pipeline on detections whose labels index ``class_map`` (a dataset's), matched by name.

        Per-class weights ``[M][C]`` are re-indexed (a class this vocabulary lacks gets weight 1: no member predicts
        it); calibrators keep their own classes and are reached through the new labels.
        """
        if self.vocabulary is None or tuple(self.vocabulary.names) == tuple(class_map.names):
            return dataclasses.replace(self, vocabulary=class_map)
        weights = vocabulary_weights(self.policy.params.weights, self.vocabulary, class_map)
        return dataclasses.replace(
            self, policy=make_policy(self.policy.params, weights=weights), vocabulary=class_map
        )

    def _calibrator(self, calibrator: Calibrator | None, vocabulary: ClassMap | None) -> Any:
        """``calibrator`` reached from labels of ``vocabulary`` (itself when the vocabularies agree)."""
        classes = self.calibration.classes
        if calibrator is None or vocabulary is None or classes is None or tuple(vocabulary.names) == classes:
            return calibrator
        return _Relabelled(calibrator, vocabulary.translation_to(ClassMap(list(classes)), strict=False))

    # ------------------------------------------------------------------ per batch
    def calibrate(self, per_member: Mapping[str, Sequence[Detections]]) -> dict[str, list[Detections]]:
        """Each member's detections ``{name: [Detections per image]}`` through its calibrator, exactly once.

        Rows come back marked ``extras["calibrated"]`` and marked rows are left alone (see
        :mod:`fusion.calibration.sets`); without member calibrators the input is returned as it is.

        Raises:
            ValueError: a calibrator names a member that ``per_member`` lacks.
        """
        if not self.calibration.members:
            return {name: list(dets) for name, dets in per_member.items()}
        calibrators = {
            name: self._calibrator(c, self.vocabulary) for name, c in self.calibration.members.items()
        }
        return apply_calibrators(per_member, calibrators)

    def fuse(self, per_member: Mapping[str, Sequence[Detections]]) -> list[Detections]:
        """Fuse ``{name: [Detections per image]}`` (fusion order = the mapping's order) into one per image."""
        if not per_member:
            return []
        return self.policy.fuse_batch([list(per_image) for per_image in zip(*per_member.values())])

    def calibrate_fused(self, fused: Sequence[Detections]) -> list[Detections]:
        """The fused scores through the fused calibrator, each image re-sorted by score; unchanged without one."""
        if self.calibration.fused is None:
            return list(fused)
        return calibrate_fused(fused, self._calibrator(self.calibration.fused, self.vocabulary))

    def __call__(self, per_member: Mapping[str, Sequence[Detections]]) -> list[Detections]:
        """Calibrate members, fuse, calibrate the fused output: one :class:`Detections` per image."""
        return self.calibrate_fused(self.fuse(self.calibrate(per_member)))

    # ------------------------------------------------------------------ column-wise
    def _dataset_vocabulary(self, gt: CocoGroundTruth) -> None:
        if self.vocabulary is not None and tuple(self.vocabulary.names) != tuple(gt.class_map.names):
            raise ValueError(
                "the pipeline's labels index another vocabulary than the dataset's categories; "
                "use pipeline.in_vocabulary(gt.class_map) for column-wise runs"
            )

    def calibrate_columns(
        self, members: Mapping[str, Predictions], gt: CocoGroundTruth
    ) -> dict[str, Predictions]:
        """Each member's results (dataset category ids) with calibrated scores, one call per member.

        Boxes, ids and order are unchanged; members without a calibrator are returned as they are.

        Raises:
            ValueError: a calibrator names a member that is not in ``members``.
        """
        self._dataset_vocabulary(gt)
        unknown = sorted(set(self.calibration.members) - set(members))
        if unknown:
            raise ValueError(
                f"calibrators given for member(s) {unknown} that are not in this run; its members are {sorted(members)}"
            )
        out = {}
        for name, preds in members.items():
            calibrator = self._calibrator(self.calibration.members.get(name), gt.class_map)
            if calibrator is None or len(preds) == 0:
                out[name] = preds
                continue
            labels = gt.class_map.labels_from_ids(torch.from_numpy(np.asarray(preds.category_ids, np.int64)))
            scores = calibrator.apply(torch.from_numpy(preds.scores), labels).double().numpy()
            out[name] = Predictions(preds.image_ids, preds.category_ids, preds.boxes, scores)
        return out

    def fuse_columns(
        self, calibrated: Mapping[str, Predictions], gt: CocoGroundTruth, device: str | torch.device = "cpu"
    ) -> Predictions:
        """Fuse already calibrated members image by image, then calibrate the fused output (rounded at the end)."""
        self._dataset_vocabulary(gt)
        if not calibrated:
            raise ValueError("fusion needs at least one member")
        per_member = {name: preds.split_by_image(gt, device=device) for name, preds in calibrated.items()}
        fused = self.calibrate_fused(self.fuse(per_member))
        return Predictions.from_detections(fused, gt.image_ids, gt.class_map)

    def run_columns(
        self, members: Mapping[str, Predictions], gt: CocoGroundTruth, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, Predictions], Predictions]:
        """The whole pipeline on a dataset: ``(calibrated members, fused results rounded like a results file)``."""
        calibrated = self.calibrate_columns(members, gt)
        return calibrated, self.fuse_columns(calibrated, gt, device)


def vocabulary_weights(weights: Any, source: ClassMap, target: ClassMap) -> Any:
    """Per-class weights ``[M][C_source]`` -> ``[M][C_target]`` by class name (flat ``[M]`` weights unchanged).

    A ``target`` class that ``source`` lacks gets weight 1 (no member ever predicts it, so it is never used).
    """
    if not weights or not isinstance(weights[0], list | tuple):
        return weights
    table = target.translation_to(source, strict=False).tolist()
    return [[float(row[j]) if j >= 0 else 1.0 for j in table] for row in weights]


def fuse_predictions(
    members: Sequence[Predictions],
    gt: CocoGroundTruth,
    policy: Any = None,
    device: str = "cpu",
    **params: Any,
) -> Predictions:
    """Fuse members' results image by image (an uncalibrated :class:`Pipeline`, column-wise).

    Args:
        members: One :class:`Predictions` per member (category ids of ``gt``).
        gt: The ground truth: its images (all of them, also those without detections) and their sizes.
        policy: Policy name, mapping with ``type``, Params or instance; ``None`` = WBF at ensemble-boxes' defaults.
        device: Where fusion runs.
        **params: Policy parameters (e.g. ``weights=[2, 1, 1]``).

    Returns:
        The fused results, rounded like saved results files.
    """
    pipeline = Pipeline.build(policy, params, vocabulary=gt.class_map)
    return pipeline.fuse_columns({str(k): m for k, m in enumerate(members)}, gt, device)
