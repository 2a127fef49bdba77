"""Readers refuse values of the wrong type instead of converting them (issue 13 D10, D11, D15a): the message names
the file or list, the record index and the field."""

from __future__ import annotations

import copy

import pytest

from fusion.coco.annotations import load_annotations
from fusion.coco.predictions import Predictions

GT = {
    "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
    "categories": [{"id": 1, "name": "a"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
    ],
}


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("annotations", "area", "big", r"annotations\[0\]\.area is 'big'; expected a number"),
        ("annotations", "area", -1, r"annotations\[0\]\.area is -1; expected a number >= 0"),
        ("annotations", "iscrowd", 2, r"annotations\[0\]\.iscrowd is 2; expected 0 or 1"),
        ("annotations", "iscrowd", True, r"annotations\[0\]\.iscrowd is True; expected a number"),
        (
            "annotations",
            "bbox",
            ["0", 0, 2, 2],
            r"annotations\[0\] \(id 1\)\.bbox is \['0', 0, 2, 2\]; expected",
        ),
        ("images", "height", "abc", r"images\[0\] \[height, width\] is \['abc', 10\]; expected numbers"),
    ],
)
def test_annotation_values_of_the_wrong_type_are_named(section, field, value, message) -> None:
    data = copy.deepcopy(GT)
    data[section][0][field] = value
    with pytest.raises(ValueError, match=message):
        load_annotations(data)


GOOD = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.25}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("score", "0.5", r"record \[1\] score is '0\.5'; expected a number"),
        ("score", True, r"record \[1\] score is True; expected a number"),
        ("category_id", True, r"record \[1\] has category_id True; expected an integer"),
        ("image_id", 1.5, r"record \[1\] has image_id 1\.5; expected an integer"),
        ("bbox", "10", r"record \[1\] has bbox '10'; expected \[x, y, w, h\]"),
        ("bbox", [0, 0, "1", 1], r"record \[1\] bbox is \[0, 0, '1', 1\]; expected numbers"),
    ],
)
def test_results_values_of_the_wrong_type_are_named(field, value, message) -> None:
    bad = {**GOOD, field: value}
    with pytest.raises(ValueError, match=r"results\.json: " + message):
        Predictions.from_records([GOOD, bad], source="results.json")


def test_numbers_of_either_kind_are_read_exactly() -> None:
    preds = Predictions.from_records([GOOD, {**GOOD, "score": 1, "bbox": [0.5, 1, 2, 3.25]}], source="r.json")
    assert preds.scores.tolist() == [0.25, 1.0]
    assert preds.boxes.tolist()[1] == [0.5, 1.0, 2.0, 3.25]
