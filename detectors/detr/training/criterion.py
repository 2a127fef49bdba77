"""DETR's set criterion (CE with down-weighted no-object, L1, GIoU, auxiliary losses) and a training step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

from .logit_mixing import logit_mixing_loss
from .matcher import HungarianMatcher, Target

__all__ = ["SetCriterion", "train_step"]


class SetCriterion(nn.Module):
    """Losses of DETR after Hungarian matching, optionally weighted per target box.

    ``loss_ce``: cross-entropy over all queries, unmatched ones target no-object (class ``num_classes``) whose
    weight is ``eos_coef``; a weighted mean over queries. ``loss_bbox``: L1 of matched normalised cxcywh boxes;
    ``loss_giou``: 1 − GIoU of matched boxes; box losses are summed and divided by the number of target boxes,
    averaged over ranks when ``torch.distributed`` is initialised (as the official code) and at least 1.
    With ``aux_outputs`` the same losses are added for every earlier decoder layer (keys suffixed ``_<i>``).
    ``loss_mix`` (Cal-DETR logit mixing, :func:`detectors.detr.training.logit_mixing.logit_mixing_loss`) when
    ``mixing_weight > 0``.

    Per-box weights (pseudo-labels): a target may carry ``"scores"`` ``[n]`` (e.g. a teacher's fused scores).
    The query matched to box ``j`` then weighs ``scores[j]`` in the CE (times its class weight), its L1 and GIoU
    terms are multiplied by ``scores[j]``, and the box count becomes the sum of the scores; a box of weight 0
    adds nothing to any loss (it still takes its query in the matching), and it is left out of logit mixing.
    Without ``"scores"`` every box weighs 1, which is the official loss.

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
        self, outputs: Mapping[str, Tensor], targets: Sequence[Target], num_boxes: Tensor
    ) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        pairs = list(zip(targets, (j.to(device) for _, j in indices)))
        matched_labels = torch.cat([t["labels"].to(device)[j] for t, j in pairs]).long()
        matched_weight = torch.cat([_box_weights(t, device)[j] for t, j in pairs])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, src_idx] = matched_labels
        query_weight = torch.ones(logits.shape[:2], dtype=torch.float32, device=device)
        query_weight[batch_idx, src_idx] = matched_weight
        # Weighted mean over queries; equals F.cross_entropy(..., weight=empty_weight) when all boxes weigh 1.
        nll = F.cross_entropy(logits.transpose(1, 2).float(), target_classes, reduction="none")
        ce_weight = self.empty_weight[target_classes] * query_weight
        loss_ce = (ce_weight * nll).sum() / ce_weight.sum().clamp_min(torch.finfo(torch.float32).tiny)
        src_boxes = boxes[batch_idx, src_idx].float()
        tgt_boxes = torch.cat([t["boxes"].to(device)[j] for t, j in pairs]).float()
        l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum(-1)
        giou = torch.diag(
            generalized_box_iou(
                box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
        )
        losses = {
            "loss_ce": loss_ce,
            "loss_bbox": (matched_weight * l1).sum() / num_boxes,
            "loss_giou": (matched_weight * (1 - giou)).sum() / num_boxes,
        }
        if self.mixing_weight > 0:
            positive = matched_weight > 0
            losses["loss_mix"] = logit_mixing_loss(
                logits[batch_idx, src_idx][positive], matched_labels[positive], self.mixing_lambda
            )
        return losses

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Target]) -> dict[str, Tensor]:
        """All losses (unweighted) plus ``"loss"``: their weighted sum, the value to back-propagate.

        Args:
            outputs: The model's output (``pred_logits``, ``pred_boxes``, optional ``aux_outputs``).
            targets: Per image ``{"labels" [n], "boxes" [n, 4] normalised cxcywh, optional "scores" [n]}``.
        """
        _check_targets(targets, self.num_classes)
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        losses = self._layer_losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            layer = self._layer_losses(aux, targets, num_boxes)
            losses.update({f"{k}_{i}": v for k, v in layer.items() if k != "loss_mix"})
        losses["loss"] = sum(self.weighted(losses).values())
        return losses

    def weighted(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each named loss times its weight (aux copies ``<name>_<i>`` weigh as ``<name>``); ``"loss"`` left out."""
        weights = {**self.weights, "loss_mix": self.mixing_weight}
        return {
            k: v * weights[k.rsplit("_", 1)[0] if k[-1].isdigit() else k]
            for k, v in losses.items()
            if k != "loss"
        }


def _box_weights(target: Target, device: torch.device) -> Tensor:
    """The target's per-box weights ``[n]`` float32 (its ``scores``, or ones)."""
    scores = target.get("scores")
    if scores is None:
        return torch.ones(len(target["labels"]), dtype=torch.float32, device=device)
    return scores.to(device=device, dtype=torch.float32)


def _check_targets(targets: Sequence[Target], num_classes: int) -> None:
    for i, target in enumerate(targets):
        if (
            not {"labels", "boxes"} <= set(target)
            or target["boxes"].ndim != 2
            or target["boxes"].shape[-1] != 4
        ):
            raise ValueError(f"targets[{i}] needs 'labels' [n] and 'boxes' [n, 4] (normalised cxcywh)")
        n = len(target["labels"])
        if n and int(target["labels"].max()) >= num_classes:
            raise ValueError(f"targets[{i}] has label {int(target['labels'].max())} >= {num_classes}")
        scores = target.get("scores")
        if scores is not None and (scores.shape != (n,) or (n and float(scores.min()) < 0)):
            raise ValueError(
                f"targets[{i}]['scores'] must be [n] = [{n}] non-negative box weights, got {list(scores.shape)}"
            )


def _num_boxes(targets: Sequence[Target], device: torch.device) -> Tensor:
    """Total box weight of the batch; with torch.distributed, the mean over ranks (official); at least 1."""
    total = torch.zeros((), dtype=torch.float32, device=device)
    for target in targets:
        total = total + _box_weights(target, device).sum()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        total = total / torch.distributed.get_world_size()
    return total.clamp(min=1.0)


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
