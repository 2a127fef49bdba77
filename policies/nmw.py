"""Non-maximum weighted fusion (Zhou et al., CAD, 2017) with ensemble-boxes 1.0.9 semantics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from fusion.detections import Detections
from fusion.policy import FusionPolicy, PolicyParams
from policies._inputs import assemble, flatten, group_keys
from policies._suppress import image_ranges, nms_clusters, normalised_weights

__all__ = ["NonMaximumWeighted", "NonMaximumWeightedParams"]

# keeps a cluster whose boxes all score 0 from dividing 0 by 0 (it then gets the plain mean box)
_EPS = 1e-12


class NonMaximumWeightedParams(PolicyParams):
    """Parameters of :class:`NonMaximumWeighted`.

    Attributes:
        iou_thr: A box joins the cluster of the best-overlapping earlier cluster head when IoU is strictly above this.
        skip_box_thr: Boxes with a raw score below this are dropped first.
    """

    type: Literal["nmw"] = "nmw"
    iou_thr: float = Field(0.55, ge=0.0, le=1.0)
    skip_box_thr: float = Field(0.0, ge=0.0)


class NonMaximumWeighted(FusionPolicy):
    """Non-maximum weighted: NMS clusters whose box is the IoU- and score-weighted mean of the cluster.

    As ensemble-boxes' ``non_maximum_weighted`` on inputs without tied scores (parity-tested; ties follow the tie
    rule of :class:`~fusion.policy.FusionPolicy`): weights are divided by their maximum, each box
    carries ``s = score · w``; boxes visited by ``s`` descending either join the cluster head (an earlier head, fixed,
    never recomputed) they overlap most with IoU > ``iou_thr``, or become a head. Fused box
    ``Σ(s·IoU(b, head)·b) / Σ(s·IoU(b, head))``; score = the head's ``s``. The heads are exactly the hard-NMS kept
    set, so each image takes one torchvision ``batched_nms`` call plus one IoU matrix. Zero-area boxes form clusters
    of their own (ensemble-boxes drops them). ``extras["votes"]`` = distinct members in the cluster.
    """

    name = "nmw"
    Params = NonMaximumWeightedParams
    params: NonMaximumWeightedParams

    def fuse_batch(self, per_image: Sequence[Sequence[Detections]]) -> list[Detections]:
        p = self.params
        batch = flatten(per_image, p.weights)
        if p.skip_box_thr > 0:
            batch = batch.select(batch.scores >= p.skip_box_thr)
        keys = group_keys(batch, p.class_agnostic)
        scores = batch.scores * normalised_weights(batch)
        kept, fused, votes = [], [], []
        for _, start, end in image_ranges(batch):
            boxes = batch.boxes[start:end]
            keep, assign, iou = nms_clusters(boxes, scores[start:end], keys[start:end], p.iou_thr)
            k = keep.shape[0]
            w = scores[start:end] * iou + _EPS
            acc = torch.zeros((k, 5), dtype=boxes.dtype, device=boxes.device)
            acc.index_add_(0, assign, torch.cat([boxes * w[:, None], w[:, None]], dim=1))
            present = torch.zeros((k, batch.n_members), dtype=torch.bool, device=batch.device)
            present[assign, batch.member[start:end]] = True
            kept.append(keep + start)
            fused.append(acc[:, :4] / acc[:, 4:])
            votes.append(present.sum(dim=1))
        if not kept:
            none = batch.labels[:0]
            return assemble(batch, batch.image[:0], batch.boxes[:0], scores[:0], none, none, none)
        keep = torch.cat(kept)
        return assemble(
            batch,
            batch.image[keep],
            torch.cat(fused),
            scores[keep],
            batch.labels[keep],
            torch.cat(votes),
            keep,
        )
