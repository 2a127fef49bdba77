"""``fusion train``: train an ensemble member (DETR, torchvision, ultralytics) on a COCO dataset.

Writes ``runs/train/<name>/`` (weights, checkpoint, metrics, plots, resolved config); ``--resume`` continues an
interrupted run from its last checkpoint. Under ``torchrun --nproc_per_node N -m fusion train ...`` the global
batch is split over the ranks.
"""

from __future__ import annotations

import argparse

__all__ = ["add_job_arguments", "add_parser", "job_overrides", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a member model on a COCO dataset (resumable, torchrun-ready)",
        description="Train the config's `model` (an ensemble member config) on COCO-format data and write "
        "runs/train/<name>/weights/{best,last}.safetensors with the member YAML that loads them back. Items of "
        "the form dotted.path=value override the config.",
    )
    parser.add_argument(
        "--config", default=None, help="training config YAML (or a shipped configs/train name)"
    )
    add_job_arguments(parser, "train")
    parser.set_defaults(run=run)


def add_job_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The options every training job (``train``, ``distill``) shares."""
    parser.add_argument(
        "--resume", default=None, metavar="RUN", help=f"continue runs/{verb}/<name> from its checkpoint"
    )
    parser.add_argument("--name", default=None, help="run name (default: the config's name)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the config's)")
    parser.add_argument("--project", default="runs", help="root folder of runs (default: runs)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=3"
    )


def job_overrides(args: argparse.Namespace, verb: str, **new_run_only: object) -> list[str]:
    """The config overrides of a training job's command line (``--name``, ``--device`` included).

    Raises:
        ValueError: neither or both of ``--config`` and ``--resume``, or new-run options given with ``--resume``
            (``new_run_only``: further options that only a new run takes, by their flag).
    """
    if (args.config is None) == (args.resume is None):
        raise ValueError(f"give either --config C (a new run) or --resume runs/{verb}/<name>")
    overrides = list(args.overrides)
    given = {"overrides": overrides, "--name": args.name, "--device": args.device, **new_run_only}
    if args.resume is not None and any(given.values()):
        raise ValueError(
            f"--resume continues a run with its own config.yaml: no {', '.join(k for k in given)}"
        )
    if args.name is not None:
        overrides.append(f"name={args.name}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    return overrides


def run(args: argparse.Namespace) -> int:
    from fusion.training.loop import train

    overrides = job_overrides(args, "train")
    summary = train(args.config, overrides, root=args.project, resume=args.resume)
    if summary is not None and "best" in summary:
        where = f"{summary['out']}/weights/best.member.yaml"
        print(f"best {summary['best']:.4f} (epoch {summary['best_epoch']}) -> {where}")
    elif summary is not None:
        print(f"trained -> {summary['out']}")
    return 0
