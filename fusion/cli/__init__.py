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
    writing) are printed as one clear line, without a traceback, and give exit status 2 (messages longer than
    ``MAX_MESSAGE`` are cut); Ctrl-C gives status 130. Set ``FUSION_DEBUG=1`` for the traceback.
    """
    import os
    import warnings

    from fusion.io import RunLockedError
    from fusion.registry import UnknownNameError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # Warnings are for the user here: one line each, without the source line that raised them.
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_: f"warning: {message}\n"
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError, UnknownNameError, KeyError, RunLockedError) as exc:
        if os.environ.get("FUSION_DEBUG"):
            raise
        print(f"fusion {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("FUSION_DEBUG"):
            raise
        # Runs checkpoint as they go: the same command resumes `score` and `predict`.
        print(f"\nfusion {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


# The longest error message printed: a message echoing a huge input is cut, never printed whole.
MAX_MESSAGE = 4000


def _message(exc: BaseException) -> str:
    """What the user reads: the message alone, an OS error as ``<file>: <reason>``, never more than MAX_MESSAGE."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, IsADirectoryError) and exc.filename is not None:
        text = f"{str(exc.filename)[:300]} is a folder; a file was expected"
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{str(exc.filename)[:300]}: {exc.strerror}"
    else:
        text = str(exc)
    return text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}... ({len(text)} characters; cut)"


if __name__ == "__main__":
    sys.exit(main())
