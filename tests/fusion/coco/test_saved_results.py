"""``Predictions``: rounding like a results file written with Python's ``round``, and exact float64 Detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.coco.annotations import load_annotations
from fusion.coco.predictions import Predictions
from fusion.coco.rounding import round_decimals
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
