"""``fusion demo``: the shipped, trained members on a freshly rendered test split (:mod:`fusion.demo.real`).

``fusion demo --simulated`` (:func:`run_demo`) is the fusion-only demo: it generates a COCO dataset and three
simulated members, fuses them and scores members and fused output. It needs no weights, images or downloads: the
data come from :mod:`fusion.synthetic` and are written next to the scoring outputs, so ``fusion fuse`` can be
rerun on them with another policy. ``fusion demo --retrain`` reproduces the shipped members
(:mod:`fusion.demo.retrain`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "run_demo"]

SIMULATED_IMAGES = 200  # generated boxes only: cheap
REAL_IMAGES = 100  # six networks on 128-px images: well under two minutes on 2 CPU cores


def run_demo(
    images: int = 200,
    seed: int = 0,
    *,
    name: str = "demo",
    project: str | Path = "runs",
    policy: Any = None,
    params: Mapping[str, Any] | None = None,
    backend: str = "auto",
    plots: bool = True,
    verbose: bool = True,
) -> Path:
    """Generate data, fuse the simulated members and score them all into ``<project>/demo/<name>/``.

    Args:
        images: Number of generated images.
        seed: Random seed of the dataset and the members; the same seed gives the same files.
        name: Run name; an existing folder is never overwritten (``name2``, ``name3``, ... instead).
        project: Root folder of run outputs.
        policy: Fusion policy (as for :func:`fusion.scoring.fuse_files.fuse_files`); ``None`` = WBF defaults.
        params: Policy parameters.
        backend: COCO evaluation backend.
        plots: Write the PNG plots.
        verbose: Print the table, the folder and what to try next.

    Returns:
        The run folder: ``data/annotations.json``, ``data/<member>.json`` and the scoring outputs.
    """
    from fusion.io import atomic_write_json, run_dir
    from fusion.scoring.fuse_files import fuse_files
    from fusion.synthetic import default_members, make_coco_ground_truth, simulate_member

    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    out = run_dir("demo", name, project)
    data = out / "data"
    ground_truth = make_coco_ground_truth(images, seed=seed)
    annotations = atomic_write_json(data / "annotations.json", ground_truth, indent=None)
    paths = [
        # Member k draws from seed + 1 + k: independent of the dataset's stream and of each other.
        atomic_write_json(
            data / f"{member}.json", simulate_member(ground_truth, spec, seed + 1 + k), indent=None
        )
        for k, (member, spec) in enumerate(default_members())
    ]
    if verbose:
        print(
            f"generated {images} images, {len(ground_truth['annotations'])} objects, members: "
            + ", ".join(p.stem for p in paths)
        )
    fuse_files(paths, annotations, policy, params, backend=backend, plots=plots, verbose=verbose, out_dir=out)
    if verbose:
        import shlex

        files = " ".join(shlex.quote(str(p)) for p in paths)
        print(
            f"try another policy: fusion fuse {files} --annotations {shlex.quote(str(annotations))} "
            f"--project {shlex.quote(str(project))} --policy soft_nms"
        )
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the shipped trained detectors on rendered test images, fuse them and score everything",
        description="Render a fresh test split of shapes (--seed), run the shipped members (configs/ensembles/"
        "demo.yaml: YOLO11n, YOLOv8n, SSDlite, a fast DETR and a YOLO11n student distilled from their fused ensemble) "
        "through the ensemble, fuse them (WBF, tuned on validation data) and score every member and the fused output; writes the report, plots and picture.png under "
        "<project>/demo/<name>/. --simulated: three simulated detectors that err in different ways instead (sharp: "
        "over-confident; careful: under-confident, misses more; noisy: loose boxes, wrong labels), no networks. "
        "--retrain: reproduce the shipped members from scratch (CPU hours; resumable).",
    )
    parser.add_argument(
        "--simulated",
        action="store_true",
        help="simulated members on generated boxes (no images, no networks)",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="reproduce every shipped member file (render, train, distill, package; resumable; CPU hours)",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"number of test images (default {REAL_IMAGES}; --simulated: {SIMULATED_IMAGES})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of data and members (default 0)")
    parser.add_argument("--name", default="demo", help="run name (outputs in <project>/demo/<name>)")
    parser.add_argument("--project", default="runs", help="root folder of run outputs (default runs)")
    parser.add_argument(
        "--policy",
        nargs="+",
        metavar="NAME_OR_KEY=VALUE",
        help="fusion policy and parameters as for fusion fuse (default: the demo config's WBF, tuned on validation "
        "data; --simulated: WBF at ensemble-boxes' defaults)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="COCO evaluation backend: auto (fastest installed), hotcoco, faster-coco-eval, pycocotools",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the config's)")
    parser.add_argument(
        "--assets", default=None, help="folder of the member files and MANIFEST.json (default: the package's)"
    )
    parser.add_argument(
        "--work",
        default="runs/demo-retrain",
        help="--retrain: working folder of the data and training runs (default runs/demo-retrain)",
    )
    parser.set_defaults(run=run)


def _nothing_shipped(assets: str | None) -> bool:
    """True when this build ships no trained members at all (no manifest in the package's assets folder).

    The README's first command must work on a fresh clone: until the members are trained and committed, the
    simulated demo runs instead, and a notice says so. A manifest that is there but whose files are missing or
    changed is an error (``fusion demo`` refuses damaged members), and so is a missing ``--assets`` folder.
    """
    from fusion.demo.assets import ASSETS_DIR, MANIFEST

    if assets is not None or (Path(ASSETS_DIR) / MANIFEST).exists():
        return False
    print(
        f"fusion demo: this build ships no trained members yet ({Path(ASSETS_DIR) / MANIFEST} is absent), so the "
        "simulated-member demo runs instead; `fusion demo --retrain` trains and packages the real members "
        "(CPU hours, resumable)",
        file=sys.stderr,
    )
    return True


def run(args: argparse.Namespace) -> int:
    from fusion.cli.fuse import parse_policy

    if args.simulated and args.retrain:
        raise ValueError("--simulated and --retrain exclude each other")
    if args.retrain:
        from fusion.demo.retrain import StepFailedError, retrain

        try:
            retrain(args.work, device=args.device, assets_dir=args.assets)
        except (
            StepFailedError
        ) as exc:  # the job printed its own output; one line says which step and how to resume
            print(f"fusion demo --retrain: error: {exc}", file=sys.stderr)
            return 1
        return 0
    policy, params = parse_policy(args.policy)
    common = {
        "name": args.name,
        "project": args.project,
        "policy": policy,
        "params": params,
        "backend": args.backend,
        "plots": not args.no_plots,
    }
    if args.simulated or _nothing_shipped(args.assets):
        run_demo(SIMULATED_IMAGES if args.images is None else args.images, args.seed, **common)
        return 0
    from fusion.demo.assets import ASSETS_DIR
    from fusion.demo.real import run_real_demo

    run_real_demo(
        REAL_IMAGES if args.images is None else args.images,
        args.seed,
        **common,
        assets_dir=args.assets or ASSETS_DIR,
        device=args.device,
    )
    return 0
