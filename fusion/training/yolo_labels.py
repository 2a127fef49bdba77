"""COCO annotations and pseudo-labels -> the lines of YOLO label files, with counts of what was changed.

A line is ``"cls cx cy w h"``, the box clipped to its image and normalised to [0, 1] with 6 decimals. Crowd
annotations, pseudo-labels under the score threshold, boxes with no area after clipping and exact duplicate
lines are not written, and each is counted (see :class:`fusion.training.yolo_dataset.SplitSummary`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth
from fusion.coco.predictions import Predictions, load_predictions

__all__ = ["coco_boxes_to_yolo", "label_rows", "label_texts", "load_pseudo_labels"]

PseudoSource = str | Path | Predictions | Sequence[Mapping[str, Any]] | None


def coco_boxes_to_yolo(boxes: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCO pixel boxes -> YOLO normalised boxes, clipped to their images.

    Args:
        boxes: float ``[N, 4]`` COCO ``(x, y, w, h)`` in pixels.
        sizes: ``[N, 2]`` ``(height, width)`` of each box's image.

    Returns:
        float64 ``[N, 4]`` ``(cx, cy, w, h)`` divided by the image width/height; bool ``[N]`` True where the box
        reached outside its image (and was clipped); bool ``[N]`` True where the clipped box has no area.
    """
    from torchvision.ops import box_convert

    xyxy = box_convert(torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")
    hw = torch.as_tensor(sizes, dtype=torch.float64).reshape(-1, 2)
    upper = hw.flip(1).repeat(1, 2)  # (w, h, w, h)
    clipped = torch.minimum(xyxy.clamp(min=0), upper)
    outside = (clipped != xyxy).any(dim=1)
    no_area = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    yolo = box_convert(clipped, "xyxy", "cxcywh") / upper
    return yolo.numpy(), outside.numpy(), no_area.numpy()


def load_pseudo_labels(source: PseudoSource, gt: CocoGroundTruth, name: str) -> Predictions:
    """A split's pseudo-labels as :class:`Predictions` checked against its annotations (empty for ``None``).

    Args:
        source: A ``.json``/``.jsonl`` results file, :class:`Predictions`, a list of records, or ``None``.
        gt: The split's annotations (their image and category ids).
        name: The split's name, for messages.
    """
    if source is None:
        return Predictions.empty()
    if isinstance(source, Predictions):
        source.check_against(gt, source=f"split {name!r} pseudo_labels")
        return source
    if isinstance(source, str | Path):
        return load_predictions(source, gt)
    preds = Predictions.from_records(list(source), source=f"split {name!r} pseudo_labels")
    preds.check_against(gt, source=f"split {name!r} pseudo_labels")
    return preds


def label_rows(
    gt: CocoGroundTruth,
    pseudo: Predictions,
    target: ClassMap,
    name: str,
    *,
    ground_truth: bool,
    score_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """The boxes to write for one split, ground truth first, then pseudo-labels by descending score.

    Args:
        gt: The split's annotations.
        pseudo: Its pseudo-labels (category ids of ``gt``).
        target: The job's classes; categories are matched to them by name.
        name: The split's name, for messages.
        ground_truth: Include ``gt``'s non-crowd boxes.
        score_threshold: Pseudo-labels scoring below it are left out.

    Returns:
        Image position in ``gt`` int64 ``[N]``, class in ``target`` ``[N]``, xywh pixels float64 ``[N, 4]``,
        is-pseudo bool ``[N]``, and the counts ``crowd_skipped`` and ``below_threshold``.

    Raises:
        ValueError: a category the job's classes lack (naming the image and category).
    """
    counts = {"crowd_skipped": 0, "below_threshold": 0}
    table = gt.class_map.translation_to(target, strict=False).numpy()
    parts = []
    if ground_truth and gt.dataset["annotations"]:
        anns = gt.dataset["annotations"]
        crowd = np.asarray([bool(a["iscrowd"]) for a in anns])
        counts["crowd_skipped"] = int(crowd.sum())
        ids = np.asarray([a["image_id"] for a in anns], dtype=np.int64)
        cats = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
        boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        keep = ~crowd
        parts.append((ids[keep], cats[keep], boxes[keep], np.zeros(int(keep.sum()), dtype=bool)))
    if len(pseudo):
        keep = pseudo.scores >= score_threshold
        counts["below_threshold"] = int((~keep).sum())
        # Highest score first, ties in file order: one fixed order whatever the caller's record order was.
        order = np.flatnonzero(keep)[np.argsort(-pseudo.scores[keep], kind="stable")]
        parts.append(
            (
                pseudo.image_ids[order],
                pseudo.category_ids[order],
                pseudo.boxes[order],
                np.ones(len(order), bool),
            )
        )
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, bool), counts
    ids, cats, boxes, is_pseudo = (np.concatenate(column) for column in zip(*parts))
    labels = gt.class_map.labels_from_ids(torch.from_numpy(cats)).numpy()
    classes = table[labels]
    if (classes < 0).any():
        index = int(np.flatnonzero(classes < 0)[0])
        missing = gt.class_map.names[int(labels[index])]
        kind = "pseudo-label" if is_pseudo[index] else "annotation"
        raise ValueError(
            f"split {name!r}: an {kind} of image {int(ids[index])} has category {missing!r} "
            f"(id {int(cats[index])}), which the job's classes {list(target.names)} lack"
        )
    return gt.positions(ids), classes, boxes, is_pseudo, counts


def label_texts(
    positions: np.ndarray, classes: np.ndarray, boxes: np.ndarray, is_pseudo: np.ndarray, gt: CocoGroundTruth
) -> tuple[list[str], dict[str, int]]:
    """One label file's text per image of ``gt`` (``""`` for none) and the counts of what was changed.

    Args:
        positions, classes, boxes, is_pseudo: The rows of :func:`label_rows`.
        gt: The split's annotations (image sizes for clipping).

    Returns:
        The texts in ``gt.image_ids`` order, and the counts ``boxes``, ``pseudo_boxes``, ``clipped``,
        ``no_area``, ``duplicates`` and ``empty_images``.
    """
    yolo, outside, no_area = coco_boxes_to_yolo(boxes, gt.sizes[positions])
    keep = ~no_area
    lines = [
        f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}"
        for c, (x, y, w, h) in zip(classes[keep].tolist(), yolo[keep].tolist())
    ]
    per_image: list[dict[str, bool]] = [{} for _ in range(len(gt))]
    pseudo_lines = [{} for _ in range(len(gt))]
    for position, line, pseudo in zip(positions[keep].tolist(), lines, is_pseudo[keep].tolist()):
        if line not in per_image[position]:
            per_image[position][line] = True
            pseudo_lines[position][line] = pseudo
    written = sum(len(lines_of) for lines_of in per_image)
    counts = {
        "boxes": written,
        "pseudo_boxes": sum(sum(p.values()) for p in pseudo_lines),
        "clipped": int((outside & keep).sum()),
        "no_area": int(no_area.sum()),
        "duplicates": len(lines) - written,
        "empty_images": sum(not lines_of for lines_of in per_image),
    }
    return ["".join(f"{line}\n" for line in lines_of) for lines_of in per_image], counts
