"""Weighted boxes fusion (Solovyev et al., 2021), batched over images, equal to ensemble-boxes 1.0.9."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fusion.detections import Detections
from fusion.policy import FusionPolicy, PolicyParams
from policies._clusters import Clusters, cluster_batch
from policies._inputs import Batch, assemble, flatten

__all__ = ["WeightedBoxesFusion", "WeightedBoxesFusionParams"]

ConfType = Literal["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]


class WeightedBoxesFusionParams(PolicyParams):
    """Parameters of :class:`WeightedBoxesFusion` (names and defaults as in ensemble-boxes).

    Attributes:
        iou_thr: A box joins a cluster when its IoU with the cluster's current fused box is strictly above this.
        skip_box_thr: Boxes with a raw score below this are dropped before fusion.
        conf_type: How a cluster's score is computed (see :class:`WeightedBoxesFusion`).
        allows_overflow: With ``conf_type="avg"``, let clusters with more boxes than members score above 1.
    """

    type: Literal["wbf"] = "wbf"
    iou_thr: float = Field(0.55, ge=0.0, le=1.0)
    skip_box_thr: float = Field(0.0, ge=0.0)
    conf_type: ConfType = "avg"
    allows_overflow: bool = False


class WeightedBoxesFusion(FusionPolicy):
    """Weighted boxes fusion: cluster overlapping boxes across members and average them, weighted by confidence.

    Semantics are those of ensemble-boxes 1.0.9 ``weighted_boxes_fusion``, and so is the arithmetic: on float64
    input (saved results are read as float64) WITHOUT tied ``s * w`` in a group, the fused boxes and scores equal
    ensemble-boxes' to the bit, float32 rounding of its fused boxes and raw scores included (parity-tested with
    ``==``); on float32 input (model outputs) they equal them within float32 rounding. The exceptions: more than 7
    members (numpy then sums the weights pairwise), and tied ``s * w``, whose visiting order ensemble-boxes leaves
    to numpy's unstable sort; ours follows the tie rule of :class:`~fusion.policy.FusionPolicy` (lower member
    first, then the member's earlier box):

    1. boxes with raw score ``s < skip_box_thr`` are dropped; each box carries ``s * w`` (``w``: its member's weight,
       for its label when weights are per class); within each group (image and label, or image when
       ``class_agnostic``) boxes are visited by ``s * w`` descending;
    2. a box joins the cluster whose CURRENT fused box (recomputed after every join) has the highest IoU with it if
       that IoU is > ``iou_thr``, else it starts a new cluster;
    3. fused box = ``Σ(s·w·box) / Σ(s·w)``;
    4. with ``T`` = number of members, ``W`` = sum of the member weights, ``n`` = boxes in the cluster:
       ``avg``: ``Σ(s·w) / n · min(T, n) / W`` (``allows_overflow``: ``Σ(s·w) / W``);
       ``max``: ``max(s·w) / max(w)``;
       ``box_and_model_avg``: ``Σ(s·w) / Σw_boxes · Σw_distinct members / W``;
       ``absent_model_aware_avg``: ``Σ(s·w) / (Σw_boxes + Σw_absent members)``.

    Example (weights ``[2, 1, 1]``; member 0 gives 0.9 and 0.6, member 1 gives 0.8, all in one cluster):
    ``Σ(s·w) = 1.8 + 1.2 + 0.8 = 3.8``, ``n = 3``, ``W = 4`` -> avg ``3.8 / 3 · 3 / 4 = 0.95``; max
    ``1.8 / 2 = 0.90``; box_and_model_avg ``3.8 / 5 · 3 / 4 = 0.57``; absent_model_aware_avg
    ``3.8 / (5 + 1) = 0.633``.

    Differences from ensemble-boxes: boxes are clustered normalised by their ``image_size`` (as ensemble-boxes
    needs them) but not clipped to the image, and come out in pixels; zero-area boxes are kept, each as a cluster of
    its own (ensemble-boxes drops them with a warning); a cluster whose boxes all have ``s·w = 0`` gets their plain mean
    box (ensemble-boxes gives NaN); bad input raises ``ValueError`` (ensemble-boxes calls ``exit()``). With per-class
    weights ``W``, ``max(w)`` and the member weights are those of the cluster's label (the label of its first box).
    ``extras["votes"]`` is the number of distinct members in the cluster.
    """

    name = "wbf"
    Params = WeightedBoxesFusionParams
    params: WeightedBoxesFusionParams

    def fuse_batch(self, per_image: Sequence[Sequence[Detections]]) -> list[Detections]:
        p = self.params
        batch = flatten(per_image, p.weights)
        ordered, order, clusters = cluster_batch(batch, p.iou_thr, p.skip_box_thr, p.class_agnostic)
        labels = ordered.labels[clusters.seed]
        scores = wbf_scores(clusters, ordered, labels, p.conf_type, p.allows_overflow)
        votes = clusters.present.sum(dim=1)
        seed = clusters.seed
        return assemble(batch, ordered.image[seed], clusters.boxes, scores, labels, votes, order[seed])


def wbf_scores(
    clusters: Clusters, batch: Batch, labels: Tensor, conf_type: str, allows_overflow: bool
) -> Tensor:
    """Cluster scores float64 ``[K]`` for ``conf_type`` (see :class:`WeightedBoxesFusion`).

    The operations and their order are ensemble-boxes', including its float32 storage of a multi-box cluster's
    raw score and weight sum, so that the scores agree to the last bit.
    """
    n = clusters.count
    multi = n > 1

    def stored(x: Tensor) -> Tensor:  # get_weighted_box writes into a float32 array; one-box clusters skip it
        return torch.where(multi, x.float().double(), x)

    member_w = batch.class_weights(labels)  # [K, M]
    if conf_type == "max":
        return _div(stored(clusters.max_sw), member_w.max(dim=1).values)
    total_w = batch.total_weights(labels)
    raw = stored(clusters.sum_sw / n)
    if conf_type == "avg":
        return _div(raw * (n if allows_overflow else n.clamp(max=batch.n_members)), total_w)
    # sums over members in member order, one at a time (numpy's order for the few members of an ensemble)
    present_w, absent_w = torch.zeros_like(raw), torch.zeros_like(raw)
    for m in range(batch.n_members):
        w = member_w[:, m]
        present_w = present_w + torch.where(clusters.present[:, m], w, 0.0)
        absent_w = absent_w + torch.where(clusters.present[:, m], 0.0, w)
    sum_w = stored(clusters.sum_w)
    if conf_type == "box_and_model_avg":
        return _div(_div(raw * n, sum_w) * present_w, total_w)
    if conf_type == "absent_model_aware_avg":
        return _div(raw * n, sum_w + absent_w)
    raise ValueError(
        f"unknown conf_type {conf_type!r}; expected avg, max, box_and_model_avg or absent_model_aware_avg"
    )


def _div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, 0 where ``den == 0`` (all weights of a class zero: its clusters score 0, not NaN)."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))
