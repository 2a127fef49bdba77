"""Denoising queries (DN-DETR, Li et al. CVPR 2022; as used by DINO): training-time decoder queries made from
noised ground truth, whose targets are known, so they need no Hungarian matching.

Each of ``K`` denoising groups holds one query per ground-truth object of the image (padded to the batch's
largest count ``M``): content = embedding of the (possibly flipped) label, reference box = the box with its
corners moved by up to ``box_noise`` times half its width/height. The decoder learns to reconstruct the true
box and class from them, which stabilises the early bipartite matching (DN-DETR: +1.9 AP at 12 epochs for
DAB-DETR; DINO keeps it). The groups and the matching queries sit in separate attention blocks: no query sees
another block, so nothing of the ground truth leaks into the matching part (:func:`block_attention_mask`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

__all__ = ["block_attention_mask", "denoising_queries"]


def block_attention_mask(block_sizes: Sequence[int], device: torch.device | None = None) -> Tensor | None:
    """Self-attention mask for consecutive independent query blocks: bool ``[T, T]``, True = blocked.

    ``T = Σ block_sizes``; a query attends only to queries of its own block. None for a single block.
    """
    if len(block_sizes) <= 1:
        return None
    block = torch.repeat_interleave(
        torch.arange(len(block_sizes), device=device), torch.tensor(list(block_sizes), device=device)
    )
    return block[:, None] != block[None, :]


def denoising_queries(
    targets: Sequence[Mapping[str, Tensor]],
    num_groups: int,
    label_embed: nn.Embedding,
    box_noise: float,
    label_noise: float,
) -> tuple[Tensor, Tensor, dict[str, int]] | None:
    """Noised ground truth as decoder queries.

    Args:
        targets: Per image ``{"labels" [n_i], "boxes" [n_i, 4]}`` (normalised cxcywh).
        num_groups: Denoising groups ``K``.
        label_embed: Class embedding ``[num_classes, d_model]`` (content of a query).
        box_noise: Corner shift, as a fraction of half the box's width/height (DN-DETR 0.4).
        label_noise: Probability that a query's label is replaced by a uniformly random class.

    Returns:
        ``content [B, K·M, d]``, ``reference [B, K·M, 4]`` (cxcywh) and ``{"num_groups": K, "pad_size": M}``;
        query ``k·M + j`` of image ``b`` reconstructs target ``j`` of that image (slots ``j >= n_b`` are padding);
        None when the batch has no ground truth.
    """
    pad = max((len(t["labels"]) for t in targets), default=0)
    if pad == 0 or num_groups < 1:
        return None
    device = label_embed.weight.device
    batch = len(targets)
    labels = torch.zeros(batch, pad, dtype=torch.long, device=device)
    boxes = torch.tensor([0.5, 0.5, 0.1, 0.1], device=device).repeat(batch, pad, 1)
    for b, target in enumerate(targets):
        n = len(target["labels"])
        labels[b, :n] = target["labels"].to(device).long()
        boxes[b, :n] = target["boxes"].to(device).float()
    labels = labels.repeat(1, num_groups)  # [B, K·M]
    boxes = boxes.repeat(1, num_groups, 1)
    flip = torch.rand(labels.shape, device=device) < label_noise
    random_labels = torch.randint(0, label_embed.num_embeddings, labels.shape, device=device)
    labels = torch.where(flip, random_labels, labels)
    half = boxes[..., 2:].repeat(1, 1, 2) / 2  # (w/2, h/2, w/2, h/2)
    corners = box_convert(boxes, "cxcywh", "xyxy")
    corners = corners + (torch.rand_like(corners) * 2 - 1) * half * box_noise
    corners = corners.clamp(0.0, 1.0)
    noised = box_convert(corners, "xyxy", "cxcywh")
    noised = torch.cat((noised[..., :2], noised[..., 2:].clamp(min=1e-3)), -1)
    return label_embed(labels), noised, {"num_groups": num_groups, "pad_size": pad}
