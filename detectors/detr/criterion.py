"""DETR's set criterion (CE with down-weighted no-object, L1, GIoU, auxiliary losses) and a training step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from fusion.boxes import box_convert

from .matcher import HungarianMatcher, Target

__all__ = ["SetCriterion", "train_step"]


class SetCriterion(nn.Module):
    """Losses of DETR after Hungarian matching.

    ``loss_ce``: cross-entropy over all queries, unmatched ones target no-object (class ``num_classes``) whose
    weight is ``eos_coef``; ``loss_bbox``: L1 of matched normalised cxcywh boxes; ``loss_giou``: 1 − GIoU of matched
    boxes; box losses are summed and divided by the number of ground-truth boxes in the batch (at least 1).
    With ``aux_outputs`` the same losses are added for every earlier decoder layer (keys suffixed ``_<i>``).
    ``loss_mix`` (Cal-DETR logit mixing, :func:`detectors.detr.calibration.logit_mixing_loss`) when
    ``mixing_weight > 0``.

    Args:
        num_classes: Classes without no-object.
        matcher: The matcher (default: costs 1 / 5 / 2).
        eos_coef: Weight of the no-object class in the CE (official 0.1).
        weight_ce / weight_bbox / weight_giou: Loss weights (official 1 / 5 / 2).
        mixing_weight: Weight of the Cal-DETR logit-mixing loss (paper 0.5; 0 = off, the default).
        mixing_lambda: Mixing coefficient λ of that loss (paper 0.9).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        eos_coef: float = 0.1,
        weight_ce: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        mixing_weight: float = 0.0,
        mixing_lambda: float = 0.9,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.weights = {"loss_ce": weight_ce, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        self.mixing_weight, self.mixing_lambda = mixing_weight, mixing_lambda
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def _layer_losses(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Target], num_boxes: float
    ) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        matched_labels = torch.cat([t["labels"].to(device)[j] for t, (_, j) in zip(targets, indices)]).long()
        target_classes[batch_idx, src_idx] = matched_labels
        loss_ce = F.cross_entropy(logits.transpose(1, 2).float(), target_classes, self.empty_weight)
        src_boxes = boxes[batch_idx, src_idx].float()
        tgt_boxes = torch.cat([t["boxes"].to(device)[j] for t, (_, j) in zip(targets, indices)]).float()
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        giou = torch.diag(
            generalized_box_iou(
                box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
        )
        losses = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}
        if self.mixing_weight > 0:
            from .calibration import logit_mixing_loss

            losses["loss_mix"] = logit_mixing_loss(
                logits[batch_idx, src_idx], matched_labels, self.mixing_lambda
            )
        return losses

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Target]) -> dict[str, Tensor]:
        """All losses (unweighted) plus ``"loss"``: their weighted sum, the value to back-propagate."""
        for i, target in enumerate(targets):
            if (
                not {"labels", "boxes"} <= set(target)
                or target["boxes"].ndim != 2
                or target["boxes"].shape[-1] != 4
            ):
                raise ValueError(f"targets[{i}] needs 'labels' [n] and 'boxes' [n, 4] (normalised cxcywh)")
            if len(target["labels"]) and int(target["labels"].max()) >= self.num_classes:
                raise ValueError(
                    f"targets[{i}] has label {int(target['labels'].max())} >= {self.num_classes}"
                )
        num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        losses = self._layer_losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            layer = self._layer_losses(aux, targets, num_boxes)
            losses.update({f"{k}_{i}": v for k, v in layer.items() if k != "loss_mix"})
        weights = {**self.weights, "loss_mix": self.mixing_weight}
        losses["loss"] = sum(
            v * weights[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] for k, v in losses.items()
        )
        return losses


def train_step(
    model: nn.Module,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    mask: Tensor | None,
    targets: Sequence[Target],
    *,
    max_norm: float = 0.1,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One optimisation step: forward, set loss, backward, gradient clipping (official 0.1), optimizer step.

    Args:
        model: A :class:`~detectors.detr.model.DETR` (put in train mode here).
        criterion: The loss.
        optimizer: Over the model's trainable parameters.
        images: ``[B, 3, H, W]`` normalised; ``mask`` ``[B, H, W]`` True = padding, or None.
        targets: Per image ``{"labels" [n], "boxes" [n, 4] normalised cxcywh}`` (ground truth or teacher boxes).
        max_norm: Clip the gradient norm to this (0 = no clipping).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the forward under autocast on the images' device.

    Returns:
        Every loss as a float (``"loss"`` is the weighted total that was back-propagated).
    """
    model.train()
    criterion.train()
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        outputs = model(images, mask)
    losses = criterion(outputs, targets)
    total = losses["loss"]
    if not torch.isfinite(total):
        raise FloatingPointError(
            f"non-finite loss {float(total)}: { {k: float(v) for k, v in losses.items()} }"
        )
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}
