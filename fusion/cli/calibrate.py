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


def _read_config(source: str) -> dict[str, Any]:
    """Only the fields calibration needs (name, classes, members' names and weights, fusion, TTA): no detector plug-in
    is imported."""
    from fusion.classes import CONFIGS_DIR
    from fusion.config import load_yaml

    path = Path(source)
    if not path.exists() and not path.suffix:
        path = CONFIGS_DIR / "ensembles" / f"{source}.yaml"
    data = load_yaml(path)
    members = data.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError(f"{path}: members: expected a non-empty list")
    names = []
    for index, member in enumerate(members):
        if not isinstance(member, dict) or not isinstance(member.get("name"), str):
            raise ValueError(f"{path}: members[{index}].name: missing or not a string")
        names.append(member["name"])
    if not isinstance(data.get("name"), str):
        raise ValueError(f"{path}: name: missing or not a string")
    fusion = data.get("fusion", {"type": "wbf"})
    if not isinstance(fusion, str | dict):
        raise ValueError(f"{path}: fusion: expected a policy name or a mapping, got {type(fusion).__name__}")
    tta = data.get("tta") or {}
    return {
        "path": path,
        "name": data["name"],
        "classes": str(data.get("classes", "coco80")),
        "members": names,
        "weights": [float(m.get("weight", 1.0)) for m in members],
        "class_weights": [m.get("class_weights") for m in members],
        "fusion": {"type": fusion} if isinstance(fusion, str) else {"type": "wbf", **fusion},
        "tta": bool(tta.get("hflip") or tta.get("scales")) if isinstance(tta, dict) else False,
    }


def _prediction_paths(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Path]:
    given: dict[str, Path] = {}
    for item in args.predictions:
        member, sep, path = item.partition("=")
        if not sep or not member or not path:
            raise ValueError(f"--predictions {item!r}: expected MEMBER=PATH")
        if member not in config["members"]:
            raise ValueError(
                f"--predictions {item!r}: no member {member!r} in {config['path']} (members: {config['members']})"
            )
        given[member] = Path(path)
    if given:
        return given
    cache = Path(args.runs) / "score" / config["name"] / "cache"
    paths = {m: cache / f"{m}.jsonl" for m in config["members"]}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"no scoring cache for member(s) at {', '.join(missing)}; run `fusion score` first or pass "
            "--predictions MEMBER=PATH for each member"
        )
    return paths


def _run(args: argparse.Namespace) -> int:
    from fusion.calibration import fit_calibrator_set
    from fusion.calibration.dece import CalibrationProtocol, detection_ece
    from fusion.classes import ClassMap
    from fusion.coco.annotations import load_annotations
    from fusion.coco.predictions import load_predictions
    from fusion.io import run_dir

    config = _read_config(args.config)
    annotations = Path(args.annotations)
    gt = load_annotations(annotations)  # validated: ids, categories, boxes (errors name the list and index)
    data_map = gt.class_map
    ensemble_map = ClassMap.load(config["classes"])
    # Everything is matched in the ensemble's vocabulary (the labels calibrators see at prediction time); dataset
    # classes the ensemble lacks become label -1, which no detection can match.
    to_ensemble = data_map.translation_to(ensemble_map, strict=False)
    truth = gt.detections()
    truth = {i: g.replace(labels=to_ensemble[g.labels]) for i, g in truth.items()}
    sizes = {i: g.image_size for i, g in truth.items()}

    per_member = {}
    for member, path in _prediction_paths(args, config).items():
        # checked against the annotations: image and category ids they lack are errors naming the file
        preds = load_predictions(path, gt).to_detections(data_map, sizes, truth.keys())
        bad = {i: d for i, d in preds.items() if bool((to_ensemble[d.labels] < 0).any())}
        if bad:
            raise ValueError(
                f"{path}: image {next(iter(bad))!r} has detections of a class the ensemble vocabulary lacks"
            )
        per_member[member] = {i: d.replace(labels=to_ensemble[d.labels]) for i, d in preds.items()}

    calibrators = fit_calibrator_set(
        per_member, truth, args.method, args.per_class, args.iou_thr, classes=ensemble_map.names
    )
    from fusion.calibration.sets import apply_calibrators

    ids = list(truth)
    calibrated = apply_calibrators({m: [p[i] for i in ids] for m, p in per_member.items()}, calibrators)
    fused_raw = fused_calibrated = None
    missing = [m for m in config["members"] if m not in per_member]
    if args.no_fused:
        pass
    elif config["tta"]:
        print(
            "no fused calibrator: the config uses TTA, whose passes the scoring cache does not hold separately"
        )
    elif missing:
        # A calibrator fitted on the fusion of some members would be applied to the fusion of all of them.
        print(
            f"no fused calibrator: no predictions for member(s) {missing}, so the ensemble's fusion cannot be made"
        )
    else:
        fused_raw, fused_calibrated, calibrators.fused = _fit_fused(
            config, ensemble_map, per_member, calibrated, ids, truth, args
        )
    out = run_dir("calibrate", args.name or config["name"], args.runs)
    path = calibrators.save(out / "calibrators.json")

    protocol = CalibrationProtocol(iou_thr=args.iou_thr)
    report = {
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
    if fused_raw is not None and fused_calibrated is not None and calibrators.fused is not None:
        from fusion.calibration.sets import calibrate_fused

        before = detection_ece(dict(zip(ids, fused_raw)), truth, protocol)
        middle = detection_ece(dict(zip(ids, fused_calibrated)), truth, protocol)
        after = detection_ece(
            dict(zip(ids, calibrate_fused(fused_calibrated, calibrators.fused))), truth, protocol
        )
        report["fused"] = {
            "D-ECE before": before.as_dict()["value"],
            "D-ECE members calibrated": middle.as_dict()["value"],
            "D-ECE after": after.as_dict()["value"],
        }
        print(
            f"  {'fused':<16} {before.value:.4f} -> {middle.value:.4f} (members calibrated) -> {after.value:.4f}"
        )
    from fusion.io import atomic_write_json

    atomic_write_json(out / "report.json", report)
    print(f"calibrators written to {path}")
    print("add to the ensemble config:")
    if calibrators.fused is not None:
        print(f"fused_calibrator: {path}")
    print("members:")
    for member in per_member:
        print(f"  - name: {member}\n    calibrator: {path}")
    return 0


def _fit_fused(
    config: dict[str, Any],
    ensemble_map: Any,
    per_member: dict[str, dict[Any, Any]],
    calibrated: dict[str, list[Any]],
    ids: list[Any],
    truth: dict[Any, Any],
    args: argparse.Namespace,
) -> tuple[list[Any], list[Any], Any]:
    """Fuse raw and calibrated members with the config's policy and weights; fit the fused output's calibrator.

    Returns the raw members' fusion, the calibrated members' fusion (one Detections per image of ``ids``) and the
    calibrator fitted on the latter, which is what the ensemble's ``fused_calibrator`` maps at prediction time.
    """
    from fusion.calibration import fit_member_calibrator
    from fusion.ensemble import member_fusion_weights
    from fusion.fuse import fuse_batch, make_policy

    names = list(per_member)
    order = [config["members"].index(n) for n in names]
    weights = member_fusion_weights(
        names,
        [config["weights"][k] for k in order],
        [config["class_weights"][k] for k in order],
        ensemble_map,
    )
    try:
        policy = make_policy(config["fusion"], weights=weights)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{config['path']}: fusion: {exc}") from None
    raw = fuse_batch([[per_member[n][i] for n in names] for i in ids], policy)
    fused = fuse_batch([list(per_image) for per_image in zip(*(calibrated[n] for n in names))], policy)
    try:
        calibrator = fit_member_calibrator(
            dict(zip(ids, fused)), truth, args.method, args.per_class, args.iou_thr
        )
    except ValueError as exc:
        raise ValueError(f"fused output: {exc}") from None
    return raw, fused, calibrator
