"""Class vocabularies and translation by name."""

from __future__ import annotations

import pytest
import torch

from fusion.classes import ClassMap


def test_shipped_coco_vocabularies_agree_by_name() -> None:
    coco80, coco91 = ClassMap.load("coco80"), ClassMap.load("coco91")
    assert len(coco80) == len(coco91) == 80
    assert coco80.names == coco91.names
    assert coco91.ids[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)  # COCO skips id 12
    assert coco91.ids[-1] == 90 and coco80.ids[-1] == 79
    # torchvision emits COCO ids: 13 is "stop sign", 12 and 0 are unused.
    labels = coco91.labels_from_ids(torch.tensor([13, 12, 0, 90, 1000]))
    assert labels.tolist() == [11, -1, -1, 79, -1]
    assert coco80.names[11] == "stop sign"
    assert coco91.ids_from_labels(torch.tensor([11, 79])).tolist() == [13, 90]


def test_translation_by_name_not_by_id() -> None:
    model = ClassMap(["dog", "person", "car"], ids=[5, 0, 9])
    target = ClassMap.load("coco80")
    table = model.translation_to(target)
    assert table.tolist() == [target.index("dog"), 0, 2]
    odd = ClassMap(["person", "unicorn"])
    with pytest.raises(KeyError, match=r"absent from the target vocabulary: \['unicorn'\]"):
        odd.translation_to(target)
    assert odd.translation_to(target, strict=False).tolist() == [0, -1]


def test_errors_are_specific(tmp_path) -> None:
    with pytest.raises(ValueError, match="duplicate class name 'a' at index 1"):
        ClassMap(["a", "a"])
    with pytest.raises(ValueError, match="duplicate class id 3 at index 1"):
        ClassMap(["a", "b"], [3, 3])
    with pytest.raises(KeyError, match="Did you mean 'person'"):
        ClassMap.load("coco80").index("persn")
    with pytest.raises(FileNotFoundError, match="known: coco80, coco91"):
        ClassMap.load("coco81")
    with pytest.raises(ValueError, match=r"categories\[0\] needs 'id' and 'name'"):
        ClassMap.from_coco_categories([{"id": 1}])


def test_yaml_round_trip(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("names:\n  3: cat\n  1: dog\n")
    loaded = ClassMap.load(path)
    assert loaded.names == ("dog", "cat") and loaded.ids == (1, 3)
    assert ClassMap.from_mapping(loaded.to_yaml_dict()["names"]) == loaded
