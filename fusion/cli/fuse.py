"""``fusion fuse``: fuse saved COCO results files (one per member) and score members and the fused output."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "parse_policy", "run"]


def parse_policy(tokens: list[str] | None) -> tuple[str | None, dict[str, Any]]:
    """``["wbf", "iou_thr=0.6", "weights=[2,1]"]`` -> ``("wbf", {"iou_thr": 0.6, "weights": [2, 1]})``.

    Values are YAML scalars or flow collections (never evaluated as code). A leading ``key=value`` means WBF.
    """
    from fusion.config import parse_yaml, shorten

    if not tokens:
        return None, {}
    name = None if "=" in tokens[0] else tokens[0]
    params: dict[str, Any] = {}
    for token in tokens[1:] if name else tokens:
        key, sep, raw = token.partition("=")
        if not sep or not key:
            raise ValueError(f"--policy: expected key=value after the policy name, got {token!r}")
        if key == "type":
            raise ValueError(
                "--policy: give the policy's name as the first word (e.g. --policy nms), not type=..."
            )
        params[key] = parse_yaml(raw, f"--policy {key}={shorten(raw)}")
    return name or "wbf", params


def add_common(parser: argparse.ArgumentParser, annotations_required: bool = True) -> None:
    """Options shared by ``fuse``, ``score`` and ``tune``."""
    parser.add_argument(
        "--annotations", required=annotations_required, help="COCO annotation JSON (ground truth)"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="COCO evaluation backend: auto (fastest installed), hotcoco, faster-coco-eval, pycocotools",
    )
    parser.add_argument("--name", default=None, help="run name (outputs in <project>/<verb>/<name>)")
    parser.add_argument("--project", default="runs", help="root folder of run outputs (default runs)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def add_calibrators(parser: argparse.ArgumentParser) -> None:
    """``--calibrators``, shared by ``fuse`` and ``tune`` (``score`` takes them from the ensemble config)."""
    parser.add_argument(
        "--calibrators",
        default=None,
        metavar="JSON",
        help="calibrators.json from `fusion calibrate`: each member named in it (by file stem) is calibrated "
        "before fusion; metrics then also report the uncalibrated fusion",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fuse",
        help="fuse saved COCO results files per image and score members and the fused output",
        description="Fuse saved COCO results files (one per member, named after the file stem) image by image "
        "and evaluate every member and the fused output. No models or images are needed: image sizes come from "
        "the annotations. Without --policy: WBF at ensemble-boxes' defaults (iou_thr 0.55, skip_box_thr 0.0, "
        "conf_type avg, equal weights).",
    )
    parser.add_argument(
        "predictions", nargs="*", help="COCO results files (.json list or .jsonl), one per member"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="an ensemble config whose members are all results files (e.g. fusion tune's best.yaml): its files, "
        "policy, weights and calibrators are used (instead of the positional files, --policy, --calibrators)",
    )
    add_common(parser)
    parser.add_argument(
        "--policy",
        nargs="+",
        metavar="NAME_OR_KEY=VALUE",
        help="fusion policy and parameters, e.g. --policy wbf iou_thr=0.6 weights=[2,1,1]",
    )
    parser.add_argument(
        "--pred-classes",
        default=None,
        help="vocabulary of the files' category ids when they are not the annotations' "
        "(e.g. coco80 for ultralytics' 0..79); translated by class name",
    )
    parser.add_argument("--device", default="cpu", help="device fusion runs on (cpu, cuda)")
    add_calibrators(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fusion.ensemble import resolve_device
    from fusion.scoring.fuse_files import fuse_files

    resolve_device(args.device, "--device")  # said before any file is read
    if args.config is not None:
        given = [
            o
            for o, v in (
                ("files", args.predictions),
                ("--policy", args.policy),
                ("--calibrators", args.calibrators),
            )
            if v
        ]
        if given:
            raise ValueError(f"--config names the files, policy and calibrators; drop {', '.join(given)}")
        from fusion.scoring.config_files import fuse_config

        fuse_config(
            args.config,
            args.annotations,
            name=args.name,
            root=args.project,
            backend=args.backend,
            device=args.device,
            plots=not args.no_plots,
        )
        return 0
    if not args.predictions:
        raise ValueError("give the members' results files, or --config with an ensemble of results files")
    policy, params = parse_policy(args.policy)
    fuse_files(
        args.predictions,
        args.annotations,
        policy,
        params,
        name=args.name or "fuse",
        root=args.project,
        backend=args.backend,
        pred_classes=args.pred_classes,
        plots=not args.no_plots,
        device=args.device,
        calibration=args.calibrators,
    )
    return 0
