"""COCO -> YOLO folder: hand-derived label lines, class order by name, counts of what is not written, reuse,
atomic failure, and clear errors."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fusion.training.yolo_dataset import YoloSplit, write_yolo_dataset
from fusion.training.yolo_labels import coco_boxes_to_yolo

NAMES = ["dog", "cat"]  # the job's order; the COCO file lists cat (id 7) before dog (id 3)


def _coco(annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 50},
            {"id": 2, "file_name": "sub/b.jpg", "width": 40, "height": 80},
            {"id": 5, "file_name": "c.png", "width": 10, "height": 10},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": copy.deepcopy(annotations),
    }


GT = [
    {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]},  # cat 0.2 0.2 0.2 0.2
    {"id": 2, "image_id": 1, "category_id": 3, "bbox": [90, 40, 20, 20]},  # clipped to 90..100 x 40..50
    {"id": 3, "image_id": 1, "category_id": 3, "bbox": [100, 0, 5, 5]},  # outside: no area left
    {"id": 4, "image_id": 2, "category_id": 3, "bbox": [4, 8, 8, 16], "iscrowd": 1},  # crowd: skipped
    {"id": 5, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 80]},  # the whole image
    {"id": 6, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 80]},  # exact duplicate
]
LINES = {
    1: "1 0.200000 0.200000 0.200000 0.200000\n0 0.950000 0.900000 0.100000 0.200000\n",
    2: "0 0.500000 0.500000 1.000000 1.000000\n",
    5: "",
}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (50, 100)), ("sub/b.jpg", (80, 40)), ("c.png", (10, 10))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _write(root: Path, images: Path, train: dict[str, Any] | None = None, **split: Any) -> Any:
    train_split = YoloSplit(train or _coco(GT), images, **split)
    return write_yolo_dataset(root, NAMES, {"train": train_split, "val": YoloSplit(_coco([]), images)})


def test_label_lines_hand_derived(tmp_path: Path, images: Path) -> None:
    out = _write(tmp_path / "yolo", images)
    labels = tmp_path / "yolo" / "labels" / "train"
    assert {int(p.stem): p.read_text() for p in labels.glob("*.txt")} == LINES
    summary = out.summaries["train"]
    assert (summary.images, summary.empty_images, summary.boxes, summary.pseudo_boxes) == (3, 1, 3, 0)
    assert (summary.crowd_skipped, summary.clipped, summary.no_area, summary.duplicates) == (1, 1, 1, 1)
    assert out.summaries["val"].boxes == 0 and out.summaries["val"].empty_images == 3
    assert not out.reused


def test_images_named_by_id_and_linked(tmp_path: Path, images: Path) -> None:
    _write(tmp_path / "yolo", images)
    folder = tmp_path / "yolo" / "images" / "train"
    assert sorted(p.name for p in folder.iterdir()) == ["1.png", "2.jpg", "5.png"]
    assert os.stat(folder / "2.jpg").st_ino == os.stat(images / "sub" / "b.jpg").st_ino  # a hard link


@pytest.mark.parametrize("link", ["symlink", "copy"])
def test_link_modes(tmp_path: Path, images: Path, link: str) -> None:
    write_yolo_dataset(
        tmp_path / "yolo",
        NAMES,
        {"train": YoloSplit(_coco(GT), images), "val": YoloSplit(_coco([]), images)},
        link,
    )
    placed = tmp_path / "yolo" / "images" / "val" / "1.png"
    assert placed.is_symlink() == (link == "symlink")
    assert placed.read_bytes() == (images / "a.png").read_bytes()
    if link == "symlink":
        assert os.readlink(placed) == str((images / "a.png").resolve())


def test_data_yaml_absolute_paths_and_job_class_order(tmp_path: Path, images: Path) -> None:
    out = _write(tmp_path / "yolo", images)
    data = yaml.safe_load(out.data_yaml.read_text())
    root = (tmp_path / "yolo").resolve()
    assert data == {
        "path": str(root),
        "train": str(root / "images" / "train"),
        "val": str(root / "images" / "val"),
        "nc": 2,
        "names": {0: "dog", 1: "cat"},
    }


def test_pseudo_labels_thresholded_highest_score_first(tmp_path: Path, images: Path) -> None:
    pseudo = [
        {"image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.6},
        {"image_id": 5, "category_id": 7, "bbox": [5, 5, 5, 5], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 50, 25], "score": 0.3},  # under 0.5
    ]
    out = _write(tmp_path / "yolo", images, pseudo_labels=pseudo, score_threshold=0.5, ground_truth=False)
    labels = tmp_path / "yolo" / "labels" / "train"
    assert (
        labels / "5.txt"
    ).read_text() == "1 0.750000 0.750000 0.500000 0.500000\n0 0.250000 0.250000 0.500000 0.500000\n"
    assert (labels / "1.txt").read_text() == ""  # ground_truth=False: the annotations are not used
    summary = out.summaries["train"]
    assert (summary.boxes, summary.pseudo_boxes, summary.below_threshold, summary.empty_images) == (
        2,
        2,
        1,
        2,
    )


def test_pseudo_labels_added_to_ground_truth(tmp_path: Path, images: Path) -> None:
    pseudo = [{"image_id": 2, "category_id": 7, "bbox": [0, 0, 20, 20], "score": 0.8}]
    out = _write(tmp_path / "yolo", images, pseudo_labels=pseudo)
    text = (tmp_path / "yolo" / "labels" / "train" / "2.txt").read_text()
    assert text == LINES[2] + "1 0.250000 0.125000 0.500000 0.250000\n"
    assert (out.summaries["train"].boxes, out.summaries["train"].pseudo_boxes) == (4, 1)


def test_same_inputs_same_bytes_and_reuse(tmp_path: Path, images: Path) -> None:
    first, second = _write(tmp_path / "one", images), _write(tmp_path / "two", images)
    for split in ("train", "val"):
        for path in (first.root / "labels" / split).glob("*.txt"):
            assert path.read_bytes() == (second.root / "labels" / split / path.name).read_bytes()
    again = _write(tmp_path / "one", images)
    assert again.reused and again.summaries == first.summaries
    changed = _write(tmp_path / "one", images, pseudo_labels=[], score_threshold=0.4)
    assert not changed.reused
    assert not list(tmp_path.glob(".one.*"))  # no temporary or old folder left behind


def test_failure_leaves_nothing(tmp_path: Path, images: Path) -> None:
    (images / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images\[2\] \(id 5\).*c\.png"):
        _write(tmp_path / "yolo", images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_replaces_an_older_folder_atomically(tmp_path: Path, images: Path) -> None:
    _write(tmp_path / "yolo", images)
    broken = _coco(GT)
    broken["annotations"][0]["category_id"] = 3
    _write(tmp_path / "yolo", images, train=broken)
    assert (tmp_path / "yolo" / "labels" / "train" / "1.txt").read_text().startswith("0 0.200000")


def test_class_the_job_lacks_is_named(tmp_path: Path, images: Path) -> None:
    data = _coco(GT)
    data["categories"].append({"id": 9, "name": "cow"})
    data["annotations"].append({"id": 9, "image_id": 5, "category_id": 9, "bbox": [1, 1, 2, 2]})
    with pytest.raises(ValueError, match=r"annotation of image 5 has category 'cow' \(id 9\)"):
        _write(tmp_path / "yolo", images, train=data)


def test_unused_category_outside_the_job_is_fine(tmp_path: Path, images: Path) -> None:
    data = _coco(GT)
    data["categories"].append({"id": 9, "name": "cow"})
    assert _write(tmp_path / "yolo", images, train=data).summaries["train"].boxes == 3


def test_size_mismatch_and_unreadable_suffix(tmp_path: Path, images: Path) -> None:
    data = _coco(GT)
    data["images"][0]["width"] = 99
    with pytest.raises(ValueError, match=r"a\.png is 100x50 pixels but the annotations say 99x50"):
        _write(tmp_path / "yolo", images, train=data)
    data = _coco([])
    data["images"][2]["file_name"] = "c.gif"
    with pytest.raises(ValueError, match=r"images\[2\] \(id 5\): 'c\.gif' is not an image type"):
        _write(tmp_path / "yolo", images, train=data)


def test_refuses_foreign_folder_and_missing_split(tmp_path: Path, images: Path) -> None:
    (tmp_path / "yolo").mkdir()
    with pytest.raises(FileExistsError, match="not a YOLO dataset written by fusion"):
        _write(tmp_path / "yolo", images)
    with pytest.raises(ValueError, match=r"needs 'train' and 'val' splits, got \['train'\]"):
        write_yolo_dataset(tmp_path / "x", NAMES, {"train": YoloSplit(_coco(GT), images)})


def test_coco_boxes_to_yolo_matches_hand_numbers() -> None:
    yolo, outside, no_area = coco_boxes_to_yolo(
        np.array([[10, 5, 20, 10], [-5, -5, 10, 10], [3, 3, 0, 4]]), np.array([[50, 100], [20, 20], [8, 8]])
    )
    np.testing.assert_allclose(yolo[:2], [[0.2, 0.2, 0.2, 0.2], [0.125, 0.125, 0.25, 0.25]])
    assert outside.tolist() == [False, True, False] and no_area.tolist() == [False, False, True]


@given(
    st.integers(1, 4000),
    st.integers(1, 4000),
    st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=1, max_size=20),
)
def test_boxes_inside_the_image_come_back(
    width: int, height: int, fractions: list[tuple[float, ...]]
) -> None:
    # boxes inside a width x height image: x, y, w, h from fractions of what is left of the image
    f = np.asarray(fractions)
    x, y = f[:, 0] * width, f[:, 1] * height
    w, h = f[:, 2] * (width - x), f[:, 3] * (height - y)
    boxes = np.stack([x, y, w, h], axis=1)
    yolo, outside, no_area = coco_boxes_to_yolo(boxes, np.tile([height, width], (len(f), 1)))
    assert not outside.any() and ((yolo >= 0) & (yolo <= 1 + 1e-12)).all()
    assert (
        no_area == ((x + w <= x) | (y + h <= y))
    ).all()  # no area as floats: a zero side, or one under x's ulp
    back = np.stack(
        [
            (yolo[:, 0] - yolo[:, 2] / 2) * width,
            (yolo[:, 1] - yolo[:, 3] / 2) * height,
            yolo[:, 2] * width,
            yolo[:, 3] * height,
        ],
        axis=1,
    )
    np.testing.assert_allclose(back, boxes, atol=1e-9 * max(width, height))
