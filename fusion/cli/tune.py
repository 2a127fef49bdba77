"""``fusion tune``: search fusion settings that maximise fused COCO AP, measured on held-out images."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fusion.cli.calibrate import add_protocol
    from fusion.cli.fuse import add_calibrators, add_common

    parser = subparsers.add_parser(
        "tune",
        help="search fusion policy, thresholds and member weights that maximise fused AP (held-out)",
        description="Search the fusion policy, iou_thr, skip_box_thr, conf_type / quorum and member weights on saved "
        "member results files (Latin-hypercube exploration, then Nelder-Mead polishing; see fusion.tuning.search). "
        "Each policy gets the same budget; each is searched on every fold's fit images and scored on its held-out "
        "images (default 5-fold), against the default config and the best member. Writes best.yaml (the winner, "
        "searched on all images), trials.csv, metrics.json, report.md and trials.png.",
    )
    parser.add_argument("predictions", nargs="+", help="validation-set COCO results files, one per member")
    add_common(parser, annotations_required=False)
    parser.add_argument(
        "--policies", default="wbf", help="comma-separated policies to search (e.g. wbf,voting,nms)"
    )
    parser.add_argument(
        "--trials", type=int, default=40, help="fusion settings evaluated per policy and fold"
    )
    parser.add_argument(
        "--pred-classes", default=None, help="vocabulary of the files' category ids (e.g. coco80)"
    )
    add_calibrators(parser)
    add_protocol(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fusion.tuning.files import tune_files

    tune_files(
        args.predictions,
        args.annotations,
        policies=args.policies.split(","),
        trials=args.trials,
        seed=args.seed,
        backend=args.backend,
        name=args.name or "tune",
        root=args.project,
        pred_classes=args.pred_classes,
        calibrators=args.calibrators,
        folds=args.folds,
        holdout=args.holdout,
        val=args.val,
        test=args.test,
        plots=not args.no_plots,
    )
    return 0
