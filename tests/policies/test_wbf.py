"""WBF against ensemble-boxes 1.0.9 (the oracle) and hand-derived numbers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ensemble_boxes import weighted_boxes_fusion
from policy_cases import clustered_members, normalised

from fusion import fuse, fuse_batch
from fusion.detections import Detections
from policies.wbf import WeightedBoxesFusion

CONF_TYPES = ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]


def reference(members, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return weighted_boxes_fusion(*normalised(members), **kwargs)


def assert_same(out: Detections, ref, image_size) -> None:
    """Same clusters: boxes (normalised), scores and labels within 1e-5, in the same (score) order."""
    ref_boxes, ref_scores, ref_labels = ref
    height, width = image_size
    ours = out.boxes.double().numpy() / np.array([width, height, width, height])
    assert len(out) == len(ref_boxes)
    np.testing.assert_allclose(ours, ref_boxes, atol=1e-5)
    np.testing.assert_allclose(out.scores.numpy(), ref_scores, atol=1e-5)
    np.testing.assert_array_equal(out.labels.numpy(), ref_labels.astype(np.int64))


@pytest.mark.parametrize("conf_type", CONF_TYPES)
def test_parity_with_ensemble_boxes(conf_type: str) -> None:
    checked = 0
    for seed in range(24):
        rng = np.random.default_rng(seed)
        members = clustered_members(rng, n_members=int(rng.integers(2, 5)), n_boxes=(0, 30))
        n = len(members)
        weights = [None, [float(x) for x in rng.uniform(0.5, 3, n)], [1.0] * n][seed % 3]
        iou_thr = [0.3, 0.55, 0.8][seed % 3 if seed % 2 else (seed // 2) % 3]
        skip = [0.0, 0.3][seed % 2]
        overflow = conf_type == "avg" and seed % 4 == 1
        kwargs = dict(iou_thr=iou_thr, skip_box_thr=skip, conf_type=conf_type, allows_overflow=overflow)
        out = fuse(members, "wbf", weights=weights, **kwargs)
        assert_same(out, reference(members, weights=weights, **kwargs), members[0].image_size)
        checked += len(out)
    assert checked > 150  # the cases really produce clusters


@pytest.mark.parametrize("conf_type", CONF_TYPES)
def test_float64_input_gives_ensemble_boxes_bits(conf_type: str) -> None:
    """On float64 input (saved results) the fused boxes and scores ARE ensemble-boxes': same clusters, same float32
    rounding of the fused box and raw score, same order of operations -- compared with ``==``, not a tolerance."""
    checked = 0
    for seed in range(24):
        rng = np.random.default_rng(100 + seed)
        members = clustered_members(rng, n_members=int(rng.integers(2, 6)), n_boxes=(0, 30), float64=True)
        n = len(members)
        weights = [None, [float(x) for x in rng.uniform(0.5, 3, n)], [2, 1, 1, 1, 1][:n]][seed % 3]
        iou_thr = [0.3, 0.55, 0.8][(seed // 3) % 3]
        overflow = conf_type == "avg" and seed % 4 == 1
        kwargs = dict(iou_thr=iou_thr, skip_box_thr=[0.0, 0.3][seed % 2], conf_type=conf_type)
        out = fuse(members, "wbf", weights=weights, allows_overflow=overflow, **kwargs)
        ref_boxes, ref_scores, ref_labels = reference(
            members, weights=weights, allows_overflow=overflow, **kwargs
        )
        height, width = members[0].image_size
        assert out.boxes.dtype == torch.float64 and out.scores.dtype == torch.float64
        np.testing.assert_array_equal(out.boxes.numpy(), ref_boxes * [width, height, width, height])
        np.testing.assert_array_equal(out.scores.numpy(), ref_scores)
        np.testing.assert_array_equal(out.labels.numpy(), ref_labels.astype(np.int64))
        checked += int((out.extras["votes"] > 1).sum())
    assert checked > 100  # multi-box clusters, whose arithmetic is the point


def test_batch_parity_and_votes() -> None:
    rng = np.random.default_rng(7)
    images = [clustered_members(rng, n_members=3, n_boxes=(0, 25)) for _ in range(12)]
    outs = fuse_batch(images, "wbf", weights=[2, 1, 1], conf_type="box_and_model_avg")
    for members, out in zip(images, outs):
        ref = reference(members, weights=[2, 1, 1], conf_type="box_and_model_avg")
        assert_same(out, ref, members[0].image_size)
        assert out.extras["votes"].dtype == torch.int64
        assert bool(((out.extras["votes"] >= 1) & (out.extras["votes"] <= 3)).all())


def test_class_agnostic_equals_single_label_reference() -> None:
    rng = np.random.default_rng(3)
    members = clustered_members(rng, n_members=3, n_boxes=30, n_classes=4)
    out = fuse(members, "wbf", class_agnostic=True)
    boxes, scores, labels = normalised(members)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_boxes, ref_scores, _ = weighted_boxes_fusion(boxes, scores, [np.zeros_like(x) for x in labels])
    height, width = members[0].image_size
    np.testing.assert_allclose(
        out.boxes.double().numpy() / [width, height, width, height], ref_boxes, atol=1e-5
    )
    np.testing.assert_allclose(out.scores.numpy(), ref_scores, atol=1e-5)
    assert len(set(out.labels.tolist())) > 1  # the fused label is the label of each cluster's best box


def test_per_class_weights_equal_per_label_reference() -> None:
    rng = np.random.default_rng(11)
    members = clustered_members(rng, n_members=3, n_boxes=30, n_classes=2, label_noise=0.0)
    table = [[2.0, 1.0], [1.0, 3.0], [1.0, 1.0]]
    out = fuse(members, "wbf", weights=table, conf_type="absent_model_aware_avg")
    for label in (0, 1):
        only = [d[d.labels == label] for d in members]
        ref = reference(only, weights=[row[label] for row in table], conf_type="absent_model_aware_avg")
        assert_same(out[out.labels == label], ref, members[0].image_size)


def hand_case() -> list[Detections]:
    """Weights [2, 1, 1]: member 0 has 0.9 and 0.6, member 1 has 0.8, all overlapping; member 2 has nothing."""
    return [
        Detections([[10, 10, 50, 50], [11, 10, 51, 50]], [0.9, 0.6], [0, 0]),
        Detections([[10, 12, 50, 52]], [0.8], [0]),
        Detections.empty(),
    ]


@pytest.mark.parametrize("conf_type", CONF_TYPES)
def test_hand_derived_scores(conf_type: str) -> None:
    weights = [2.0, 1.0, 1.0]
    sw = [0.9 * 2, 0.6 * 2, 0.8 * 1]  # score x weight of the three boxes
    total_w, n_models = sum(weights), 3
    sum_w_boxes = 2 + 2 + 1
    expected = {
        "avg": sum(sw) / 3 * min(n_models, 3) / total_w,  # 3.8 / 3 * 3 / 4 = 0.95
        "max": max(sw) / max(weights),  # 1.8 / 2 = 0.90
        "box_and_model_avg": sum(sw) / sum_w_boxes * (2 + 1) / total_w,  # 0.76 * 0.75 = 0.57
        "absent_model_aware_avg": sum(sw) / (sum_w_boxes + 1),  # 3.8 / 6 = 0.6333
    }[conf_type]
    published = {"avg": 0.95, "max": 0.90, "box_and_model_avg": 0.57, "absent_model_aware_avg": 0.633}
    assert expected == pytest.approx(published[conf_type], abs=5e-4)
    out = fuse(hand_case(), "wbf", weights=weights, conf_type=conf_type)
    assert len(out) == 1
    assert float(out.scores[0]) == pytest.approx(expected, abs=1e-6)
    assert int(out.extras["votes"][0]) == 2
    # fused box: (1.8 * b0 + 1.2 * b1 + 0.8 * b2) / 3.8
    box = (
        1.8 * np.array([10, 10, 50, 50]) + 1.2 * np.array([11, 10, 51, 50]) + 0.8 * np.array([10, 12, 50, 52])
    ) / 3.8
    np.testing.assert_allclose(out.boxes[0].numpy(), box, atol=1e-4)


def test_overflow_only_changes_avg_of_crowded_clusters() -> None:
    # four boxes of one member in one cluster: n = 4 > T = 2
    members = [
        Detections(
            [[0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 11, 10], [0, 0, 11, 11]], [0.9, 0.8, 0.7, 0.6], [1] * 4
        ),
        Detections.empty(),
    ]
    plain = fuse(members, "wbf")
    over = fuse(members, "wbf", allows_overflow=True)
    assert float(plain.scores[0]) == pytest.approx(3.0 / 4 * 2 / 2)  # mean 0.75 * min(2, 4) / 2
    assert float(over.scores[0]) == pytest.approx(3.0 / 2)  # 0.75 * 4 / 2: above 1


def test_zero_area_boxes_are_own_clusters() -> None:
    """Documented: a zero-area box overlaps nothing, so it is fused alone (ensemble-boxes drops it)."""
    members = [
        Detections([[10, 10, 30, 30], [12, 12, 12, 30]], [0.8, 0.9], [0, 0]),
        Detections([[10, 11, 30, 31], [12, 12, 12, 30]], [0.7, 0.5], [0, 0]),
    ]
    out = fuse(members, "wbf")
    assert len(out) == 3
    flat = out[out.areas == 0]
    assert sorted(flat.scores.tolist()) == pytest.approx([0.5 / 2, 0.9 / 2])
    assert flat.extras["votes"].tolist() == [1, 1]
    assert out[out.areas > 0].extras["votes"].tolist() == [2]


def test_zero_scores_do_not_give_nan() -> None:
    members = [Detections([[0, 0, 10, 10]], [0.0], [0]), Detections([[0, 0, 10, 11]], [0.0], [0])]
    out = fuse(members, "wbf")
    assert torch.isfinite(out.boxes).all()
    np.testing.assert_allclose(out.boxes[0].numpy(), [0, 0, 10, 10.5], atol=1e-4)
    assert float(out.scores[0]) == 0.0


def test_params_validated() -> None:
    with pytest.raises(ValueError, match="conf_type"):
        WeightedBoxesFusion(conf_type="mean")
    with pytest.raises(ValueError, match="iou_thr"):
        WeightedBoxesFusion(iou_thr=1.5)
    with pytest.raises(ValueError, match="skip_box_thr"):
        WeightedBoxesFusion(skip_box_thr=-0.1)
