"""Confidence voting: WBF clusters that survive only when enough distinct members vote for them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field

from fusion.detections import Detections
from fusion.policy import FusionPolicy, PolicyParams, PolicyParamsError
from policies._clusters import cluster_batch
from policies._inputs import assemble, flatten

__all__ = ["ConfidenceVoting", "ConfidenceVotingParams"]

Quorum = Literal["affirmative", "consensus", "unanimous"]


class ConfidenceVotingParams(PolicyParams):
    """Parameters of :class:`ConfidenceVoting`.

    Attributes:
        iou_thr: Clustering threshold, as in WBF (IoU with the cluster's current fused box strictly above it).
        skip_box_thr: Boxes with a raw score below this are dropped before clustering.
        quorum: ``"affirmative"`` (any member), ``"consensus"`` (members holding more than half of the total
            weight), ``"unanimous"`` (all the weight), or a number: the least total weight of the distinct members
            in a cluster (with unit weights, the least number of members).
    """

    type: Literal["voting"] = "voting"
    iou_thr: float = Field(0.55, ge=0.0, le=1.0)
    skip_box_thr: float = Field(0.0, ge=0.0)
    quorum: Quorum | Annotated[float, Field(gt=0)] = "consensus"

    def check_members(self, member_weights: Sequence[float], where: str = "fusion") -> None:
        """A numeric quorum above the members' total weight would drop every cluster: refuse it.

        Raises:
            PolicyParamsError: ``quorum`` > the sum of ``member_weights``.
        """
        total = float(sum(member_weights))
        if isinstance(self.quorum, float) and self.quorum > total * (1 + 1e-9):
            raise PolicyParamsError(
                f"{where}.quorum={self.quorum:g} exceeds the total weight {total:g} of the {len(member_weights)} "
                "members: no cluster could ever reach it (with unit weights, quorum counts members)"
            )


class ConfidenceVoting(FusionPolicy):
    """Confidence voting by distinct members.

    Boxes are clustered exactly as WBF clusters them (same groups, order, tie rule and threshold). A cluster survives when the
    weight of the DISTINCT members with a box in it reaches the quorum. Its box is the ``score * weight``-weighted
    mean of its boxes (as in WBF); its score is ``Σ_m w_m · best_m / Σ_m w_m``, where ``best_m`` is member ``m``'s
    best score in the cluster and 0 when ``m`` is absent, so a member voting twice counts once and a missing member
    pulls the score down.

    Example (three members, weights ``[1, 1, 1]``; one cluster with member 0's boxes at 0.9 and 0.6 and member 1's
    box at 0.8; member 2 is absent): distinct-member weight ``2`` of ``3``, so the cluster survives ``affirmative``,
    ``consensus`` (``2 > 1.5``) and ``quorum=2``, but not ``unanimous``; its score is
    ``(1·0.9 + 1·0.8 + 1·0) / 3 = 0.567``, and ``extras["votes"]`` is 2.

    Zero-area boxes are clusters of their own (one vote each). With per-class weights the member weights are those
    of the cluster's label (the label of its highest ``score * weight`` box).
    """

    name = "voting"
    Params = ConfidenceVotingParams
    params: ConfidenceVotingParams

    def fuse_batch(self, per_image: Sequence[Sequence[Detections]]) -> list[Detections]:
        p = self.params
        batch = flatten(per_image, p.weights)
        if batch.n_members:
            p.check_members(batch.table.max(dim=1).values.tolist(), "voting")
        ordered, order, clusters = cluster_batch(batch, p.iou_thr, p.skip_box_thr, p.class_agnostic)
        labels = ordered.labels[clusters.seed]
        member_w = batch.class_weights(labels)  # [K, M]
        total_w = member_w.sum(dim=1)
        voted_w = (member_w * clusters.present).sum(dim=1)
        # a relative tolerance so that "all members" and "more than half" are not lost to float rounding
        tol = 1e-9 * total_w
        if p.quorum == "affirmative":
            keep = torch.ones_like(voted_w, dtype=torch.bool)
        elif p.quorum == "consensus":
            keep = voted_w > total_w / 2 + tol
        elif p.quorum == "unanimous":
            keep = voted_w >= total_w - tol
        elif isinstance(p.quorum, float):
            keep = voted_w >= p.quorum - tol
        else:  # unreachable: Params validation rejects other values
            raise ValueError(f"unknown quorum {p.quorum!r}")
        scores = (member_w * clusters.best).sum(dim=1)
        scores = torch.where(total_w > 0, scores / total_w.clamp(min=1e-300), torch.zeros_like(scores))
        votes = clusters.present.sum(dim=1)
        return assemble(
            batch,
            ordered.image[clusters.seed][keep],
            clusters.boxes[keep],
            scores[keep],
            labels[keep],
            votes[keep],
            order[clusters.seed][keep],
        )
