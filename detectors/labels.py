"""Translate a member's own class ids into the ensemble's vocabulary, by class name, in one table lookup.

Every adapter owns a source vocabulary (torchvision's COCO ids 1..90, a YOLO model's ``names``, the category ids
of a saved results file). :func:`label_lookup` builds a dense ``source id -> ensemble label`` table once, at
construction; :func:`map_labels` applies it to a whole image's detections without a Python loop over boxes.

Rules (the same for every adapter):
    * a source class whose name the ensemble vocabulary lacks is an ERROR at construction, listing all such
      classes, unless the member lists it in ``drop_classes`` (boxes of dropped classes are removed);
    * ``drop_classes`` may also name classes the ensemble has, to ignore a member's boxes of those classes;
    * source ids that no class has (torchvision's 11 "N/A" placeholders among ids 1..90) are removed: they have
      no name, so no ensemble class can receive them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fusion.classes import ClassMap
from fusion.detections import Detections

__all__ = ["label_lookup", "map_labels"]


def label_lookup(
    source: ClassMap, target: ClassMap, drop_classes: Sequence[str] = (), member: str = "member"
) -> Tensor:
    """Dense table ``[max source id + 1]``: source external id -> target label, ``-1`` = drop the box.

    Args:
        source: The member's vocabulary (external ids = the ids its model outputs).
        target: The ensemble's vocabulary.
        drop_classes: Source class names whose boxes are dropped on purpose.
        member: The member name, for messages.

    Raises:
        ValueError: ``drop_classes`` names a class the member does not have, or the member has classes the
            ensemble lacks that are not in ``drop_classes`` (all of them are listed).
    """
    unknown = [name for name in drop_classes if name not in source.names]
    if unknown:
        raise ValueError(f"member {member!r}: drop_classes names classes the member does not have: {unknown}")
    dropped = set(drop_classes)
    translation = source.translation_to(target, strict=False)
    absent = [
        name for name, label in zip(source.names, translation.tolist()) if label < 0 and name not in dropped
    ]
    if absent:
        raise ValueError(
            f"member {member!r}: {len(absent)} of its classes are not in the ensemble vocabulary "
            f"({len(target)} classes): {absent[:20]}{' ...' if len(absent) > 20 else ''}; fix the vocabulary "
            f"(`classes`), or list them in the member's `drop_classes` to drop their boxes"
        )
    table = torch.full((max(source.ids) + 1,), -1, dtype=torch.int64)
    for class_id, name, label in zip(source.ids, source.names, translation.tolist()):
        if name not in dropped:
            table[class_id] = label
    return table


def map_labels(detections: Detections, table: Tensor) -> Detections:
    """Replace source ids by ensemble labels and drop boxes whose id maps to ``-1`` or lies outside the table.

    Args:
        detections: Detections whose ``labels`` are the member's external class ids.
        table: A :func:`label_lookup` table on the same device as ``detections``.
    """
    ids = detections.labels
    inside = (ids >= 0) & (ids < table.numel())
    labels = torch.where(inside, table[ids.clamp(0, table.numel() - 1)], torch.full_like(ids, -1))
    keep = labels >= 0
    return Detections(
        detections.boxes[keep],
        detections.scores[keep],
        labels[keep],
        detections.image_size,
        {key: value[keep] for key, value in detections.extras.items()},
        check_values=False,
    )
