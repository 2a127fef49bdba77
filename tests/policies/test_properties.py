"""Hypothesis properties of the clustering policies, on seeded clustered inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_cases import clustered_members

from fusion import fuse, fuse_batch
from fusion.detections import Detections

CASE = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 10_000),
        "n_members": st.integers(1, 4),
        "max_boxes": st.integers(0, 20),
        "iou_thr": st.sampled_from([0.0, 0.3, 0.55, 0.9]),
    }
)
FAST = settings(max_examples=25, deadline=None)


def members_of(case: dict) -> list[Detections]:
    rng = np.random.default_rng(case["seed"])
    return clustered_members(rng, n_members=case["n_members"], n_boxes=(0, case["max_boxes"]), n_classes=2)


@FAST
@given(CASE, st.sampled_from(["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]))
def test_wbf_boxes_in_hull_and_scores_in_unit_range(case: dict, conf_type: str) -> None:
    members = members_of(case)
    out = fuse(members, "wbf", iou_thr=case["iou_thr"], conf_type=conf_type)
    everything = Detections.cat(members)
    assert bool(((out.scores >= 0) & (out.scores <= 1 + 1e-6)).all())
    for box, label in zip(out.boxes, out.labels):
        # the cluster is a subset of the same-label boxes, so the fused box lies in their hull
        same = everything.boxes[everything.labels == label]
        assert bool((box[:2] >= same[:, :2].min(0).values - 1e-3).all())
        assert bool((box[2:] <= same[:, 2:].max(0).values + 1e-3).all())
        assert bool((box[2:] >= box[:2]).all())
    assert bool((out.scores[:-1] >= out.scores[1:]).all())


@FAST
@given(CASE, st.sampled_from(["wbf", "voting"]), st.randoms(use_true_random=False))
def test_permuting_equal_members_changes_nothing(case: dict, policy: str, random) -> None:
    members = members_of(case)
    permuted = list(members)
    random.shuffle(permuted)
    a = fuse(members, policy, iou_thr=case["iou_thr"])
    b = fuse(permuted, policy, iou_thr=case["iou_thr"])
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.extras["votes"], b.extras["votes"])


@FAST
@given(st.lists(CASE, min_size=1, max_size=5), st.sampled_from(["wbf", "voting"]), st.booleans())
def test_fuse_batch_equals_fuse(cases: list[dict], policy: str, agnostic: bool) -> None:
    n_members = cases[0]["n_members"]
    images = [members_of({**c, "n_members": n_members}) for c in cases]
    batched = fuse_batch(images, policy, class_agnostic=agnostic)
    assert len(batched) == len(images)
    for members, out in zip(images, batched):
        one = fuse(members, policy, class_agnostic=agnostic)
        # the same operations on each group whether alone or batched: equal to the bit
        assert torch.equal(out.boxes, one.boxes) and torch.equal(out.scores, one.scores)
        assert torch.equal(out.labels, one.labels)
        assert torch.equal(out.extras["votes"], one.extras["votes"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("policy", ["wbf", "voting", "nms", "soft_nms", "nmw"])
def test_cuda_equals_cpu(policy: str) -> None:
    rng = np.random.default_rng(0)
    images = [clustered_members(rng, n_members=3, n_boxes=(0, 25)) for _ in range(8)]
    cpu = fuse_batch(images, policy)
    gpu = fuse_batch([[d.to("cuda") for d in members] for members in images], policy)
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(a.boxes, b.boxes.cpu(), atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores.cpu(), atol=1e-5, rtol=0)
        assert torch.equal(a.extras["votes"], b.extras["votes"].cpu())
