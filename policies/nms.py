"""Hard non-maximum suppression across members (torchvision's ``batched_nms``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from fusion.detections import Detections
from fusion.policy import FusionPolicy, PolicyParams
from policies._inputs import assemble, flatten, group_keys
from policies._suppress import image_ranges, nms_clusters, normalised_weights

__all__ = ["NonMaximumSuppression", "NonMaximumSuppressionParams"]


class NonMaximumSuppressionParams(PolicyParams):
    """Parameters of :class:`NonMaximumSuppression`.

    Attributes:
        iou_thr: A box is suppressed by a higher-scored kept box of its group with IoU strictly above this.
    """

    type: Literal["nms"] = "nms"
    iou_thr: float = Field(0.5, ge=0.0, le=1.0)


class NonMaximumSuppression(FusionPolicy):
    """Pool all members' boxes and keep the local maxima of ``score * weight / max(weight)``.

    The kept set equals ensemble-boxes' ``nms`` on inputs without tied scores (parity-tested; ties follow the tie
    rule of :class:`~fusion.policy.FusionPolicy`, the earlier member's box first). Scores are ``s·w / max(w)``, so unit weights leave
    them unchanged; ensemble-boxes instead rescales to ``s·w / Σw`` when weights are given (not when omitted),
    which ranks boxes the same way. ``extras["votes"]`` counts the distinct members among a kept box and the boxes
    it suppressed (each suppressed box counted for the higher-scored kept box it overlaps most). Zero-area boxes are
    never suppressed and never suppress (ensemble-boxes drops them with a warning). Images are fused one by one
    with a single ``batched_nms`` call each.
    """

    name = "nms"
    Params = NonMaximumSuppressionParams
    params: NonMaximumSuppressionParams

    def fuse_batch(self, per_image: Sequence[Sequence[Detections]]) -> list[Detections]:
        p = self.params
        batch = flatten(per_image, p.weights)
        keys = group_keys(batch, p.class_agnostic)
        scores = batch.scores * normalised_weights(batch)
        kept, votes = [], []
        for _, start, end in image_ranges(batch):
            keep, assign, _ = nms_clusters(
                batch.boxes[start:end], scores[start:end], keys[start:end], p.iou_thr
            )
            present = torch.zeros((keep.shape[0], batch.n_members), dtype=torch.bool, device=batch.device)
            present[assign, batch.member[start:end]] = True
            kept.append(keep + start)
            votes.append(present.sum(dim=1))
        keep = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64, device=batch.device)
        votes_t = torch.cat(votes) if votes else keep.clone()
        return assemble(
            batch, batch.image[keep], batch.boxes[keep], scores[keep], batch.labels[keep], votes_t, keep
        )
