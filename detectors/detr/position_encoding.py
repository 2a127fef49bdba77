"""Sine position encoding computed from the padding mask (DETR's ``PositionEmbeddingSine``, normalised)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine", "box_sine_embed"]


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding of the VALID pixels' coordinates.

    Coordinates are the cumulative count of non-padded pixels along each axis, normalised by the valid extent of
    each row/column and scaled to ``[0, 2π]``; so a padded image gets, on its valid pixels, the same encoding as
    the image alone. Output channels: ``num_pos_feats`` for y then ``num_pos_feats`` for x, each interleaving
    sin (even) and cos (odd) frequencies ``temperature ** (2 * (i // 2) / num_pos_feats)``.

    Args:
        num_pos_feats: Features per axis (``d_model / 2``; must be even).
        temperature: Frequency base (10000).
        normalize: Normalise coordinates to ``[0, scale]`` (DETR: True).
        scale: Normalised range (2π).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: Tensor) -> Tensor:
        """``mask`` bool ``[B, h, w]`` (True = padding) -> encoding float32 ``[B, 2 * num_pos_feats, h, w]``."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def box_sine_embed(coords: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine encoding of normalised coordinates, e.g. reference boxes (DAB-DETR / DINO query positions).

    Each coordinate in ``[0, 1]`` is scaled to ``[0, 2π]`` and encoded like one axis of
    :class:`PositionEmbeddingSine` (sin at even, cos at odd frequencies); coordinates are concatenated in order.

    Args:
        coords: ``[..., K]`` (e.g. ``K = 4`` for cxcywh boxes).
        num_feats: Features per coordinate (even).
        temperature: Frequency base.

    Returns:
        ``[..., K * num_feats]`` float32.
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    angles = coords.float()[..., None] * (2 * math.pi) / dim_t  # [..., K, F]
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-3)
