"""``fusion calibrate``: fit per-member score calibrators on a validation set and save them for the ensemble config.

Inputs are each member's saved COCO results on the validation images: by default the scoring cache that
``fusion score`` writes (``runs/score/<config name>/cache/<member>.jsonl``), or explicit files given with
``--predictions member=path.json`` (``.json`` list or ``.jsonl``). Output: ``runs/calibrate/<name>/calibrators.json``
and, on stdout, the ensemble config snippet that references it.

Besides one calibrator per member, the set holds one for the FUSED output (unless ``--no-fused``): the calibrated
members are fused with the config's policy and weights, and a calibrator is fitted on that fusion. WBF's ``avg``
scores of calibrated members are not calibrated themselves (a box only one of three members found gets a third of
its score), so the fused calibrator is what brings the fused output's D-ECE down.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit per-member score calibrators on a validation set",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", required=True, help="ensemble config (YAML path or shipped name)")
    parser.add_argument("--annotations", required=True, help="COCO annotation file of the validation images")
    parser.add_argument(
        "--predictions",
        action="append",
        default=[],
        metavar="MEMBER=PATH",
        help="a member's COCO results file (repeatable); default: runs/score/<config name>/cache/<member>.jsonl",
    )
    parser.add_argument("--method", default="isotonic", choices=["isotonic", "temperature", "histogram"])
    parser.add_argument(
        "--per-class", action="store_true", help="also fit one curve per class with enough boxes"
    )
    parser.add_argument("--iou-thr", type=float, default=0.5, help="IoU for a detection to count as correct")
    parser.add_argument(
        "--no-fused",
        action="store_true",
        help="skip the calibrator of the fused output (fitted on the calibrated members' fusion, config's policy)",
    )
    parser.add_argument("--name", default=None, help="run name (default: the config's name)")
    parser.add_argument("--runs", default="runs", help="root folder of run outputs")
    parser.set_defaults(run=_run)


def _read_config(source: str) -> Any:
    """The ensemble config, validated by :func:`fusion.config.load_ensemble_config` (no model is built)."""
    from fusion.config import load_ensemble_config

    return load_ensemble_config(source)


def _member_names(config: Any) -> list[str]:
    return [m.name for m in config.members]


def _read_records(path: Path) -> list[Any]:
    from fusion.coco.annotations import read_json
    from fusion.coco.predictions import read_jsonl

    if not path.exists():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    records = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: COCO results must be a JSON list of records, got {type(records).__name__}")
    return records


def _prediction_paths(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Path]:
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


def _load_inputs(
    args: argparse.Namespace, config: Any, ensemble_map: Any
) -> tuple[dict[Any, Any], dict[str, dict[Any, Any]]]:
    """``(truth, per_member)``: GT and each member's detections per image id, labels in the ensemble vocabulary.

    Everything is matched in the ensemble's vocabulary (the labels calibrators see at prediction time); dataset
    classes the ensemble lacks become label -1, which no detection can match.
    """
    from fusion.calibration import ground_truth_from_coco
    from fusion.coco.annotations import load_annotations
    from fusion.interop import from_coco_records

    annotations = Path(args.annotations)
    gt = load_annotations(annotations)  # validated: ids, categories, boxes (errors name the list and index)
    to_ensemble = gt.class_map.translation_to(ensemble_map, strict=False)
    truth = ground_truth_from_coco(gt.dataset, gt.class_map)
    truth = {i: g.replace(labels=to_ensemble[g.labels]) for i, g in truth.items()}
    sizes = {i: g.image_size for i, g in truth.items()}
    per_member = {}
    for member, path in _prediction_paths(args, config).items():
        records = _read_records(path)
        unknown = {r.get("image_id") for r in records if isinstance(r, dict)} - set(truth)
        if unknown:
            raise ValueError(f"{path}: image id {sorted(unknown, key=str)[0]!r} is not in {annotations}")
        try:
            preds = from_coco_records(records, gt.class_map, sizes, truth.keys())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        bad = {i: d for i, d in preds.items() if bool((to_ensemble[d.labels] < 0).any())}
        if bad:
            raise ValueError(
                f"{path}: image {next(iter(bad))!r} has detections of a class the ensemble vocabulary lacks"
            )
        per_member[member] = {i: d.replace(labels=to_ensemble[d.labels]) for i, d in preds.items()}
    return truth, per_member


def _fused_refusal(args: argparse.Namespace, config: Any, per_member: dict[str, Any]) -> str | None:
    """Why no fused calibrator is fitted, or None when one is."""
    missing = [m for m in _member_names(config) if m not in per_member]
    if args.no_fused:
        return ""
    if config.tta.hflip or config.tta.scales:
        return "no fused calibrator: the config uses TTA, whose passes the scoring cache does not hold separately"
    if missing:
        # A calibrator fitted on the fusion of some members would be applied to the fusion of all of them.
        return f"no fused calibrator: no predictions for member(s) {missing}, so the ensemble's fusion cannot be made"
    return None


def _run(args: argparse.Namespace) -> int:
    from fusion.calibration import fit_calibrator_set
    from fusion.calibration.dece import CalibrationProtocol
    from fusion.classes import ClassMap
    from fusion.io import run_dir

    config = _read_config(args.config)
    ensemble_map = ClassMap.load(config.classes)
    truth, per_member = _load_inputs(args, config, ensemble_map)
    calibrators = fit_calibrator_set(
        per_member, truth, args.method, args.per_class, args.iou_thr, classes=ensemble_map.names
    )
    ids = list(truth)
    pipeline = _pipeline(config, ensemble_map, calibrators)
    calibrated = pipeline.calibrate({m: [p[i] for i in ids] for m, p in per_member.items()})
    fused = None
    refusal = _fused_refusal(args, config, per_member)
    if refusal:
        print(refusal)
    elif refusal is None:
        fused = _fit_fused(pipeline, _member_names(config), per_member, calibrated, ids, truth, args)
        calibrators.fused = fused[2]
        calibrators.fused_fit = {"policy": pipeline.describe(), "members": _member_names(config)}
    out = run_dir("calibrate", args.name or config.name, args.runs)
    path = calibrators.save(out / "calibrators.json")
    _report(out, args, per_member, calibrated, fused, ids, truth, CalibrationProtocol(iou_thr=args.iou_thr))
    print(f"calibrators written to {path}")
    print("add to the ensemble config:")
    if calibrators.fused is not None:
        print(f"fused_calibrator: {path}")
    print("members:")
    for member in per_member:
        print(f"  - name: {member}\n    calibrator: {path}")
    return 0


def _pipeline(config: Any, ensemble_map: Any, calibrators: Any) -> Any:
    """The ensemble's pipeline (its policy and member weights, as :class:`~fusion.Ensemble` builds them) with the
    member calibrators just fitted; no TTA (a config with TTA gets no fused calibrator)."""
    from fusion.ensemble import member_fusion_weights
    from fusion.fuse import make_policy
    from fusion.pipeline import Calibration, Pipeline

    members = config.members
    weights = member_fusion_weights(
        [m.name for m in members],
        [m.weight for m in members],
        [m.class_weights for m in members],
        ensemble_map,
    )
    policy = make_policy(config.fusion, weights=weights)
    return Pipeline(policy, Calibration(dict(calibrators), tuple(ensemble_map.names)), ensemble_map)


def _report(
    out: Path,
    args: argparse.Namespace,
    per_member: dict[str, dict[Any, Any]],
    calibrated: dict[str, list[Any]],
    fused: tuple[list[Any], list[Any], Any] | None,
    ids: list[Any],
    truth: dict[Any, Any],
    protocol: Any,
) -> None:
    """Print the D-ECE before/after of every member (and of the fused output) and write ``report.json``."""
    from fusion.calibration.dece import detection_ece
    from fusion.calibration.sets import calibrate_fused
    from fusion.io import atomic_write_json

    report: dict[str, Any] = {
        "protocol": protocol.model_dump(),
        "method": args.method,
        "per_class": args.per_class,
        "members": {},
    }
    print(f"D-ECE on the fitting set ({protocol.describe()}):")
    for member, preds in per_member.items():
        before = detection_ece(preds, truth, protocol)
        after = detection_ece(dict(zip(ids, calibrated[member])), truth, protocol)
        report["members"][member] = {
            "D-ECE before": before.as_dict()["value"],
            "D-ECE after": after.as_dict()["value"],
        }
        print(f"  {member:<16} {before.value:.4f} -> {after.value:.4f}  ({before.count} detections)")
    if fused is not None:
        raw, members_calibrated, calibrator = fused
        before = detection_ece(dict(zip(ids, raw)), truth, protocol)
        middle = detection_ece(dict(zip(ids, members_calibrated)), truth, protocol)
        after = detection_ece(
            dict(zip(ids, calibrate_fused(members_calibrated, calibrator))), truth, protocol
        )
        report["fused"] = {
            "D-ECE before": before.as_dict()["value"],
            "D-ECE members calibrated": middle.as_dict()["value"],
            "D-ECE after": after.as_dict()["value"],
        }
        print(
            f"  {'fused':<16} {before.value:.4f} -> {middle.value:.4f} (members calibrated) -> {after.value:.4f}"
        )
    atomic_write_json(out / "report.json", report)


def _fit_fused(
    pipeline: Any,
    order: list[str],
    per_member: dict[str, dict[Any, Any]],
    calibrated: dict[str, list[Any]],
    ids: list[Any],
    truth: dict[Any, Any],
    args: argparse.Namespace,
) -> tuple[list[Any], list[Any], Any]:
    """Fuse raw and calibrated members with the ensemble's pipeline; fit the fused output's calibrator.

    Members are fused in the config's order (the ensemble's fusion order). Returns the raw members' fusion, the
    calibrated members' fusion (one Detections per image of ``ids``) and the calibrator fitted on the latter, which
    is what the ensemble's ``fused_calibrator`` maps at prediction time.
    """
    from fusion.calibration import fit_member_calibrator

    raw = pipeline.uncalibrated().fuse({n: [per_member[n][i] for i in ids] for n in order})
    fused = pipeline.fuse({n: calibrated[n] for n in order})
    try:
        calibrator = fit_member_calibrator(
            dict(zip(ids, fused)), truth, args.method, args.per_class, args.iou_thr
        )
    except ValueError as exc:
        raise ValueError(f"fused output: {exc}") from None
    return raw, fused, calibrator
