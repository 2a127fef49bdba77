"""Detections of a whole dataset as columns, and COCO results files (JSON list or JSONL) read and written fast.

A results file of 500k records is parsed once into four numpy columns; splitting it by image is one ``argsort``
and one ``torch.split``, never a Python loop over records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from torch import Tensor

from fusion.boxes import box_convert
from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth, read_json
from fusion.coco.records import json_rows, record_columns
from fusion.coco.rounding import round_decimals
from fusion.detections import Detections
from fusion.io import atomic_write_bytes, paused_gc

__all__ = ["BOX_DECIMALS", "SCORE_DECIMALS", "Predictions", "load_predictions", "read_jsonl", "read_results"]

# Results are rounded once, when they are made, so that what is evaluated in memory is exactly what a saved file
# holds: a run resumed from its cache, or `fusion fuse` on saved files, then gives the same numbers. Rounding is
# Python's round() (see fusion.coco.rounding), so the files equal those a hand-written script writes.
BOX_DECIMALS = 3
SCORE_DECIMALS = 5


@dataclass
class Predictions:
    """COCO results of many images as columns.

    Attributes:
        image_ids: int64 ``[N]``.
        category_ids: int64 ``[N]`` COCO category ids (of the ground truth's ``categories``).
        boxes: float64 ``[N, 4]`` ``(x, y, w, h)`` in pixels (COCO's results format).
        scores: float64 ``[N]``.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64).reshape(-1)
        self.category_ids = np.asarray(self.category_ids, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        n = len(self.image_ids)
        if not len(self.category_ids) == len(self.boxes) == len(self.scores) == n:
            raise ValueError(
                f"Predictions: {n} image_ids, {len(self.category_ids)} category_ids, {len(self.boxes)} boxes, "
                f"{len(self.scores)} scores"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls) -> Predictions:
        return cls(np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0))

    @classmethod
    def concat(cls, items: Sequence[Predictions]) -> Predictions:
        if not items:
            return cls.empty()
        return cls(
            np.concatenate([p.image_ids for p in items]),
            np.concatenate([p.category_ids for p in items]),
            np.concatenate([p.boxes for p in items]),
            np.concatenate([p.scores for p in items]),
        )

    @classmethod
    def from_records(cls, records: Sequence[Any], source: str = "<results>") -> Predictions:
        """From COCO results records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

        Raises:
            ValueError: not a list, a record lacking a key, a malformed bbox, a negative width/height or a
                non-finite value; the message names the record's index.
        """
        if not isinstance(records, list):
            raise ValueError(
                f"{source}: COCO results must be a JSON list of records, got {type(records).__name__}"
            )
        if not records:
            return cls.empty()
        preds = cls(*record_columns(records, source))
        bad = ~np.isfinite(preds.boxes).all(axis=1) | ~np.isfinite(preds.scores)
        bad |= (preds.boxes[:, 2] < 0) | (preds.boxes[:, 3] < 0)
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{source}: record [{index}] has a non-finite value or a negative width/height: {records[index]}"
            )
        return preds

    @classmethod
    def from_detections(
        cls,
        detections: Sequence[Detections],
        image_ids: Sequence[int] | np.ndarray,
        class_map: ClassMap,
        decimals: bool = True,
    ) -> Predictions:
        """From one :class:`Detections` per image (labels = ``class_map`` indices, pixel xyxy boxes).

        Boxes are rounded to :data:`BOX_DECIMALS` and scores to :data:`SCORE_DECIMALS` unless ``decimals`` is False.
        """
        if len(detections) != len(image_ids):
            raise ValueError(f"{len(detections)} Detections but {len(image_ids)} image ids")
        if not detections:
            return cls.empty()
        counts = np.asarray([len(d) for d in detections], dtype=np.int64)
        xyxy = torch.cat([d.boxes.detach().cpu() for d in detections]).double()
        scores = torch.cat([d.scores.detach().cpu() for d in detections]).double().numpy()
        labels = torch.cat([d.labels.detach().cpu() for d in detections]).numpy()
        xywh = box_convert(xyxy, "xyxy", "xywh").numpy()
        if decimals:
            xywh = round_decimals(xywh, BOX_DECIMALS)
            scores = round_decimals(scores, SCORE_DECIMALS)
        ids = np.asarray(class_map.ids, dtype=np.int64)
        return cls(np.repeat(np.asarray(image_ids, dtype=np.int64), counts), ids[labels], xywh, scores)

    # ------------------------------------------------------------------ conversion
    def records(self) -> list[dict[str, Any]]:
        """COCO results records (one dict per detection)."""
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(
                self.image_ids.tolist(), self.category_ids.tolist(), self.boxes.tolist(), self.scores.tolist()
            )
        ]

    def to_array(self) -> np.ndarray:
        """float64 ``[N, 7]`` ``[image_id, x, y, w, h, score, category_id]`` (pycocotools' ``loadRes`` array form)."""
        return np.concatenate(
            [self.image_ids[:, None], self.boxes, self.scores[:, None], self.category_ids[:, None]], axis=1
        ).astype(np.float64)

    def select(self, mask: np.ndarray) -> Predictions:
        return Predictions(self.image_ids[mask], self.category_ids[mask], self.boxes[mask], self.scores[mask])

    def check_against(self, gt: CocoGroundTruth, source: str = "predictions") -> None:
        """Raise a ``ValueError`` for image ids or category ids that the ground truth lacks.

        pycocotools asserts ("Results do not correspond to current coco set") on the former and silently drops the
        latter; both mean the files do not belong together. The message recognises 0-based COCO-80 ids (0..79,
        ultralytics) given against a COCO-91 file (ids 1..90) and says how to translate them.
        """
        if not len(self):
            return
        unknown = gt.positions(self.image_ids) < 0
        if unknown.any():
            ids = np.unique(self.image_ids[unknown])
            raise ValueError(
                f"{source}: {len(ids)} image id(s) are not in the annotations {gt.source} "
                f"(first: {ids[:5].tolist()}); results must describe images of the annotation file"
            )
        known = np.asarray(gt.class_map.ids, dtype=np.int64)
        absent = ~np.isin(self.category_ids, known)
        if absent.any():
            ids = np.unique(self.category_ids[absent])
            hint = ""
            if (
                ids.min() >= 0
                and self.category_ids.max() <= 79
                and len(gt.class_map) == 80
                and max(known) == 90
            ):
                hint = (
                    " They look like 0-based COCO-80 ids (ultralytics) against COCO's 1..90 ids: translate them by "
                    "name with `pred_classes='coco80'` (CLI: --pred-classes coco80)."
                )
            raise ValueError(
                f"{source}: {int(absent.sum())} detection(s) have category ids not in the annotations' categories "
                f"{ids[:10].tolist()}{' ...' if len(ids) > 10 else ''} (pycocotools would drop them silently).{hint}"
            )

    def translate(self, source_classes: ClassMap, target_classes: ClassMap) -> Predictions:
        """Category ids of ``source_classes`` -> ids of ``target_classes``, matched by class NAME (e.g. coco80 ->
        a COCO file's 1..90 ids). Raises ``ValueError`` for ids ``source_classes`` lacks and ``KeyError`` for names
        the target lacks."""
        labels = source_classes.labels_from_ids(torch.from_numpy(self.category_ids)).numpy()
        if (labels < 0).any():
            index = int(np.flatnonzero(labels < 0)[0])
            raise ValueError(
                f"detection [{index}] has category id {int(self.category_ids[index])}, not in {source_classes}"
            )
        table = source_classes.translation_to(target_classes).numpy()
        ids = np.asarray(target_classes.ids, dtype=np.int64)[table[labels]]
        return Predictions(self.image_ids, ids, self.boxes, self.scores)

    def to_detections(
        self,
        class_map: ClassMap,
        image_sizes: Mapping[int, tuple[int, int] | None] | None = None,
        image_ids: Iterable[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[int, Detections]:
        """``{image_id: Detections}``: float64 pixel xyxy boxes and scores (the file's values, exactly), labels in
        ``class_map``'s contiguous indices, records of an image in file order.

        Args:
            class_map: The vocabulary whose ``ids`` the ``category_ids`` are.
            image_sizes: Optional ``{image_id: (height, width)}`` stored on each :class:`Detections`.
            image_ids: Images to include even without records (they get empty detections); they come first, in
                this order, then the other images of the records by ascending id.
            device: Where the tensors go.

        Raises:
            ValueError: a category id ``class_map`` lacks (naming the record's index).
        """
        labels = class_map.labels_from_ids(torch.from_numpy(self.category_ids))
        if bool((labels < 0).any()):
            index = int(torch.nonzero(labels < 0)[0])
            raise ValueError(
                f"COCO results record [{index}] has category_id {int(self.category_ids[index])}, which the class map "
                f"({len(class_map)} classes, ids {min(class_map.ids)}..{max(class_map.ids)}) does not have"
            )
        wanted = np.asarray(list(image_ids or ()), dtype=np.int64).reshape(-1)
        keys = np.concatenate([wanted, np.setdiff1d(np.unique(self.image_ids), wanted)])
        by_id = np.argsort(keys, kind="stable")
        positions = by_id[np.searchsorted(keys[by_id], self.image_ids)]
        sizes = [(image_sizes or {}).get(k) for k in keys.tolist()]
        return dict(zip(keys.tolist(), self._split(positions, labels, sizes, device)))

    def split_by_image(self, gt: CocoGroundTruth, device: torch.device | str = "cpu") -> list[Detections]:
        """One :class:`Detections` per image of ``gt`` (in ``gt.image_ids`` order; empty where none), as
        :meth:`to_detections` makes them, labels in ``gt.class_map`` indices and ``image_size`` from the annotations.

        Raises:
            ValueError: image or category ids ``gt`` lacks (see :meth:`check_against`).
        """
        self.check_against(gt)
        labels = gt.class_map.labels_from_ids(torch.from_numpy(self.category_ids))
        return self._split(gt.positions(self.image_ids), labels, gt.sizes.tolist(), device)

    def _split(
        self, positions: np.ndarray, labels: Tensor, sizes: Sequence[Any], device: torch.device | str
    ) -> list[Detections]:
        """One :class:`Detections` per slot of ``sizes``; record ``i`` goes to slot ``positions[i]``."""
        order = np.argsort(positions, kind="stable")
        counts = np.bincount(positions, minlength=len(sizes)).tolist()
        boxes = box_convert(torch.from_numpy(self.boxes[order]), "xywh", "xyxy").to(device)
        scores = torch.from_numpy(self.scores[order]).to(device)
        labels = labels[torch.from_numpy(order)].to(device)
        return [
            Detections(b, s, lab, size, check_values=False)
            for b, s, lab, size in zip(
                torch.split(boxes, counts), torch.split(scores, counts), torch.split(labels, counts), sizes
            )
        ]

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write a COCO results JSON list (``.json``) or one record per line (``.jsonl``), atomically."""
        path = Path(path)
        data = self.json_lines() if path.suffix == ".jsonl" else b"[" + b",".join(self._json_rows()) + b"]"
        return atomic_write_bytes(path, data)

    def json_lines(self) -> bytes:
        """The records as JSON lines (one compact object and a newline each), as a ``.jsonl`` file holds them."""
        return b"".join(row + b"\n" for row in self._json_rows())

    def _json_rows(self) -> list[bytes]:
        """One compact JSON object per detection, as :meth:`records` would serialise (see :func:`json_rows`)."""
        return json_rows(self.image_ids, self.category_ids, self.boxes, self.scores)


def read_jsonl(path: str | Path) -> list[Any]:
    """Records of a JSON-lines file; a bad line, the last one included (a file cut mid-record), is an error naming
    its line number: no record is dropped without a word."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; a file was expected")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    lines = path.read_bytes().split(b"\n")
    records = []
    with paused_gc():
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(orjson.loads(line))
            except ValueError:
                cut = (
                    " (the last line, without a newline: was the file cut mid-record?)"
                    if number == len(lines)
                    else ""
                )
                raise ValueError(f"{path}:{number}: not valid JSON{cut}") from None
    return records


def read_results(path: str | Path) -> list[Any]:
    """The records of a COCO results file: a ``.json`` list (or a dataset-style dict whose ``annotations`` carry
    ``score``), or a ``.jsonl`` file of one record per line (see :func:`read_jsonl`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON (the line is named for JSONL), or not a list of records.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"predictions file {path} is a folder; a file was expected")
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: COCO results must be a JSON list of records (or a dict with 'annotations'), "
            f"got {type(data).__name__}"
        )
    return data


def load_predictions(
    path: str | Path, gt: CocoGroundTruth | None = None, pred_classes: str | ClassMap | None = None
) -> Predictions:
    """Read a COCO results file (see :func:`read_results`), optionally translate its category ids from
    ``pred_classes`` (e.g. ``"coco80"``) into ``gt``'s by name, and check it against ``gt``.

    The one reader of results files: float64 columns holding the file's values; :meth:`Predictions.to_detections`
    and :meth:`Predictions.split_by_image` make :class:`Detections` of them.
    """
    path = Path(path)
    records = read_results(path)
    preds = Predictions.from_records(records, source=str(path))
    if pred_classes is not None:
        if gt is None:
            raise ValueError("pred_classes needs the ground truth to translate into")
        source = pred_classes if isinstance(pred_classes, ClassMap) else ClassMap.load(pred_classes)
        preds = preds.translate(source, gt.class_map)
    if gt is not None:
        preds.check_against(gt, source=str(path))
    return preds
