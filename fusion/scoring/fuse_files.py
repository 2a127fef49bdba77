"""``fusion fuse``: fuse saved per-member COCO results files image by image, and score members and fused output.

No models and no images: image sizes come from the annotation file. Members are named after their file stems.
The work is :func:`fusion.scoring.run.fuse_and_evaluate`, the step every scoring command shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusion.coco.annotations import CocoGroundTruth, load_annotations
from fusion.coco.evaluate import resolve_backend
from fusion.coco.predictions import Predictions, load_predictions
from fusion.io import run_dir
from fusion.pipeline import Calibration, Pipeline
from fusion.scoring.report import format_run, write_run
from fusion.scoring.run import fuse_and_evaluate

__all__ = ["fuse_files", "load_member_files"]


def load_member_files(
    paths: Sequence[str | Path], gt: CocoGroundTruth, pred_classes: str | None = None
) -> dict[str, Predictions]:
    """``{file stem: Predictions}``; two files with the same stem are an error (members need unique names)."""
    members: dict[str, Predictions] = {}
    origin: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        name = path.stem
        if name in members:
            raise ValueError(
                f"members are named after file stems: {path} and {origin[name]} are both {name!r}; rename one"
            )
        members[name] = load_predictions(path, gt, pred_classes)
        origin[name] = path
    return members


def fuse_files(
    paths: Sequence[str | Path],
    annotations: str | Path,
    policy: Any = None,
    params: Mapping[str, Any] | None = None,
    *,
    name: str = "fuse",
    root: str | Path = "runs",
    backend: str = "auto",
    pred_classes: str | None = None,
    plots: bool = True,
    device: str = "cpu",
    verbose: bool = True,
    out_dir: str | Path | None = None,
    calibration: Calibration | str | Path | None = None,
) -> Path:
    """Load member results files, fuse, evaluate members and fused output, write ``runs/fuse/<name>/``.

    ``out_dir`` writes into that folder (created if needed) instead of a new ``<root>/fuse/<name>``.
    ``calibration`` (a :class:`Calibration` or the path of a ``calibrators.json`` from ``fusion calibrate``, whose
    member names are the file stems) calibrates members before fusion; ``metrics.json`` then also reports the
    uncalibrated fusion and D-ECE.

    Returns:
        The output folder (``metrics.json``, ``fused.json``, ``report.md``, plots, ``config.yaml``).
    """
    if len(paths) < 1:
        raise ValueError("fusion fuse needs at least one results file")
    backend = resolve_backend(backend)
    if verbose:
        print(f"evaluation backend: {backend}")
    gt = load_annotations(annotations)
    members = load_member_files(paths, gt, pred_classes)
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration.from_file(calibration)
    pipeline = Pipeline.build(policy, params, calibration, vocabulary=gt.class_map)
    pipeline.check_fused_fit(f"--calibrators {calibration.sources.get('fused')}" if calibration else "")
    described = pipeline.describe()
    run = fuse_and_evaluate(members, gt, pipeline, backend=backend, device=device)
    out = run_dir("fuse", name, root) if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "command": "fuse",
        "annotations": str(annotations),
        "members": {n: str(Path(p)) for n, p in zip(members, paths)},
        "pred_classes": pred_classes,
        "policy": described,
        "calibrators": run.calibrators or None,
        "backend": backend,
    }
    write_run(out, gt, run, described, config, plots=plots)
    if verbose:
        print(format_run(run))
        print(f"results in {out}")
    return out
