"""The tie rule of every policy: equal scores (``score * weight``) are decided by member order, then by each
member's input order -- as if the earlier box scored a hair higher. Real detectors write rounded scores, so ties
are common; ensemble-boxes leaves them to numpy's unstable sort, so parity with it holds only without ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_cases import clustered_members

from fusion import fuse
from fusion.detections import Detections

POLICIES = ["wbf", "voting", "nms", "nmw", "soft_nms"]
PARAMS = {"voting": {"quorum": "affirmative"}, "soft_nms": {"method": "linear"}}


def _rounded(seed: int) -> list[Detections]:
    """Float64 members, scores rounded to 1 decimal (as coarse as some exporters write them): ties everywhere."""
    members = clustered_members(
        np.random.default_rng(seed), n_members=3, n_boxes=(15, 40), jitter=0.2, float64=True
    )
    return [Detections(d.boxes, torch.round(d.scores, decimals=1), d.labels, d.image_size) for d in members]


def _nudged(members: list[Detections], direction: int) -> list[Detections]:
    """The same boxes with each score raised by 1e-9 x (how many boxes come after it in member order, then input
    order), so the earlier of tied boxes scores higher (``direction=-1``: the later, the opposite rule). No tie
    survives and no other comparison changes."""
    total = sum(len(d) for d in members)
    out, position = [], 0
    for det in members:
        steps = torch.arange(position, position + len(det), dtype=torch.float64)
        lift = total - steps if direction > 0 else steps + 1
        out.append(Detections(det.boxes, det.scores + 1e-9 * lift, det.labels, det.image_size))
        position += len(det)
    return out


def _same(a: Detections, b: Detections) -> bool:
    """Equal outputs up to the 1e-9 nudges, compared as sets: fused scores that tie by coincidence (two clusters
    whose averages happen to be equal) are ordered by the nudges in one and by the tie rule in the other."""
    a, b = _canonical(a), _canonical(b)
    return (
        len(a) == len(b)
        and torch.equal(a.labels, b.labels)
        and torch.equal(a.extras["votes"], b.extras["votes"])
        and torch.allclose(a.boxes, b.boxes, atol=1e-4, rtol=0)  # WBF stores float32 boxes
        and torch.allclose(a.scores, b.scores, atol=1e-6, rtol=0)
    )


def _canonical(det: Detections) -> Detections:
    keys = torch.cat([det.boxes.round(decimals=2), det.labels[:, None].double()], dim=1).numpy()
    order = torch.from_numpy(np.lexsort(keys.T[::-1].copy()))
    return Detections(
        det.boxes[order],
        det.scores[order],
        det.labels[order],
        det.image_size,
        {"votes": det.extras["votes"][order]},
    )


@pytest.mark.parametrize("policy", POLICIES)
def test_tied_scores_follow_member_then_input_order(policy: str) -> None:
    differs = 0
    for seed in range(8):
        members = _rounded(seed)
        tied = torch.cat([d.scores for d in members])
        assert len(tied) - len(torch.unique(tied)) > 10  # the input really has ties
        ours = fuse(members, policy, iou_thr=0.5, **PARAMS.get(policy, {}))
        assert _same(ours, fuse(_nudged(members, 1), policy, iou_thr=0.5, **PARAMS.get(policy, {}))), seed
        differs += not _same(ours, fuse(_nudged(members, -1), policy, iou_thr=0.5, **PARAMS.get(policy, {})))
    assert differs >= 4  # the opposite rule gives another output: the check above can fail


def _box(x: float, label: int = 0, score: float = 0.5) -> Detections:
    return Detections(
        torch.tensor([[x, 0.0, x + 10.0, 10.0]]), torch.tensor([score]), torch.tensor([label]), (20, 200)
    )


@pytest.mark.parametrize("policy", POLICIES)
def test_the_first_member_wins_a_tie(policy: str) -> None:
    # two overlapping boxes with equal scores and different labels, fused across labels: the winner (the kept
    # box, or the cluster's first box, whose label the cluster takes) is the first member's
    first, second = _box(0.0, label=1), _box(1.0, label=2)
    params = {"class_agnostic": True, "iou_thr": 0.5, **PARAMS.get(policy, {})}
    assert fuse([first, second], policy, **params).labels[0] == 1
    assert fuse([second, first], policy, **params).labels[0] == 2


@pytest.mark.parametrize("policy", POLICIES)
def test_equal_fused_scores_come_out_in_member_then_input_order(policy: str) -> None:
    # separate boxes, all scored 0.5: the output order is member 0's boxes in input order, then member 1's
    a = Detections(
        torch.tensor([[100.0, 0, 110, 10], [0, 0, 10, 10]]),
        torch.tensor([0.5, 0.5]),
        torch.tensor([0, 1]),
        (20, 200),
    )
    b = _box(50.0, label=2)
    params = PARAMS.get(policy, {})
    assert fuse([a, b], policy, **params).labels.tolist() == [0, 1, 2]
    assert fuse([b, a], policy, **params).labels.tolist() == [2, 0, 1]
