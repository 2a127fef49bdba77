"""Conversions between :class:`~fusion.Detections` and the types of the libraries around it.

* torchvision detection outputs: ``{"boxes": [N,4] xyxy pixels, "scores": [N], "labels": [N] int64}``;
* ultralytics ``Results`` (``.boxes.xyxy``, ``.conf``, ``.cls`` as floats, ``.orig_shape``);
* supervision ``sv.Detections`` (``xyxy``, ``confidence``, ``class_id``);
* COCO results records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``;
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
def to_coco_records(detections: Detections, image_id: int | str, class_map: ClassMap) -> list[dict[str, Any]]:
    """:class:`Detections` -> COCO results records; ``category_id`` = ``class_map.ids[label]``, bbox xywh."""
    arrays = detections.numpy()
    boxes = arrays["boxes"].astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    category_ids = np.asarray(class_map.ids, dtype=np.int64)[arrays["labels"]]
    return [
        {
            "image_id": image_id,
            "category_id": int(c),
            "bbox": [round(float(v), 3) for v in b],
            "score": round(float(s), 5),
        }
        for b, c, s in zip(xywh, category_ids, arrays["scores"])
    ]


def from_coco_records(
    records: Sequence[Mapping[str, Any]],
    class_map: ClassMap,
    image_sizes: Mapping[Any, tuple[int, int]] | None = None,
    image_ids: Iterable[Any] | None = None,
) -> dict[Any, Detections]:
    """COCO results records -> ``{image_id: Detections}`` with labels in ``class_map``'s contiguous indices.

    Args:
        records: Results records; each needs ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` and ``score``.
        class_map: The vocabulary whose ``ids`` the records' ``category_id`` values are.
        image_sizes: Optional ``{image_id: (height, width)}`` stored on each :class:`Detections`.
        image_ids: Images to include even when they have no records (they get empty detections).

    Raises:
        ValueError: a record lacks a key, has a negative width/height, or a category id ``class_map`` lacks
            (the message gives the record's index).
    """
    n = len(records)
    ids_of_images = [None] * n
    boxes = np.zeros((n, 4), dtype=np.float64)
    scores = np.zeros(n, dtype=np.float32)
    categories = np.zeros(n, dtype=np.int64)
    for index, record in enumerate(records):
        try:
            ids_of_images[index] = record["image_id"]
            boxes[index] = record["bbox"]
            scores[index] = record["score"]
            categories[index] = record["category_id"]
        except KeyError as exc:
            raise ValueError(f"COCO results record [{index}] lacks {exc.args[0]!r}: {dict(record)}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"COCO results record [{index}] is malformed ({exc}): {dict(record)}") from None
    negative = (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if negative.any():
        index = int(np.flatnonzero(negative)[0])
        raise ValueError(
            f"COCO results record [{index}] has a negative width or height: bbox {records[index]['bbox']}"
        )
    labels = class_map.labels_from_ids(torch.from_numpy(categories)).numpy()
    unknown = labels < 0
    if unknown.any():
        index = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"COCO results record [{index}] has category_id {int(categories[index])}, which the class map "
            f"({len(class_map)} classes, ids {min(class_map.ids)}..{max(class_map.ids)}) does not have"
        )
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1).astype(np.float32)
    keys = np.asarray(ids_of_images, dtype=object)
    order = (
        np.argsort(np.asarray([str(k) for k in keys]), kind="stable") if n else np.zeros(0, dtype=np.int64)
    )
    out: dict[Any, Detections] = {}
    if n:
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], n]):
            rows = order[start:stop]
            image_id = sorted_keys[start]
            size = image_sizes.get(image_id) if image_sizes else None
            out[image_id] = Detections(xyxy[rows], scores[rows], labels[rows], size)
    for image_id in image_ids or ():
        if image_id not in out:
            size = image_sizes.get(image_id) if image_sizes else None
            out[image_id] = Detections.empty(size)
    return out


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
