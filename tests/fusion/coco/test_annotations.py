"""Annotation files: malformed ones are refused with messages naming the list, index and id."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from fusion.coco.annotations import load_annotations
from fusion.synthetic import synthetic_annotations

BASE = synthetic_annotations(num_images=6, num_classes=3, empty_fraction=0.0, seed=0)


def broken(edit) -> dict:
    data = copy.deepcopy(BASE)
    edit(data)
    return data


CASES = [
    (lambda d: d.pop("categories"), r"missing top-level key\(s\) \['categories'\]"),
    (lambda d: d["images"][2].pop("width"), r"images\[2\] lacks required key\(s\) \['width'\]"),
    (lambda d: d["annotations"][3].pop("bbox"), r"annotations\[3\] lacks required key\(s\) \['bbox'\]"),
    (lambda d: d["categories"][1].pop("name"), r"categories\[1\] lacks required key\(s\) \['name'\]"),
    (
        lambda d: d["images"][4].update(id=d["images"][1]["id"]),
        r"images\[4\] has id 2, already used by images\[1\]",
    ),
    (
        lambda d: d["annotations"][5].update(id=d["annotations"][0]["id"]),
        r"annotations\[5\] has id 1, already used by annotations\[0\]",
    ),
    (lambda d: d["categories"][2].update(id=1), r"categories\[2\] has id 1, already used by categories\[0\]"),
    (
        lambda d: d["annotations"][2].update(category_id=42),
        r"annotations\[2\] \(id 3\) has category_id 42, which is not in 'categories'",
    ),
    (lambda d: d["annotations"][1].update(image_id=777), r"annotations\[1\] \(id 2\) has image_id 777"),
    (lambda d: d["annotations"][0].update(id=0), r"annotations\[0\] has id 0; pycocotools never counts"),
    (
        lambda d: d["annotations"][4].update(bbox=[1, 2, 3]),
        r"annotations\[4\] \(id 5\)\.bbox must be \[x, y, w, h\]",
    ),
    (
        lambda d: d["annotations"][4].update(bbox=[1, 2, -3, 4]),
        r"annotations\[4\] \(id 5\)\.bbox .* negative",
    ),
    (lambda d: d["images"][0].update(id="a"), r"images\[0\]\.id must be an integer"),
    (lambda d: d["images"][3].update(height=0), r"images\[3\] \(id 4\) has non-positive height/width"),
    (lambda d: d["categories"][2].update(name=d["categories"][0]["name"]), r"duplicate class name 'class0'"),
]


@pytest.mark.parametrize(("edit", "message"), CASES)
def test_malformed_annotations_name_the_problem(edit, message: str, tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(broken(edit)))
    with pytest.raises(ValueError, match=message) as info:
        load_annotations(path)
    assert str(path) in str(info.value)


def test_valid_file_gives_arrays_class_map_by_name_and_filled_defaults() -> None:
    data = broken(lambda d: [d["annotations"][0].pop("area"), d["annotations"][0].pop("iscrowd")])
    gt = load_annotations(data)
    assert gt.class_map.names == ("class0", "class1", "class2") and gt.class_map.ids == (1, 2, 3)
    assert gt.image_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert gt.sizes.tolist() == [[im["height"], im["width"]] for im in data["images"]]
    first = gt.dataset["annotations"][0]
    assert first["area"] == first["bbox"][2] * first["bbox"][3] and first["iscrowd"] == 0
    assert "area" not in data["annotations"][0]  # the caller's dict is not modified
    assert gt.positions(np.array([3, 99, 1])).tolist() == [2, -1, 0]


def test_missing_file_and_bad_json(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        load_annotations(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_annotations(bad)
