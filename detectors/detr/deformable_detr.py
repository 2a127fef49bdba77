"""The fast-converging DETR: multi-scale deformable attention and its training-time helpers.

Built by :func:`detectors.detr.model.build_detr` for a :class:`~detectors.detr.model.DetrConfig` with
``deformable=True`` (preset ``detr_fast_r18``); same call and output contract as :class:`~detectors.detr.model.DETR`
(see the output dict in :mod:`detectors.detr.outputs`). What each switch does and where it comes from is in
:mod:`detectors.detr.deformable_transformer`.

Module tree: ``backbone`` (ResNet trunk to the deepest of ``backbone_layers`` + sine position encoding),
``input_proj.{l}`` (1×1 conv + GroupNorm per backbone level, then stride-2 3×3 conv + GroupNorm per extra level,
as Deformable DETR), ``transformer``, ``class_embed.{i}`` / ``bbox_embed.{i}`` (one head per decoder layer with
``box_refine``, else one shared head ``.0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Joiner, backbone_of
from .deformable_transformer import DeformableTransformer
from .denoising import denoising_queries
from .model import _PRIOR_PROB, DetrConfig
from .outputs import BackboneLevels, check_inputs, pack_outputs
from .position_encoding import PositionEmbeddingSine
from .transformer import MLP

__all__ = ["DeformableDETR"]


def _projection(in_channels: int, d_model: int, extra: bool) -> nn.Sequential:
    conv = (
        nn.Conv2d(in_channels, d_model, 3, stride=2, padding=1)
        if extra
        else nn.Conv2d(in_channels, d_model, 1)
    )
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(math.gcd(32, d_model), d_model))


class DeformableDETR(nn.Module):
    """Deformable DETR with reference-box queries, optional box refinement, two-stage selection, query groups.

    Args:
        config: A :class:`DetrConfig` with ``deformable=True``.
    """

    def __init__(self, config: DetrConfig) -> None:
        super().__init__()
        if not config.deformable:
            raise ValueError("DeformableDETR needs DetrConfig.deformable=True")
        self.config = config
        d = config.d_model
        self.num_queries = config.num_queries
        backbone = backbone_of(config)
        num_levels = len(config.backbone_layers) + config.extra_levels
        self.transformer = DeformableTransformer(
            d_model=d,
            num_heads=config.num_heads,
            enc_layers=config.enc_layers,
            dec_layers=config.dec_layers,
            dim_feedforward=config.dim_feedforward,
            dropout=config.dropout,
            num_levels=num_levels,
            num_points=config.num_points,
            num_queries=config.num_queries,
            num_query_groups=config.num_query_groups,
            box_refine=config.box_refine,
            two_stage=config.two_stage,
            enc_class_outputs=config.num_classes,
        )
        heads = config.dec_layers if config.box_refine else 1
        self.class_embed = nn.ModuleList(nn.Linear(d, config.num_logits) for _ in range(heads))
        self.bbox_embed = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(heads))
        prior_bias = -math.log((1 - _PRIOR_PROB) / _PRIOR_PROB)
        for cls_head, box_head in zip(self.class_embed, self.bbox_embed):
            if config.classification == "sigmoid":
                nn.init.constant_(cls_head.bias, prior_bias)
            # Boxes start as their reference boxes: a zero correction.
            nn.init.zeros_(box_head.layers[-1].weight)
            nn.init.zeros_(box_head.layers[-1].bias)
        if config.two_stage:
            nn.init.constant_(self.transformer.enc_class_embed.bias, prior_bias)
        channels = backbone.level_channels
        self.input_proj = nn.ModuleList(
            [_projection(c, d, extra=False) for c in channels]
            + [_projection(channels[-1] if i == 0 else d, d, extra=True) for i in range(config.extra_levels)]
        )
        self.backbone = Joiner(backbone, PositionEmbeddingSine(d // 2, normalize=True))
        self.aux_loss = config.aux_loss
        if config.denoising_groups:
            self.label_embed = nn.Embedding(config.num_classes, d)

    def _box_heads(self) -> list[nn.Module]:
        return [self.bbox_embed[i if self.config.box_refine else 0] for i in range(self.config.dec_layers)]

    def forward(
        self,
        images: Tensor,
        mask: Tensor | None = None,
        features: BackboneLevels | None = None,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> dict[str, Any]:
        """Predict.

        Args:
            images: Normalised images ``[B, 3, H, W]``.
            mask: Padding mask bool ``[B, H, W]``, True = padding; None = no padding anywhere.
            features: ``self.backbone[0].levels(images, mask)`` computed beforehand (e.g. cached while the
                backbone is frozen, ``train_backbone=False``); the backbone is then skipped.
            targets: Ground truth ``{"labels" [n], "boxes" [n, 4] cxcywh}`` per image; required in training
                mode with denoising queries (``denoising_groups > 0``), ignored otherwise.

        Returns:
            The output dict documented in :mod:`detectors.detr.outputs` (with ``enc_outputs`` for two-stage and,
            in training mode with groups, ``group_outputs``).
        """
        has_mask = mask is not None
        mask = check_inputs(images, mask)
        levels = self.backbone[0].levels(images, mask) if features is None else features
        srcs = [proj(feat) for (feat, _), proj in zip(levels, self.input_proj)]
        masks = [small for _, small in levels]
        for i, proj in enumerate(self.input_proj[len(levels) :]):
            srcs.append(proj(levels[-1][0] if i == 0 else srcs[-1]))
            masks.append(F.interpolate(mask[None].float(), size=srcs[-1].shape[-2:]).to(mask.dtype)[0])
        pos = [self.backbone[1](m).to(src.dtype) for m, src in zip(masks, srcs)]
        denoising = None
        if self.training and self.config.denoising_groups:
            if targets is None:
                raise ValueError(
                    "denoising_groups > 0: pass the ground truth as forward(..., targets=...) in training mode "
                    "(or call model.eval() for inference)"
                )
            cfg = self.config
            denoising = denoising_queries(
                targets, cfg.denoising_groups, self.label_embed, cfg.dn_box_noise, cfg.dn_label_noise
            )
        hs, boxes, enc_outputs = self.transformer(
            srcs, masks if has_mask else None, pos, self._box_heads(), denoising
        )
        layers = list(range(len(hs))) if self.aux_loss else [len(hs) - 1]
        logits = torch.stack([self.class_embed[i if self.config.box_refine else 0](hs[i]) for i in layers])
        boxes = boxes[layers]
        num_dn = 0 if denoising is None else denoising[0].shape[1]
        groups = self.config.num_query_groups if self.training else 1
        out = pack_outputs(logits[:, :, num_dn:], boxes[:, :, num_dn:], self.config, groups)
        if enc_outputs is not None:
            out["enc_outputs"] = enc_outputs
        if denoising is not None:
            dn = pack_outputs(logits[:, :, :num_dn], boxes[:, :, :num_dn], self.config, 1, num_dn)
            out["dn_outputs"], out["dn_meta"] = dn, denoising[2]
        return out
