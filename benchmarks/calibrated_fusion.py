"""Calibration and tuning measured on data they were not fitted on: k-fold estimates vs an unseen seed.

Two sets of generated members, each drawn twice with DIFFERENT seeds (one draw to fit on, one to measure on):

* ``miscalibrated``: three members of :func:`fusion.synthetic.simulate_miscalibrated_member` (over-confident
  T=0.4, under-confident T=2.5, calibrated T=1.0) on fit seed 11 / unseen seed 12;
* ``demo``: the simulated demo's members (:func:`fusion.synthetic.default_members`, as ``fusion demo`` draws them)
  on fit seed 0 / unseen seed 1 (the case of issue 12).

Calibration (what ``fusion calibrate`` does, through :class:`fusion.calibration.heldout.CalibrationTask`, i.e. the
one pipeline): every candidate is cross-validated (5-fold) on the fit seed, ``--method auto`` picks one, the final
calibrators are fitted on the whole fit seed and applied to the unseen seed. Targets for ``auto`` on the unseen seed:
fused D-ECE <= 1/2 of uncalibrated and fused AP >= uncalibrated - 0.002.

Tuning (``fusion tune``, :func:`fusion.tuning.heldout.tune_heldout`): one search per policy, equal budgets, 5-fold on
the demo's fit seed; the winner's k-fold gain over the default config must be reproduced on the unseen seed within
+-0.005 AP.

Run: ``python benchmarks/calibrated_fusion.py [--images 200] [--trials 10] [--policies wbf,soft_nms]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from fusion.calibration.heldout import CalibrationTask, auto_candidates, cross_validate
from fusion.calibration.select import AP_TOLERANCE, choose_method
from fusion.coco.annotations import load_annotations
from fusion.coco.predictions import Predictions
from fusion.holdout import HeldOutProtocol, kfold_splits
from fusion.pipeline import Pipeline
from fusion.synthetic import (
    default_members,
    make_coco_ground_truth,
    simulate_member,
    simulate_miscalibrated_member,
)
from fusion.tuning.heldout import tune_heldout, winner
from fusion.tuning.search import Scorer, default_setting

MISCALIBRATED = {"over": 0.4, "under": 2.5, "fair": 1.0}


def miscalibrated(images: int, seed: int) -> tuple[Any, dict[str, Predictions]]:
    data = make_coco_ground_truth(images, seed=seed, crowd_fraction=0.02)
    records = {
        name: simulate_miscalibrated_member(data, temperature, seed=100 * seed + k)
        for k, (name, temperature) in enumerate(MISCALIBRATED.items())
    }
    return _loaded(data, records)


def demo(images: int, seed: int) -> tuple[Any, dict[str, Predictions]]:
    data = make_coco_ground_truth(images, seed=seed)
    # As fusion demo draws them: member k from seed + 1 + k.
    records = {
        name: simulate_member(data, spec, seed + 1 + k) for k, (name, spec) in enumerate(default_members())
    }
    return _loaded(data, records)


def _loaded(data: dict, records: dict[str, list]) -> tuple[Any, dict[str, Predictions]]:
    gt = load_annotations(data)
    return gt, {name: Predictions.from_records(r) for name, r in records.items()}


def task(gt: Any, members: dict[str, Predictions]) -> CalibrationTask:
    """The ensemble of these members under WBF defaults, in the dataset's vocabulary."""
    return CalibrationTask(gt, members, Pipeline.build(vocabulary=gt.class_map), gt.class_map)


def calibration_rows(label: str, fit: CalibrationTask, unseen: CalibrationTask) -> list[str]:
    """k-fold estimate and unseen-seed numbers of every candidate and of the one ``auto`` keeps."""
    candidates = auto_candidates()
    cv = cross_validate(fit, candidates, kfold_splits(fit.image_ids, 5, 0))
    chosen, _ = choose_method(cv.results, cv.uncalibrated.ap.mean)
    ids = unseen.image_ids
    raw = unseen.measure(None, ids)
    rows = [
        f"{label:<22}{'uncalibrated':<26}{cv.uncalibrated.ap.mean:>9.4f}{cv.uncalibrated.dece.mean:>9.4f}"
        f"{raw.ap:>9.4f}{raw.dece:>9.4f}{'':>7}{'':>6}"
    ]
    outcome = None
    for candidate in candidates:
        result = cv.results[candidate.name]
        after = unseen.measure(fit.fit(candidate, fit.image_ids), ids)
        mark = " <- auto" if candidate.name == chosen else ""
        rows.append(
            f"{'':<22}{candidate.name:<26}{result.ap.mean:>9.4f}{result.dece.mean:>9.4f}{after.ap:>9.4f}"
            f"{after.dece:>9.4f}{after.ap - raw.ap:>+8.4f}{after.dece / raw.dece:>7.2f}{mark}"
        )
        if candidate.name == chosen:
            outcome = after
    if outcome is None:
        rows.append(f"{'':<22}auto kept none: every candidate lost held-out AP")
        outcome = raw
    met = outcome.dece <= 0.5 * raw.dece and outcome.ap >= raw.ap - AP_TOLERANCE
    rows.append(
        f"{'':<22}target (auto, unseen seed: D-ECE <= 0.5x, AP >= uncal - {AP_TOLERANCE}): "
        f"{'MET' if met else 'NOT MET'}"
    )
    return rows


def tuning_rows(images: int, trials: int, policies: list[str]) -> list[str]:
    gt, members = demo(images, 0)
    ids = [int(i) for i in gt.image_ids.tolist()]
    protocol = HeldOutProtocol(gt, kfold_splits(ids, 5, 0), tuple(ids), "k-fold", {"k": 5, "seed": 0})
    results = tune_heldout(Scorer(members, gt), protocol, policies, trials, seed=0, progress=False)
    best = winner(results)
    unseen_gt, unseen_members = demo(images, 1)
    scorer = Scorer(unseen_members, unseen_gt)
    default_ap = scorer.stats(default_setting("wbf", len(unseen_members)))["AP"]
    rows = []
    for result in results:
        unseen_gain = scorer.stats(result.best.policy)["AP"] - default_ap
        diff = unseen_gain - result.gain_over_default.mean
        rows.append(
            f"{result.policy:<10}{result.held_out!s:>18}{result.gain_over_default!s:>18}"
            f"{unseen_gain:>+10.4f}{diff:>+9.4f}{' <- winner' if result is best else ''}  {result.best.policy}"
        )
    unseen_gain = scorer.stats(best.best.policy)["AP"] - default_ap
    met = abs(unseen_gain - best.gain_over_default.mean) <= 0.005
    rows.append(
        f"target (winner's unseen gain within +-0.005 of the k-fold estimate): {'MET' if met else 'NOT MET'}"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images per seed")
    parser.add_argument("--trials", type=int, default=10, help="tuning trials per policy and fold")
    parser.add_argument("--policies", default="wbf,soft_nms", help="policies tuned (equal budgets)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"calibrated_fusion: {args.images} images per seed, WBF defaults, 5-fold on the fit seed")
    print(
        "columns: k-fold estimate on the fit seed (fused AP, D-ECE) | unseen seed (fused AP, D-ECE, AP change, D-ECE ratio)"
    )
    print(
        f"{'members':<22}{'calibration':<26}{'kf AP':>9}{'kf D-ECE':>9}{'AP':>9}{'D-ECE':>9}{'dAP':>8}{'ratio':>7}"
    )
    for label, make, seeds in (("miscalibrated", miscalibrated, (11, 12)), ("demo", demo, (0, 1))):
        fit, unseen = (task(*make(args.images, s)) for s in seeds)
        for row in calibration_rows(f"{label} {seeds[0]}->{seeds[1]}", fit, unseen):
            print(row)
    print()
    policies = [p for p in args.policies.split(",") if p]
    print(f"tuning on demo seed 0 (5-fold, {args.trials} trials per policy and fold), checked on demo seed 1")
    print(
        f"{'policy':<10}{'kf held-out AP':>18}{'kf gain/default':>18}{'unseen':>10}{'diff':>9}  best setting"
    )
    for row in tuning_rows(args.images, args.trials, policies):
        print(row)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
