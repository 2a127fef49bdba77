"""Conversions between :class:`~fusion.Detections` and the types of the libraries around it.

* torchvision detection outputs: ``{"boxes": [N,4] xyxy pixels, "scores": [N], "labels": [N] int64}``;
* ultralytics ``Results`` (``.boxes.xyxy``, ``.conf``, ``.cls`` as floats, ``.orig_shape``);
* supervision ``sv.Detections`` (``xyxy``, ``confidence``, ``class_id``);
* COCO results records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (read and written by
  :mod:`fusion.coco.predictions`);
* ensemble-boxes' per-model lists of boxes normalised to ``[0, 1]``.

Labels are kept as they come (raw ids of the source); translating them into an ensemble's vocabulary is a
:class:`~fusion.classes.ClassMap` job, done by name. Optional packages are imported only inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fusion.classes import ClassMap
from fusion.detections import Detections

__all__ = [
    "from_coco_records",
    "from_ensemble_boxes",
    "from_supervision",
    "from_torchvision",
    "from_ultralytics",
    "to_coco_records",
    "to_ensemble_boxes",
    "to_supervision",
    "to_torchvision",
]


# ---------------------------------------------------------------------------------------------- torchvision
def from_torchvision(
    output: Mapping[str, torch.Tensor], image_size: tuple[int, int] | None = None
) -> Detections:
    """One image's torchvision detection output dict -> :class:`Detections` (labels stay torchvision's ids)."""
    missing = {"boxes", "scores", "labels"} - set(output)
    if missing:
        raise ValueError(f"torchvision output dict lacks {sorted(missing)}; has {sorted(output)}")
    return Detections(
        output["boxes"].detach(), output["scores"].detach(), output["labels"].detach(), image_size
    )


def to_torchvision(detections: Detections) -> dict[str, torch.Tensor]:
    """:class:`Detections` -> the dict torchvision detection models return (and its utilities draw)."""
    return {"boxes": detections.boxes, "scores": detections.scores, "labels": detections.labels}


# ---------------------------------------------------------------------------------------------- ultralytics
def from_ultralytics(result: Any) -> Detections:
    """One ultralytics ``Results`` -> :class:`Detections` (labels = the model's class ids; see ``result.names``)."""
    boxes = result.boxes
    if boxes is None:
        raise ValueError("ultralytics Results has no boxes (is this a detection model's result?)")
    return Detections(
        boxes.xyxy.detach(),
        boxes.conf.detach(),
        boxes.cls.detach().round().long(),
        tuple(result.orig_shape),
    )


# ---------------------------------------------------------------------------------------------- supervision
def to_supervision(detections: Detections) -> Any:
    """:class:`Detections` -> ``supervision.Detections`` (extras become its ``data`` arrays)."""
    import supervision as sv

    arrays = detections.numpy()
    data = {key: arrays[key] for key in detections.extras}
    return sv.Detections(
        xyxy=arrays["boxes"].astype(np.float32),
        confidence=arrays["scores"].astype(np.float32),
        class_id=arrays["labels"].astype(int),
        data=data,
    )


def from_supervision(
    detections: Any, image_size: tuple[int, int] | None = None, device: torch.device | str | None = None
) -> Detections:
    """``supervision.Detections`` -> :class:`Detections`; missing confidence or class ids are an error."""
    if detections.confidence is None:
        raise ValueError("supervision Detections has no confidence; fusion needs a score per box")
    if detections.class_id is None:
        raise ValueError("supervision Detections has no class_id; fusion needs a label per box")
    extras = {
        key: torch.as_tensor(np.asarray(value))
        for key, value in (detections.data or {}).items()
        if np.asarray(value).dtype.kind in "biuf"
    }
    return Detections(
        detections.xyxy, detections.confidence, detections.class_id, image_size, extras, device=device
    )


# ---------------------------------------------------------------------------------------------- COCO
def to_coco_records(detections: Detections, image_id: int, class_map: ClassMap) -> list[dict[str, Any]]:
    """:class:`Detections` -> COCO results records; ``category_id`` = ``class_map.ids[label]``, bbox xywh rounded as
    :meth:`fusion.coco.predictions.Predictions.from_detections` rounds it (3 decimals, scores 5)."""
    from fusion.coco.predictions import Predictions

    return Predictions.from_detections([detections], [image_id], class_map).records()


def from_coco_records(
    records: Sequence[Mapping[str, Any]],
    class_map: ClassMap,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
    image_ids: Iterable[int] | None = None,
) -> dict[int, Detections]:
    """COCO results records -> ``{image_id: Detections}`` with labels in ``class_map``'s contiguous indices.

    The records are read by :meth:`fusion.coco.predictions.Predictions.from_records` (float64: the file's values)
    and split by :meth:`~fusion.coco.predictions.Predictions.to_detections`, whose arguments these are.

    Raises:
        ValueError: a record lacks a key, is malformed, has a negative width/height, or a category id ``class_map``
            lacks (the message gives the record's index).
    """
    from fusion.coco.predictions import Predictions

    return Predictions.from_records(list(records)).to_detections(class_map, image_sizes, image_ids)


# ---------------------------------------------------------------------------------------------- ensemble-boxes
def to_ensemble_boxes(
    per_member: Sequence[Detections], image_size: tuple[int, int] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Members' :class:`Detections` of one image -> ensemble-boxes' ``(boxes_list, scores_list, labels_list)``.

    Boxes are divided by ``(width, height)`` so they lie in ``[0, 1]`` as ensemble-boxes requires (it silently
    clips pixel boxes away). ``image_size`` defaults to the detections' own.
    """
    boxes_list, scores_list, labels_list = [], [], []
    for index, det in enumerate(per_member):
        size = image_size or det.image_size
        if size is None:
            raise ValueError(
                f"per_member[{index}] has no image_size and none was given; cannot normalise boxes"
            )
        height, width = size
        arrays = det.numpy()
        boxes_list.append(
            arrays["boxes"].astype(np.float64) / np.array([width, height, width, height], dtype=np.float64)
        )
        scores_list.append(arrays["scores"].astype(np.float64))
        labels_list.append(arrays["labels"].astype(np.int64))
    return boxes_list, scores_list, labels_list


def from_ensemble_boxes(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_size: tuple[int, int]
) -> Detections:
    """ensemble-boxes' normalised output of one image -> :class:`Detections` in pixels of ``image_size``."""
    height, width = image_size
    scale = np.array([width, height, width, height], dtype=np.float64)
    pixel_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    return Detections(pixel_boxes, np.asarray(scores), np.asarray(labels).astype(np.int64), image_size)
