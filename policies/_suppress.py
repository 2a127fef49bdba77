"""Helpers of the suppression policies (NMS, NMW, soft-NMS): per-image NMS clusters and member weights."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from fusion.boxes import box_iou
from policies._inputs import Batch

__all__ = ["image_ranges", "nms_clusters", "normalised_weights"]


def normalised_weights(batch: Batch) -> Tensor:
    """Each box's weight divided by the largest member weight of its label, float64 ``[N]`` (as in ensemble-boxes'
    NMW; unit weights leave scores unchanged). A label whose weights are all 0 gives 0."""
    top = batch.class_weights(batch.labels).max(dim=1).values if len(batch) else batch.weight
    return torch.where(top > 0, batch.weight / top.clamp(min=1e-300), torch.zeros_like(top))


def image_ranges(batch: Batch) -> list[tuple[int, int, int]]:
    """``(image, start, end)`` of every image with boxes (boxes of a :class:`Batch` are grouped by image)."""
    counts = torch.bincount(batch.image, minlength=batch.n_images).tolist() if len(batch) else []
    out, start = [], 0
    for i, c in enumerate(counts):
        if c:
            out.append((i, start, start + c))
        start += c
    return out


def nms_clusters(
    boxes: Tensor, scores: Tensor, keys: Tensor, iou_thr: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Hard NMS of one image by group, and the cluster each box belongs to.

    The kept boxes are torchvision's ``batched_nms`` (a box is suppressed by a higher-scored kept box of its group
    with IoU > ``iou_thr``). Each suppressed box belongs to the kept box of its group, scored above it, with which its
    IoU is highest (the first on ties) -- the cluster ensemble-boxes' NMW assigns it to.

    Args:
        boxes: float64 ``[n, 4]`` xyxy. scores: ``[n]``. keys: int64 ``[n]`` group of each box.

    Returns:
        ``keep`` int64 ``[k]`` (score descending), ``assign`` int64 ``[n]`` (index into ``keep``) and the IoU of each
        box with its kept box ``[n]`` (0 for zero-area boxes, which are never suppressed and form their own cluster).
    """
    n = boxes.shape[0]
    keep = batched_nms(boxes, scores, keys, iou_thr)
    rank = torch.empty(n, dtype=torch.int64, device=boxes.device)
    rank[torch.sort(scores, descending=True, stable=True).indices] = torch.arange(n, device=boxes.device)
    iou = box_iou(boxes, boxes[keep])  # [n, k]
    ok = (keys[:, None] == keys[keep][None, :]) & (iou > iou_thr) & (rank[keep][None, :] <= rank[:, None])
    marked = torch.where(ok, iou, -1.0)
    k = torch.arange(keep.shape[0], device=boxes.device)
    marked[keep, k] = 2.0  # a kept box is its own cluster
    assign = marked.argmax(dim=1)
    return keep, assign, iou.gather(1, assign[:, None]).squeeze(1)
