"""DETR outputs -> :class:`fusion.Detections`, as the official ``PostProcess`` plus score threshold and top-k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fusion.boxes import box_convert
from fusion.detections import Detections

__all__ = ["postprocess"]


@torch.no_grad()
def postprocess(
    outputs: Mapping[str, Any],
    image_sizes: Tensor | Sequence[tuple[int, int]],
    score_thr: float = 0.0,
    top_k: int | None = None,
    classification: str = "softmax",
) -> list[Detections]:
    """Softmax, drop the no-object column, best class per query, boxes to pixels of each ORIGINAL image.

    Args:
        outputs: ``pred_logits [B, Q, C+1]`` (``[B, Q, C]`` for sigmoid) and ``pred_boxes [B, Q, 4]``
            (normalised cxcywh).
        image_sizes: ``(height, width)`` of each original image, ``[B, 2]``.
        score_thr: Keep detections with score >= this.
        top_k: Keep at most this many highest-scoring detections per image (None = all queries).
        classification: The model's ``DetrConfig.classification``: ``softmax`` (scores = softmax without the
            no-object column) or ``sigmoid`` (scores = per-class sigmoid; one detection per query, its best class).

    Returns:
        One :class:`Detections` per image: xyxy pixel boxes, scores, labels = the model's class indices
        (``0..C-1``; for official COCO checkpoints these are COCO category ids), ``image_size`` and
        ``extras["query"]`` (the query index each box came from). Boxes are not clipped (as the official code).
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    batch, num_queries = logits.shape[:2]
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=logits.device).reshape(-1, 2)
    if sizes.shape[0] != batch:
        raise ValueError(f"image_sizes has {sizes.shape[0]} entries for a batch of {batch} outputs")
    if classification == "softmax":
        scores, labels = logits.float().softmax(-1)[..., :-1].max(-1)
    elif classification == "sigmoid":
        scores, labels = logits.float().sigmoid().max(-1)
    else:
        raise ValueError(f"classification must be 'softmax' or 'sigmoid', got {classification!r}")
    height, width = sizes.unbind(1)
    scale = torch.stack((width, height, width, height), dim=1)[:, None, :]
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy") * scale
    query = torch.arange(num_queries, device=logits.device).expand(batch, -1)
    if top_k is not None and top_k < num_queries:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        scores, order = scores.topk(top_k, dim=1)  # sorted, batched over images
        labels = labels.gather(1, order)
        xyxy = xyxy.gather(1, order[..., None].expand(-1, -1, 4))
        query = order
    keep = scores >= score_thr
    # DETR may emit zero/negative-width boxes (w from a sigmoid can be ~0 but never < 0); order corners anyway
    # so Detections' xyxy invariant holds without dropping anything.
    xyxy = torch.cat(
        (torch.minimum(xyxy[..., :2], xyxy[..., 2:]), torch.maximum(xyxy[..., :2], xyxy[..., 2:])), -1
    )
    size_list = sizes.long().tolist()
    return [
        Detections(
            xyxy[i][keep[i]],
            scores[i][keep[i]],
            labels[i][keep[i]],
            image_size=(size_list[i][0], size_list[i][1]),
            extras={"query": query[i][keep[i]]},
            check_values=False,
        )
        for i in range(batch)
    ]
