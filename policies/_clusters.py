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

    The tie rule of every policy: equal ``sort_by`` keep the order of the flat batch, i.e. the lower member index
    first, then the member's earlier box (stable sorts). ensemble-boxes leaves ties to numpy's unstable sort, so
    parity with it holds on inputs without ties.
    """
    device = keys.device
    order = torch.sort(sort_by, descending=True, stable=True).indices
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


def greedy_clusters(
    boxes: Tensor, sw: Tensor, weight: Tensor, layout: Layout, iou_thr: float
) -> tuple[Tensor, Tensor, Tensor]:
    """ensemble-boxes' WBF clustering, for all groups at once, with ensemble-boxes' arithmetic.

    Each box (in layout order) joins the cluster of its group whose CURRENT fused box (the ``sw``-weighted mean of
    its boxes, recomputed after every join) has the highest IoU with it, if that IoU is strictly above ``iou_thr``
    (first cluster on ties); otherwise it starts a new cluster.

    The fused box is computed as ensemble-boxes' ``get_weighted_box`` computes it: ``Σ sw·box`` accumulated in
    float32 one box at a time in join order, divided by ``Σ sw`` (float64) and stored as float32; a one-box cluster
    keeps its box as is. Every IoU, and so every join decision, is then ensemble-boxes' to the bit. (A cluster whose
    boxes all have ``sw == 0`` gets their plain mean, where ensemble-boxes gives NaN.)

    Args:
        boxes: float64 ``[N, 4]`` xyxy, in layout order, positive area (zero-area boxes must be alone in a group).
        sw: float64 ``[N]`` score * weight, in layout order.
        weight: float64 ``[N]`` each box's member weight, in layout order.
        layout: From :func:`make_layout`.
        iou_thr: Join threshold in ``[0, 1]``.

    Returns:
        ``slot`` int64 ``[N]`` (the cluster slot of each box: ``offsets[group] + cluster index``), the fused boxes
        float64 ``[N, 4]`` and the sums ``(count, Σ sw, Σ weight)`` float64 ``[N, 3]`` (added in join order), both
        indexed by slot (rows of unused slots are meaningless).
    """
    n = boxes.shape[0]
    device = boxes.device
    # (x1, y1, -x2, -y2): one elementwise max then gives (max x1, max y1, -min x2, -min y2) of a box pair; negation
    # is exact, so the float32 rounding below is the same as on (x1, y1, x2, y2)
    flip = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=boxes.dtype, device=device)
    neg = boxes * flip
    rows, plain_mean = _accumulator_rows(neg, sw, weight)
    offsets = layout.offsets
    cols = torch.arange(len(layout.active), device=device)
    starts, rank_major = _rank_major(layout)
    by_rank = torch.empty_like(rank_major)
    by_rank[rank_major] = torch.arange(n, device=device)
    neg_by_rank, rows_by_rank = neg[by_rank], rows[by_rank]
    state, fused, slot_by_rank, n_clusters = _open_first_clusters(neg_by_rank, rows_by_rank, offsets)
    on_cpu = device.type == "cpu"
    for r, (g, start) in enumerate(zip(layout.active[1:], starts[1:]), start=1):
        off = offsets[:g]
        box = neg_by_rank[start : start + g]  # [g, 4] the r-th box of each active group
        # candidates: the clusters so far, up to the most any active group has (on a GPU, where reading that number
        # would wait for the device every step, up to r); the rest of a row are empty slots
        width = int(n_clusters[:g].max()) if on_cpu else r
        cand = fused[off[:, None] + cols[:width]]  # [g, width, 4]
        best, arg = _join_iou(cand, box).max(dim=1)
        join = best > iou_thr
        count = n_clusters[:g]
        target = torch.where(join, arg, count)
        count += ~join
        # every active group adds one box to one of its own slots: the slots ``s`` are distinct
        s = off + target
        slot_by_rank[start : start + g] = s
        mean = _add_to_slots(state, s, rows_by_rank[start : start + g], plain_mean)
        fused[s] = torch.where(join[:, None], mean, box)
    slot = slot_by_rank[rank_major]
    count = torch.bincount(slot, minlength=n).to(boxes.dtype)
    return slot, fused * flip, torch.cat([count[:, None], state[:, 4:6]], dim=1)


def _accumulator_rows(neg: Tensor, sw: Tensor, weight: Tensor) -> tuple[Tensor, bool]:
    """What each box adds to its cluster's slot: float64 ``[N, 6]`` ``(sw·box, sw, weight)``, or ``[N, 11]`` with
    ``(box, 1)`` appended when some ``sw`` is 0 (then a cluster of zero-``sw`` boxes gets the plain mean).

    Returns:
        The rows and whether the plain-mean columns are there.
    """
    # per slot, added one box at a time: Σ sw·box (kept float32-valued), Σ sw, Σ weight, and only when some sw is
    # 0, Σ box and the box count (for a plain mean); one gather and one scatter per step
    plain_mean = bool((sw == 0).any())
    parts = [neg * sw[:, None], sw[:, None], weight[:, None]]
    if plain_mean:
        parts += [neg, torch.ones_like(sw)[:, None]]
    return torch.cat(parts, dim=1), plain_mean


def _open_first_clusters(
    neg_by_rank: Tensor, rows_by_rank: Tensor, offsets: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rank 0 of the greedy pass: nothing to join yet, every group's first box opens the group's first cluster.

    Returns:
        ``state`` (the slots' sums, shaped like ``rows_by_rank``), ``fused`` float64 ``[N, 4]`` (the slots' fused
        ``(x1, y1, -x2, -y2)``, empty slots far away), ``slot_by_rank`` int64 ``[N]`` (filled for rank 0) and
        ``n_clusters`` int64 ``[G]`` (all 1).
    """
    n = neg_by_rank.shape[0]
    device = neg_by_rank.device
    state = torch.zeros_like(rows_by_rank)
    fused = torch.full((n, 4), _FAR, dtype=neg_by_rank.dtype, device=device)
    slot_by_rank = torch.empty(n, dtype=torch.int64, device=device)
    n_groups = offsets.shape[0]
    first = rows_by_rank[:n_groups].clone()
    first[:, :4] = first[:, :4].float()
    state[offsets] = first
    fused[offsets] = neg_by_rank[:n_groups]
    slot_by_rank[:n_groups] = offsets
    n_clusters = torch.ones_like(offsets)
    return state, fused, slot_by_rank, n_clusters


def _join_iou(cand: Tensor, box: Tensor) -> Tensor:
    """IoU ``[g, width]`` of each box ``[g, 4]`` with its group's candidate clusters ``[g, width, 4]``.

    Both in ``(x1, y1, -x2, -y2)``. Not fusion.boxes.box_iou: this is ensemble-boxes' join IoU to the bit, on the
    float32-valued slots.
    """
    m = torch.maximum(cand, box[:, None, :])
    side = (m[..., :2] + m[..., 2:]).clamp_(max=0)  # -(intersection width, height)
    inter = side[..., 0] * side[..., 1]
    area_c = (cand[..., 0] + cand[..., 2]) * (cand[..., 1] + cand[..., 3])
    area_b = (box[:, 0] + box[:, 2]) * (box[:, 1] + box[:, 3])
    return inter / (area_c + area_b[:, None] - inter)


def _add_to_slots(state: Tensor, s: Tensor, rows: Tensor, plain_mean: bool) -> Tensor:
    """Add ``rows`` ``[g, D]`` to the distinct slots ``s`` ``[g]`` of ``state`` (in place) and return the slots'
    new fused boxes float64 ``[g, 4]``: ``Σ sw·box`` kept float32-valued, divided by ``Σ sw``, stored as float32,
    as ensemble-boxes' ``get_weighted_box`` computes it (the plain mean where ``Σ sw`` is 0)."""
    total = state[s] + rows
    total[:, :4] = total[:, :4].float()
    state[s] = total
    conf = total[:, 4:5]
    mean = (total[:, :4] / conf).float().double()
    if plain_mean:
        mean = torch.where(conf > 0, mean, total[:, 6:10] / total[:, 10:])
    return mean


def _rank_major(layout: Layout) -> tuple[list[int], Tensor]:
    """Rows of a rank-major order, where the r-th boxes of the active groups ``0..g-1`` are the contiguous rows
    ``starts[r] + (0..g-1)``, so that each greedy step reads its boxes as a slice instead of a gather.

    Returns:
        ``starts`` (one per rank) and ``rank_major`` int64 ``[N]`` (layout position -> rank-major row).
    """
    device = layout.offsets.device
    active = torch.tensor(layout.active, dtype=torch.int64, device=device)
    starts = torch.cumsum(active, 0) - active
    rank = torch.arange(layout.group.shape[0], device=device) - layout.offsets[layout.group]
    return starts.tolist(), starts[rank] + layout.group


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
    slot: Tensor, fused: Tensor, sums: Tensor, sw: Tensor, scores: Tensor, member: Tensor, n_members: int
) -> Clusters:
    """Reduce boxes (layout order, ``[N]`` each) to their clusters given ``slot``, ``fused`` and ``sums`` from
    :func:`greedy_clusters`."""
    n = slot.shape[0]
    device = slot.device
    positions = torch.arange(n, device=device)
    seed = torch.full((n,), n, dtype=torch.int64, device=device).scatter_reduce_(0, slot, positions, "amin")
    used = (seed < n).nonzero().squeeze(1)
    f64 = sw.dtype
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

    Boxes with a raw score below ``skip_box_thr`` are dropped first (as in ensemble-boxes). Boxes are clustered
    divided by their image's ``(width, height)`` where the image size is known, in pixels otherwise. Zero-area boxes
    cannot overlap anything (their IoU with any box is 0), so each forms a cluster of its own (ensemble-boxes drops
    them with a warning instead).

    Returns:
        The kept boxes in layout order (a :class:`Batch`), ``order`` int64 ``[N]`` (layout position -> index in the
        batch after ``skip_box_thr``: the flat order that breaks ties), and the clusters.
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
    # in image-normalised coordinates, as ensemble-boxes takes them: the same arithmetic gives the same bits
    scale = _image_scale(batch)
    slot, fused, sums = greedy_clusters(batch.boxes / scale, sw, batch.weight, layout, iou_thr)
    clusters = cluster_stats(slot, fused * scale, sums, sw, batch.scores, batch.member, batch.n_members)
    return batch, layout.order, clusters


def _image_scale(batch: Batch) -> Tensor:
    """float64 ``[N, 4]`` ``(width, height, width, height)`` of each box's image (1 where the size is unknown)."""
    width_height = [(size[1], size[0]) if size else (1, 1) for size in batch.image_sizes]
    table = torch.tensor(width_height, dtype=torch.float64).reshape(-1, 2).to(batch.device)
    return table.repeat(1, 2)[batch.image]
