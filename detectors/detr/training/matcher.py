"""Hungarian matching of predictions to ground truth (DETR's ``HungarianMatcher``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "Target"]

#: A ground-truth target: ``{"labels": int64 [n], "boxes": float [n, 4] normalised cxcywh}``.
Target = Mapping[str, Tensor]


class HungarianMatcher:
    """One-to-one assignment minimising ``w_class·(−p[class]) + w_bbox·L1 + w_giou·(−GIoU)``.

    Args:
        cost_class: Weight of the negative class probability (official 1).
        cost_bbox: Weight of the L1 distance between normalised cxcywh boxes (official 5).
        cost_giou: Weight of the negative generalised IoU (official 2).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    def cost_matrices(self, outputs: Mapping[str, Any], targets: Sequence[Target]) -> list[Tensor]:
        """Cost of every (query, target) pair, one float CPU tensor ``[Q, n_i]`` per image.

        All images' costs are computed in one batched pass on the outputs' device.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch, num_queries = logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch} predictions")
        prob = logits.detach().flatten(0, 1).float().softmax(-1)
        out_boxes = boxes.detach().flatten(0, 1).float()
        tgt_ids = torch.cat([t["labels"] for t in targets]).to(logits.device).long()
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(logits.device).float()
        sizes = [len(t["boxes"]) for t in targets]
        if tgt_ids.numel() == 0:
            return [torch.zeros((num_queries, 0)) for _ in targets]
        cost = (
            self.cost_class * -prob[:, tgt_ids]
            + self.cost_bbox * torch.cdist(out_boxes, tgt_boxes, p=1)
            + self.cost_giou
            * -generalized_box_iou(
                box_convert(out_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
        )
        cost = cost.view(batch, num_queries, -1).cpu()
        return [c[i] for i, c in enumerate(cost.split(sizes, -1))]

    @torch.no_grad()
    def __call__(self, outputs: Mapping[str, Any], targets: Sequence[Target]) -> list[tuple[Tensor, Tensor]]:
        """Per image ``(query indices, target indices)``, int64, each of length ``min(Q, n_i)``."""
        result = []
        for cost in self.cost_matrices(outputs, targets):
            rows, cols = linear_sum_assignment(cost.numpy())
            result.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return result
