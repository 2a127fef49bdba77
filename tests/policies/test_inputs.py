"""Bad inputs raise ValueError naming what is wrong and where."""

from __future__ import annotations

import pytest
import torch

from fusion import fuse, fuse_batch
from fusion.detections import Detections

GOOD = Detections([[0, 0, 10, 10]], [0.5], [1], image_size=(20, 20))


def unchecked(boxes, scores, labels) -> Detections:
    """Detections built with check_values=False, as hot paths do: the policies must still catch bad values."""
    return Detections(boxes, scores, labels, check_values=False)


@pytest.mark.parametrize("name", ["wbf", "voting", "nms", "soft_nms", "nmw"])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            unchecked([[0, 0, float("nan"), 10]], [0.5], [0]),
            r"per_image\[1\]\[1\] has a non-finite box at index 0",
        ),
        (
            unchecked([[0, 0, 10, 10], [10, 0, 5, 10]], [0.5, 0.4], [0, 0]),
            r"\[1\]\[1\] has an inverted box .* at index 1",
        ),
        (unchecked([[0, 0, 10, 10]], [float("inf")], [0]), "non-finite score"),
        (unchecked([[0, 0, 10, 10]], [-0.1], [0]), "negative score"),
    ],
)
def test_bad_values(name: str, bad: Detections, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fuse_batch([[GOOD, GOOD], [GOOD, bad]], name)


def test_member_count_mismatch() -> None:
    with pytest.raises(ValueError, match=r"per_image\[1\] has 1 members but per_image\[0\] has 2"):
        fuse_batch([[GOOD, GOOD], [GOOD]], "wbf")


def test_no_members() -> None:
    with pytest.raises(ValueError, match="no members"):
        fuse_batch([[]], "wbf")


def test_image_size_mismatch() -> None:
    other = Detections([[0, 0, 10, 10]], [0.5], [1], image_size=(30, 20))
    with pytest.raises(ValueError, match=r"per_image\[0\]\[1\] has image_size \(30, 20\)"):
        fuse([GOOD, other], "wbf")


def test_per_class_weights_too_narrow() -> None:
    with pytest.raises(ValueError, match="cover 1 classes but a box has label 1"):
        fuse([GOOD, GOOD], "wbf", weights=[[1.0], [1.0]])


def test_unknown_conf_type_and_policy() -> None:
    with pytest.raises(ValueError, match="conf_type"):
        fuse([GOOD, GOOD], "wbf", conf_type="median")
    with pytest.raises(LookupError, match="wbf"):
        fuse([GOOD, GOOD], "wbff")


def test_zero_weight_member_is_ignored_not_nan() -> None:
    other = Detections([[0, 0, 10, 12]], [0.9], [1], image_size=(20, 20))
    out = fuse([GOOD, other], "wbf", weights=[1.0, 0.0])
    assert torch.isfinite(out.boxes).all()
    torch.testing.assert_close(
        out.boxes, GOOD.boxes, atol=1e-4, rtol=0
    )  # a zero weight adds nothing to the box
    assert out.scores.tolist() == pytest.approx([0.5 * 1 / 1])  # avg: (0.5 + 0) / 2 * min(2, 2) / 1
