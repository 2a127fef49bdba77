"""Batched greedy clustering shared by WBF and confidence voting, and per-cluster statistics.

Layout: boxes are sorted into fusion groups (one per (image, label), or per image when class-agnostic), groups
ordered by size (largest first), boxes inside a group by ``score * weight`` (highest first). Each group owns a run of
"cluster slots" equal to its size, so group ``g`` at offset ``o_g`` has its ``r``-th box at position ``o_g + r`` and
its ``c``-th cluster in slot ``o_g + c``. The greedy pass walks over the rank ``r``; at rank ``r`` only the groups
with more than ``r`` boxes take part, and because groups are ordered by size those are a prefix of the groups. Each
step is a handful of tensor operations over all those groups at once, so the number of Python steps is the size of
the largest group, not the number of boxes or images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policies._inputs import Batch, group_keys

__all__ = ["Clusters", "Layout", "cluster_batch", "cluster_stats", "greedy_clusters", "make_layout"]

# Box-averaging weights get this added so that a cluster whose boxes all have score * weight == 0 fuses to their
# plain mean instead of 0 / 0 (ensemble-boxes returns NaN there); it moves other boxes by < 1e-9 relative.
_EPS = 1e-12
# Empty cluster slots hold an inverted, far-away box: intersection 0 and a huge area, so IoU 0 and never a match.
_FAR = 1e30


@dataclass
class Layout:
    """Boxes ordered by (group size desc, group, key desc).

    Attributes:
        order: int64 ``[N]`` position -> index into the original flat boxes.
        group: int64 ``[N]`` group index (0 = largest group) of each ordered box.
        offsets: int64 ``[G]`` first position of each group.
        active: ``active[r]`` = number of groups with more than ``r`` boxes (a Python list, ``len == max size``).
    """

    order: Tensor
    group: Tensor
    offsets: Tensor
    active: list[int]


def make_layout(keys: Tensor, sort_by: Tensor) -> Layout:
    """Order boxes by group (``keys`` int64 ``[N]``) then ``sort_by`` ``[N]`` descending.

    Ties in ``sort_by`` put the later box first, as ensemble-boxes' reversed ``argsort`` does (for small inputs).
    """
    n = keys.shape[0]
    device = keys.device
    flipped = torch.arange(n - 1, -1, -1, device=device)
    order = flipped[torch.sort(sort_by[flipped], descending=True, stable=True).indices]
    order = order[torch.sort(keys[order], stable=True).indices]
    _, group, sizes = torch.unique_consecutive(keys[order], return_inverse=True, return_counts=True)
    # relabel groups so the largest comes first, keeping the within-group order
    by_size = torch.sort(sizes, descending=True, stable=True).indices
    new_id = torch.empty_like(by_size)
    new_id[by_size] = torch.arange(by_size.shape[0], device=device)
    group = new_id[group]
    regroup = torch.sort(group, stable=True).indices
    order, group = order[regroup], group[regroup]
    sizes = sizes[by_size]
    offsets = torch.cumsum(sizes, 0) - sizes
    max_size = int(sizes[0]) if sizes.numel() else 0
    # active[r] = #groups with size > r
    hist = torch.bincount(sizes, minlength=max_size + 1)
    active = (hist.flip(0).cumsum(0).flip(0)[1:]).tolist()
    return Layout(order, group, offsets, active)


def greedy_clusters(boxes: Tensor, sw: Tensor, layout: Layout, iou_thr: float) -> tuple[Tensor, Tensor]:
    """ensemble-boxes' WBF clustering, for all groups at once.

    Each box (in layout order) joins the cluster of its group whose CURRENT fused box (the ``sw``-weighted mean of
    its boxes, recomputed after every join) has the highest IoU with it, if that IoU is strictly above ``iou_thr``
    (first cluster on ties); otherwise it starts a new cluster.

    Args:
        boxes: float64 ``[N, 4]`` xyxy, in layout order, positive area (zero-area boxes must be alone in a group).
        sw: float64 ``[N]`` score * weight, in layout order.
        layout: From :func:`make_layout`.
        iou_thr: Join threshold in ``[0, 1]``.

    Returns:
        ``slot`` int64 ``[N]`` (the cluster slot of each box: ``offsets[group] + cluster index``) and the fused boxes
        float64 ``[N, 4]`` indexed by slot (rows of unused slots are meaningless).
    """
    n = boxes.shape[0]
    device = boxes.device
    # (x1, y1, -x2, -y2): one elementwise max then gives (max x1, max y1, -min x2, -min y2) of a box pair
    neg = boxes * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=boxes.dtype, device=device)
    w_avg = sw + _EPS
    contrib = torch.cat([neg * w_avg[:, None], w_avg[:, None]], dim=1)  # [N, 5]
    fused = torch.full((n, 4), _FAR, dtype=boxes.dtype, device=device)  # slots, (x1, y1, -x2, -y2)
    acc = torch.zeros((n, 5), dtype=boxes.dtype, device=device)
    slot = torch.empty(n, dtype=torch.int64, device=device)
    offsets = layout.offsets
    n_clusters = torch.zeros_like(offsets)
    cols = torch.arange(len(layout.active), device=device)
    for r, g in enumerate(layout.active):
        off = offsets[:g]
        pos = off + r  # the r-th box of each active group
        box = neg[pos]  # [g, 4]
        cand = fused[off[:, None] + cols[: r + 1]]  # [g, r + 1, 4] current clusters (and empty slots)
        m = torch.maximum(cand, box[:, None, :])
        side = (m[..., :2] + m[..., 2:]).clamp_(max=0)  # -(intersection width, height)
        inter = side[..., 0] * side[..., 1]
        area_c = (cand[..., 0] + cand[..., 2]) * (cand[..., 1] + cand[..., 3])
        area_b = (box[:, 0] + box[:, 2]) * (box[:, 1] + box[:, 3])
        iou = inter / (area_c + area_b[:, None] - inter)
        best, arg = iou.max(dim=1)
        join = best > iou_thr
        count = n_clusters[:g]
        target = torch.where(join, arg, count)
        count += ~join
        s = off + target
        slot[pos] = s
        acc.index_add_(0, s, contrib[pos])
        a = acc[s]
        fused[s] = a[:, :4] / a[:, 4:]
    fused = fused * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=boxes.dtype, device=device)
    return slot, fused


@dataclass
class Clusters:
    """Per-cluster statistics, one row per non-empty cluster.

    Attributes:
        seed: int64 ``[K]`` layout position of the cluster's first (highest ``score * weight``) box.
        boxes: float64 ``[K, 4]`` fused xyxy boxes.
        count: float64 ``[K]`` number of boxes.
        sum_sw: float64 ``[K]`` sum of score * weight.
        sum_w: float64 ``[K]`` sum of the boxes' weights.
        max_sw: float64 ``[K]`` highest score * weight.
        present: bool ``[K, M]`` which members have a box in the cluster.
        best: float64 ``[K, M]`` each member's best raw score in the cluster (0 when absent).
    """

    seed: Tensor
    boxes: Tensor
    count: Tensor
    sum_sw: Tensor
    sum_w: Tensor
    max_sw: Tensor
    present: Tensor
    best: Tensor


def cluster_stats(
    slot: Tensor, fused: Tensor, sw: Tensor, weight: Tensor, scores: Tensor, member: Tensor, n_members: int
) -> Clusters:
    """Reduce boxes (layout order, ``[N]`` each) to their clusters given ``slot`` from :func:`greedy_clusters`."""
    n = slot.shape[0]
    device = slot.device
    positions = torch.arange(n, device=device)
    seed = torch.full((n,), n, dtype=torch.int64, device=device).scatter_reduce_(0, slot, positions, "amin")
    used = (seed < n).nonzero().squeeze(1)
    f64 = sw.dtype
    sums = torch.zeros((n, 3), dtype=f64, device=device)
    sums.index_add_(0, slot, torch.stack([torch.ones_like(sw), sw, weight], dim=1))
    max_sw = torch.zeros(n, dtype=f64, device=device).scatter_reduce_(0, slot, sw, "amax")
    pair = slot * n_members + member
    present = torch.zeros(n * n_members, dtype=torch.bool, device=device)
    present[pair] = True
    best = torch.zeros(n * n_members, dtype=f64, device=device).scatter_reduce_(0, pair, scores, "amax")
    sums = sums[used]
    return Clusters(
        seed=seed[used],
        boxes=fused[used],
        count=sums[:, 0],
        sum_sw=sums[:, 1],
        sum_w=sums[:, 2],
        max_sw=max_sw[used],
        present=present.view(n, n_members)[used],
        best=best.view(n, n_members)[used],
    )


def cluster_batch(
    batch: Batch, iou_thr: float, skip_box_thr: float, class_agnostic: bool
) -> tuple[Batch, Tensor, Clusters]:
    """WBF clustering of a whole batch.

    Boxes with a raw score below ``skip_box_thr`` are dropped first (as in ensemble-boxes). Zero-area boxes
    cannot overlap anything (their IoU with any box is 0), so each forms a cluster of its own (ensemble-boxes drops
    them with a warning instead).

    Returns:
        The kept boxes in layout order (a :class:`Batch`), their ``score * weight`` ``[N]``, and the clusters.
    """
    if skip_box_thr > 0:
        batch = batch.select(batch.scores >= skip_box_thr)
    keys = group_keys(batch, class_agnostic)
    boxes = batch.boxes
    flat = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(flat.any()):
        keys = torch.where(flat, keys.max() + 1 + torch.arange(len(batch), device=batch.device), keys)
    sw = batch.scores * batch.weight
    layout = make_layout(keys, sw)
    batch = batch.select(layout.order)
    sw = sw[layout.order]
    slot, fused = greedy_clusters(batch.boxes, sw, layout, iou_thr)
    clusters = cluster_stats(slot, fused, sw, batch.weight, batch.scores, batch.member, batch.n_members)
    return batch, sw, clusters
