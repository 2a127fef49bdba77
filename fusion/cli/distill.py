"""``fusion distill``: distill a teacher (a trained DETR, or a whole ensemble) into a student (DETR or YOLO).

Writes ``runs/distill/<name>/`` (what ``fusion train`` writes, the teacher's fingerprint or cached fused
detections, and ``report.md``); ``--resume`` continues an interrupted run and refuses a changed teacher.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distill a DETR or an ensemble teacher into a DETR or YOLO student (resumable)",
        description="Train the config's student from its teacher (a member config with trained weights, or "
        "`teacher.ensemble`: an ensemble config whose fused detections become extra targets and pseudo-labels) "
        "and write runs/distill/<name>/ with the student's member YAML and a report putting teacher(s), fused "
        "ensemble and student side by side. Items of the form dotted.path=value override the config.",
    )
    parser.add_argument("--config", default=None, help="distillation config YAML (or a configs/distill name)")
    parser.add_argument(
        "--resume", default=None, metavar="RUN", help="continue runs/distill/<name> from its checkpoint"
    )
    parser.add_argument(
        "--unlabeled", default=None, metavar="DIR", help="unlabelled images for the ensemble's pseudo-labels"
    )
    parser.add_argument("--name", default=None, help="run name (default: the config's name)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the config's)")
    parser.add_argument("--project", default="runs", help="root folder of runs (default: runs)")
    parser.add_argument("--no-report", action="store_true", help="skip the teacher/student report")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=3"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fusion.training.distill import distill

    if (args.config is None) == (args.resume is None):
        raise ValueError("give either --config C (a new run) or --resume runs/distill/<name>")
    overrides = list(args.overrides)
    if args.resume is not None and (overrides or args.name or args.device or args.unlabeled):
        raise ValueError(
            "--resume continues a run with its own config.yaml: no overrides, --name, --device or --unlabeled"
        )
    if args.name is not None:
        overrides.append(f"name={args.name}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    summary = distill(
        args.config,
        overrides,
        root=args.project,
        resume=args.resume,
        unlabeled=args.unlabeled,
        report=not args.no_report,
    )
    if summary is not None:
        print(f"distilled -> {summary['out']}/weights/best.member.yaml")
        if "report" in summary:
            print(f"report -> {summary['out']}/report.md")
    return 0
