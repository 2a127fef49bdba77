"""COCO evaluation: every installed backend gives pycocotools' 12 stats exactly, and misuse gives clear errors."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np
import pytest

from fusion.coco.annotations import load_annotations
from fusion.coco.evaluate import STAT_KEYS, available_backends, evaluate, resolve_backend
from fusion.coco.predictions import Predictions
from fusion.synthetic import synthetic_annotations, synthetic_predictions


def reference_stats(dataset: dict, records: list[dict]) -> np.ndarray:
    """pycocotools exactly as users call it: COCO(dict) + loadRes(records) + COCOeval.summarize()."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(records))
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


# Backends whose stats equal pycocotools' to the last bit; faster-coco-eval's differ by ~1e-16 (float rounding order).
BIT_EXACT = {"pycocotools", "hotcoco"}

CASES = {
    # name: (annotation kwargs, prediction kwargs)
    "crowd_tiny_huge": (
        {"num_images": 120, "num_classes": 5, "crowd_fraction": 0.15, "seed": 1},
        {"seed": 2},
    ),
    "empty_images": (
        {"num_images": 80, "num_classes": 4, "empty_fraction": 0.4, "seed": 3},
        {"seed": 4, "skip_image_fraction": 0.3},
    ),
    "dense": (
        {"num_images": 40, "num_classes": 3, "boxes_per_image": 25, "seed": 5},
        {"seed": 6, "detections_per_image": 120},
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[dict, Predictions, np.ndarray]:
    ann_kwargs, pred_kwargs = CASES[request.param]
    dataset = synthetic_annotations(**ann_kwargs)
    preds = synthetic_predictions(dataset, **{"detections_per_image": 40, **pred_kwargs})
    # A category without any detection (its GT all missed) and one without GT (the generator leaves the last empty).
    preds = preds.select(preds.category_ids != dataset["categories"][0]["id"])
    return dataset, preds, reference_stats(dataset, preds.records())


@pytest.mark.parametrize("backend", available_backends())
def test_stats_equal_pycocotools_exactly(case: tuple, backend: str) -> None:
    dataset, preds, expected = case
    result = evaluate(load_annotations(dataset), preds, backend=backend)
    assert result.backend == backend
    got = np.asarray([result.stats[k] for k in STAT_KEYS])
    if backend in BIT_EXACT:
        assert got.tolist() == expected.tolist()
    else:  # faster-coco-eval's C++ accumulation rounds differently: at most a few ulp apart
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # The generated case must exercise real, distinct values (not all -1 or 0).
    assert 0.05 < result.stats["AP"] < 0.95 and len(set(got.tolist())) > 6
    first = dataset["categories"][0]["name"]
    assert result.per_class_ap[first] == 0.0  # GT present, no detections
    assert math.isnan(result.per_class_ap[dataset["categories"][-1]["name"]])  # no GT at all


def test_per_class_ap_matches_pycocotools_single_class_runs() -> None:
    dataset = synthetic_annotations(num_images=60, num_classes=3, seed=11)
    preds = synthetic_predictions(dataset, detections_per_image=20, seed=12)
    result = evaluate(load_annotations(dataset), preds)
    for category in dataset["categories"][:2]:
        only = copy.deepcopy(dataset)
        only["annotations"] = [a for a in only["annotations"] if a["category_id"] == category["id"]]
        only["categories"] = [category]
        sub = preds.select(preds.category_ids == category["id"])
        assert result.per_class_ap[category["name"]] == reference_stats(only, sub.records())[0]


def test_perfect_detections_score_one_and_auto_backend_is_installed() -> None:
    dataset = synthetic_annotations(num_images=30, num_classes=3, crowd_fraction=0.0, seed=7)
    anns = dataset["annotations"]
    preds = Predictions(
        [a["image_id"] for a in anns],
        [a["category_id"] for a in anns],
        [a["bbox"] for a in anns],
        np.linspace(1.0, 0.5, len(anns)),
    )
    result = evaluate(load_annotations(dataset), preds)
    assert result.stats["AP"] == 1.0 and result.stats["AR100"] == 1.0
    assert result.backend == resolve_backend("auto") == available_backends()[0]


@pytest.mark.parametrize("backend", available_backends())
def test_empty_results_score_zero_not_indexerror(backend: str) -> None:
    dataset = synthetic_annotations(num_images=10, num_classes=2, seed=8)
    result = evaluate(load_annotations(dataset), Predictions.empty(), backend=backend)
    assert result.stats["AP"] == 0.0 and result.stats["AR100"] == 0.0 and result.num_detections == 0


def test_unknown_image_ids_are_an_error_naming_them() -> None:
    dataset = synthetic_annotations(num_images=5, num_classes=2, seed=9)
    preds = Predictions([1, 999], [1, 1], [[0, 0, 5, 5], [0, 0, 5, 5]], [0.9, 0.8])
    with pytest.raises(ValueError, match=r"1 image id\(s\) are not in the annotations.*999"):
        evaluate(load_annotations(dataset), preds)


def test_unknown_categories_are_an_error_not_a_silent_drop() -> None:
    dataset = synthetic_annotations(num_images=5, num_classes=2, seed=9)
    preds = Predictions([1, 2], [1, 7], [[0, 0, 5, 5], [0, 0, 5, 5]], [0.9, 0.8])
    with pytest.raises(ValueError, match=r"category ids not in the annotations' categories \[7\]"):
        evaluate(load_annotations(dataset), preds)


def test_coco80_ids_against_coco91_file_are_recognised_and_translated() -> None:
    from fusion.classes import ClassMap

    dataset = synthetic_annotations(num_images=20, coco_ids=True, seed=10)
    gt = load_annotations(dataset)
    preds91 = synthetic_predictions(dataset, detections_per_image=10, seed=11)
    coco80 = ClassMap.load("coco80")
    # The same detections with 0-based ids (as ultralytics writes them).
    preds80 = preds91.translate(gt.class_map, coco80)
    assert preds80.category_ids.max() <= 79 and (preds80.category_ids != preds91.category_ids).all()
    with pytest.raises(ValueError, match="0-based COCO-80 ids"):
        evaluate(gt, preds80)
    back = preds80.translate(coco80, gt.class_map)
    assert evaluate(gt, back).stats == evaluate(gt, preds91).stats


def test_unknown_backend_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown evaluation backend 'fast'"):
        resolve_backend("fast")
