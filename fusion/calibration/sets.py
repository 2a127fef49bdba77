"""One calibrator per ensemble member, saved as one JSON file, and applied to member outputs exactly once.

File format (data only)::

    {"format": "detection-fusion/calibrators", "version": 1,
     "classes": ["person", ...],          # the vocabulary the per-class labels index
     "protocol": {"iou_thr": 0.5, ...},   # how TPs were defined when fitting
     "members": {"yolo": {"method": "isotonic", "default": {...}, "per_class": {...}}, ...},
     "fused": null,                        # or a calibrator of the fused output (applied after fusion)
     "fused_fit": {"policy": {"type": "wbf", ...}, "members": ["yolo", ...]}}   # what "fused" was fitted under

A member config references it with ``calibrator: <path>``; the entry under the member's name is used.

Exactly-once: :func:`apply_calibrators` marks every :class:`~fusion.Detections` it returns with a bool
``extras["calibrated"]`` ``[N]`` (True where a calibrator was applied, False for members without one), and leaves rows
already marked True unchanged. Applying a set twice therefore gives the same scores as applying it once. Members
without a calibrator are marked too, so that every member's detections carry the same extras keys.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fusion.calibration.calibrators import Calibrator
from fusion.detections import Detections

__all__ = [
    "CALIBRATED",
    "FORMAT",
    "CalibratorSet",
    "apply_calibrators",
    "calibrate_detections",
    "calibrate_fused",
    "load_fused_calibrator",
    "load_member_calibrator",
]

FORMAT = "detection-fusion/calibrators"
CALIBRATED = "calibrated"


class CalibratorSet(Mapping[str, Calibrator]):
    """Member name -> :class:`Calibrator`, with the class names their labels refer to.

    Args:
        calibrators: ``{member name: calibrator}``.
        classes: Class names of the ensemble vocabulary (``ClassMap.names``) the labels index.
        protocol: How matched pairs were made when fitting (``{"iou_thr": ...}``), kept for the record.
        fused: Optional calibrator of the FUSED output, fitted on the calibrated members' fusion (applied after
            fusion). Averaging calibrated member scores (WBF ``avg``) does not give calibrated fused scores: boxes
            that several members agree on are right more often than their mean score says.
        fused_fit: What ``fused`` was fitted under: ``{"policy": resolved policy params, "members": [names in
            fusion order]}``; applying it under another policy warns (:meth:`fusion.pipeline.Pipeline.check_fused_fit`).
    """

    def __init__(
        self,
        calibrators: Mapping[str, Calibrator],
        classes: Sequence[str] | None = None,
        protocol: Mapping[str, Any] | None = None,
        fused: Calibrator | None = None,
        fused_fit: Mapping[str, Any] | None = None,
    ) -> None:
        for name, calibrator in calibrators.items():
            if not isinstance(calibrator, Calibrator):
                raise ValueError(
                    f"CalibratorSet: member {name!r} maps to a {type(calibrator).__name__}, not a Calibrator"
                )
        self._calibrators = dict(calibrators)
        self.classes: tuple[str, ...] | None = tuple(classes) if classes is not None else None
        self.protocol: dict[str, Any] = dict(protocol or {})
        if fused is not None and not isinstance(fused, Calibrator):
            raise ValueError(f"CalibratorSet: fused must be a Calibrator, got {type(fused).__name__}")
        self.fused = fused
        self.fused_fit: dict[str, Any] | None = dict(fused_fit) if fused_fit is not None else None

    def __getitem__(self, name: str) -> Calibrator:
        try:
            return self._calibrators[name]
        except KeyError:
            raise KeyError(
                f"no calibrator for member {name!r}; this set has {sorted(self._calibrators)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._calibrators)

    def __len__(self) -> int:
        return len(self._calibrators)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "classes": list(self.classes) if self.classes is not None else None,
            "protocol": self.protocol,
            "members": {name: c.to_json() for name, c in self._calibrators.items()},
            "fused": self.fused.to_json() if self.fused is not None else None,
            "fused_fit": self.fused_fit,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "<calibrators>") -> CalibratorSet:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f'{source}: not a calibrator set (expected "format": {FORMAT!r})')
        if data.get("version") != 1:
            raise ValueError(
                f"{source}: unsupported calibrator set version {data.get('version')!r} (this reads 1)"
            )
        members = data.get("members")
        if not isinstance(members, Mapping):
            raise ValueError(f"{source}: 'members' must be an object {{member name: calibrator}}")
        calibrators = {}
        for name, entry in members.items():
            try:
                calibrators[name] = Calibrator.from_json(entry)
            except ValueError as exc:
                raise ValueError(f"{source}: members.{name}: {exc}") from None
        fused = data.get("fused")
        if fused is not None:
            try:
                fused = Calibrator.from_json(fused)
            except ValueError as exc:
                raise ValueError(f"{source}: fused: {exc}") from None
        fused_fit = data.get("fused_fit")
        if fused_fit is not None and not isinstance(fused_fit, Mapping):
            raise ValueError(f"{source}: fused_fit must be an object {{policy, members}} or null")
        return cls(calibrators, data.get("classes"), data.get("protocol"), fused, fused_fit)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        from fusion.io import atomic_write_json

        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, class_names: Sequence[str] | None = None) -> CalibratorSet:
        """Read a set; with ``class_names`` (the ensemble's ``ClassMap.names``), check the vocabularies agree."""
        from fusion.io import read_text_file

        path = Path(path)
        text = read_text_file(path, "calibrator file")  # names the file: missing, a folder, not UTF-8
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        result = cls.from_json(data, str(path))
        if class_names is not None and result.classes is not None and tuple(class_names) != result.classes:
            mismatch = next(
                (i for i, (a, b) in enumerate(zip(class_names, result.classes)) if a != b),
                min(len(class_names), len(result.classes)),
            )
            raise ValueError(
                f"{path}: calibrators were fitted for a different class list ({len(result.classes)} classes) than the "
                f"ensemble's ({len(class_names)}); first difference at label {mismatch}"
            )
        return result


def load_member_calibrator(
    path: str | Path, member: str, class_names: Sequence[str] | None = None
) -> Calibrator:
    """The calibrator a member config's ``calibrator: <path>`` refers to (its entry in the set at ``path``)."""
    calibrators = CalibratorSet.load(path, class_names)
    if member not in calibrators:
        raise ValueError(f"{path}: has no calibrator for member {member!r} (it has {sorted(calibrators)})")
    return calibrators[member]


def _mark(det: Detections, value: bool) -> Detections:
    return det.with_extras(
        **{CALIBRATED: torch.full((len(det),), value, dtype=torch.bool, device=det.device)}
    )


def calibrate_detections(detections: Sequence[Detections], calibrator: Calibrator | None) -> list[Detections]:
    """One member's detections of many images -> calibrated copies (one ``apply`` call for all images).

    Rows already marked ``extras["calibrated"]`` are left as they are; every returned row is marked (True when
    calibrated, False when ``calibrator`` is None). Boxes, labels and other extras are unchanged.
    """
    detections = list(detections)
    if not detections:
        return []
    if calibrator is None:
        return [det if CALIBRATED in det.extras else _mark(det, False) for det in detections]
    device = detections[0].device
    scores = torch.cat([d.scores.to(device) for d in detections])
    labels = torch.cat([d.labels.to(device) for d in detections])
    done = torch.cat(
        [
            d.extras[CALIBRATED].to(device).bool()
            if CALIBRATED in d.extras
            else torch.zeros(len(d), dtype=torch.bool, device=device)
            for d in detections
        ]
    )
    new = torch.where(done, scores, calibrator.apply(scores, labels))
    out = []
    for det, part in zip(detections, torch.split(new, [len(d) for d in detections])):
        out.append(
            Detections(
                det.boxes,
                part.to(det.device, det.scores.dtype),  # float64 detections stay float64 (same values)
                det.labels,
                det.image_size,
                {**det.extras, CALIBRATED: torch.ones(len(det), dtype=torch.bool, device=det.device)},
                check_values=False,
            )
        )
    return out


def apply_calibrators(
    per_member: Mapping[str, Sequence[Detections]],
    calibrators: Mapping[str, Calibrator | None],
    strict: bool = True,
) -> dict[str, list[Detections]]:
    """Calibrate each member's detections with its calibrator, exactly once (see the module docstring).

    Args:
        per_member: ``{member name: [Detections of image 0, image 1, ...]}`` (the ensemble's raw member outputs).
        calibrators: ``{member name: calibrator or None}``, e.g. a :class:`CalibratorSet` or calibrators loaded
            from each member config's ``calibrator`` path.
        strict: Raise when ``calibrators`` names a member that ``per_member`` lacks (a config/cache mismatch).

    Returns:
        ``{member name: calibrated Detections per image}`` with ``extras["calibrated"]`` on every Detections.
    """
    if strict:
        unknown = sorted(set(calibrators) - set(per_member))
        if unknown:
            raise ValueError(
                f"calibrators given for unknown member(s) {unknown}; members are {sorted(per_member)}"
            )
    return {name: calibrate_detections(dets, calibrators.get(name)) for name, dets in per_member.items()}


def load_fused_calibrator(path: str | Path, class_names: Sequence[str] | None = None) -> Calibrator:
    """The ``fused`` calibrator of the set at ``path`` (an ensemble config's ``fused_calibrator``)."""
    calibrators = CalibratorSet.load(path, class_names)
    if calibrators.fused is None:
        raise ValueError(
            f"{path}: has no fused calibrator (refit with `fusion calibrate`, which fits one unless --no-fused)"
        )
    return calibrators.fused


def calibrate_fused(detections: Sequence[Detections], calibrator: Calibrator) -> list[Detections]:
    """Fused detections of many images -> the same boxes with calibrated scores, re-sorted by score per image.

    One ``apply`` call for all images. Per-class curves can reorder boxes of different classes, so each image's rows
    are sorted again (descending score, stable) to keep the fused output's order invariant.
    """
    detections = list(detections)
    if not detections:
        return []
    device = detections[0].device
    counts = [len(d) for d in detections]
    scores = calibrator.apply(
        torch.cat([d.scores.to(device) for d in detections]),
        torch.cat([d.labels.to(device) for d in detections]),
    )
    image = torch.repeat_interleave(
        torch.arange(len(detections), device=device), torch.tensor(counts, device=device)
    )
    # Score descending, then image (both stable), as the policies' own output order is made.
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(image[order], stable=True).indices]
    starts = [0, *itertools.accumulate(counts)][:-1]
    return [
        det.replace(scores=part.to(det.device, det.scores.dtype))[(local - start).to(det.device)]
        for det, part, local, start in zip(
            detections, torch.split(scores, counts), torch.split(order, counts), starts
        )
    ]
