"""``fusion calibrate``: fit score calibrators on a validation set, report them on images they were not fitted on.

Inputs are each member's saved COCO results on the validation images: by default the scoring cache that
``fusion score`` writes (``runs/score/<config name>/cache/<member>.jsonl``), or explicit files given with
``--predictions member=path.json`` (``.json`` list or ``.jsonl``). Output: ``runs/calibrate/<name>/calibrators.json``,
``report.json`` / ``report.md`` and, on stdout, the ensemble config snippet that references the calibrators.

Protocol (numbers are never measured on the images a calibrator was fitted on): by default a seeded k-fold split
over images (``--folds 5``): fit on k-1 folds, measure fused AP and D-ECE on the held-out fold, report the mean ±
spread; ``--holdout FRACTION`` holds out one random part instead; ``--val A.json --test B.json`` fits on A and
measures on B. The calibrators written are then fitted on all the images given (with ``--val/--test``: on A only,
so the test numbers are those of exactly the file written).

Besides one calibrator per member, the set holds one for the FUSED output (unless ``--no-fused``): the calibrated
members are fused with the config's policy and weights, and a calibrator is fitted on that fusion. ``--method auto``
(default) compares every method, on members + fused output and on the fused output alone, and keeps the one with
the lowest held-out fused D-ECE among those whose held-out fused AP is at least the uncalibrated one - 0.002.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit score calibrators on a validation set (numbers reported on held-out images)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", required=True, help="ensemble config (YAML path or shipped name)")
    parser.add_argument("--annotations", default=None, help="COCO annotation file of the validation images")
    parser.add_argument(
        "--predictions",
        action="append",
        default=[],
        metavar="MEMBER=PATH",
        help="a member's COCO results file (repeatable); default: runs/score/<config name>/cache/<member>.jsonl",
    )
    parser.add_argument(
        "--method", default="auto", choices=["auto", "isotonic", "temperature", "beta", "histogram"]
    )
    parser.add_argument(
        "--per-class", action="store_true", help="also fit one curve per class with enough boxes"
    )
    parser.add_argument(
        "--shrinkage",
        type=float,
        default=100.0,
        help="with --per-class: pseudo-count of the all-class curve in each class curve (default 100)",
    )
    parser.add_argument("--iou-thr", type=float, default=0.5, help="IoU for a detection to count as correct")
    parser.add_argument(
        "--no-fused",
        action="store_true",
        help="skip the calibrator of the fused output (fitted on the calibrated members' fusion, config's policy)",
    )
    add_protocol(parser)
    parser.add_argument("--name", default=None, help="run name (default: the config's name)")
    parser.add_argument("--runs", default="runs", help="root folder of run outputs")
    parser.add_argument(
        "--backend", default="auto", help="COCO evaluation backend (default: fastest installed)"
    )
    parser.set_defaults(run=_run)


def add_protocol(parser: argparse.ArgumentParser) -> None:
    """``--folds``, ``--holdout``, ``--val``/``--test``, ``--seed``: shared by ``calibrate`` and ``tune``."""
    group = parser.add_argument_group("held-out protocol (default: 5-fold over images)")
    group.add_argument("--folds", type=int, default=5, help="k of the k-fold split over images (default 5)")
    group.add_argument(
        "--holdout", type=float, default=None, metavar="FRACTION", help="hold out one random part instead"
    )
    group.add_argument("--val", default=None, help="annotations to fit on (with --test: no split)")
    group.add_argument("--test", default=None, help="annotations to measure on (with --val)")
    group.add_argument("--seed", type=int, default=0, help="seed of the split (and of the search)")


def _read_config(source: str) -> Any:
    """The ensemble config, validated by :func:`fusion.config.load_ensemble_config` (no model is built)."""
    from fusion.config import load_ensemble_config

    return load_ensemble_config(source)


def _member_names(config: Any) -> list[str]:
    return [m.name for m in config.members]


def _prediction_paths(args: argparse.Namespace, config: Any) -> dict[str, Path]:
    given: dict[str, Path] = {}
    for item in args.predictions:
        member, sep, path = item.partition("=")
        if not sep or not member or not path:
            raise ValueError(f"--predictions {item!r}: expected MEMBER=PATH")
        if member not in _member_names(config):
            raise ValueError(
                f"--predictions {item!r}: no member {member!r} in {args.config} (members: {_member_names(config)})"
            )
        given[member] = Path(path)
    if given:
        for path in given.values():
            if not path.exists():
                raise FileNotFoundError(f"predictions file {path} does not exist")
        return given
    cache = Path(args.runs) / "score" / config.name / "cache"
    paths = {m: cache / f"{m}.jsonl" for m in _member_names(config)}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"no scoring cache for member(s) at {', '.join(missing)}; run `fusion score` first or pass "
            "--predictions MEMBER=PATH for each member"
        )
    return paths


def _fused_refusal(args: argparse.Namespace, config: Any, members: dict[str, Any]) -> str | None:
    """Why no fused calibrator is fitted, or None when one is."""
    missing = [m for m in _member_names(config) if m not in members]
    if args.no_fused:
        return ""
    if config.tta.hflip or config.tta.scales:
        return "no fused calibrator: the config uses TTA, whose passes the scoring cache does not hold separately"
    if missing:
        # A calibrator fitted on the fusion of some members would be applied to the fusion of all of them.
        return f"no fused calibrator: no predictions for member(s) {missing}, so the ensemble's fusion cannot be made"
    return None


def _pipeline(config: Any, ensemble_map: Any) -> Any:
    """The ensemble's pipeline (its policy and member weights, as :class:`~fusion.Ensemble` builds them), without
    calibrators; no TTA (a config with TTA gets no fused calibrator)."""
    from fusion.ensemble import member_fusion_weights
    from fusion.fuse import make_policy
    from fusion.pipeline import Pipeline

    members = config.members
    weights = member_fusion_weights(
        [m.name for m in members],
        [m.weight for m in members],
        [m.class_weights for m in members],
        ensemble_map,
    )
    return Pipeline(make_policy(config.fusion, weights=weights), vocabulary=ensemble_map)


def _run(args: argparse.Namespace) -> int:
    from fusion.calibration.dece import CalibrationProtocol
    from fusion.calibration.heldout import CalibrationTask, Candidate, auto_candidates, cross_validate
    from fusion.calibration.report import choose, write_report
    from fusion.classes import ClassMap
    from fusion.coco.predictions import load_predictions
    from fusion.holdout import resolve_protocol
    from fusion.io import run_dir

    config = _read_config(args.config)
    ensemble_map = ClassMap.load(config.classes)
    protocol = resolve_protocol(args.annotations, args.folds, args.holdout, args.val, args.test, args.seed)
    paths = _prediction_paths(args, config)
    members = {m: load_predictions(paths[m], protocol.gt) for m in _member_names(config) if m in paths}
    refusal = _fused_refusal(args, config, members)
    if refusal:
        print(refusal)
    task = CalibrationTask(
        protocol.gt,
        members,
        _pipeline(config, ensemble_map),
        ensemble_map,
        iou_thr=args.iou_thr,
        per_class=args.per_class,
        shrinkage=args.shrinkage,
        protocol=CalibrationProtocol(iou_thr=args.iou_thr),
        backend=args.backend,
    )
    fused = refusal is None
    candidates = auto_candidates(fused) if args.method == "auto" else [Candidate(args.method, True, fused)]
    print(f"protocol: {protocol.describe()}")
    cv = cross_validate(task, candidates, protocol.folds)
    chosen, verdicts = choose(cv, args.method)
    winner = next((c for c in candidates if c.name == chosen), None)
    out = run_dir("calibrate", args.name or config.name, args.runs)
    if winner is not None:
        calibrators = task.fit(winner, protocol.final)
    else:
        from fusion.calibration.sets import CalibratorSet

        calibrators = CalibratorSet({}, ensemble_map.names, {"iou_thr": args.iou_thr, "method": None})
    path = calibrators.save(out / "calibrators.json")
    write_report(out, args, protocol, cv, verdicts, chosen, task.protocol)
    _print_snippet(path, calibrators)
    return 0


def _print_snippet(path: Path, calibrators: Any) -> None:
    print(f"calibrators written to {path}")
    if not len(calibrators) and calibrators.fused is None:
        print("no calibrator kept: leave the ensemble config uncalibrated")
        return
    print("add to the ensemble config:")
    if calibrators.fused is not None:
        print(f"fused_calibrator: {path}")
    if len(calibrators):
        print("members:")
        for member in calibrators:
            print(f"  - name: {member}\n    calibrator: {path}")
