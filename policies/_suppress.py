"""Helpers of the suppression policies (NMS, NMW, soft-NMS): per-image NMS clusters and member weights."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from fusion.boxes import paired_box_iou
from policies._inputs import Batch

__all__ = ["PAIR_CHUNK", "image_ranges", "nms_clusters", "normalised_weights", "tie_free_rank"]


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


# (box, kept box) pairs compared at once by nms_clusters: bounds its memory (a few tensors of this many rows, some
# tens of MB) whatever the number of boxes
PAIR_CHUNK = 1 << 18


def tie_free_rank(scores: Tensor) -> Tensor:
    """int64 ``[n]`` rank of each score, 0 = highest; equal scores keep input order (a stable sort).

    This is the tie rule of the suppression policies: score descending, then the order of the flat batch, i.e.
    member order, then each member's own order.
    """
    n = scores.shape[0]
    rank = torch.empty(n, dtype=torch.int64, device=scores.device)
    rank[torch.sort(scores, descending=True, stable=True).indices] = torch.arange(n, device=scores.device)
    return rank


def nms_clusters(
    boxes: Tensor, scores: Tensor, keys: Tensor, iou_thr: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Hard NMS of one image by group, and the cluster each box belongs to, in bounded memory.

    The kept boxes are torchvision's ``batched_nms`` (a box is suppressed by a higher-ranked kept box of its group
    with IoU > ``iou_thr``), ranked by :func:`tie_free_rank` (so equal scores are decided by input order, not by
    the sort inside torchvision). Each suppressed box belongs to the kept box of its group, ranked above it, with
    which its IoU is highest (the highest-ranked on ties) -- the cluster ensemble-boxes' NMW assigns it to. Only
    pairs of a box and a kept box of the same group are compared, ``PAIR_CHUNK`` at a time, so memory stays bounded
    (tens of MB) for any number of boxes; time grows with the pairs (boxes x kept boxes per group).

    Args:
        boxes: float64 ``[n, 4]`` xyxy. scores: ``[n]``. keys: int64 ``[n]`` group of each box.

    Returns:
        ``keep`` int64 ``[k]`` (rank order), ``assign`` int64 ``[n]`` (index into ``keep``) and the IoU of each
        box with its kept box ``[n]`` (0 for zero-area boxes, which are never suppressed and form their own cluster).
    """
    n = boxes.shape[0]
    device = boxes.device
    rank = tie_free_rank(scores)
    keep = batched_nms(boxes, (n - rank).to(torch.float64), keys, iou_thr)
    # each box is compared with the kept boxes of its own group only: sorted by group, those are the run
    # by_key[lo:hi] of the kept boxes
    kept_keys = keys[keep]
    by_key = torch.sort(kept_keys, stable=True).indices  # positions in keep, rank order within a group
    sorted_keys = kept_keys[by_key]
    lo = torch.searchsorted(sorted_keys, keys, side="left")
    counts = torch.searchsorted(sorted_keys, keys, side="right") - lo
    assign = torch.empty(n, dtype=torch.int64, device=device)
    best = torch.empty(n, dtype=boxes.dtype, device=device)
    for first, last in _chunks(counts):
        c = counts[first:last]
        owner = torch.repeat_interleave(torch.arange(last - first, device=device), c)  # pair -> local box
        offset = torch.arange(owner.shape[0], device=device) - (torch.cumsum(c, 0) - c)[owner]
        cols = by_key[lo[first:last][owner] + offset]
        heads, box = keep[cols], owner + first
        iou = paired_box_iou(boxes[box], boxes[heads])
        marked = torch.where((iou > iou_thr) & (rank[heads] <= rank[box]), iou, -1.0)
        marked.masked_fill_(heads == box, 2.0)  # a kept box is its own cluster
        top = torch.full((last - first,), -2.0, dtype=marked.dtype, device=device)
        top.scatter_reduce_(0, owner, marked, "amax")
        # the first pair reaching the maximum: the highest-ranked kept box on ties
        pair = torch.where(marked == top[owner], torch.arange(owner.shape[0], device=device), owner.shape[0])
        chosen = torch.full_like(top, owner.shape[0], dtype=torch.int64).scatter_reduce_(
            0, owner, pair, "amin"
        )
        assign[first:last] = cols[chosen]
        best[first:last] = iou[chosen]
    return keep, assign, best


def _chunks(counts: Tensor) -> list[tuple[int, int]]:
    """``(first, last)`` runs of boxes whose pair counts add up to about ``PAIR_CHUNK`` (at least one box each)."""
    if counts.numel() == 0:
        return []
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1])
    if total <= PAIR_CHUNK:
        return [(0, counts.numel())]
    cuts = torch.searchsorted(
        ends, torch.arange(PAIR_CHUNK, total, PAIR_CHUNK, device=counts.device), side="right"
    )
    bounds = sorted({0, counts.numel(), *cuts.tolist()})
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
