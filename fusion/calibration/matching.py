"""Match detections to ground truth as COCO does, for calibration: which detections are true positives.

The rules (those of pycocotools' ``evaluateImg`` at one IoU threshold, without area ranges or ``maxDets``):

* detections are visited in descending score order (stable, so ties keep their input order);
* each takes the not-yet-taken, non-crowd GT box (of the same class, unless ``class_agnostic``) with the highest
  IoU, if that IoU is ``>= iou_thr``: it is a true positive;
* otherwise, if it overlaps a crowd GT box by ``>= iou_thr``, it is *ignored* (neither TP nor FP). As in COCO, the
  overlap with a crowd box is intersection over the DETECTION's area, and a crowd box can absorb any number of
  detections;
* otherwise it is a false positive.

Greedy matching is sequential along the score order, but independent across images: the loop runs over the
``k``-th best detection of every image at once (``max detections per image`` steps, each a tensor operation over
all images of a chunk), never over single boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fusion.boxes import box_area, box_iou
from fusion.detections import Detections

__all__ = ["MatchResult", "match_detections", "match_image"]

# Images per chunk: bounds the padded [images, detections, gt] IoU tensor (~ chunk * 300 * 60 floats).
_CHUNK = 256


@dataclass
class MatchResult:
    """Per-detection outcome of matching, in the detections' own order.

    Attributes:
        is_tp: bool ``[N]``: matched to a GT box at IoU ``>= iou_thr``.
        ignored: bool ``[N]``: unmatched but covering a crowd GT box (excluded from calibration statistics).
        gt_index: int64 ``[N]``: the matched GT row, ``-1`` when not a TP.
    """

    is_tp: Tensor
    ignored: Tensor
    gt_index: Tensor


def _crowd_overlap(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the area of ``boxes1`` for padded batches ``[B, N, 4]`` x ``[B, G, 4]`` -> ``[B, N, G]``.

    Not an IoU (so not in :mod:`fusion.boxes`): COCO measures a detection's overlap with a crowd region over the
    detection's own area. Zero-area detections give 0.
    """
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    denom = box_area(boxes1)[:, :, None].expand_as(inter)
    return torch.where(denom > 0, inter / denom.clamp(min=1e-12), torch.zeros_like(inter))


class _Padded:
    """The rows of many images' tensors in one ``[images, max rows, ...]`` tensor, by one scatter (no per-image copy).

    Attributes:
        row / col: int64 ``[N]`` image and position of each concatenated row.
        width: The longest image's number of rows.
    """

    def __init__(self, counts: Tensor) -> None:
        self.counts = counts
        self.row = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        self.col = torch.arange(self.row.shape[0], device=counts.device) - starts[self.row]
        self.width = int(counts.max()) if counts.numel() else 0

    def __call__(self, values: Tensor, fill: float | bool) -> Tensor:
        out = torch.full(
            (self.counts.shape[0], self.width, *values.shape[1:]),
            fill,
            dtype=values.dtype,
            device=values.device,
        )
        out[self.row, self.col] = values
        return out

    def valid(self) -> Tensor:
        """bool ``[images, width]``: True on real rows."""
        return torch.arange(self.width, device=self.counts.device) < self.counts[:, None]


def _match_chunk(
    dets: Sequence[Detections], gts: Sequence[Detections], iou_thr: float, class_agnostic: bool
) -> list[MatchResult]:
    device = dets[0].device
    det_pad = _Padded(torch.tensor([len(d) for d in dets], device=device))
    n_img, n_max = len(dets), det_pad.width
    if n_max == 0:
        return [
            MatchResult(
                *(torch.zeros(0, dtype=t, device=device) for t in (torch.bool, torch.bool, torch.int64))
            )
            for _ in dets
        ]
    # each image's detections by score, descending and stable; padding (-inf) sorts last
    scores = det_pad(torch.cat([d.scores for d in dets]), -torch.inf)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [n_img, n_max]
    det_boxes = det_pad(torch.cat([d.boxes for d in dets]), 0.0).gather(1, order[..., None].expand(-1, -1, 4))
    det_labels = det_pad(torch.cat([d.labels for d in dets]), -1).gather(1, order)
    det_valid = det_pad.valid()
    tp = torch.zeros((n_img, n_max), dtype=torch.bool, device=device)
    ignored = torch.zeros_like(tp)
    gt_index = torch.full((n_img, n_max), -1, dtype=torch.int64, device=device)
    gt_pad = _Padded(torch.tensor([len(g) for g in gts], device=device))
    g_max = gt_pad.width
    if g_max > 0:
        gt_boxes = gt_pad(torch.cat([g.boxes for g in gts]).to(device), 0.0)
        gt_labels = gt_pad(torch.cat([g.labels for g in gts]).to(device), -2)
        gt_crowd = gt_pad(torch.cat([_crowd(g) for g in gts]).to(device), False)
        dtype = torch.promote_types(det_boxes.dtype, gt_boxes.dtype)
        det_boxes, gt_boxes = det_boxes.to(dtype), gt_boxes.to(dtype)
        iou = box_iou(det_boxes, gt_boxes)
        iof = _crowd_overlap(det_boxes, gt_boxes)
        eligible = gt_pad.valid()[:, None, :].expand(n_img, n_max, g_max)
        if not class_agnostic:
            eligible = eligible & (det_labels[:, :, None] == gt_labels[:, None, :])
        plain = eligible & ~gt_crowd[:, None, :]
        crowd = eligible & gt_crowd[:, None, :]
        # Crowd overlap does not depend on what was taken before, so it is computed for all ranks at once.
        covers_crowd = (iof.masked_fill(~crowd, -1.0) >= iou_thr).any(dim=2)
        taken = torch.zeros((n_img, g_max), dtype=torch.bool, device=device)
        rows = torch.arange(n_img, device=device)
        for k in range(n_max):  # rank k of every image at once
            candidate = iou[:, k].masked_fill(~plain[:, k] | taken, -1.0)
            best, index = candidate.max(dim=1)
            hit = (best >= iou_thr) & det_valid[:, k]
            taken[rows[hit], index[hit]] = True
            tp[:, k] = hit
            gt_index[:, k] = torch.where(hit, index, torch.full_like(index, -1))
        ignored = covers_crowd & ~tp & det_valid
    # undo the score sort (results are in the caller's order), then one row per detection
    outcome = torch.stack([tp.long(), ignored.long(), gt_index], dim=2)
    outcome = torch.empty_like(outcome).scatter_(1, order[..., None].expand(-1, -1, 3), outcome)
    per_image = torch.split(outcome[det_pad.row, det_pad.col], det_pad.counts.tolist())
    return [MatchResult(o[:, 0].bool(), o[:, 1].bool(), o[:, 2]) for o in per_image]


def _crowd(gt: Detections) -> Tensor:
    crowd = gt.extras.get("iscrowd")
    if crowd is None:
        return torch.zeros(len(gt), dtype=torch.bool, device=gt.device)
    return crowd.reshape(len(gt)).bool()


def match_detections(
    predictions: Sequence[Detections],
    ground_truth: Sequence[Detections],
    iou_thr: float = 0.5,
    class_agnostic: bool = False,
) -> list[MatchResult]:
    """Match the detections of many images to their ground truth (see the module docstring for the rules).

    Args:
        predictions: One :class:`Detections` per image (pixel xyxy; any order).
        ground_truth: One :class:`Detections` per image, same order: GT boxes (pixel xyxy), labels in the same
            vocabulary, optional ``extras["iscrowd"]`` ``[G]`` (non-zero = crowd). Scores are not used.
        iou_thr: Minimum IoU (inclusive) for a match, in ``(0, 1]``.
        class_agnostic: Match boxes of any class (default: only the same label).

    Returns:
        One :class:`MatchResult` per image, rows in each ``predictions[i]``'s order.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"match_detections: {len(predictions)} prediction entries but {len(ground_truth)} ground truth entries"
        )
    if not 0 < iou_thr <= 1:
        raise ValueError(f"iou_thr must be in (0, 1], got {iou_thr}")
    results: list[MatchResult] = []
    for start in range(0, len(predictions), _CHUNK):
        results.extend(
            _match_chunk(
                predictions[start : start + _CHUNK],
                ground_truth[start : start + _CHUNK],
                iou_thr,
                class_agnostic,
            )
        )
    return results


def match_image(
    detections: Detections, ground_truth: Detections, iou_thr: float = 0.5, class_agnostic: bool = False
) -> MatchResult:
    """:func:`match_detections` for one image."""
    return match_detections([detections], [ground_truth], iou_thr, class_agnostic)[0]
