"""The pipeline: calibrate members -> fuse -> calibrate the fused output.

Column-wise (whole dataset) half, used by the scoring commands.

The scoring commands (``score``, ``fuse``, ``tune``) hold results as :class:`Predictions` columns in the DATASET's
category ids, while calibrators index the vocabulary they were fitted in (``CalibratorSet.classes``, the ensemble's).
The two meet here by class NAME, once per member, in one vectorised call over the whole dataset; a dataset class the
calibrator's vocabulary lacks gets its default (all-class) curve.

Calibrated scores are rounded like saved results (:data:`~fusion.coco.predictions.SCORE_DECIMALS`), so a fused
set evaluated in memory equals the ``fused.json`` written beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusion.calibration.calibrators import Calibrator
from fusion.calibration.dece import CalibrationProtocol
from fusion.calibration.sets import CalibratorSet
from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth
from fusion.coco.predictions import SCORE_DECIMALS, Predictions
from fusion.coco.rounding import round_decimals
from fusion.fuse import fuse_batch, make_policy

__all__ = [
    "DEFAULT_POLICY",
    "Calibration",
    "calibrate_members",
    "calibrate_predictions",
    "calibrator_labels",
    "fuse_predictions",
    "policy_description",
]


@dataclass
class Calibration:
    """What a scoring run calibrates with, and how it measures D-ECE.

    Attributes:
        members: ``{member name: calibrator}``; members absent here are fused with their raw scores.
        classes: Class names the calibrators' labels index (``None``: the dataset's own categories, in file order).
        fused: Optional calibrator of the fused output (applied after fusion).
        protocol: The D-ECE protocol reported beside every value (``metrics.json``'s ``calibration_protocol``).
        sources: ``{member name or "fused": file}`` the calibrators came from, for the record.
    """

    members: dict[str, Calibrator] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    fused: Calibrator | None = None
    protocol: CalibrationProtocol = field(default_factory=CalibrationProtocol)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether anything is calibrated (otherwise only D-ECE is measured)."""
        return bool(self.members) or self.fused is not None

    @classmethod
    def from_file(
        cls, path: str | Path, protocol: CalibrationProtocol | None = None, fused: bool = True
    ) -> Calibration:
        """From a ``calibrators.json`` written by ``fusion calibrate`` (every member in it, and its fused entry)."""
        found = CalibratorSet.load(path)
        names = {name: str(path) for name in found}
        if fused and found.fused is not None:
            names["fused"] = str(path)
        return cls(
            dict(found),
            found.classes,
            found.fused if fused else None,
            protocol or CalibrationProtocol(),
            names,
        )


def calibrator_labels(category_ids: np.ndarray, gt: CocoGroundTruth, classes: Sequence[str] | None) -> Tensor:
    """Dataset category ids ``[N]`` -> int64 labels of ``classes`` ``[N]``, matched by name; -1 where absent.

    ``classes=None`` means the calibrators were fitted in the dataset's own vocabulary.
    """
    labels = gt.class_map.labels_from_ids(torch.from_numpy(np.asarray(category_ids, dtype=np.int64)))
    if classes is None:
        return labels
    table = gt.class_map.translation_to(ClassMap(list(classes)), strict=False)
    return torch.where(labels >= 0, table[labels.clamp(min=0)], torch.full_like(labels, -1))


def calibrate_predictions(
    predictions: Predictions,
    calibrator: Calibrator | None,
    gt: CocoGroundTruth,
    classes: Sequence[str] | None = None,
) -> Predictions:
    """``predictions`` with calibrated scores (boxes, ids and order unchanged); the same object when no calibrator."""
    if calibrator is None or len(predictions) == 0:
        return predictions
    labels = calibrator_labels(predictions.category_ids, gt, classes)
    scores = calibrator.apply(torch.from_numpy(predictions.scores), labels).double().numpy()
    return Predictions(
        predictions.image_ids,
        predictions.category_ids,
        predictions.boxes,
        round_decimals(scores, SCORE_DECIMALS),
    )


def calibrate_members(
    members: Mapping[str, Predictions], calibration: Calibration | None, gt: CocoGroundTruth
) -> dict[str, Predictions]:
    """Each member's results through its calibrator (members without one unchanged).

    Raises:
        ValueError: a calibrator names a member that is not scored (a typo, or a set fitted for another ensemble).
    """
    if calibration is None or not calibration.members:
        return dict(members)
    unknown = sorted(set(calibration.members) - set(members))
    if unknown:
        raise ValueError(
            f"calibrators given for member(s) {unknown} that are not in this run; its members are {sorted(members)}"
        )
    return {
        name: calibrate_predictions(preds, calibration.members.get(name), gt, calibration.classes)
        for name, preds in members.items()
    }


# ensemble-boxes' own defaults for weighted_boxes_fusion.
DEFAULT_POLICY: dict[str, Any] = {"type": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}


def policy_description(policy: Any = None, **params: Any) -> dict[str, Any]:
    """The fully resolved parameters of a policy spec (name, mapping, Params or instance), as a plain dict."""
    return make_policy(DEFAULT_POLICY if policy is None else policy, **params).params.model_dump()


def fuse_predictions(
    members: Sequence[Predictions],
    gt: CocoGroundTruth,
    policy: Any = None,
    device: str = "cpu",
    **params: Any,
) -> Predictions:
    """Fuse members' results image by image with :func:`fusion.fuse_batch`.

    Args:
        members: One :class:`Predictions` per member (category ids of ``gt``).
        gt: The ground truth: its images (all of them, also those without detections) and their sizes.
        policy: Policy name, mapping with ``type``, Params or instance; ``None`` = WBF at ensemble-boxes' defaults.
        device: Where fusion runs.
        **params: Policy parameters (e.g. ``weights=[2, 1, 1]``).

    Returns:
        The fused results, rounded like saved results files.
    """
    if not members:
        raise ValueError("fuse_predictions needs at least one member")
    per_member = [m.split_by_image(gt, device=device) for m in members]
    per_image = list(zip(*per_member))
    fused = fuse_batch(per_image, DEFAULT_POLICY if policy is None else policy, **params)
    return Predictions.from_detections(fused, gt.image_ids, gt.class_map)
