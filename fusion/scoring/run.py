"""One scoring run: calibrate, fuse and evaluate members and the fused output, and the :class:`ScoredRun` result.

:func:`fuse_and_evaluate` is the step every scoring command shares (``fuse``, ``score``, ``demo``): the members go
through the pipeline (:mod:`fusion.pipeline`) column-wise, then every set is evaluated and its D-ECE measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fusion.calibration.dece import CalibrationProtocol, DECEResult, dece, matched_pairs
from fusion.coco.annotations import CocoGroundTruth
from fusion.coco.evaluate import STAT_KEYS, EvalResult, evaluate
from fusion.coco.predictions import Predictions
from fusion.detections import Detections
from fusion.pipeline import Pipeline

__all__ = ["ScoredRun", "dece_of", "evaluate_all", "fuse_and_evaluate", "ground_truth_detections"]


def ground_truth_detections(gt: CocoGroundTruth) -> list[Detections]:
    """The GT boxes of every image of ``gt`` (in ``gt.image_ids`` order) with ``extras["iscrowd"]``; cached on ``gt``."""
    cache = gt.__dict__.setdefault("_backend_cache", {})
    if "calibration_truth" not in cache:
        from fusion.calibration.matching import ground_truth_from_coco

        truth = ground_truth_from_coco(gt.dataset, gt.class_map)
        cache["calibration_truth"] = [truth[int(i)] for i in gt.image_ids.tolist()]
    return cache["calibration_truth"]


def dece_of(predictions: Predictions, gt: CocoGroundTruth, protocol: CalibrationProtocol) -> DECEResult:
    """D-ECE of a whole results set under ``protocol`` (greedy COCO-style matching, crowd GT ignored).

    Detections under the protocol's score threshold are dropped BEFORE matching: greedy matching goes in score order,
    so they cannot change the match of any detection that counts, and skipping them halves the work on typical
    results. The margin keeps every score that float32 rounding could lift to the threshold; :func:`dece` applies
    the exact cut.
    """
    predictions = predictions.select(predictions.scores >= protocol.score_thr - 1e-6)
    pairs = matched_pairs(predictions.split_by_image(gt), ground_truth_detections(gt), protocol.iou_thr)
    return dece(pairs, protocol)


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
    pipeline: Pipeline | None = None,
    *,
    backend: str = "auto",
    device: str = "cpu",
) -> ScoredRun:
    """Run the pipeline column-wise, evaluate every member and the fused output, and measure their D-ECE.

    Args:
        members: ``{member name: raw results}`` in the dataset's category ids.
        gt: The ground truth.
        pipeline: Calibrators (applied to the members before fusion, each exactly once, and to the fused output after
            it), the policy, and the D-ECE protocol (``pipeline.calibration.protocol``); its labels must index the
            dataset's categories (:meth:`Pipeline.in_vocabulary`). ``None``: WBF at ensemble-boxes' defaults, no
            calibrators (D-ECE is still measured).
        backend: COCO evaluation backend.
        device: Where fusion runs.

    Returns:
        The :class:`ScoredRun`; with calibrators it also holds the uncalibrated fusion as the baseline.
    """
    pipeline = pipeline or Pipeline.build(vocabulary=gt.class_map)
    calibration = pipeline.calibration
    protocol = calibration.protocol
    used, fused = pipeline.run_columns(members, gt, device)
    member_results, fused_result = evaluate_all(gt, used, fused, backend)
    dece = {name: dece_of(preds, gt, protocol) for name, preds in used.items()}
    dece["fused"] = dece_of(fused, gt, protocol)
    run = ScoredRun(member_results, fused_result, fused, dece, protocol)
    if calibration.active:
        raw_fused = pipeline.uncalibrated().fuse_columns(members, gt, device)
        run.fused_uncalibrated = evaluate(gt, raw_fused, backend, source="fused (uncalibrated)")
        run.uncalibrated_dece = {
            name: dece_of(preds, gt, protocol)
            for name, preds in members.items()
            if name in calibration.members
        }
        run.uncalibrated_dece["fused"] = dece_of(raw_fused, gt, protocol)
        run.calibrators = dict(calibration.sources)
    return run
