"""Pseudo-labels from a teacher's fused detections: the best-F1 score threshold and score-weighted targets.

The threshold is chosen on labelled validation data: the score cut whose kept detections have the best F1 at
IoU 0.5 against the ground truth, under COCO's greedy matching (:mod:`fusion.calibration.matching`). Detections
scoring at least the threshold become :class:`~fusion.training.trainable.TrainTarget` records with ``scores`` (the
box weights of score-weighted losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth
from fusion.coco.predictions import Predictions
from fusion.training.trainable import TrainTarget

__all__ = ["ThresholdChoice", "choose_threshold", "pseudo_targets"]


@dataclass(frozen=True)
class ThresholdChoice:
    """The pseudo-label score threshold with the best F1 on labelled data.

    Attributes:
        threshold: Keep fused detections scoring ``>= threshold``.
        f1 / precision / recall: At that threshold (IoU ``iou_thr``, same class, COCO's greedy matching).
        iou_thr: The matching IoU.
        num_gt: Non-crowd ground-truth boxes.
    """

    threshold: float
    f1: float
    precision: float
    recall: float
    iou_thr: float
    num_gt: int


def choose_threshold(
    predictions: Predictions, gt: CocoGroundTruth, iou_thr: float = 0.5, fixed: float | None = None
) -> ThresholdChoice:
    """The score cut with the best F1 of ``predictions`` against ``gt``; ties go to the highest cut.

    With ``fixed``, no choice: the statistics of that cut (a threshold set in the config, recorded alike).

    Matching is COCO's greedy one (descending score), so cutting at ``t`` keeps every match made above ``t``:
    one matching gives the TP and FP counts of every cut. Detections covering only crowd boxes are ignored.

    Raises:
        ValueError: no detections or no (non-crowd) ground-truth boxes to choose on.
    """
    from fusion.calibration.matching import ground_truth_from_coco, match_detections

    truth = ground_truth_from_coco(gt.dataset, gt.class_map)
    truths = [truth[int(i)] for i in gt.image_ids.tolist()]
    num_gt = int(sum(int((~t.extras["iscrowd"]).sum()) for t in truths))
    if len(predictions) == 0 or num_gt == 0:
        raise ValueError(
            f"{gt.source}: cannot choose a pseudo-label threshold with {len(predictions)} detections and "
            f"{num_gt} ground-truth boxes"
        )
    dets = predictions.split_by_image(gt)
    matches = match_detections(dets, truths, iou_thr)
    scores = torch.cat([d.scores for d in dets]).double().numpy()
    tp = torch.cat([m.is_tp for m in matches]).numpy()
    counted = ~torch.cat([m.ignored for m in matches]).numpy()
    scores, tp = scores[counted], tp[counted]
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    if fixed is not None:  # the statistics of a given cut (scores are sorted: a prefix is kept)
        kept_at = int((scores >= fixed).sum())
        return _choice(float(fixed), int(tp[:kept_at].sum()), kept_at, num_gt, iou_thr)
    # A cut keeps whole groups of tied scores: evaluate at the last row of each group.
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    tps = np.cumsum(tp)[last]
    best = int(np.argmax(2 * tps / (last + 1 + num_gt)))  # first maximum = highest cut
    return _choice(float(scores[last[best]]), int(tps[best]), int(last[best]) + 1, num_gt, iou_thr)


def _choice(threshold: float, tp: int, kept: int, num_gt: int, iou_thr: float) -> ThresholdChoice:
    return ThresholdChoice(
        threshold=threshold,
        f1=2 * tp / (kept + num_gt),
        precision=tp / kept if kept else 0.0,
        recall=tp / num_gt,
        iou_thr=iou_thr,
        num_gt=num_gt,
    )


def pseudo_targets(
    predictions: Predictions, gt: CocoGroundTruth, class_map: ClassMap, threshold: float
) -> dict[int, TrainTarget]:
    """Cached fused detections -> one :class:`~fusion.training.trainable.TrainTarget` per image of ``gt``.

    Each target holds the detections scoring ``>= threshold``: pixel xyxy float32 ``boxes``, int64 ``labels``
    (indices of the job's ``class_map``, matched by class name) and float32 ``scores`` (the box weights of
    score-weighted losses). Images without such detections get empty targets.

    Raises:
        ValueError: a kept detection's class is not in ``class_map`` (naming it).
    """
    table = gt.class_map.translation_to(class_map, strict=False)
    kept = predictions.select(predictions.scores >= threshold)
    out: dict[int, TrainTarget] = {}
    for image_id, det in zip(gt.image_ids.tolist(), kept.split_by_image(gt)):
        labels = table[det.labels]
        if (labels < 0).any():
            name = gt.class_map.names[int(det.labels[labels < 0][0])]
            raise ValueError(
                f"teacher detections of class {name!r} (image {image_id}) but the training vocabulary is "
                f"{list(class_map.names)}"
            )
        out[int(image_id)] = {
            "boxes": det.boxes.float().reshape(-1, 4),
            "labels": labels.long(),
            "scores": det.scores.float(),
        }
    return out
