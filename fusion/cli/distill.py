"""``fusion distill``: distill a teacher (a trained DETR, or a whole ensemble) into a student (DETR or YOLO).

Writes ``runs/distill/<name>/`` (what ``fusion train`` writes, the teacher's fingerprint or cached fused
detections, and ``report.md``); ``--resume`` continues an interrupted run and refuses a changed teacher.
"""

from __future__ import annotations

import argparse

from fusion.cli.train import add_job_arguments, job_overrides

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
        "--unlabeled", default=None, metavar="DIR", help="unlabelled images for the ensemble's pseudo-labels"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the teacher/student report")
    add_job_arguments(parser, "distill")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fusion.training.distillation import distill

    overrides = job_overrides(args, "distill", **{"--unlabeled": args.unlabeled})
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
