"""The pipeline (calibrate members -> fuse -> calibrate fused): its column-wise and per-batch entry points agree
exactly, and a fused calibrator applied under another policy than it was fitted under warns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fusion.calibration import fit_calibrator_set, fit_member_calibrator, ground_truth_from_coco
from fusion.classes import ClassMap
from fusion.coco.annotations import load_annotations
from fusion.coco.predictions import Predictions
from fusion.fuse import make_policy
from fusion.pipeline import Calibration, Pipeline
from fusion.synthetic import make_coco_ground_truth, simulate_miscalibrated_member


@pytest.fixture(scope="module")
def setup() -> dict:
    """Two miscalibrated members on 11 images, per-class isotonic calibrators fitted in a vocabulary whose label
    order differs from the dataset's (reversed names), so labels reach the calibrators through a translation."""
    data = make_coco_ground_truth(11, seed=5, image_size=(60, 80))
    gt = load_annotations(data)
    members = {
        name: Predictions.from_records(simulate_miscalibrated_member(data, t, seed=k + 1))
        for k, (name, t) in enumerate({"a": 0.35, "b": 2.5}.items())
    }
    vocabulary = ClassMap(list(reversed(gt.class_map.names)))
    table = gt.class_map.translation_to(vocabulary)
    truth = {
        i: g.replace(labels=table[g.labels]) for i, g in ground_truth_from_coco(data, gt.class_map).items()
    }
    ids = gt.image_ids.tolist()
    per_member = {
        n: dict(zip(ids, [d.replace(labels=table[d.labels]) for d in p.split_by_image(gt)]))
        for n, p in members.items()
    }
    calibrators = fit_calibrator_set(per_member, truth, "isotonic", per_class=True, classes=vocabulary.names)
    policy = make_policy("wbf", iou_thr=0.6, weights=[2.0, 1.0])
    fused = Pipeline(policy, Calibration(dict(calibrators), vocabulary.names), vocabulary)(
        {n: [p[i] for i in ids] for n, p in per_member.items()}
    )
    calibrators.fused = fit_member_calibrator(dict(zip(ids, fused)), truth, "isotonic", per_class=True)
    calibration = Calibration(dict(calibrators), vocabulary.names, calibrators.fused)
    return {"gt": gt, "members": members, "policy": policy, "calibration": calibration}


@pytest.mark.parametrize("batch_size", [1, 3, 11])
def test_column_wise_equals_per_batch(setup: dict, batch_size: int) -> None:
    gt, members = setup["gt"], setup["members"]
    pipeline = Pipeline(setup["policy"], setup["calibration"], gt.class_map)
    calibrated, fused = pipeline.run_columns(members, gt)

    split = {name: preds.split_by_image(gt) for name, preds in members.items()}
    per_batch, calibrated_batches = [], {name: [] for name in members}
    for start in range(0, len(gt), batch_size):
        batch = {name: dets[start : start + batch_size] for name, dets in split.items()}
        per_batch += pipeline(batch)
        for name, dets in pipeline.calibrate(batch).items():
            calibrated_batches[name] += dets
    expected = Predictions.from_detections(per_batch, gt.image_ids, gt.class_map)
    for column in ("image_ids", "category_ids", "boxes", "scores"):
        np.testing.assert_array_equal(getattr(fused, column), getattr(expected, column))
    for name, preds in calibrated.items():
        by_batch = np.concatenate([d.scores.numpy() for d in calibrated_batches[name]])
        np.testing.assert_array_equal(
            np.concatenate([d.scores.numpy() for d in preds.split_by_image(gt)]), by_batch
        )

    # The calibrators did something: the raw fusion differs, and the fused output is sorted per image.
    raw = pipeline.uncalibrated().run_columns(members, gt)[1]
    assert len(raw) == len(fused) and not np.array_equal(raw.scores, fused.scores)
    for det in fused.split_by_image(gt):
        assert bool((det.scores[:-1] >= det.scores[1:]).all())


def test_a_fused_calibrator_applied_under_another_policy_warns(setup: dict) -> None:
    fitted = setup["policy"].params.model_dump(mode="json")
    calibration = Calibration(
        setup["calibration"].members,
        setup["calibration"].classes,
        setup["calibration"].fused,
        fused_fit={"policy": fitted, "members": ["a", "b"]},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline(make_policy("wbf", iou_thr=0.6, weights=[2.0, 1.0]), calibration).check_fused_fit()
    with pytest.warns(UserWarning, match=r"here: fitted under fusion .*differs in iou_thr, weights"):
        Pipeline(make_policy("wbf", iou_thr=0.7), calibration).check_fused_fit("here")
    with pytest.warns(UserWarning, match=r"differs in .*type"):
        Pipeline(make_policy("nms", weights=[2.0, 1.0]), calibration).check_fused_fit("here")
    # No fused calibrator, or no record of its fit (a file from before the record existed): nothing to check.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline(make_policy("nms"), Calibration(fused_fit={"policy": fitted})).check_fused_fit()
        Pipeline(make_policy("nms"), Calibration(fused=calibration.fused)).check_fused_fit()
