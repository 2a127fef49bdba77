"""COCO ground truth: load an annotation file, validate it, and expose it as arrays and as :class:`Detections`.

pycocotools trusts its input: a duplicate id, an annotation of an unknown category or an annotation id 0 give silently
wrong numbers (id 0 is never counted as matched, so perfect detections score 0.2525 AP). :func:`load_annotations`
refuses such files with a ``ValueError`` that names the offending index and id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from fusion.boxes import box_convert
from fusion.classes import ClassMap
from fusion.coco.records import number_column
from fusion.detections import Detections
from fusion.io import paused_gc

__all__ = ["CocoGroundTruth", "load_annotations", "read_json"]

_REQUIRED_TOP = ("images", "annotations", "categories")
_REQUIRED_IMAGE = ("id", "width", "height")
_REQUIRED_ANN = ("id", "image_id", "category_id", "bbox")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file with orjson (5-10x faster than ``json`` on large results files)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    data = path.read_bytes()
    try:
        with paused_gc():
            return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


@dataclass
class CocoGroundTruth:
    """A validated COCO annotation set.

    Attributes:
        dataset: The annotation dict as the evaluation backends take it (``area`` and ``iscrowd`` filled in).
        class_map: The categories as a :class:`ClassMap`: names in file order, ids = COCO category ids. Members are
            aligned to it by class NAME.
        image_ids: int64 ``[I]`` image ids in file order.
        sizes: int64 ``[I, 2]`` ``(height, width)`` of each image.
        file_names: ``file_name`` of each image (``None`` when absent).
        source: Where it was read from, for messages.
    """

    dataset: dict[str, Any]
    class_map: ClassMap
    image_ids: np.ndarray
    sizes: np.ndarray
    file_names: list[str | None]
    source: str = "<annotations>"
    _position: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._position = {int(i): p for p, i in enumerate(self.image_ids.tolist())}

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def image_sizes(self) -> dict[int, tuple[int, int]]:
        """``{image_id: (height, width)}``."""
        return {i: (h, w) for i, (h, w) in zip(self.image_ids.tolist(), self.sizes.tolist())}

    def positions(self, image_ids: np.ndarray) -> np.ndarray:
        """Row of each image id in :attr:`image_ids` (int64 ``[N]``); ``-1`` for ids the annotations lack."""
        order = np.argsort(self.image_ids, kind="stable")
        sorted_ids = self.image_ids[order]
        where = np.searchsorted(sorted_ids, image_ids).clip(0, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[where] == image_ids) if len(sorted_ids) else np.zeros(len(image_ids), dtype=bool)
        return np.where(found, order[where] if len(order) else 0, -1)

    def subset(self, image_ids: np.ndarray) -> CocoGroundTruth:
        """The same annotations restricted to ``image_ids`` (e.g. a validation split)."""
        keep = {int(i) for i in image_ids.tolist()}
        rows = np.asarray([p for p, i in enumerate(self.image_ids.tolist()) if i in keep], dtype=np.int64)
        dataset = dict(self.dataset)
        dataset["images"] = [self.dataset["images"][p] for p in rows.tolist()]
        dataset["annotations"] = [a for a in self.dataset["annotations"] if a["image_id"] in keep]
        return CocoGroundTruth(
            dataset,
            self.class_map,
            self.image_ids[rows],
            self.sizes[rows],
            [self.file_names[p] for p in rows.tolist()],
            self.source,
        )

    def detections(self, device: torch.device | str | None = None) -> dict[int, Detections]:
        """The GT boxes as ``{image_id: Detections}``, every image in file order (empty ones too).

        Boxes are float64 xyxy (the file's values, as COCO's own matching uses them), scores 1, labels
        :attr:`class_map` indices, ``image_size`` from the image record and ``extras["iscrowd"]`` (bool).
        """
        anns = self.dataset["annotations"]
        xywh = torch.from_numpy(np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4))
        boxes = box_convert(xywh, "xywh", "xyxy")
        cats = torch.as_tensor([a["category_id"] for a in anns], dtype=torch.int64)
        labels = self.class_map.labels_from_ids(cats)
        crowd = torch.as_tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool)
        positions = self.positions(np.asarray([a["image_id"] for a in anns], dtype=np.int64).reshape(-1))
        order = torch.from_numpy(np.argsort(positions, kind="stable"))
        counts = np.bincount(positions, minlength=len(self)).tolist()
        parts = (torch.split(t[order].to(device), counts) for t in (boxes, labels, crowd))
        return {
            image_id: Detections(b, torch.ones_like(b[:, 0]), lab, (h, w), {"iscrowd": c}, check_values=False)
            for image_id, (h, w), b, lab, c in zip(self.image_ids.tolist(), self.sizes.tolist(), *parts)
        }


def _missing(records: list[Any], keys: tuple[str, ...], where: str, source: str) -> None:
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"{source}: {where}[{index}] must be an object, got {type(record).__name__}")
        absent = [k for k in keys if k not in record]
        if absent:
            raise ValueError(
                f"{source}: {where}[{index}] lacks required key(s) {absent}; has {sorted(record)}"
            )


def _duplicates(ids: np.ndarray, where: str, source: str) -> None:
    if len(ids) == len(np.unique(ids)):
        return
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    second = int(order[same[0] + 1])
    first = int(order[same[0]])
    raise ValueError(
        f"{source}: {where}[{second}] has id {int(ids[second])}, already used by {where}[{first}]"
    )


def _int_ids(values: list[Any], where: str, key: str, source: str) -> np.ndarray:
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{source}: {where}[{index}].{key} must be an integer, got {value!r}")
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _read_dataset(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The annotation dict and its name for messages; checks the top-level keys and the three lists."""
    if isinstance(source, Mapping):
        data, where = dict(source), "<annotations>"
    else:
        data, where = read_json(source), str(source)
    if not isinstance(data, dict):
        raise ValueError(
            f"{where}: expected a JSON object with {list(_REQUIRED_TOP)}, got {type(data).__name__}"
        )
    absent = [k for k in _REQUIRED_TOP if k not in data]
    if absent:
        raise ValueError(
            f"{where}: missing top-level key(s) {absent} (a COCO annotation file needs {list(_REQUIRED_TOP)})"
        )
    for key in _REQUIRED_TOP:
        if not isinstance(data[key], list):
            raise ValueError(f"{where}: '{key}' must be a list, got {type(data[key]).__name__}")
    if not data["categories"]:
        raise ValueError(f"{where}: 'categories' is empty")
    _missing(data["images"], _REQUIRED_IMAGE, "images", where)
    _missing(data["categories"], ("id", "name"), "categories", where)
    _missing(data["annotations"], _REQUIRED_ANN, "annotations", where)
    return data, where


def _check_images(images: list[Mapping[str, Any]], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Image ids (int64 ``[I]``) and ``(height, width)`` (float64 ``[I, 2]``): unique ids, positive sizes."""
    image_ids = _int_ids([im["id"] for im in images], "images", "id", where)
    _duplicates(image_ids, "images", where)
    sizes = number_column(
        [[im["height"], im["width"]] for im in images],
        lambda i: f"{where}: images[{i}] [height, width]",
        width=2,
    ).reshape(-1, 2)
    bad = np.flatnonzero(~(sizes > 0).all(axis=1))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{where}: images[{i}] (id {int(image_ids[i])}) has non-positive height/width {sizes[i].tolist()}"
        )
    return image_ids, sizes


def _check_categories(cats: list[Mapping[str, Any]], where: str) -> tuple[np.ndarray, ClassMap]:
    """Category ids (int64 ``[C]``, unique) and the categories as a :class:`ClassMap`."""
    cat_ids = _int_ids([c["id"] for c in cats], "categories", "id", where)
    _duplicates(cat_ids, "categories", where)
    try:
        class_map = ClassMap.from_coco_categories(cats)
    except ValueError as exc:
        raise ValueError(f"{where}: categories: {exc}") from None
    return cat_ids, class_map


def _check_annotations(
    anns: list[Mapping[str, Any]], image_ids: np.ndarray, cat_ids: np.ndarray, where: str
) -> None:
    """Annotation ids (integer, unique, not 0), known image/category ids and a finite ``bbox`` with w, h >= 0."""
    ann_ids = _int_ids([a["id"] for a in anns], "annotations", "id", where)
    zero = np.flatnonzero(ann_ids == 0)
    if len(zero):
        raise ValueError(
            f"{where}: annotations[{int(zero[0])}] has id 0; pycocotools never counts a GT with id 0 as matched "
            "(perfect detections would score 0.2525 AP). Number annotation ids from 1."
        )
    _duplicates(ann_ids, "annotations", where)
    ann_images = _int_ids([a["image_id"] for a in anns], "annotations", "image_id", where)
    ann_cats = _int_ids([a["category_id"] for a in anns], "annotations", "category_id", where)
    unknown = np.flatnonzero(~np.isin(ann_cats, cat_ids))
    if len(unknown):
        i = int(unknown[0])
        raise ValueError(
            f"{where}: annotations[{i}] (id {int(ann_ids[i])}) has category_id {int(ann_cats[i])}, which is not in "
            f"'categories' (ids {sorted(cat_ids.tolist())[:10]}{' ...' if len(cat_ids) > 10 else ''})"
        )
    unknown = np.flatnonzero(~np.isin(ann_images, image_ids))
    if len(unknown):
        i = int(unknown[0])
        raise ValueError(
            f"{where}: annotations[{i}] (id {int(ann_ids[i])}) has image_id {int(ann_images[i])}, which is not in 'images'"
        )
    _check_boxes([a["bbox"] for a in anns], ann_ids, where)
    _check_optional_field(anns, "area", lambda v: v >= 0, "a number >= 0", where)
    _check_optional_field(anns, "iscrowd", lambda v: np.isin(v, (0, 1)), "0 or 1", where)


def _check_optional_field(
    anns: list[Mapping[str, Any]], key: str, valid: Any, expected: str, where: str
) -> None:
    """Where annotations carry ``key`` (``area``, ``iscrowd``), it is a number that ``valid`` accepts."""
    present = [i for i, a in enumerate(anns) if key in a]
    values = number_column(
        [anns[i][key] for i in present], lambda j: f"{where}: annotations[{present[j]}].{key}"
    )
    bad = np.flatnonzero(~valid(values))
    if len(bad):
        i = present[int(bad[0])]
        raise ValueError(f"{where}: annotations[{i}].{key} is {anns[i][key]!r}; expected {expected}")


def _check_boxes(boxes: list[Any], ann_ids: np.ndarray, where: str) -> None:
    """Every ``bbox`` is 4 finite numbers ``[x, y, w, h]`` with ``w, h >= 0``."""
    for index, box in enumerate(boxes):
        if not isinstance(box, list | tuple) or len(box) != 4:
            raise ValueError(
                f"{where}: annotations[{index}] (id {int(ann_ids[index])}).bbox must be [x, y, w, h], got {box!r}"
            )
    box_array = number_column(
        boxes, lambda i: f"{where}: annotations[{i}] (id {int(ann_ids[i])}).bbox", 4
    ).reshape(-1, 4)
    bad = np.flatnonzero(~np.isfinite(box_array).all(axis=1) | (box_array[:, 2] < 0) | (box_array[:, 3] < 0))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{where}: annotations[{i}] (id {int(ann_ids[i])}).bbox {boxes[i]} is not finite or has a negative w/h"
        )


def _with_defaults(anns: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``anns`` with ``area`` (``w * h``) and ``iscrowd`` (0) filled in where absent.

    Fills copies, so the caller's dicts are never modified; complete records are passed through as they are.
    """
    fixed = []
    for ann in anns:
        if "area" in ann and "iscrowd" in ann:
            fixed.append(ann)
        else:
            ann = dict(ann)
            ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
            ann.setdefault("iscrowd", 0)
            fixed.append(ann)
    return fixed


def load_annotations(source: str | Path | Mapping[str, Any]) -> CocoGroundTruth:
    """Read and validate a COCO annotation file (or an already-parsed dict).

    Checks, each failing with a ``ValueError`` that names the list, index and id: required keys (``images``:
    id/width/height; ``annotations``: id/image_id/category_id/bbox; ``categories``: id/name), integer ids,
    duplicate image/annotation/category ids, annotation id 0 (pycocotools never counts it as matched), annotations
    of unknown images or categories, malformed or negative ``bbox``. ``area`` defaults to ``w * h`` and ``iscrowd``
    to 0 when absent (pycocotools would raise ``KeyError`` on a missing ``area``).
    """
    data, where = _read_dataset(source)
    images = data["images"]
    image_ids, sizes = _check_images(images, where)
    cat_ids, class_map = _check_categories(data["categories"], where)
    _check_annotations(data["annotations"], image_ids, cat_ids, where)
    return CocoGroundTruth(
        dataset={**data, "annotations": _with_defaults(data["annotations"])},
        class_map=class_map,
        image_ids=image_ids,
        sizes=sizes.astype(np.int64),
        file_names=[im.get("file_name") for im in images],
        source=where,
    )
