"""``Predictions``: rounding like a results file written with Python's ``round``, and exact float64 Detections."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusion.classes import ClassMap
from fusion.coco.annotations import load_annotations
from fusion.coco.predictions import Predictions, load_predictions, read_results
from fusion.coco.rounding import round_decimals
from fusion.detections import Detections
from fusion.synthetic import synthetic_annotations, synthetic_predictions


def test_round_decimals_equals_python_round_where_np_round_does_not() -> None:
    rng = np.random.default_rng(0)
    five = rng.integers(0, 100_000, 100_000) / 1e5
    values = np.concatenate(
        [
            rng.uniform(0, 700, 200_000).round(
                4
            ),  # boxes with a decimal more than kept: many half-way points
            rng.uniform(0, 1, 200_000).round(6),
            five / 2,  # a 5-decimal score times weight 2 / total weight 4: half of them exactly half-way
            -rng.uniform(0, 50, 50_000).round(4),
            rng.uniform(0, 1e5, 50_000),
        ]
    )
    for decimals in (0, 3, 5):
        want = np.array([round(v, decimals) for v in values.tolist()])
        if decimals:  # np.round scales first: the case this function exists for
            assert (np.round(values, decimals) != want).sum() > 10
        got = round_decimals(values, decimals)
        assert got.tolist() == want.tolist()
        assert np.array_equal(np.signbit(got), np.signbit(want))
    assert round_decimals(np.array([[2.675, 0.125, -0.125, 0.375]]), 2).tolist() == [
        [2.67, 0.12, -0.12, 0.38]
    ]


def test_round_decimals_refuses_places_it_cannot_round_exactly() -> None:
    with pytest.raises(ValueError, match=r"decimals must be in 0\.\.7, got 8"):
        round_decimals(np.array([0.5]), 8)


def test_split_by_image_keeps_the_files_values_exactly() -> None:
    dataset = synthetic_annotations(num_images=5, num_classes=3, seed=2)
    gt = load_annotations(dataset)
    preds = synthetic_predictions(dataset, detections_per_image=6, seed=3)
    per_image = preds.split_by_image(gt)
    assert all(d.boxes.dtype == torch.float64 and d.scores.dtype == torch.float64 for d in per_image)
    back = Predictions.from_detections(per_image, gt.image_ids, gt.class_map)
    order = np.lexsort((-preds.scores, preds.image_ids))
    back_order = np.lexsort((-back.scores, back.image_ids))
    assert back.boxes[back_order].tolist() == preds.boxes[order].tolist()
    assert back.scores[back_order].tolist() == preds.scores[order].tolist()


def test_to_detections_groups_by_image_in_file_order_with_the_files_values(tmp_path) -> None:
    classes = ClassMap(["a", "b"], ids=[4, 9])
    records = [
        {"image_id": 5, "category_id": 9, "bbox": [0.1, 0.2, 0.3, 0.4], "score": 0.30001},
        {"image_id": 2, "category_id": 4, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 5, "category_id": 4, "bbox": [10, 10, 0, 0], "score": 0.7},
    ]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"annotations": records}))  # a dataset-style dict is read too
    out = load_predictions(path).to_detections(classes, {5: (30, 40)}, image_ids=[7, 5])
    assert list(out) == [7, 5, 2]  # the images asked for, in that order, then the others by id
    assert len(out[7]) == 0 and out[7].boxes.dtype == torch.float64 and out[7].image_size is None
    # float64 sums of the file's decimals, as a numpy script computes them; labels are class_map indices
    expected = Detections(
        torch.tensor([[0.1, 0.2, 0.1 + 0.3, 0.2 + 0.4], [10, 10, 10, 10]], dtype=torch.float64),
        torch.tensor([0.30001, 0.7], dtype=torch.float64),
        [1, 0],
        (30, 40),
    )
    assert out[5] == expected
    assert out[2].image_size is None and out[2].labels.tolist() == [0]
    with pytest.raises(ValueError, match=r"record \[1\] has category_id 4, which the class map"):
        Predictions.from_records(records).to_detections(ClassMap(["b"], ids=[9]))


def test_read_results_refuses_what_is_not_a_results_list(tmp_path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"r\.json: COCO results must be a JSON list of records"):
        read_results(path)
    with pytest.raises(FileNotFoundError, match=r"predictions file .*nope\.jsonl does not exist"):
        read_results(tmp_path / "nope.jsonl")


def test_jsonl_last_line_without_newline_is_read_or_reported_never_dropped(tmp_path) -> None:

    records = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5 + i / 10} for i in range(3)
    ]
    lines = [json.dumps(r) for r in records]
    whole = tmp_path / "whole.jsonl"
    whole.write_text("\n".join(lines))  # a complete last record, no trailing newline: read
    assert read_results(whole) == records
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines)[:-10])  # the reproducer: the last record cut mid-way
    with pytest.raises(ValueError, match=r"cut\.jsonl:3: not valid JSON \(the last line, without a newline"):
        read_results(cut)
    with pytest.raises(IsADirectoryError, match="is a folder; a file was expected"):
        read_results(tmp_path)
