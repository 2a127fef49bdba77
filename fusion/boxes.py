"""Box maths of the engine, in one place: format conversion, areas and IoU.

Formats (``[..., 4]``, any leading dimensions):

* ``"xyxy"``: ``(x1, y1, x2, y2)`` corners, what :class:`~fusion.detections.Detections` holds;
* ``"xywh"``: ``(x, y, w, h)`` top-left corner and size, COCO's ``bbox``;
* ``"cxcywh"``: ``(cx, cy, w, h)`` centre and size, DETR's (normalised) boxes.

Everything is ``torchvision.ops`` (``box_convert``, ``box_area``, ``box_iou``), whose arithmetic is the obvious one
(``x + w``, ``(x1 + x2) / 2``, ``cx - 0.5 * w``...). Numpy arrays are accepted too and come back as numpy arrays of
their dtype: IEEE addition, subtraction and halving give the same bits in numpy and torch, so a float64 COCO file
converted here holds exactly the values a numpy script computes. Overlaps that must stay different live next to
their one user: WBF's greedy IoU (``policies/_clusters.py``) and COCO's crowd overlap
(``fusion/calibration/matching.py``).
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
import torchvision.ops
from torch import Tensor

__all__ = ["BoxFormat", "box_area", "box_convert", "box_iou", "paired_box_iou"]

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
_FORMATS = ("xyxy", "xywh", "cxcywh")

_Boxes = TypeVar("_Boxes", Tensor, np.ndarray)


def box_convert(boxes: _Boxes, in_fmt: BoxFormat, out_fmt: BoxFormat) -> _Boxes:
    """Convert ``[..., 4]`` boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

    Args:
        boxes: A tensor or a numpy array ``[..., 4]``.
        in_fmt: Format of ``boxes``.
        out_fmt: Format wanted.

    Returns:
        The converted boxes ``[..., 4]``, of the input's type, dtype and device (a copy, even for equal formats).

    Example:
        >>> box_convert(np.array([[10.0, 20.0, 5.0, 8.0]]), "xywh", "xyxy")
        array([[10., 20., 15., 28.]])
    """
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in _FORMATS:
            raise ValueError(f"box_convert: {name}={fmt!r}; expected one of {list(_FORMATS)}")
    if isinstance(boxes, np.ndarray):
        return torchvision.ops.box_convert(_from_numpy(boxes), in_fmt, out_fmt).numpy()
    return torchvision.ops.box_convert(boxes, in_fmt, out_fmt)


def box_area(boxes: Tensor) -> Tensor:
    """Areas ``[...]`` of xyxy boxes ``[..., 4]``: ``(x2 - x1) * (y2 - y1)``."""
    return torchvision.ops.box_area(boxes)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes ``[..., N, 4]`` x ``[..., M, 4]`` -> ``[..., N, M]`` (leading dims broadcast).

    torchvision's ``box_iou``, except that a pair with an empty union (two zero-area boxes) has IoU 0, not NaN.
    """
    return torchvision.ops.box_iou(boxes1, boxes2).nan_to_num_(nan=0.0)


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matching rows of xyxy boxes ``[..., 4]`` and ``[..., 4]`` (broadcast) -> ``[...]``, 0 for an empty union.

    The element-wise counterpart of :func:`box_iou`, for callers that already paired the boxes (chunked suppression
    compares each box with a few kept boxes only, never the full ``N x M`` matrix).
    """
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    return (inter / (area1 + area2 - inter)).nan_to_num_(nan=0.0)


def _from_numpy(array: np.ndarray) -> Tensor:
    # torch.from_numpy refuses negative strides (a reversed view); ascontiguousarray copies only then
    return torch.from_numpy(np.ascontiguousarray(array))
