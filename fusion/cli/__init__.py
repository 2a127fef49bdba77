"""The ``fusion`` command line: one module per command, each with ``add_parser(subparsers)``.

Command modules import their heavy dependencies inside their ``run`` function so that ``fusion --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import fusion

__all__ = ["build_parser", "main"]

# Explicit, ordered list of command modules (no discovery magic): add yours here.
COMMAND_MODULES = (
    "fusion.cli.info",
    "fusion.cli.predict",
    "fusion.cli.fuse",
    "fusion.cli.score",
    "fusion.cli.tune",
    "fusion.cli.calibrate",
    "fusion.cli.demo",
    "fusion.cli.render",
    "fusion.cli.train",
    "fusion.cli.distill",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion",
        description="Ensemble and model-fusion object detection: run detectors, fuse their boxes, score on COCO.",
    )
    parser.add_argument("--version", action="version", version=f"detection-fusion {fusion.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusion`` console script; returns the exit status.

    Errors users can fix (bad config, missing or unreadable file, unknown name, a run folder another process is
    writing) are printed as one clear line, without a
    traceback, and give exit status 2; set ``FUSION_DEBUG=1`` for the traceback.
    """
    import os

    from fusion.io import RunLockedError
    from fusion.registry import UnknownNameError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError, UnknownNameError, KeyError, RunLockedError) as exc:
        if os.environ.get("FUSION_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fusion {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
