"""``fusion tune``: search fusion settings that maximise fused COCO AP on a validation set."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fusion.cli.fuse import add_calibrators, add_common

    parser = subparsers.add_parser(
        "tune",
        help="search fusion policy, thresholds and member weights that maximise fused AP",
        description="Search the fusion policy, iou_thr, skip_box_thr, conf_type / quorum and member weights on saved "
        "member results files (Latin-hypercube exploration, then Nelder-Mead polishing; see fusion.tuning.search). "
        "Writes the best ensemble config (best.yaml) and the table of trials (trials.csv).",
    )
    parser.add_argument("predictions", nargs="+", help="validation-set COCO results files, one per member")
    add_common(parser)
    parser.add_argument(
        "--policies", default="wbf", help="comma-separated policies to search (e.g. wbf,voting,nms)"
    )
    parser.add_argument("--trials", type=int, default=40, help="number of fusion settings to evaluate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pred-classes", default=None, help="vocabulary of the files' category ids (e.g. coco80)"
    )
    add_calibrators(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fusion.tuning.search import tune_files

    tune_files(
        args.predictions,
        args.annotations,
        policies=[p.strip() for p in args.policies.split(",") if p.strip()],
        trials=args.trials,
        seed=args.seed,
        backend=args.backend,
        name=args.name or "tune",
        root=args.project,
        pred_classes=args.pred_classes,
        calibrators=args.calibrators,
    )
    return 0
