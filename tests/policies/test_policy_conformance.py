"""Every registered policy honours the FusionPolicy contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_cases import clustered_members

from fusion import POLICIES, fuse, fuse_batch, make_policy
from fusion.detections import Detections
from fusion.policy import FusionPolicy

NAMES = POLICIES.names()
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def test_the_five_are_registered() -> None:
    assert {"wbf", "voting", "nms", "soft_nms", "nmw"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_params_carry_the_name(name: str) -> None:
    policy = make_policy(name)
    assert isinstance(policy, FusionPolicy)
    assert policy.name == name and policy.params.type == name
    with pytest.raises(ValueError):
        make_policy(name, not_a_parameter=1)


@pytest.mark.parametrize("name", NAMES)
def test_empty_inputs(name: str) -> None:
    assert fuse_batch([], name) == []
    out = fuse([Detections.empty((40, 50)), Detections.empty((40, 50))], name)
    assert len(out) == 0 and out.image_size == (40, 50) and out.extras["votes"].dtype == torch.int64
    outs = fuse_batch([[Detections.empty(), Detections.empty()]] * 3, name)
    assert [len(o) for o in outs] == [0, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_outputs_sorted_with_votes_on_device(name: str, device: str) -> None:
    rng = np.random.default_rng(1)
    images = [[d.to(device) for d in clustered_members(rng, n_members=3, n_boxes=(0, 12))] for _ in range(3)]
    images.append(
        [Detections.empty((120, 160), device=device)] * 3
    )  # an image where nobody detected anything
    outs = fuse_batch(images, name)
    assert len(outs) == 4 and len(outs[-1]) == 0
    for out in outs:
        assert out.device.type == device
        assert out.image_size == (120, 160)
        assert bool((out.scores[:-1] >= out.scores[1:]).all())
        votes = out.extras["votes"]
        assert votes.dtype == torch.int64 and votes.shape == (len(out),)
        assert bool(((votes >= 1) & (votes <= 3)).all())
    assert sum(len(o) for o in outs) > 0


@pytest.mark.parametrize("name", NAMES)
def test_one_member_alone_keeps_its_box(name: str) -> None:
    members = [Detections([[5, 5, 20, 20]], [0.7], [3], image_size=(32, 32)), Detections.empty((32, 32))]
    out = fuse(members, name, quorum="affirmative") if name == "voting" else fuse(members, name)
    assert len(out) == 1
    assert out.labels.tolist() == [3]
    np.testing.assert_allclose(out.boxes[0].numpy(), [5, 5, 20, 20], atol=1e-4)
    assert out.extras["votes"].tolist() == [1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "2 members"), ([1.0, -1.0], "negative"), ([0.0, 0.0], "zero"), ([[1.0], [1.0, 2.0]], "same C")],
)
def test_bad_weights_rejected(name: str, weights, message: str) -> None:
    members = [Detections([[0, 0, 4, 4]], [0.5], [0]), Detections([[0, 0, 4, 4]], [0.5], [0])]
    with pytest.raises(ValueError, match=message):
        fuse(members, name, weights=weights)
