"""Fit calibrators on a validation set: per-image predictions + ground truth -> matched pairs -> calibrators."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fusion.calibration.calibrators import Calibrator, fit_calibrator
from fusion.calibration.dece import matched_pairs
from fusion.calibration.sets import CalibratorSet
from fusion.detections import Detections

__all__ = ["fit_calibrator_set", "fit_member_calibrator"]


def fit_member_calibrator(
    predictions: Mapping[Any, Detections],
    ground_truth: Mapping[Any, Detections],
    method: str = "isotonic",
    per_class: bool = False,
    iou_thr: float = 0.5,
    **options: Any,
) -> Calibrator:
    """Fit one member's calibrator.

    Args:
        predictions: ``{image_id: Detections}`` of the member on the validation images (uncalibrated scores).
        ground_truth: ``{image_id: Detections}`` of GT boxes (``extras["iscrowd"]`` optional), e.g. from
            :meth:`~fusion.coco.annotations.CocoGroundTruth.detections`. Images with GT but no predictions count as empty.
        method: ``isotonic`` (default; reported to beat train-time calibration), ``temperature`` or ``histogram``.
        per_class: Also fit one curve per class with enough matched detections (others use the overall curve).
        iou_thr: IoU for a detection to count as correct. Every detection is used (no score threshold), so the
            calibrator learns the whole score range; crowd-ignored detections are left out.
        **options: Method options (``bins`` for histogram).
    """
    pairs = matched_pairs(predictions, ground_truth, iou_thr)
    if len(pairs) == 0:
        raise ValueError("no detections to fit a calibrator on (every image is empty or crowd-ignored)")
    return fit_calibrator(method, pairs.scores, pairs.is_tp, pairs.labels, per_class=per_class, **options)


def fit_calibrator_set(
    per_member: Mapping[str, Mapping[Any, Detections]],
    ground_truth: Mapping[Any, Detections],
    method: str = "isotonic",
    per_class: bool = False,
    iou_thr: float = 0.5,
    classes: Sequence[str] | None = None,
    **options: Any,
) -> CalibratorSet:
    """Fit one calibrator per member (see :func:`fit_member_calibrator`) into a :class:`CalibratorSet`.

    Args:
        per_member: ``{member name: {image_id: Detections}}``.
        classes: The ensemble's class names (``ClassMap.names``), stored so that loading checks the vocabulary.
    """
    fitted = {}
    for name, predictions in per_member.items():
        try:
            fitted[name] = fit_member_calibrator(
                predictions, ground_truth, method, per_class, iou_thr, **options
            )
        except ValueError as exc:
            raise ValueError(f"member {name!r}: {exc}") from None
    return CalibratorSet(fitted, classes, {"iou_thr": iou_thr, "method": method, "per_class": per_class})
