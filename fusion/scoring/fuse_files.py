"""``fusion fuse``: fuse saved per-member COCO results files image by image, and score members and fused output.

No models and no images: image sizes come from the annotation file. Members are named after their file stems.
:func:`fuse_and_evaluate` is the step every scoring command shares (``fuse``, ``score``, ``demo``): calibrate the
members (when calibrators are given), fuse, evaluate every set, and measure each one's D-ECE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion.calibration.dece import CalibrationProtocol, DECEResult
from fusion.fuse import fuse_batch, make_policy
from fusion.scoring.annotations import CocoGroundTruth, load_annotations
from fusion.scoring.calibration import Calibration, calibrate_members, calibrate_predictions, dece_of
from fusion.scoring.evaluate import STAT_KEYS, EvalResult, evaluate, resolve_backend
from fusion.scoring.predictions import Predictions, load_predictions

__all__ = [
    "DEFAULT_POLICY",
    "ScoredRun",
    "evaluate_all",
    "fuse_and_evaluate",
    "fuse_files",
    "fuse_predictions",
    "policy_description",
]

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


def _dece_value(result: DECEResult) -> float | None:
    return result.as_dict()["value"]


@dataclass
class ScoredRun:
    """Members and fused output of one scoring run, evaluated.

    Attributes:
        members: ``{member name: EvalResult}`` of the members as fused (calibrated when a calibrator applies).
        fused: The fused output's evaluation.
        fused_predictions: The fused results (what ``fused.json`` holds).
        dece: ``{member name or "fused": D-ECE}`` of what was evaluated.
        protocol: The D-ECE protocol.
        uncalibrated_dece: With calibration, the D-ECE of the raw members and of the raw members' fusion.
        fused_uncalibrated: With calibration, the evaluation of the raw members' fusion (the baseline it beats).
        calibrators: ``{member name or "fused": calibrator file}`` when calibrated.
    """

    members: dict[str, EvalResult]
    fused: EvalResult
    fused_predictions: Predictions
    dece: dict[str, DECEResult]
    protocol: CalibrationProtocol
    uncalibrated_dece: dict[str, DECEResult] = field(default_factory=dict)
    fused_uncalibrated: EvalResult | None = None
    calibrators: dict[str, str] = field(default_factory=dict)

    def entry_extras(self) -> dict[str, dict[str, Any]]:
        """Per-entry additions to ``metrics.json``: ``"D-ECE"`` (and ``"D-ECE uncalibrated"`` when calibrated)."""
        extra: dict[str, dict[str, Any]] = {name: {"D-ECE": _dece_value(r)} for name, r in self.dece.items()}
        for name, result in self.uncalibrated_dece.items():
            extra.setdefault(name, {})["D-ECE uncalibrated"] = _dece_value(result)
        return extra

    def summary(self) -> dict[str, Any]:
        """Top-level additions to ``metrics.json``: the protocol, and with calibration its files and baseline."""
        out: dict[str, Any] = {"calibration_protocol": self.protocol.model_dump()}
        if self.calibrators:
            out["calibrators"] = dict(self.calibrators)
        if self.fused_uncalibrated is not None:
            out["fused_uncalibrated"] = {
                **{k: self.fused_uncalibrated.stats[k] for k in STAT_KEYS},
                "D-ECE": _dece_value(self.uncalibrated_dece["fused"]),
            }
        return out


def fuse_and_evaluate(
    members: Mapping[str, Predictions],
    gt: CocoGroundTruth,
    policy: Any = None,
    params: Mapping[str, Any] | None = None,
    *,
    backend: str = "auto",
    device: str = "cpu",
    calibration: Calibration | None = None,
) -> ScoredRun:
    """Calibrate (optionally), fuse, evaluate every member and the fused output, and measure their D-ECE.

    Args:
        members: ``{member name: raw results}`` in the dataset's category ids.
        gt: The ground truth.
        policy: Policy spec (see :func:`fuse_predictions`); ``None`` = WBF at ensemble-boxes' defaults.
        params: Policy parameters.
        backend: COCO evaluation backend.
        device: Where fusion runs.
        calibration: Calibrators applied to the members before fusion (each exactly once) and to the fused output
            after it, and the D-ECE protocol. Without calibrators only D-ECE is measured, under the default
            protocol unless one is given here.

    Returns:
        The :class:`ScoredRun`; with calibrators it also holds the uncalibrated fusion as the baseline.
    """
    calibration = calibration or Calibration()
    params = dict(params or {})
    protocol = calibration.protocol
    used = calibrate_members(members, calibration, gt)
    fused = fuse_predictions(list(used.values()), gt, policy, device=device, **params)
    fused = calibrate_predictions(fused, calibration.fused, gt, calibration.classes)
    member_results, fused_result = evaluate_all(gt, used, fused, backend)
    dece = {name: dece_of(preds, gt, protocol) for name, preds in used.items()}
    dece["fused"] = dece_of(fused, gt, protocol)
    run = ScoredRun(member_results, fused_result, fused, dece, protocol)
    if calibration.active:
        raw_fused = fuse_predictions(list(members.values()), gt, policy, device=device, **params)
        run.fused_uncalibrated = evaluate(gt, raw_fused, backend, source="fused (uncalibrated)")
        run.uncalibrated_dece = {
            name: dece_of(preds, gt, protocol)
            for name, preds in members.items()
            if name in calibration.members
        }
        run.uncalibrated_dece["fused"] = dece_of(raw_fused, gt, protocol)
        run.calibrators = dict(calibration.sources)
    return run


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
    from fusion.io import run_dir
    from fusion.scoring.report import format_run, write_run

    if len(paths) < 1:
        raise ValueError("fusion fuse needs at least one results file")
    backend = resolve_backend(backend)
    if verbose:
        print(f"evaluation backend: {backend}")
    gt = load_annotations(annotations)
    members = load_member_files(paths, gt, pred_classes)
    params = dict(params or {})
    described = policy_description(policy, **params)
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration.from_file(calibration)
    run = fuse_and_evaluate(
        members, gt, policy, params, backend=backend, device=device, calibration=calibration
    )
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
