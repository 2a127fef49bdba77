"""``fusion score``: run an ensemble's members over a COCO dataset, fuse, and score members and fused output."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fusion.cli.fuse import add_common

    parser = subparsers.add_parser(
        "score",
        help="COCO mAP of every member and of the fused ensemble on a dataset",
        description="Run every member once over a COCO dataset (predictions cached per member; an interrupted run "
        "resumes from the cache), fuse with the config's policy, evaluate members and fused output. Under torchrun "
        "each rank runs its shard of images and rank 0 evaluates.",
    )
    parser.add_argument("--config", required=True, help="ensemble config YAML (or a shipped config name)")
    parser.add_argument(
        "--images",
        default=None,
        help="folder holding the images' file_name paths (not needed when every member is a results file)",
    )
    add_common(parser)
    parser.add_argument("--device", default=None, help="override the config's device")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: the config's)"
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes decoding images")
    parser.add_argument("--no-resume", action="store_true", help="start afresh in a new run folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for randomly initialised members")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. fusion.iou_thr=0.6"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fusion.scoring.score import score

    if args.images is None:
        # Every member a saved results file (e.g. fusion tune's best.yaml): no images or models to run.
        from fusion.scoring.config_files import fuse_config

        fuse_config(
            args.config,
            args.annotations,
            command="score",
            name=args.name,
            root=args.project,
            overrides=args.overrides,
            backend=args.backend,
            device=args.device or "cpu",
            plots=not args.no_plots,
        )
        return 0
    score(
        args.config,
        args.annotations,
        args.images,
        name=args.name,
        root=args.project,
        overrides=args.overrides,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        resume=not args.no_resume,
        plots=not args.no_plots,
        seed=args.seed,
    )
    return 0
