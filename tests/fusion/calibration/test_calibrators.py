"""Calibrators: monotone, exact JSON round trip, halve D-ECE on generated members, applied exactly once."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion import Detections
from fusion.calibration import (
    CALIBRATORS,
    Calibrator,
    CalibratorSet,
    apply_calibrators,
    detection_ece,
    fit_calibrator,
    fit_calibrator_set,
    ground_truth_from_coco,
    introduced_ties,
)
from fusion.classes import ClassMap
from fusion.interop import from_coco_records
from fusion.synthetic import make_coco_ground_truth, simulate_miscalibrated_member

METHODS = sorted(CALIBRATORS)


@settings(max_examples=25, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    per_class=st.booleans(),
)
def test_monotone_and_exact_json_round_trip(method, seed, n, per_class):
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    labels = rng.integers(0, 3, n)
    tp = rng.random(n) < rng.random()  # any relation, even anti-correlated
    calibrator = fit_calibrator(method, scores, tp, labels, per_class=per_class, min_per_class=5)
    grid = torch.linspace(-0.2, 1.2, 301, dtype=torch.float32)
    for label in range(4):  # label 3 has no curve: the default applies
        out = calibrator.apply(grid, torch.full_like(grid, label, dtype=torch.int64))
        assert bool((out[1:] >= out[:-1]).all()), f"{method} not monotone for label {label}"
        assert bool(((out >= 0) & (out <= 1)).all())
    text = json.dumps(calibrator.to_json())
    again = Calibrator.from_json(json.loads(text))
    assert again.to_json() == calibrator.to_json()
    scores_t = torch.from_numpy(rng.random(50).astype(np.float32))
    labels_t = torch.from_numpy(rng.integers(0, 4, 50))
    assert torch.equal(again.apply(scores_t, labels_t), calibrator.apply(scores_t, labels_t))


def test_isotonic_hand_case_interpolates_smoothed_blocks_at_their_centroids():
    # Scores 0.1..0.5 with outcomes 0, 1, 0, 1, 1: PAV fits 0, .5, .5, 1, 1 -> blocks {.1}, {.2, .3}, {.4, .5}
    # with (n, hits) = (1, 0), (2, 1), (2, 2); overall precision 0.6, one pseudo-count: y = 0.6/2, 1.6/3, 2.6/3
    # at centroids 0.1, 0.25, 0.45; tails of 1 % slope towards 0 and 1.
    c = fit_calibrator("isotonic", [0.1, 0.2, 0.3, 0.4, 0.5], [0, 1, 0, 1, 1])
    y0, y1, y2 = 0.3, 1.6 / 3, 2.6 / 3
    assert c.default["x"] == pytest.approx([0.1, 0.25, 0.45])
    assert c.default["y"] == pytest.approx([y0, y1, y2])
    out = c.apply(torch.tensor([0.05, 0.1, 0.25, 0.35, 0.45, 0.9], dtype=torch.float64))
    expected = [y0 - 0.01 * y0 * 0.5, y0, y1, (y1 + y2) / 2, y2, y2 + 0.01 * (1 - y2) * 0.45 / 0.55]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32))


def test_isotonic_file_without_tail_slope_keeps_flat_tails():
    # A calibrators.json written before tail_slope existed applies exactly as it did: constant outside the knots.
    c = Calibrator.from_json({"method": "isotonic", "default": {"x": [0.2, 0.6], "y": [0.1, 0.9]}})
    out = c.apply(torch.tensor([0.0, 0.1, 0.4, 0.7, 1.0]))
    torch.testing.assert_close(out, torch.tensor([0.1, 0.1, 0.5, 0.9, 0.9]))
    assert "tail_slope" not in c.to_json()["default"]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 400))
def test_isotonic_introduces_no_ties_when_both_outcomes_occur(seed, n):
    rng = np.random.default_rng(seed)
    scores = np.unique(rng.random(n))
    tp = rng.random(len(scores)) < scores  # any mix, as long as both outcomes occur
    if tp.all() or not tp.any():
        tp[0], tp[-1] = False, True
    c = fit_calibrator("isotonic", scores, tp)
    x, y = np.array(c.default["x"]), np.array(c.default["y"])
    assert (np.diff(x) > 0).all() and (np.diff(y) > 0).all() and (y > 0).all() and (y < 1).all()
    # Scores as results files hold them (3 decimals): far enough apart for float32 outputs to stay distinct.
    probe = torch.from_numpy(np.unique(np.round(rng.random(500), 3)))
    calibrated = c.apply(probe).double()
    assert introduced_ties(probe, calibrated) == 0
    assert bool((calibrated[1:] > calibrated[:-1]).all())


def test_beta_recovers_the_generating_curve():
    rng = np.random.default_rng(3)
    s = rng.uniform(0.01, 0.99, 200_000)
    a, b, c = 2.0, 0.5, -0.7
    p = 1 / (1 + np.exp(-(a * np.log(s) - b * np.log1p(-s) + c)))
    fitted = fit_calibrator("beta", s, rng.random(len(s)) < p).default
    assert fitted["a"] == pytest.approx(a, abs=0.06)
    assert fitted["b"] == pytest.approx(b, abs=0.06)
    assert fitted["c"] == pytest.approx(c, abs=0.06)


def test_beta_with_a_equal_b_is_temperature_scaling():
    beta = Calibrator.from_json({"method": "beta", "default": {"a": 0.7, "b": 0.7, "c": 0.3}})
    temperature = Calibrator.from_json({"method": "temperature", "default": {"a": 0.7, "b": 0.3}})
    s = torch.linspace(0.01, 0.99, 99)
    torch.testing.assert_close(beta.apply(s), temperature.apply(s))


def test_per_class_curves_shrink_towards_the_default_by_their_count():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(900, int), np.ones(100, int)]
    scores = rng.random(1000)
    tp = rng.random(1000) < np.where(labels == 1, scores**3, scores)
    c = fit_calibrator("temperature", scores, tp, labels, per_class=True, shrinkage=100)
    assert c.class_weights == pytest.approx({0: 900 / 1000, 1: 100 / 200})
    alone = [Calibrator.from_json({"method": "temperature", "default": c.per_class[k]}) for k in (0, 1)]
    default = Calibrator.from_json({"method": "temperature", "default": c.default})
    s = torch.linspace(0.05, 0.95, 19)
    for label, w in ((0, 0.9), (1, 0.5)):
        got = c.apply(s, torch.full_like(s, label, dtype=torch.int64))
        torch.testing.assert_close(got, w * alone[label].apply(s) + (1 - w) * default.apply(s))
    unshrunk = fit_calibrator("temperature", scores, tp, labels, per_class=True, shrinkage=0)
    assert unshrunk.class_weights == {0: 1.0, 1: 1.0}


def test_introduced_ties_counts_merged_scores_within_a_class_only():
    raw = torch.tensor([0.1, 0.2, 0.3, 0.3, 0.9, 0.8])
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    calibrated = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.7, 0.7])
    # class 0: raw {.1, .2, .3} -> {0, .5}: one merge (the equal raw .3 pair was tied already); 1 vs 2: no cost.
    assert introduced_ties(raw, calibrated, labels) == 1
    assert introduced_ties(raw, calibrated) == 2  # one class: {.1,.2,.3,.8,.9} -> {0, .5, .7}


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    q = rng.uniform(0.02, 0.98, 20_000)
    tp = rng.random(q.size) < q
    z = np.log(q / (1 - q))
    over = 1 / (1 + np.exp(-z / 0.5))  # over-confident by temperature 0.5: a = 0.5 undoes it
    c = fit_calibrator("temperature", over, tp)
    assert c.default["a"] == pytest.approx(0.5, abs=0.03)
    assert c.default["b"] == pytest.approx(0.0, abs=0.05)


def test_bad_json_is_refused():
    with pytest.raises(ValueError, match="unknown calibrator method"):
        Calibrator.from_json({"method": "magic", "default": {}})
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibrator.from_json({"method": "isotonic", "default": {"x": [0.1, 0.2], "y": [0.9, 0.1]}})
    with pytest.raises(ValueError, match="must be >= 0"):
        Calibrator.from_json({"method": "temperature", "default": {"a": -1.0, "b": 0.0}})


@pytest.fixture(scope="module")
def splits():
    out = []
    for seed in (1, 2):
        gt = make_coco_ground_truth(150, seed=seed)
        class_map = ClassMap.from_coco_categories(gt["categories"])
        truth = ground_truth_from_coco(gt, class_map)
        members = {
            name: from_coco_records(
                simulate_miscalibrated_member(gt, t, seed=10 * seed + k), class_map, None, truth
            )
            for k, (name, t) in enumerate({"over": 0.35, "under": 3.0}.items())
        }
        out.append((truth, members, class_map))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_calibration_more_than_halves_dece_on_held_out_split(splits, method):
    (val_truth, val_members, class_map), (test_truth, test_members, _) = splits
    calibrators = fit_calibrator_set(val_members, val_truth, method, classes=class_map.names)
    ids = list(test_truth)
    calibrated = apply_calibrators({n: [m[i] for i in ids] for n, m in test_members.items()}, calibrators)
    for name in ("over", "under"):
        before = detection_ece(test_members[name], test_truth).value
        after = detection_ece(dict(zip(ids, calibrated[name])), test_truth).value
        assert before > 0.1, f"{name}: the generated member should be clearly miscalibrated ({before})"
        assert after < 0.5 * before, f"{method} on {name}: D-ECE {before:.4f} -> {after:.4f}"


def test_applied_exactly_once_and_set_round_trip(splits, tmp_path):
    (val_truth, val_members, class_map), _ = splits
    calibrators = fit_calibrator_set(val_members, val_truth, "temperature", classes=class_map.names)
    path = calibrators.save(tmp_path / "calibrators.json")
    loaded = CalibratorSet.load(path, class_map.names)
    assert loaded.to_json() == calibrators.to_json()
    ids = list(val_truth)[:20]
    raw = {n: [m[i] for i in ids] for n, m in val_members.items()}
    raw["plain"] = raw["over"]  # a member without a calibrator
    once = apply_calibrators(raw, loaded)
    twice = apply_calibrators(once, loaded)
    for name in raw:
        for r, a, b in zip(raw[name], once[name], twice[name]):
            assert torch.equal(a.scores, b.scores)
            assert a.extras["calibrated"].tolist() == [name != "plain"] * len(a)
            expected = r.scores if name == "plain" else loaded[name].apply(r.scores, r.labels)
            assert torch.equal(a.scores, expected)
            assert torch.equal(a.boxes, r.boxes) and torch.equal(a.labels, r.labels)
    over = [d for d in once["over"] if len(d)]
    assert any(not torch.equal(a.scores, r.scores) for a, r in zip(over, [d for d in raw["over"] if len(d)]))
    with pytest.raises(ValueError, match="unknown member"):
        apply_calibrators({"other": raw["over"]}, loaded)
    with pytest.raises(ValueError, match="different class list"):
        CalibratorSet.load(path, ["a", "b"])


def test_apply_stays_on_device_and_dtype():
    c = fit_calibrator("isotonic", [0.1, 0.5, 0.9], [0, 1, 1])
    det = Detections([[0, 0, 1, 1]], [0.7], [0])
    out = apply_calibrators({"m": [det]}, {"m": c})["m"][0]
    assert out.scores.dtype == torch.float32 and out.device == det.device
    # 0.7 is the centroid of the block {0.5, 0.9} (2 hits of 2), smoothed towards the overall 2/3: (2 + 2/3) / 3
    assert float(out.scores[0]) == pytest.approx(8 / 9)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_apply_on_cuda_equals_cpu():
    rng = np.random.default_rng(3)
    for method in METHODS:
        c = fit_calibrator(
            method,
            rng.random(500),
            rng.random(500) < 0.5,
            rng.integers(0, 3, 500),
            per_class=True,
            min_per_class=5,
        )
        s = torch.from_numpy(rng.random(1000).astype(np.float32))
        lab = torch.from_numpy(rng.integers(0, 4, 1000))
        out = c.apply(s.cuda(), lab.cuda())
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), c.apply(s, lab))
