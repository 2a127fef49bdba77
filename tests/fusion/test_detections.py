"""The Detections type: validation, selection, cat, devices, clipping, numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion import Detections
from tests.conftest import DEVICES


def make(n: int = 3, **extras: torch.Tensor) -> Detections:
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4], [0, 0, 1, 1]], dtype=torch.float32)[
        :n
    ]
    return Detections(
        boxes, torch.tensor([0.9, 0.3, 0.6, 0.1])[:n], torch.tensor([1, 2, 1, 0])[:n], (40, 50), extras
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boxes": torch.zeros(2, 3)}, r"boxes must have shape \[N, 4\].*\[2, 3\]"),
        ({"boxes": torch.zeros(4)}, r"boxes must have shape \[N, 4\].*\[4\]"),
        ({"scores": torch.zeros(3)}, r"scores must have shape \[2\].*\[3\]"),
        ({"labels": torch.zeros(2, 1)}, r"labels must have shape \[2\].*\[2, 1\]"),
        ({"boxes": torch.tensor([[0, 0, 1, 1], [0, 0, float("nan"), 1]])}, r"boxes\[1\] is not finite"),
        ({"boxes": torch.tensor([[0, 0, 1, 1], [0, 0, float("inf"), 1]])}, r"boxes\[1\] is not finite"),
        (
            {"boxes": torch.tensor([[3, 0, 1, 1], [0, 0, 1, 1]])},
            r"boxes\[0\] = \[3.0, 0.0, 1.0, 1.0\] is inverted",
        ),
        ({"boxes": torch.tensor([[0, 0, 1, 1], [0, 5, 1, 1]])}, r"boxes\[1\].*inverted"),
        ({"scores": torch.tensor([0.5, float("nan")])}, r"scores\[1\] is not finite"),
        ({"extras": {"member": torch.zeros(3)}}, r"extras\['member'\] must have 2 rows.*\[3\]"),
        ({"image_size": (0, 10)}, r"image_size must be a positive"),
    ],
)
def test_invalid_input_names_the_field(kwargs: dict, message: str) -> None:
    fields = {
        "boxes": torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]]),
        "scores": torch.ones(2),
        "labels": torch.zeros(2),
    }
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Detections(**fields)


def test_dtypes_are_normalised_and_zero_area_boxes_allowed() -> None:
    d = Detections(np.array([[1, 1, 1, 1]], dtype=np.float64), [0.5], np.array([3.0]))
    assert (d.boxes.dtype, d.scores.dtype, d.labels.dtype) == (torch.float32, torch.float32, torch.int64)
    assert d.labels.tolist() == [3]
    assert d.areas.tolist() == [0.0]


def test_float64_tensors_stay_float64_through_selection_and_cat() -> None:
    boxes = torch.tensor([[0.1, 0.2, 10.3, 10.4], [1.0, 1.0, 2.0, 2.0]], dtype=torch.float64)
    d = Detections(boxes, [0.123456789, 0.5], [0, 1])
    assert d.boxes.dtype == d.scores.dtype == torch.float64
    assert d.boxes[0, 0].item() == 0.1 and d.scores[0].item() == 0.123456789  # not rounded through float32
    for derived in (d[d.scores > 0.2], d.sort_by_score(), Detections.cat([d, d]), d.replace(labels=[2, 3])):
        assert derived.boxes.dtype == derived.scores.dtype == torch.float64


def test_boolean_mask_and_index_selection_keep_extras_and_size() -> None:
    d = make(4, member=torch.tensor([0, 1, 2, 3]))
    kept = d[d.scores > 0.5]
    assert kept.scores.tolist() == pytest.approx([0.9, 0.6])
    assert kept.extras["member"].tolist() == [0, 2]
    assert kept.image_size == (40, 50)
    assert d[[3, 0]].labels.tolist() == [0, 1]
    assert d[1].boxes.tolist() == [[5, 5, 20, 30]]
    assert d[-1].labels.tolist() == [0]
    assert len(d[1:3]) == 2
    assert len(d[[]]) == 0
    with pytest.raises(IndexError, match=r"boolean mask must have shape \[4\]"):
        d[torch.tensor([True, False])]


def test_cat_and_its_errors() -> None:
    a, b = make(2, member=torch.tensor([0, 0])), make(3, member=torch.tensor([1, 1, 1]))
    both = Detections.cat([a, b])
    assert len(both) == 5
    assert both.extras["member"].tolist() == [0, 0, 1, 1, 1]
    assert torch.equal(both.boxes[2:], b.boxes)
    with pytest.raises(ValueError, match=r"items\[1\] has extras \[\]"):
        Detections.cat([a, make(1)])
    other_size = Detections(b.boxes, b.scores, b.labels, (7, 7), b.extras)
    with pytest.raises(ValueError, match=r"items\[1\] has image_size \(7, 7\)"):
        Detections.cat([a, other_size])
    with pytest.raises(ValueError, match="at least one"):
        Detections.cat([])


def test_empty_has_the_right_shapes() -> None:
    e = Detections.empty((5, 6), extras=["votes"])
    assert (e.boxes.shape, e.scores.shape, e.labels.shape, e.extras["votes"].shape) == (
        (0, 4),
        (0,),
        (0,),
        (0,),
    )
    assert len(Detections.cat([e, e])) == 0
    assert len(Detections([], [], [])) == 0
    wide = Detections.empty(dtype=torch.float64)
    assert wide.boxes.dtype == wide.scores.dtype == torch.float64 and e.boxes.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_device_moves_keep_values(device: str) -> None:
    d = make(3, member=torch.tensor([0, 1, 2])).to(device)
    assert d.device.type == device
    assert {t.device.type for t in (d.boxes, d.scores, d.labels, d.extras["member"])} == {device}
    back = d.cpu()
    assert torch.equal(back.boxes, make(3).boxes)
    mask = d.scores > 0.5
    assert len(d[mask]) == 2


def test_clip_sort_replace_and_numpy() -> None:
    d = Detections([[-5, -5, 60, 30], [10, 10, 20, 20]], [0.2, 0.8], [0, 1], image_size=(25, 50))
    assert d.clip().boxes.tolist() == [[0, 0, 50, 25], [10, 10, 20, 20]]
    assert d.clip((100, 100)).boxes.tolist()[0] == [0, 0, 60, 30]
    with pytest.raises(ValueError, match="needs an image_size"):
        Detections([[0, 0, 1, 1]], [1.0], [0]).clip()
    assert d.sort_by_score().scores.tolist() == pytest.approx([0.8, 0.2])
    assert d.replace(scores=torch.tensor([0.5, 0.5])).scores.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="not finite"):
        d.replace(scores=torch.tensor([0.5, float("nan")]))
    with pytest.raises(TypeError, match="unknown fields"):
        d.replace(colour=1)
    arrays = d.with_extras(votes=torch.tensor([2, 3])).numpy()
    assert arrays["votes"].tolist() == [2, 3]
    assert arrays["boxes"].dtype == np.float32 and arrays["image_size"] == (25, 50)


def test_equality_compares_every_field_exactly() -> None:
    d = make(3, member=torch.tensor([0, 1, 2]))
    assert d == make(3, member=torch.tensor([0, 1, 2]))
    assert d == d[torch.tensor([0, 1, 2])]
    nudged = d.boxes.clone()
    nudged[1, 2] = torch.nextafter(nudged[1, 2], torch.tensor(100.0))
    differs = {
        "boxes[1]": d.replace(boxes=nudged),
        "scores[2]": d.replace(scores=torch.tensor([0.9, 0.3, 0.5])),
        "labels[0]": d.replace(labels=torch.tensor([0, 2, 1])),
        "image_size": d.replace(image_size=(40, 51)),
        "extras ['member'] vs []": Detections(d.boxes, d.scores, d.labels, d.image_size),
        "extras['member'][2]": d.with_extras(member=torch.tensor([0, 1, 3])),
        "boxes: torch.float32": d.replace(boxes=d.boxes.double(), scores=d.scores.double()),
        "3 detections vs 2": d[:2],
    }
    for where, other in differs.items():
        assert d != other, where
        assert where in d.mismatch(other), (where, d.mismatch(other))
    assert d != "not detections" and d.mismatch(None) == "other is a NoneType, not Detections"


def test_equal_with_tolerance_and_unhashable() -> None:
    d = make(3)
    close = d.replace(boxes=d.boxes + 1e-4, scores=d.scores - 1e-6)
    assert not d.equal(close)
    assert d.equal(close, atol=1e-3) and close.equal(d, atol=1e-3)
    assert not d.equal(close, atol=1e-5)
    # labels are compared exactly whatever the tolerance
    assert not d.equal(d.replace(labels=d.labels + 1), atol=10.0)
    with pytest.raises(TypeError, match="unhashable"):
        hash(d)
