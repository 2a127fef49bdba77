"""NMS, soft-NMS and NMW against ensemble-boxes 1.0.9, plus hand-derived decays."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from ensemble_boxes import nms, non_maximum_weighted, soft_nms
from policy_cases import clustered_members, match_rows, normalised

from fusion import fuse, fuse_batch
from fusion.detections import Detections


def _ref(fn, members, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*normalised(members), **kwargs)


def _ours_normalised(out: Detections) -> np.ndarray:
    height, width = out.image_size
    return out.boxes.double().numpy() / np.array([width, height, width, height])


def _cases(n: int, start: int):
    for seed in range(start, start + n):
        rng = np.random.default_rng(seed)
        # at least one box per member: ensemble-boxes' nms crashes on a member without boxes
        members = clustered_members(rng, n_members=int(rng.integers(2, 5)), n_boxes=(1, 30))
        weights = [None, [float(x) for x in rng.uniform(0.5, 3, len(members))]][seed % 2]
        yield seed, members, weights, [0.3, 0.5, 0.7][seed % 3]


def test_nms_parity() -> None:
    for _, members, weights, thr in _cases(30, 0):
        out = fuse(members, "nms", weights=weights, iou_thr=thr)
        ref_boxes, ref_scores, ref_labels = _ref(nms, members, weights=weights, iou_thr=thr)
        index = match_rows(_ours_normalised(out), ref_boxes)
        # ensemble-boxes rescales to s*w/sum(w) when weights are given; ours is s*w/max(w)
        factor = max(weights) / sum(weights) if weights else 1.0
        np.testing.assert_allclose(out.scores.numpy()[index] * factor, ref_scores, atol=1e-6)
        np.testing.assert_array_equal(out.labels.numpy()[index], ref_labels)


def test_nmw_parity() -> None:
    for seed, members, weights, thr in _cases(30, 100):
        skip = [0.0, 0.25][seed % 2]
        out = fuse(members, "nmw", weights=weights, iou_thr=thr, skip_box_thr=skip)
        ref_boxes, ref_scores, ref_labels = _ref(
            non_maximum_weighted, members, weights=weights, iou_thr=thr, skip_box_thr=skip
        )
        np.testing.assert_allclose(_ours_normalised(out), ref_boxes, atol=1e-5)
        np.testing.assert_allclose(out.scores.numpy(), ref_scores, atol=1e-6)
        np.testing.assert_array_equal(out.labels.numpy(), ref_labels)


@pytest.mark.parametrize(("method", "code"), [("linear", 1), ("gaussian", 2)])
def test_soft_nms_kept_set_parity(method: str, code: int) -> None:
    for _, members, weights, thr in _cases(25, 200):
        score_thr = 0.05
        out = fuse(
            members, "soft_nms", method=method, weights=weights, iou_thr=thr, sigma=0.5, score_thr=score_thr
        )
        # ensemble-boxes scores are s*w/sum(w) with weights: the same threshold there is score_thr*max(w)/sum(w)
        factor = max(weights) / sum(weights) if weights else 1.0
        ref_boxes, ref_scores, ref_labels = _ref(
            soft_nms, members, method=code, iou_thr=thr, sigma=0.5, thresh=score_thr * factor, weights=weights
        )
        index = match_rows(_ours_normalised(out), ref_boxes)
        np.testing.assert_array_equal(out.labels.numpy()[index], ref_labels)
        # ensemble-boxes returns the undecayed scores; ours are decayed, so never higher
        assert np.all(out.scores.numpy()[index] * factor <= ref_scores + 1e-6)


def test_soft_nms_decays_by_hand() -> None:
    # two boxes of one label: IoU = 50 / 150 = 1/3 (second box shifted by half its width)
    members = [Detections([[0, 0, 10, 10]], [0.9], [0]), Detections([[5, 0, 15, 10]], [0.8], [0])]
    iou = 50 / 150
    linear = fuse(members, "soft_nms", method="linear", iou_thr=0.3)
    assert linear.scores.tolist() == pytest.approx([0.9, 0.8 * (1 - iou)])
    assert linear.extras["votes"].tolist() == [2, 2]  # each overlaps the other above iou_thr 0.3
    untouched = fuse(members, "soft_nms", method="linear", iou_thr=0.4)
    assert untouched.scores.tolist() == pytest.approx([0.9, 0.8])
    assert untouched.extras["votes"].tolist() == [1, 1]
    gaussian = fuse(members, "soft_nms", method="gaussian", sigma=0.5)
    assert gaussian.scores.tolist() == pytest.approx([0.9, 0.8 * math.exp(-(iou**2) / 0.5)])
    gone = fuse(members, "soft_nms", method="linear", iou_thr=0.3, score_thr=0.6)
    assert gone.scores.tolist() == pytest.approx([0.9])


def test_nms_votes_and_nmw_box_by_hand() -> None:
    members = [
        Detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.3], [0, 0]),
        Detections([[0, 0, 10, 11]], [0.6], [0]),
    ]
    out = fuse(members, "nms", iou_thr=0.5)
    assert out.scores.tolist() == pytest.approx([0.9, 0.3])
    assert out.extras["votes"].tolist() == [2, 1]
    nmw = fuse(members, "nmw", iou_thr=0.5)
    iou = 100 / 110
    expected = (0.9 * np.array([0, 0, 10, 10]) + 0.6 * iou * np.array([0, 0, 10, 11])) / (0.9 + 0.6 * iou)
    np.testing.assert_allclose(nmw.boxes[0].numpy(), expected, atol=1e-5)
    assert nmw.scores.tolist() == pytest.approx([0.9, 0.3])


@pytest.mark.parametrize("policy", ["nms", "soft_nms", "nmw"])
def test_batch_equals_single(policy: str) -> None:
    rng = np.random.default_rng(9)
    images = [clustered_members(rng, n_members=3, n_boxes=(0, 15)) for _ in range(6)]
    for members, out in zip(images, fuse_batch(images, policy)):
        one = fuse(members, policy)
        np.testing.assert_allclose(out.boxes.numpy(), one.boxes.numpy(), atol=1e-5)
        np.testing.assert_allclose(out.scores.numpy(), one.scores.numpy(), atol=1e-6)
        np.testing.assert_array_equal(out.extras["votes"].numpy(), one.extras["votes"].numpy())


def test_nms_handles_member_without_boxes() -> None:
    """ensemble-boxes' nms crashes here; ours fuses the others."""
    members = [Detections([[0, 0, 10, 10], [1, 0, 10, 10]], [0.9, 0.5], [2, 2]), Detections.empty()]
    out = fuse(members, "nms")
    assert out.scores.tolist() == pytest.approx([0.9])
    assert out.labels.tolist() == [2]


@pytest.mark.parametrize("policy", ["nms", "nmw", "soft_nms"])
def test_pair_chunks_do_not_change_the_result(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 13 D4: box pairs are compared in chunks of PAIR_CHUNK; tiny chunks must give the same output
    import policies._suppress as suppress

    members = clustered_members(np.random.default_rng(7), n_members=3, n_boxes=60, n_classes=2)
    whole = fuse(members, policy, iou_thr=0.5, weights=[1.0, 2.0, 0.5])
    monkeypatch.setattr(suppress, "PAIR_CHUNK", 7)
    chunked = fuse(members, policy, iou_thr=0.5, weights=[1.0, 2.0, 0.5])
    assert len(whole) > 10 and int(whole.extras["votes"].max()) > 1  # clusters with several members
    for field in ("boxes", "scores", "labels"):
        assert torch.equal(getattr(chunked, field), getattr(whole, field)), field
    assert torch.equal(chunked.extras["votes"], whole.extras["votes"])
