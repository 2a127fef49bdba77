"""Generated datasets and simulated members behave as documented."""

from __future__ import annotations

import numpy as np

from fusion.synthetic import SimulatedMember, make_coco_ground_truth, simulate_member


def test_ground_truth_is_valid_coco_and_seeded() -> None:
    gt = make_coco_ground_truth(20, seed=3, crowd_fraction=0.2)
    again = make_coco_ground_truth(20, seed=3, crowd_fraction=0.2)
    assert gt == again
    ids = [a["id"] for a in gt["annotations"]]
    assert ids == list(range(1, len(ids) + 1)), "pycocotools never matches a GT with id 0"
    boxes = np.array([a["bbox"] for a in gt["annotations"]])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 640 + 1e-6).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 480 + 1e-6).all()
    assert {a["iscrowd"] for a in gt["annotations"]} == {0, 1}
    assert {c["id"] for c in gt["categories"]} >= {a["category_id"] for a in gt["annotations"]}


def test_temperature_moves_confidence_and_cap_holds() -> None:
    gt = make_coco_ground_truth(30, seed=0)
    hot = simulate_member(gt, SimulatedMember(temperature=0.5, false_positives=0, label_noise=0), seed=1)
    cold = simulate_member(gt, SimulatedMember(temperature=2.0, false_positives=0, label_noise=0), seed=1)
    assert len(hot) == len(cold)
    hot_scores, cold_scores = np.array([r["score"] for r in hot]), np.array([r["score"] for r in cold])
    # Same detections, same reliabilities: sigmoid(z/0.5) and sigmoid(z/2) agree in sign of z - 0.5 but not spread.
    assert hot_scores.std() > cold_scores.std()
    capped = simulate_member(gt, SimulatedMember(detections_per_image=3, false_positives=10), seed=2)
    per_image = np.bincount([r["image_id"] for r in capped])
    assert per_image.max() == 3
