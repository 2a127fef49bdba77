"""What every DETR of :func:`~detectors.detr.model.build_detr` returns, and the helpers that build it.

The output dict of every model ``build_detr`` makes (:class:`~detectors.detr.model.DETR` and
:class:`~detectors.detr.deformable_detr.DeformableDETR`), what a criterion may rely on:

* ``pred_logits``: ``[B, Q, K]``, the last decoder layer's class logits. ``classification="softmax"``:
  ``K = num_classes + 1``, column ``num_classes`` = no-object (DETR's CE). ``"sigmoid"``: ``K = num_classes``,
  independent per-class logits, no no-object column (focal loss; "no object" = every class low).
* ``pred_boxes``: ``[B, Q, 4]`` sigmoid cxcywh normalised to each image's valid (unpadded) region.
* ``aux_outputs`` (when ``aux_loss``): list of ``dec_layers - 1`` dicts ``{"pred_logits", "pred_boxes"}`` of the
  earlier decoder layers, first layer first, shaped as above.
* ``enc_outputs`` (``two_stage`` only, train and eval): ``{"pred_logits" [B, Q, num_classes],
  "pred_boxes" [B, Q, 4]}``, the ``Q`` encoder proposals that became the decoder's reference boxes (sigmoid
  logits always); supervise them with one-to-one matching like a decoder layer (DINO's encoder loss).
* ``group_outputs`` (training mode and ``num_query_groups = G > 1`` only): list of ``G - 1`` dicts shaped like
  the top level (``pred_logits``, ``pred_boxes``, ``aux_outputs``) for query groups 1..G-1; group 0 is the top
  level. Groups never attend to each other; Group DETR's loss is the plain set loss summed over the G groups,
  each group matched one-to-one to the same targets independently. Absent in eval mode (inference = group 0).
* ``dn_outputs`` and ``dn_meta`` (training mode with ``denoising_groups = K > 0``, which requires
  ``forward(images, mask, targets=...)``; absent when the batch has no box):
  ``{"pred_logits" [B, K·M, C], "pred_boxes" [B, K·M, 4], "aux_outputs"}`` and
  ``{"num_groups": K, "pad_size": M}``, ``M`` = most targets in one image. Query ``k·M + j`` of image ``b``
  has the FIXED target ``j`` of that image (no matching; slots ``j >= n_b`` are padding, negatives).

Every tensor is in the model's compute dtype; ``Q = num_queries``. Both models take
``forward(images, mask=None, features=None, targets=None)``: ``features`` = precomputed
``model.backbone[0].levels(images, mask)`` (a frozen backbone's cache), ``targets`` = ground truth for denoising.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .model import DetrConfig

__all__ = ["BackboneLevels", "check_inputs", "pack_outputs"]

#: What ``Backbone.levels`` returns: per level, features ``[B, C_l, h_l, w_l]`` and padding mask ``[B, h_l, w_l]``.
BackboneLevels = list[tuple[Tensor, Tensor]]


def pack_outputs(
    logits: Tensor, boxes: Tensor, config: DetrConfig, groups: int, num_queries: int | None = None
) -> dict[str, Any]:
    """Per-layer head outputs -> the output dict documented in this module.

    Args:
        logits: ``[L, B, G·Q, K]`` class logits of every decoder layer (or only the last when not ``aux_loss``).
        boxes: ``[L, B, G·Q, 4]`` boxes, same layers.
        config: The architecture (``aux_loss``, ``uncertainty_modulation``).
        groups: Query groups present (``G``).
        num_queries: ``Q`` (default ``config.num_queries``).
    """
    num_queries = config.num_queries if num_queries is None else num_queries
    outputs = []
    for g in range(groups):
        part_logits = logits[:, :, g * num_queries : (g + 1) * num_queries]
        part_boxes = boxes[:, :, g * num_queries : (g + 1) * num_queries]
        out: dict[str, Any] = {"pred_logits": part_logits[-1], "pred_boxes": part_boxes[-1]}
        if config.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(part_logits[:-1], part_boxes[:-1])
            ]
        if config.uncertainty_modulation:
            from .calibration import modulate_logits, query_uncertainty

            out["pred_logits"] = modulate_logits(part_logits[-1], query_uncertainty(part_logits))
        outputs.append(out)
    if groups > 1:
        outputs[0]["group_outputs"] = outputs[1:]
    return outputs[0]


def check_inputs(images: Tensor, mask: Tensor | None) -> Tensor:
    """Validate ``images [B, 3, H, W]`` and ``mask`` bool ``[B, H, W]``; return the mask (all False if None)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
    if mask is None:
        return torch.zeros((images.shape[0], *images.shape[-2:]), dtype=torch.bool, device=images.device)
    if mask.shape != (images.shape[0], *images.shape[-2:]) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool [B, H, W] = {[images.shape[0], *images.shape[-2:]]}, "
            f"got {mask.dtype} {list(mask.shape)}"
        )
    return mask
