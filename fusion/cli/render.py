"""``fusion render``: render a COCO-format dataset of shapes (train/val/test/unlabeled) under ``runs/render/<name>``.

Outputs: ``<split>/annotations.json`` and ``<split>/images/*.png`` per split, ``manifest.json`` (written last) and
``preview.png`` (16 images of the first labelled split with their boxes). The same seed and counts give the same
files; an interrupted render is resumed by running the same command with ``--exist-ok``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render a COCO-format dataset of shapes for training and testing detectors",
        description=__doc__.splitlines()[0].replace("``", ""),
    )
    parser.add_argument("--name", default="shapes", help="run name (outputs in <project>/render/<name>)")
    parser.add_argument("--project", default="runs", help="root folder of runs (default: runs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    for split, default in (("train", 4000), ("val", 500), ("test", 500), ("unlabeled", 0)):
        parser.add_argument(
            f"--{split}", type=int, default=default, help=f"{split} images (default {default})"
        )
    parser.add_argument("--workers", type=int, default=0, help="rendering processes (default 0: this one)")
    parser.add_argument(
        "--compress-level", type=int, default=0, help="PNG compression 0-9 (default 0: same bytes everywhere)"
    )
    parser.add_argument("--no-preview", action="store_true", help="skip preview.png")
    parser.add_argument(
        "--exist-ok",
        action="store_true",
        help="reuse (and resume) <project>/render/<name> instead of <name>2, ...",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fusion.io import run_dir
    from fusion.synthetic.render import UNLABELED, render_dataset
    from fusion.synthetic.render_preview import write_preview

    if args.seed < 0:
        raise ValueError(f"--seed: must be non-negative, got {args.seed}")
    splits = {"train": args.train, "val": args.val, "test": args.test, UNLABELED: args.unlabeled}
    for split, count in splits.items():
        if count < 0:
            raise ValueError(f"--{split}: must be non-negative, got {count}")
    if not any(splits.values()):
        raise ValueError("--train, --val, --test and --unlabeled are all 0: nothing to render")
    if not 0 <= args.compress_level <= 9:
        raise ValueError(f"--compress-level: must be in 0..9, got {args.compress_level}")
    if args.size < 16:
        raise ValueError(f"--size: must be at least 16, got {args.size}")
    out = run_dir("render", args.name, args.project, exist_ok=args.exist_ok)
    paths = render_dataset(
        out,
        seed=args.seed,
        splits=splits,
        image_size=args.size,
        compress_level=args.compress_level,
        workers=args.workers,
        progress=True,
    )
    labelled = [s for s in paths if s != UNLABELED]
    if labelled and not args.no_preview:
        # Tiles of about 256 px: small images enlarged so that 6-px objects show, large ones as they are.
        write_preview(out / "preview.png", *paths[labelled[0]], scale=max(1, 256 // args.size))
    for split, (ann_path, images) in paths.items():
        print(f"{split}: {ann_path} (images in {images})")
    print(
        f"rendered into {Path(out)}"
        + ("" if args.no_preview or not labelled else f"; look at {out / 'preview.png'}")
    )
    return 0
