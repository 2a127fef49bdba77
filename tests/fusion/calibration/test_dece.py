"""D-ECE against hand computations."""

import math

import pytest
import torch

from fusion import Detections
from fusion.calibration import CalibrationProtocol, MatchedPairs, dece, detection_ece


def pairs(scores, tp, labels=None, boxes=None):
    n = len(scores)
    return MatchedPairs(
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(tp, dtype=torch.bool),
        torch.tensor(labels or [0] * n),
        torch.tensor(boxes) if boxes is not None else torch.full((n, 4), 0.5),
    )


def test_dece_hand_computation():
    # Kept (score >= 0.3): 0.35, 0.38 (bin 3: conf 0.365, prec 1/2); 0.92, 0.95, 0.99 (bin 9: conf 0.9533,
    # prec 2/3). 0.1 is below the threshold. D-ECE = 2/5*|0.5-0.365| + 3/5*|2/3-0.95333| = 0.054 + 0.172 = 0.226.
    p = pairs([0.1, 0.35, 0.38, 0.92, 0.95, 0.99], [1, 1, 0, 1, 0, 1])
    result = dece(p)
    assert result.count == 5
    assert result.value == pytest.approx(0.226, abs=1e-6)
    assert result.bin_counts.tolist() == [0, 0, 0, 2, 0, 0, 0, 0, 0, 3]
    assert result.bin_precision[3] == pytest.approx(0.5)
    # Threshold 0: the 0.1 TP joins bin 1 with |1 - 0.1| = 0.9: (0.9 + 2*0.135 + 3*0.28667) / 6.
    assert dece(p, CalibrationProtocol(score_thr=0.0)).value == pytest.approx(
        (0.9 + 0.27 + 0.86) / 6, abs=1e-6
    )


def test_dece_per_class_and_box_aware_hand_computation():
    # Same bin, two classes: class 0 {0.8 TP, 0.8 FP}, class 1 {0.8 TP, 0.8 TP}.
    p = pairs([0.8, 0.8, 0.8, 0.8], [1, 0, 1, 1], labels=[0, 0, 1, 1])
    # Class-agnostic: prec 3/4, conf 0.8 -> 0.05. Per class: 2/4*|0.5-0.8| + 2/4*|1-0.8| = 0.25.
    assert dece(p).value == pytest.approx(0.05, abs=1e-6)
    assert dece(p, CalibrationProtocol(class_agnostic=False)).value == pytest.approx(0.25, abs=1e-6)
    # Box-aware with 2 box bins: the two TPs of class 0/1 on the left (cx 0.2), the others on the right (cx 0.7):
    # left {TP, TP} -> |1-0.8|, right {FP, TP} -> |0.5-0.8|: (2*0.2 + 2*0.3)/4 = 0.25.
    boxes = [[0.2, 0.5, 0.1, 0.1], [0.7, 0.5, 0.1, 0.1], [0.2, 0.5, 0.1, 0.1], [0.7, 0.5, 0.1, 0.1]]
    p = pairs([0.8, 0.8, 0.8, 0.8], [1, 0, 1, 1], boxes=boxes)
    assert dece(p, CalibrationProtocol(box_aware=True, box_bins=2)).value == pytest.approx(0.25, abs=1e-6)


def test_detection_ece_end_to_end_and_crowd_ignored():
    # Image 1: a TP at 0.9 and a FP at 0.6; image 2: a detection inside a crowd region (ignored) and a TP at 0.75.
    gt = {
        1: Detections([[0, 0, 10, 10]], [1.0], [0], (50, 50), {"iscrowd": torch.tensor([False])}),
        2: Detections(
            [[0, 0, 40, 40], [40, 40, 50, 50]],
            [1.0, 1.0],
            [0, 0],
            (50, 50),
            {"iscrowd": torch.tensor([True, False])},
        ),
    }
    preds = {
        1: Detections([[0, 0, 10, 10], [30, 30, 40, 40]], [0.9, 0.6], [0, 0], (50, 50)),
        2: Detections([[5, 5, 15, 15], [40, 40, 50, 50]], [0.95, 0.75], [0, 0], (50, 50)),
    }
    result = detection_ece(preds, gt)
    # Bins: 6 {0.6 FP} -> 0.6; 7 {0.75 TP} -> 0.25; 9 {0.9 TP} -> 0.1. N = 3.
    assert result.count == 3
    assert result.value == pytest.approx((0.6 + 0.25 + 0.1) / 3, abs=1e-6)
    d = result.as_dict()
    assert d["protocol"] == {
        "iou_thr": 0.5,
        "score_thr": 0.3,
        "bins": 10,
        "class_agnostic": True,
        "box_aware": False,
        "box_bins": 4,
    }


def test_empty_and_bad_inputs():
    assert math.isnan(dece(pairs([0.1], [1])).value)
    gt = {1: Detections.empty((10, 10))}
    with pytest.raises(ValueError, match="not in the ground truth"):
        detection_ece({2: Detections.empty((10, 10))}, gt)
    with pytest.raises(ValueError):
        CalibrationProtocol(bins=0)
