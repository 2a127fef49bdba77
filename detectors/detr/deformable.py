"""Multi-scale deformable attention in pure PyTorch (Deformable DETR, Zhu et al., ICLR 2021).

Each query looks at ``P`` sampled points per head and per feature level instead of at every pixel: the points are
its reference point plus learned offsets, their values are read by bilinear interpolation
(``F.grid_sample`` over each level) and averaged with learned weights (softmax over the ``L·P`` points of a
head). Cost is linear in the number of pixels, which is why the encoder can run on stride-8 features and why it
converges in ~10× fewer epochs than DETR's dense attention (paper: 43.8 AP in 50 epochs vs DETR's 500).

Coordinates: reference points and sampling locations are normalised ``(x, y)`` in ``[0, 1]`` over each level's
padded feature map (``(0, 0)`` the top-left corner of the top-left pixel, ``(1, 1)`` the bottom-right corner of
the bottom-right one; ``align_corners=False``); points outside read zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MSDeformAttn", "ms_deform_attn"]


def ms_deform_attn(
    value: Tensor,
    shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The attention core: weighted sum of bilinearly sampled values.

    Args:
        value: ``[B, S, H, D]``, the levels' pixels flattened row-major and concatenated in level order,
            ``S = Σ h_l·w_l``.
        shapes: ``(h_l, w_l)`` of each level.
        sampling_locations: ``[B, Q, H, L, P, 2]`` normalised ``(x, y)``.
        attention_weights: ``[B, Q, H, L, P]`` (already normalised by the caller).

    Returns:
        ``[B, Q, H·D]`` (heads concatenated).
    """
    batch, total, heads, dim = value.shape
    num_queries, levels, points = (
        sampling_locations.shape[1],
        sampling_locations.shape[3],
        sampling_locations.shape[4],
    )
    if total != sum(h * w for h, w in shapes) or levels != len(shapes):
        raise ValueError(f"value has {total} pixels over {levels} levels but shapes are {shapes}")
    # One image per (batch, head): grid_sample batches over its first dimension.
    per_head = value.permute(0, 2, 3, 1).reshape(batch * heads, dim, total)
    grids = (
        (2.0 * sampling_locations - 1.0)
        .transpose(1, 2)
        .reshape(batch * heads, num_queries, levels, points, 2)
    )
    sampled = []
    start = 0
    for level, (h, w) in enumerate(shapes):
        level_map = per_head[:, :, start : start + h * w].unflatten(-1, (h, w))
        start += h * w
        # [B·H, D, Q, P]: grid given as a [Q, P] "image" of sampling points
        sampled.append(
            F.grid_sample(
                level_map, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, num_queries, levels * points)
    # [B·H, D, Q, L·P] · [B·H, Q, L·P] -> [B·H, D, Q]
    out = torch.einsum("ndqk,nqk->ndq", torch.cat(sampled, dim=-1), weights)
    return out.reshape(batch, heads * dim, num_queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module.

    Args:
        d_model: Width ``E`` of queries and values.
        num_levels: Feature levels ``L``.
        num_heads: Heads ``H`` (``E`` must be divisible by it).
        num_points: Sampling points ``P`` per head and level.
    """

    def __init__(self, d_model: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_levels, self.num_heads, self.num_points = num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: at start every head samples along its own direction.

        Offsets start at zero weight with a bias putting point ``p`` of head ``h`` at ``(p + 1)`` pixels along
        the angle ``2πh/H`` (scaled so the larger coordinate is 1), equal attention weights, Xavier projections.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack((angles.cos(), angles.sin()), -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        bias = directions[:, None, None, :] * steps[None, None, :, None]  # [H, 1, P, 2]
        self.sampling_offsets.bias.copy_(bias.expand(-1, self.num_levels, -1, -1).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        value: Tensor,
        shapes: list[tuple[int, int]],
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend.

        Args:
            query: ``[B, Q, E]`` (content + position).
            reference: ``[B, Q, L, 2]`` points ``(x, y)``, or ``[B, Q, L, 4]`` boxes ``(cx, cy, w, h)``, per
                level, normalised over each level's padded map. With points, offsets are in pixels of each
                level; with boxes, in units of half the box size divided by ``P`` (so ``P`` points span the box).
            value: ``[B, S, E]`` (the flattened levels).
            shapes: ``(h_l, w_l)`` per level.
            padding_mask: ``[B, S]`` True = padding (its values are zeroed, so they contribute nothing).

        Returns:
            ``[B, Q, E]``.
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(shapes) != levels or reference.shape[2] != levels:
            raise ValueError(
                f"expected {levels} levels, got shapes {shapes} and reference {list(reference.shape)}"
            )
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.unflatten(-1, (heads, -1))
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        ref = reference[:, :, None, :, None, :]  # [B, Q, 1, L, 1, 2|4]
        if reference.shape[-1] == 2:
            size = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            locations = ref + offsets / size[None, None, None, :, None, :]
        elif reference.shape[-1] == 4:
            locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5
        else:
            raise ValueError(f"reference must end in 2 (points) or 4 (boxes), got {list(reference.shape)}")
        return self.output_proj(ms_deform_attn(value, shapes, locations, weights))
