"""Scoring report tables: per-class gains sorted losses first, COCO's -1 as a dash, calibrated rows labelled."""

import math

import numpy as np

from fusion.coco.evaluate import STAT_KEYS, EvalResult
from fusion.scoring.plots import class_gains
from fusion.scoring.report import format_class_table, format_table


def _result(ap: float, per_class: dict, aps: float = 0.3) -> EvalResult:
    stats = {k: 0.5 for k in STAT_KEYS} | {"AP": ap, "APs": aps, "APl": -1.0}
    return EvalResult(stats, per_class, np.zeros((10, 101, 3)), [1, 2, 3], "pycocotools", 10)


def test_per_class_gains_losses_first_against_each_class_best_member():
    members = {
        "m1": _result(0.40, {"cat": 0.60, "dog": 0.10, "cow": math.nan}),
        "m2": _result(0.30, {"cat": 0.40, "dog": 0.30, "cow": math.nan}),
    }
    fused = _result(0.45, {"cat": 0.50, "dog": 0.35, "cow": math.nan})
    rows = class_gains(members, fused)
    # cat: 0.50 - m1's 0.60 = -0.10 (a loss, first); dog: 0.35 - m2's 0.30 = +0.05; cow has no GT.
    assert [(r[0], r[2]) for r in rows] == [("cat", "m1"), ("dog", "m2")]
    assert [round(r[1], 10) for r in rows] == [-0.1, 0.05]
    uncalibrated = _result(0.44, {"cat": 0.55, "dog": 0.33, "cow": math.nan})
    table = format_class_table(members, fused, uncalibrated).splitlines()
    assert table[2] == "| cat | m1 | 0.6000 | 0.5000 | 0.5500 | -0.1000 |"
    assert table[3] == "| dog | m2 | 0.3000 | 0.3500 | 0.3300 | +0.0500 |"
    assert "1 class(es) without ground truth (AP –): cow" in table[-1]


def test_main_table_dashes_for_minus_one_and_labels_calibration():
    members = {"m1": _result(0.40, {}), "m2": _result(0.30, {})}
    fused = _result(0.45, {})
    extra = {"m1": {"D-ECE": 0.1, "D-ECE uncalibrated": 0.3}, "fused": {"D-ECE": 0.05}}
    raw = {k: 0.5 for k in STAT_KEYS} | {"AP": 0.44, "APs": 0.29, "APl": -1.0, "D-ECE": 0.4}
    lines = format_table(members, fused, extra, raw).splitlines()
    assert lines[2].startswith("| m1 (calibrated) | 0.4000 |") and lines[3].startswith("| m2 | 0.3000 |")
    assert (
        lines[4]
        == "| fused, uncalibrated | 0.4400 | 0.5000 | 0.5000 | 0.2900 | 0.5000 | – | 0.5000 | 0.4000 | – |"
    )
    assert lines[5].startswith("| **fused (calibrated)** | **0.4500** |") and "**–**" in lines[5]
    # The gain row: APs +0.3 - 0.3 = 0, APl undefined on both sides -> a dash, not -1 - -1.
    assert lines[6].split(" | ")[1:7] == ["+0.0500", "+0.0000", "+0.0000", "+0.0000", "+0.0000", "–"]
