"""Saved COCO results as an ensemble member: fuse detections that were computed elsewhere, without a model.

The file is a COCO results list ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` (``.json``),
the same records one per line (``.jsonl``), or a COCO dataset-style dict whose ``"annotations"`` carry ``score``.

Matching images to records:
    * by ``image_id``: ``ImageBatch.image_ids[i]`` (ints and digit strings are the same id);
    * by file name, when the member has ``images`` (a COCO JSON with an ``"images"`` list of ``{"id", "file_name"}``,
      e.g. the dataset's annotation file or the ``images.json`` that ``fusion predict`` writes) and the batch image
      came from a file: the longest trailing part of the path equal to a ``file_name`` wins. A file that matches no
      ``file_name`` is an error (naming the file), since it means the mapping is not the one the images belong to.

Records are read by :func:`fusion.coco.predictions.load_predictions` (boxes and scores float64: the file's values).
An image with no records gets empty :class:`Detections`: the saved member simply found nothing there, exactly as a
running detector would. Labels: ``category_id`` values are read through ``classes`` (default ``coco91``) and
translated by name into the ensemble vocabulary (``drop_classes`` as for the other adapters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from detectors.labels import label_lookup, map_labels
from fusion.classes import ClassMap
from fusion.coco.predictions import load_predictions
from fusion.detections import Detections
from fusion.detector import Detector, ImageBatch, MemberConfig

__all__ = ["PredictionsDetector"]


class PredictionsConfig(MemberConfig):
    """A member that replays saved COCO results.

    Attributes:
        path: The results file (``.json`` list or dataset-style dict, or ``.jsonl``).
        classes: Vocabulary of the records' ``category_id`` values (a shipped name or a YAML path).
        score_thr: Records scoring below this are ignored.
        images: Optional COCO JSON with an ``images`` list, to match batch images to records by file name.
        drop_classes: Classes whose records are ignored (needed for classes the ensemble vocabulary lacks).
    """

    type: Literal["predictions"] = "predictions"
    path: str
    classes: str = "coco91"
    score_thr: float = Field(0.0, ge=0, le=1)
    images: str | None = None
    drop_classes: list[str] = Field(default_factory=list)


def _relabel(det: Detections, labels: torch.Tensor) -> Detections:
    return Detections(det.boxes, det.scores, labels, det.image_size, det.extras, check_values=False)


def _key(image_id: Any) -> Any:
    """One spelling per id: ``7``, ``"7"`` and ``7.0`` are the same image."""
    if isinstance(image_id, str) and image_id.strip().lstrip("-").isdigit():
        return int(image_id)
    if isinstance(image_id, float) and image_id.is_integer():
        return int(image_id)
    return image_id


class PredictionsDetector(Detector):
    """Saved COCO results (JSON or JSONL) replayed as a member, matched by image id or file name."""

    Config = PredictionsConfig
    #: Test-time augmentation would replay the same boxes again; the ensemble runs this member once.
    supports_tta = False

    def __init__(self, config: PredictionsConfig, class_map: ClassMap, device: torch.device | str) -> None:
        super().__init__(config, class_map, torch.device(device))
        source = ClassMap.load(config.classes)
        self.lookup = label_lookup(source, class_map, config.drop_classes, config.name)
        try:
            preds = load_predictions(config.path)  # its errors name the file and the record
        except ValueError as exc:
            raise ValueError(f"member {config.name!r}: {exc}") from None
        try:
            per_image = preds.to_detections(source)
        except ValueError as exc:
            raise ValueError(f"member {config.name!r}, {config.path}: {exc}") from None
        # to_detections gives the source's contiguous labels; the lookup is keyed by external ids.
        self.detections = {
            _key(image_id): map_labels(_relabel(det, source.ids_from_labels(det.labels)), self.lookup)
            for image_id, det in ((i, d[d.scores >= config.score_thr]) for i, d in per_image.items())
        }
        self.file_ids: dict[str, Any] = {}
        if config.images is not None:
            self.file_ids = self._read_file_names(Path(config.images))

    @staticmethod
    def _read_file_names(path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise FileNotFoundError(f"images file {path} does not exist")
        data = json.loads(path.read_text())
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise ValueError(f"{path}: expected a COCO JSON with an 'images' list of {{'id', 'file_name'}}")
        mapping = {}
        for index, image in enumerate(images):
            if "id" not in image or "file_name" not in image:
                raise ValueError(
                    f"{path}: images[{index}] needs 'id' and 'file_name', got keys {sorted(image)}"
                )
            mapping[Path(image["file_name"]).as_posix()] = _key(image["id"])
        return mapping

    def image_id_of(self, batch: ImageBatch, index: int) -> Any:
        """The records' image id for image ``index`` of ``batch`` (see the module doc for the rules)."""
        path = batch.paths[index]
        if self.file_ids and path is not None:
            parts = Path(path).as_posix().split("/")
            for start in range(len(parts)):
                image_id = self.file_ids.get("/".join(parts[start:]))
                if image_id is not None:
                    return image_id
            raise ValueError(
                f"member {self.name!r}: image file {path} matches no file_name in {self.config.images}"
            )
        return _key(batch.image_ids[index])

    def predict(self, batch: ImageBatch) -> list[Detections]:
        """The saved detections of every image (empty where the file has none), on ``self.device``."""
        out = []
        for index, size in enumerate(batch.sizes):
            found = self.detections.get(self.image_id_of(batch, index))
            if found is None:
                out.append(Detections.empty(size, device=self.device, dtype=torch.float64))
            else:
                out.append(found.replace(image_size=size).to(self.device))
        return out
