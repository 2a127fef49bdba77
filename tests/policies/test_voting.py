"""Confidence voting: the docstring's worked example, quorum rules, and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_cases import clustered_members

from fusion import fuse, fuse_batch
from fusion.detections import Detections
from policies.voting import ConfidenceVoting


def example() -> list[Detections]:
    """The docstring example: member 0 has 0.9 and 0.6, member 1 has 0.8 on one object, member 2 nothing."""
    return [
        Detections([[10, 10, 50, 50], [11, 10, 51, 50]], [0.9, 0.6], [0, 0]),
        Detections([[10, 12, 50, 52]], [0.8], [0]),
        Detections.empty(),
    ]


@pytest.mark.parametrize(
    ("quorum", "survives"),
    [("affirmative", True), ("consensus", True), (2, True), (2.5, False), ("unanimous", False)],
)
def test_worked_example(quorum, survives: bool) -> None:
    out = fuse(example(), "voting", quorum=quorum)
    assert len(out) == int(survives)
    if survives:
        assert float(out.scores[0]) == pytest.approx((0.9 + 0.8 + 0.0) / 3, abs=1e-6)
        assert out.extras["votes"].tolist() == [2]
        # box: score-weighted mean, as WBF
        wbf = fuse(example(), "wbf")
        torch.testing.assert_close(out.boxes, wbf.boxes)


def test_weighted_quorum_and_score() -> None:
    # weights [1, 1, 3]: members 0 and 1 hold 2 of 5 -> not a consensus; member 2 alone holds 3 of 5 -> consensus
    members = [
        Detections([[0, 0, 10, 10]], [0.5], [0]),
        Detections([[0, 0, 10, 10.5], [40, 40, 60, 60]], [0.7, 0.4], [0, 0]),
        Detections([[40, 41, 60, 60]], [0.6], [0]),
    ]
    out = fuse(members, "voting", weights=[1, 1, 3], quorum="consensus")
    assert len(out) == 1
    assert float(out.scores[0]) == pytest.approx((1 * 0.4 + 3 * 0.6) / 5)
    assert fuse(members, "voting", weights=[1, 1, 3], quorum=2).scores.tolist() == pytest.approx(
        [(3 * 0.6 + 0.4) / 5, (0.5 + 0.7) / 5]
    )


def brute_force(members: list[Detections], iou_thr: float, quorum: str) -> list[tuple]:
    """Plain-Python WBF clustering per label, then the voting rule; returns (label, score, votes) sorted."""
    boxes = [
        (float(s), m, b.tolist(), int(label))
        for m, d in enumerate(members)
        for b, s, label in zip(d.boxes, d.scores, d.labels)
    ]
    n_members = len(members)
    out = []
    for label in sorted({b[3] for b in boxes}):
        items = sorted([b for b in boxes if b[3] == label], key=lambda b: -b[0])
        clusters: list[list] = []
        fused: list[np.ndarray] = []
        for item in items:
            box = np.array(item[2])
            ious = [_iou(f, box) for f in fused]
            best = int(np.argmax(ious)) if ious else -1
            if best >= 0 and ious[best] > iou_thr:
                clusters[best].append(item)
                w = np.array([c[0] for c in clusters[best]])
                fused[best] = (w[:, None] * np.array([c[2] for c in clusters[best]])).sum(0) / w.sum()
            else:
                clusters.append([item])
                fused.append(box)
        for cluster in clusters:
            best_per_member = {}
            for s, m, _, _ in cluster:
                best_per_member[m] = max(best_per_member.get(m, 0.0), s)
            need = {"affirmative": 1, "consensus": n_members / 2 + 1e-9, "unanimous": n_members}[quorum]
            if len(best_per_member) >= need:
                out.append((label, round(sum(best_per_member.values()) / n_members, 5), len(best_per_member)))
    return sorted(out)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("quorum", ["affirmative", "consensus", "unanimous"])
def test_matches_brute_force(quorum: str) -> None:
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        members = clustered_members(rng, n_members=3, n_boxes=(0, 20))
        out = fuse(members, "voting", quorum=quorum, iou_thr=0.5)
        ours = sorted(
            (int(label), round(float(s), 5), int(v))
            for label, s, v in zip(out.labels, out.scores, out.extras["votes"])
        )
        assert ours == brute_force(members, 0.5, quorum)


def test_batch_equals_single() -> None:
    rng = np.random.default_rng(5)
    images = [clustered_members(rng, n_members=4, n_boxes=(0, 15)) for _ in range(6)]
    batched = fuse_batch(images, "voting", quorum="consensus")
    for members, out in zip(images, batched):
        one = fuse(members, "voting", quorum="consensus")
        torch.testing.assert_close(out.boxes, one.boxes)
        torch.testing.assert_close(out.scores, one.scores)
        assert torch.equal(out.extras["votes"], one.extras["votes"])


@pytest.mark.parametrize("quorum", ["majority", 0, -1.0])
def test_bad_quorum_rejected(quorum) -> None:
    with pytest.raises(ValueError, match="quorum"):
        ConfidenceVoting(quorum=quorum)
