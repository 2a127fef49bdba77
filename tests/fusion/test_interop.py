"""Round trips between Detections and torchvision dicts, COCO records, ensemble-boxes lists, supervision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion import Detections
from fusion.classes import ClassMap
from fusion.interop import (
    from_coco_records,
    from_ensemble_boxes,
    from_supervision,
    from_torchvision,
    to_coco_records,
    to_ensemble_boxes,
    to_supervision,
    to_torchvision,
)


@pytest.fixture
def dets() -> Detections:
    return Detections(
        [[10, 20, 30, 60], [0, 0, 100, 50], [5.5, 6.25, 7.5, 8]],
        [0.9, 0.5, 0.125],
        [0, 79, 3],
        image_size=(50, 100),
    )


def test_torchvision_round_trip(dets: Detections) -> None:
    back = from_torchvision(to_torchvision(dets), dets.image_size)
    assert back == dets
    with pytest.raises(ValueError, match=r"lacks \['labels'\]"):
        from_torchvision({"boxes": dets.boxes, "scores": dets.scores})


def test_coco_records_go_through_the_class_map(dets: Detections) -> None:
    coco91 = ClassMap.load("coco91")
    records = to_coco_records(dets, image_id=7, class_map=coco91)
    # label 0 = person (id 1), label 79 = toothbrush (id 90), label 3 = motorcycle (id 4); bbox is x, y, w, h.
    assert [r["category_id"] for r in records] == [1, 90, 4]
    assert records[0]["bbox"] == [10, 20, 20, 40]
    back = from_coco_records(records, coco91, image_sizes={7: (50, 100)}, image_ids=[7, 8])
    assert set(back) == {7, 8} and len(back[8]) == 0
    # read back as float64, the records' values: the boxes are exact, the scores are 0.9 rounded to 5 decimals
    expected = dets.replace(
        boxes=dets.boxes.double(), scores=torch.tensor([0.9, 0.5, 0.125], dtype=torch.float64)
    )
    assert back[7] == expected


def test_coco_records_errors_name_the_record() -> None:
    coco80 = ClassMap.load("coco80")
    good = {"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}
    with pytest.raises(ValueError, match=r"record \[1\] lacks 'score'"):
        from_coco_records([good, {"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1]}], coco80)
    with pytest.raises(ValueError, match=r"record \[1\] has category_id 80"):
        from_coco_records([good, {**good, "category_id": 80}], coco80)
    with pytest.raises(ValueError, match=r"record \[0\] has a non-finite value or a negative width"):
        from_coco_records([{**good, "bbox": [5, 5, -1, 2]}], coco80)


def test_coco_records_group_by_image() -> None:
    coco80 = ClassMap.load("coco80")
    records = [
        {"image_id": i % 3, "category_id": i % 5, "bbox": [i, i, 2, 2], "score": i / 10} for i in range(9)
    ]
    grouped = from_coco_records(records, coco80)
    assert sorted(grouped) == [0, 1, 2]
    assert grouped[1].boxes[:, 0].tolist() == [1, 4, 7]
    assert grouped[2].labels.tolist() == [2, 0, 3]


def test_ensemble_boxes_lists_are_normalised(dets: Detections) -> None:
    boxes, scores, labels = to_ensemble_boxes([dets, dets[:1]])
    assert len(boxes) == 2 and boxes[1].shape == (1, 4)
    np.testing.assert_allclose(boxes[0][0], [0.1, 0.4, 0.3, 1.2])
    assert labels[0].tolist() == [0, 79, 3]
    back = from_ensemble_boxes(boxes[0], scores[0], labels[0], (50, 100))
    assert torch.allclose(back.boxes, dets.boxes)
    with pytest.raises(ValueError, match=r"per_member\[0\] has no image_size"):
        to_ensemble_boxes([Detections([[0, 0, 1, 1]], [1.0], [0])])


def test_supervision_round_trip(dets: Detections) -> None:
    sv = pytest.importorskip("supervision")
    converted = to_supervision(dets.with_extras(member=torch.tensor([0, 1, 2])))
    assert isinstance(converted, sv.Detections)
    np.testing.assert_array_equal(converted.class_id, [0, 79, 3])
    back = from_supervision(converted, dets.image_size)
    assert back == dets.with_extras(member=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no confidence"):
        from_supervision(sv.Detections(xyxy=np.zeros((1, 4), dtype=np.float32), class_id=np.array([0])))
