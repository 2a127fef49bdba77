"""Soft-NMS (Bodla et al., 2017), linear and gaussian, batched over every (image, label) group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fusion.boxes import box_iou
from fusion.detections import Detections
from fusion.policy import FusionPolicy, PolicyParams
from policies import _suppress
from policies._clusters import make_layout
from policies._inputs import assemble, flatten, group_keys
from policies._suppress import normalised_weights

__all__ = ["SoftNMS", "SoftNMSParams"]


class SoftNMSParams(PolicyParams):
    """Parameters of :class:`SoftNMS` (defaults as ensemble-boxes' ``soft_nms``).

    Attributes:
        method: ``"linear"``: scores of boxes overlapping a picked box with IoU > ``iou_thr`` are multiplied by
            ``1 - IoU``; ``"gaussian"``: every score is multiplied by ``exp(-IoU² / sigma)``.
        iou_thr: Overlap above which the linear method decays (also the overlap that counts as a vote).
        sigma: Width of the gaussian decay, > 0.
        score_thr: Boxes whose DECAYED score is not above this are dropped.
    """

    type: Literal["soft_nms"] = "soft_nms"
    method: Literal["linear", "gaussian"] = "gaussian"
    iou_thr: float = Field(0.5, ge=0.0, le=1.0)
    sigma: float = Field(0.5, gt=0.0)
    score_thr: float = Field(0.001, ge=0.0)


class SoftNMS(FusionPolicy):
    """Soft-NMS over all members' boxes: repeatedly pick the highest remaining score and decay the others.

    Scores start as ``s·w / max(w)`` (unit weights leave them unchanged) and the fused scores are the DECAYED ones.
    The kept set equals ensemble-boxes' ``soft_nms`` on inputs without tied scores (parity-tested; ties, also
    among decayed scores, follow the tie rule of :class:`~fusion.policy.FusionPolicy`), but ensemble-boxes returns the original,
    undecayed scores of the kept boxes (and rescales to ``s·w / Σw`` when weights are given, so its ``thresh``
    corresponds to ``score_thr · Σw / max(w)`` here). All groups of all images step together: the number of Python
    steps is the size of the largest group. ``extras["votes"]`` = distinct members with a box of the group whose IoU
    with the kept box is > ``iou_thr`` (the kept box's own member included). Zero-area boxes overlap nothing
    (ensemble-boxes drops them).
    """

    name = "soft_nms"
    Params = SoftNMSParams
    params: SoftNMSParams

    def fuse_batch(self, per_image: Sequence[Sequence[Detections]]) -> list[Detections]:
        p = self.params
        batch = flatten(per_image, p.weights)
        scores = batch.scores * normalised_weights(batch)
        layout = make_layout(group_keys(batch, p.class_agnostic), scores)
        device = batch.device
        n_steps = len(layout.active)
        sizes = torch.bincount(layout.group, minlength=layout.offsets.shape[0]) if n_steps else layout.offsets
        cols = torch.arange(n_steps, device=device)
        valid = cols[None, :] < sizes[:, None]  # [G, K]
        pos = torch.where(valid, layout.offsets[:, None] + cols, 0)
        index = layout.order[pos]
        boxes = batch.boxes[index]  # [G, K, 4]
        current = torch.where(valid, scores[index], -torch.inf)
        done = ~valid
        for g in layout.active:
            cur, fin, box = current[:g], done[:g], boxes[:g]
            rows = torch.arange(g, device=device)
            pick = cur.masked_fill(fin, -torch.inf).argmax(dim=1)
            fin[rows, pick] = True
            iou = box_iou(box[rows, pick][:, None, :], box)[:, 0]  # [g, K]
            if p.method == "linear":
                decay = torch.where(iou > p.iou_thr, 1.0 - iou, 1.0)
            else:
                decay = torch.exp(-(iou * iou) / p.sigma)
            cur.mul_(torch.where(fin, 1.0, decay))
        kept = valid & (current > p.score_thr)
        group, col = kept.nonzero(as_tuple=True)
        votes = _votes(boxes, valid, index, batch.member, group, col, p.iou_thr, batch.n_members)
        idx = index[group, col]
        return assemble(
            batch, batch.image[idx], batch.boxes[idx], current[group, col], batch.labels[idx], votes, idx
        )


def _votes(
    boxes: Tensor,
    valid: Tensor,
    index: Tensor,
    member: Tensor,
    group: Tensor,
    col: Tensor,
    iou_thr: float,
    n_members: int,
) -> Tensor:
    """int64 ``[k]`` distinct members with a box of the group overlapping each kept box (``group``, ``col``) with
    IoU > ``iou_thr`` (its own member included), computed ``PAIR_CHUNK`` box pairs at a time to bound memory."""
    device = boxes.device
    rows = max(1, _suppress.PAIR_CHUNK // max(boxes.shape[1], 1))
    votes = []
    for start in range(0, group.shape[0], rows):
        g, c = group[start : start + rows], col[start : start + rows]
        overlap = (box_iou(boxes[g, c][:, None, :], boxes[g])[:, 0] > iou_thr) & valid[g]
        overlap[torch.arange(g.shape[0], device=device), c] = True
        present = torch.zeros((g.shape[0], n_members), dtype=torch.float64, device=device)
        present.scatter_add_(1, member[index[g]], overlap.to(torch.float64))
        votes.append((present > 0).sum(dim=1))
    return torch.cat(votes) if votes else group.clone()
