"""Set losses for the fast-converging DETR: focal classification, encoder proposals, query groups, denoising.

Written against the output dict documented in :mod:`detectors.detr.outputs`:

* :class:`FocalHungarianMatcher`: one-to-one matching whose class cost is the focal-loss difference
  ``α(1-p)^γ·(-log p) − (1-α)p^γ·(-log(1-p))`` of the target class (Deformable DETR's matcher; weights 2/5/2).
* :class:`FocalSetCriterion`: per matched layer ``loss_focal`` (sigmoid focal loss over every query and class,
  target 1 only for a query's matched class; Lin et al. 2017, as Deformable DETR / DINO), ``loss_bbox`` (L1) and
  ``loss_giou``, each summed and divided by the number of target boxes. It supervises the last layer, every
  ``aux_outputs`` layer (suffix ``_<i>``), the two-stage ``enc_outputs`` (suffix ``_enc``) and every
  ``group_outputs`` group with its own aux layers (suffix ``_g<g>`` / ``_g<g>_<i>``), each group matched
  independently: Group DETR's one-to-many supervision (Chen et al. 2023). ``encoder_matches=k > 1`` matches
  the encoder proposals one-to-many: every target repeated ``k`` times before the Hungarian matching, so each
  object supervises ``k`` proposals (H-DETR's hybrid matching, Jia et al. 2023, applied to the two-stage
  proposals, which reach inference only through the top-``num_queries`` selection, so duplicates cost nothing
  there); divided by ``k`` times the box count.
* Denoising queries (``dn_outputs``, DN-DETR / DINO): the same three losses with the FIXED assignment of
  ``dn_meta`` (suffixes ``_dn`` / ``_dn_<i>``), divided by the number of boxes times the denoising groups.
* :func:`group_set_loss` / :class:`GroupSetLoss`: the same group sum around any criterion (e.g. the softmax
  ``SetCriterion``).
* :func:`criterion_for`: the right loss for a :class:`~detectors.detr.model.DetrConfig`.

``"loss"`` is the weighted total to back-propagate. As :class:`~detectors.detr.training.criterion.SetCriterion`:
the box count is averaged over ranks under ``torch.distributed`` (official DETR), and a target may carry per-box
weights ``"scores"`` [n] (pseudo-labels) that scale its matched query's focal, L1 and GIoU terms and the count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from .criterion import SetCriterion, _box_weights, _check_targets, _num_boxes
from .matcher import HungarianMatcher, Target

__all__ = [
    "FocalHungarianMatcher",
    "FocalSetCriterion",
    "GroupSetLoss",
    "criterion_for",
    "denoising_indices",
    "group_set_loss",
]


class FocalHungarianMatcher(HungarianMatcher):
    """Hungarian matching with the focal class cost (for ``classification="sigmoid"`` logits ``[B, Q, C]``).

    Args:
        cost_class: Weight of the focal class cost (Deformable DETR 2).
        cost_bbox: Weight of the L1 box cost (5).
        cost_giou: Weight of the negative GIoU (2).
        alpha / gamma: Focal parameters (0.25 / 2).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        # The box costs come from the plain matcher (class weight 0 there); the class cost is added here.
        super().__init__(cost_class=0.0, cost_bbox=cost_bbox, cost_giou=cost_giou)
        self.focal_cost_class, self.alpha, self.gamma = cost_class, alpha, gamma

    def cost_matrices(self, outputs: Mapping[str, Any], targets: Sequence[Target]) -> list[Tensor]:
        """Cost of every (query, target) pair, one float CPU tensor ``[Q, n_i]`` per image."""
        box_costs = super().cost_matrices(outputs, targets)
        logits = outputs["pred_logits"]
        labels = torch.cat([t["labels"] for t in targets]).to(logits.device).long()
        if labels.numel() == 0:
            return box_costs
        prob = logits.detach().float().sigmoid()[..., labels]  # [B, Q, N]
        eps = 1e-8
        neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + eps).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + eps).log()
        class_cost = (self.focal_cost_class * (pos - neg)).cpu()
        sizes = [len(t["labels"]) for t in targets]
        return [box + c[i] for i, (box, c) in enumerate(zip(box_costs, class_cost.split(sizes, -1)))]


class FocalSetCriterion(nn.Module):
    """Focal + L1 + GIoU set loss over every supervised layer of a sigmoid-classification DETR.

    Args:
        num_classes: Classes (the logits' width).
        matcher: Default :class:`FocalHungarianMatcher` (2 / 5 / 2).
        weight_focal / weight_bbox / weight_giou: Loss weights (Deformable DETR 2 / 5 / 2).
        alpha / gamma: Focal loss parameters (0.25 / 2).
        encoder_matches: Proposals each target supervises in ``enc_outputs`` (1 = one-to-one, as Deformable DETR;
            see the module doc).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        weight_focal: float = 2.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        encoder_matches: int = 1,
    ) -> None:
        super().__init__()
        # Loss settings arrive as floats from configs (``loss: dict[str, float]``): 4.0 means 4.
        if encoder_matches != int(encoder_matches) or encoder_matches < 1:
            raise ValueError(f"encoder_matches must be a whole number >= 1, got {encoder_matches!r}")
        self.encoder_matches = int(encoder_matches)
        self.num_classes = num_classes
        self.matcher = matcher or FocalHungarianMatcher(alpha=alpha, gamma=gamma)
        self.weights = {"loss_focal": weight_focal, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        self.alpha, self.gamma = alpha, gamma

    def layer_losses(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Target],
        num_boxes: Tensor | float,
        indices: list[tuple[Tensor, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """``loss_focal``, ``loss_bbox``, ``loss_giou`` of one layer's ``pred_logits [B, Q, C]`` / ``pred_boxes``.

        ``indices``: per image (query indices, target indices); None = Hungarian matching.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"pred_logits has {logits.shape[-1]} classes, the criterion {self.num_classes}: "
                "the focal loss needs classification='sigmoid' logits (no no-object column)"
            )
        if indices is None:
            indices = self.matcher(outputs, targets)
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        pairs = list(zip(targets, (j.to(device) for _, j in indices)))
        labels = torch.cat([t["labels"].to(device)[j] for t, j in pairs]).long()
        matched_weight = torch.cat([_box_weights(t, device)[j] for t, j in pairs])
        onehot = torch.zeros(logits.shape, dtype=torch.float32, device=device)
        onehot[batch_idx, src_idx, labels] = 1.0
        query_weight = torch.ones(logits.shape[:2], dtype=torch.float32, device=device)
        query_weight[batch_idx, src_idx] = matched_weight
        focal = sigmoid_focal_loss(logits.float(), onehot, self.alpha, self.gamma, reduction="none")
        src_boxes = boxes[batch_idx, src_idx].float()
        tgt_boxes = torch.cat([t["boxes"].to(device)[j] for t, j in pairs]).float()
        giou = torch.diag(
            generalized_box_iou(
                box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
        )
        return {
            "loss_focal": (focal * query_weight[..., None]).sum() / num_boxes,
            "loss_bbox": (matched_weight * (src_boxes - tgt_boxes).abs().sum(-1)).sum() / num_boxes,
            "loss_giou": (matched_weight * (1 - giou)).sum() / num_boxes,
        }

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Target]) -> dict[str, Tensor]:
        """All losses (unweighted, suffixed per layer) plus ``"loss"``, their weighted sum."""
        _check_targets(targets, self.num_classes)
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        losses: dict[str, Tensor] = {}
        for suffix, layer in _supervised_layers(outputs):
            if suffix == "_enc" and self.encoder_matches > 1:
                k = self.encoder_matches
                part = self.layer_losses(layer, [_repeated(t, k) for t in targets], num_boxes * k)
            else:
                part = self.layer_losses(layer, targets, num_boxes)
            losses.update({key + suffix: v for key, v in part.items()})
        if "dn_outputs" in outputs:
            meta = outputs["dn_meta"]
            indices = denoising_indices(targets, meta["num_groups"], meta["pad_size"])
            dn_boxes = num_boxes * meta["num_groups"]
            dn = outputs["dn_outputs"]
            layers = [("_dn", dn)] + [(f"_dn_{i}", aux) for i, aux in enumerate(dn.get("aux_outputs", []))]
            for suffix, layer in layers:
                part = self.layer_losses(layer, targets, dn_boxes, indices)
                losses.update({k + suffix: v for k, v in part.items()})
        losses["loss"] = sum(self.weighted(losses).values())
        return losses

    def weighted(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each named loss times the weight of its base name (``loss_focal_g1_0`` weighs as ``loss_focal``)."""
        return {k: v * self.weights["_".join(k.split("_")[:2])] for k, v in losses.items() if k != "loss"}


def _repeated(target: Target, times: int) -> Target:
    """``target`` with every box (and its label and score) listed ``times`` times, in blocks."""
    return {
        key: value.repeat(times, *([1] * (value.ndim - 1))) if key in ("labels", "boxes", "scores") else value
        for key, value in target.items()
    }


def denoising_indices(
    targets: Sequence[Target], num_groups: int, pad_size: int
) -> list[tuple[Tensor, Tensor]]:
    """The fixed assignment of denoising queries: query ``k·M + j`` -> target ``j``, per image, all groups."""
    result = []
    for target in targets:
        n = len(target["labels"])
        own = torch.arange(n, dtype=torch.int64)
        queries = (torch.arange(num_groups, dtype=torch.int64)[:, None] * pad_size + own).flatten()
        result.append((queries, own.repeat(num_groups)))
    return result


def _supervised_layers(outputs: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    """``(suffix, layer outputs)`` of every layer to match: top, aux, encoder, then each group's."""
    layers: list[tuple[str, Mapping[str, Any]]] = [(prefix, outputs)]
    layers += [(f"{prefix}_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
    if "enc_outputs" in outputs:
        layers.append((f"{prefix}_enc", outputs["enc_outputs"]))
    for g, group in enumerate(outputs.get("group_outputs", []), start=1):
        layers += _supervised_layers(group, f"{prefix}_g{g}")
    return layers


def group_set_loss(
    criterion: Callable[[Mapping[str, Any], Sequence[Target]], dict[str, Tensor]],
    outputs: Mapping[str, Any],
    targets: Sequence[Target],
) -> dict[str, Tensor]:
    """Group DETR around any set criterion: ``criterion`` on group 0 and on each ``group_outputs`` entry.

    Keys of group ``g > 0`` get the suffix ``_g<g>``; ``"loss"`` is the sum of the groups' totals.
    """
    main = {k: v for k, v in outputs.items() if k != "group_outputs"}
    losses = dict(criterion(main, targets))
    total = losses["loss"]
    for g, group in enumerate(outputs.get("group_outputs", []), start=1):
        part = criterion(group, targets)
        total = total + part["loss"]
        losses.update({f"{k}_g{g}": v for k, v in part.items() if k != "loss"})
    losses["loss"] = total
    return losses


class GroupSetLoss(nn.Module):
    """:func:`group_set_loss` as a module (so the wrapped criterion's buffers follow ``.to(device)``)."""

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion

    @property
    def matcher(self) -> HungarianMatcher:
        """The wrapped criterion's matcher."""
        return self.criterion.matcher

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Target]) -> dict[str, Tensor]:
        return group_set_loss(self.criterion, outputs, targets)

    def weighted(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each loss times the wrapped criterion's weight for it (a group's ``_g<g>`` suffix weighs alike)."""
        out = {}
        for key, value in losses.items():
            if key != "loss":
                (out[key],) = self.criterion.weighted({_GROUP.sub("", key): value}).values()
        return out


_GROUP = re.compile(r"_g\d+")


def criterion_for(config: Any, **settings: Any) -> nn.Module:
    """The set loss matching a :class:`~detectors.detr.model.DetrConfig`'s outputs.

    ``sigmoid`` -> :class:`FocalSetCriterion` (also covers ``enc_outputs``, ``group_outputs`` and ``dn_outputs``)
    with a :class:`FocalHungarianMatcher`; ``softmax`` -> :class:`SetCriterion` with a
    :class:`HungarianMatcher`, wrapped in :class:`GroupSetLoss` when ``num_query_groups > 1``.

    Args:
        config: The model's architecture.
        **settings: The criterion's keyword arguments (weights, ``alpha``/``gamma`` or ``eos_coef`` ...) and
            the matcher's ``cost_class``/``cost_bbox``/``cost_giou``.
    """
    costs = {k: settings.pop(k) for k in ("cost_class", "cost_bbox", "cost_giou") if k in settings}
    if config.classification == "sigmoid":
        focal = {k: settings[k] for k in ("alpha", "gamma") if k in settings}
        return FocalSetCriterion(config.num_classes, FocalHungarianMatcher(**costs, **focal), **settings)
    plain = SetCriterion(config.num_classes, HungarianMatcher(**costs), **settings)
    return GroupSetLoss(plain) if config.num_query_groups > 1 else plain
