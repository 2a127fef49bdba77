"""``fusion fuse``: fuse saved per-member COCO results files image by image, and score members and fused output.

No models and no images: image sizes come from the annotation file. Members are named after their file stems.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusion.fuse import fuse_batch, make_policy
from fusion.scoring.annotations import CocoGroundTruth, load_annotations
from fusion.scoring.evaluate import EvalResult, evaluate, resolve_backend
from fusion.scoring.predictions import Predictions, load_predictions

__all__ = ["DEFAULT_POLICY", "evaluate_all", "fuse_files", "fuse_predictions", "policy_description"]

# ensemble-boxes' own defaults for weighted_boxes_fusion.
DEFAULT_POLICY: dict[str, Any] = {"type": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}


def policy_description(policy: Any = None, **params: Any) -> dict[str, Any]:
    """The fully resolved parameters of a policy spec (name, mapping, Params or instance), as a plain dict."""
    return make_policy(DEFAULT_POLICY if policy is None else policy, **params).params.model_dump()


def fuse_predictions(
    members: Sequence[Predictions],
    gt: CocoGroundTruth,
    policy: Any = None,
    device: str = "cpu",
    **params: Any,
) -> Predictions:
    """Fuse members' results image by image with :func:`fusion.fuse_batch`.

    Args:
        members: One :class:`Predictions` per member (category ids of ``gt``).
        gt: The ground truth: its images (all of them, also those without detections) and their sizes.
        policy: Policy name, mapping with ``type``, Params or instance; ``None`` = WBF at ensemble-boxes' defaults.
        device: Where fusion runs.
        **params: Policy parameters (e.g. ``weights=[2, 1, 1]``).

    Returns:
        The fused results, rounded like saved results files.
    """
    if not members:
        raise ValueError("fuse_predictions needs at least one member")
    per_member = [m.split_by_image(gt, device=device) for m in members]
    per_image = list(zip(*per_member))
    fused = fuse_batch(per_image, DEFAULT_POLICY if policy is None else policy, **params)
    return Predictions.from_detections(fused, gt.image_ids, gt.class_map)


def evaluate_all(
    gt: CocoGroundTruth, members: Mapping[str, Predictions], fused: Predictions | None, backend: str = "auto"
) -> tuple[dict[str, EvalResult], EvalResult | None]:
    """Evaluate every member and the fused set with one backend."""
    results = {
        name: evaluate(gt, preds, backend, source=f"member {name!r}") for name, preds in members.items()
    }
    return results, (evaluate(gt, fused, backend, source="fused") if fused is not None else None)


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
) -> Path:
    """Load member results files, fuse, evaluate members and fused output, write ``runs/fuse/<name>/``.

    Returns:
        The output folder (``metrics.json``, ``fused.json``, ``report.md``, plots, ``config.yaml``).
    """
    from fusion.io import run_dir
    from fusion.scoring.report import write_outputs

    if len(paths) < 1:
        raise ValueError("fusion fuse needs at least one results file")
    backend = resolve_backend(backend)
    if verbose:
        print(f"evaluation backend: {backend}")
    gt = load_annotations(annotations)
    members = load_member_files(paths, gt, pred_classes)
    params = dict(params or {})
    described = policy_description(policy, **params)
    fused = fuse_predictions(list(members.values()), gt, policy, device=device, **params)
    member_results, fused_result = evaluate_all(gt, members, fused, backend)
    out = run_dir("fuse", name, root)
    config = {
        "command": "fuse",
        "annotations": str(annotations),
        "members": {n: str(Path(p)) for n, p in zip(members, paths)},
        "pred_classes": pred_classes,
        "policy": described,
        "backend": backend,
    }
    write_outputs(out, gt, member_results, fused_result, fused, described, config, plots=plots)
    if verbose:
        from fusion.scoring.report import format_table

        print(format_table(member_results, fused_result))
        print(f"results in {out}")
    return out
