"""The deformable encoder-decoder of the fast-converging DETR (:class:`~detectors.detr.deformable_detr.DeformableDETR`).

Sources of each piece:

* Encoder self-attention and decoder cross-attention are multi-scale deformable attention over every feature
  level, with a learned level embedding added to the sine position encoding (Deformable DETR, Zhu et al. 2021).
* Queries are a content vector plus a reference box ``(cx, cy, w, h)``; the query position fed to attention is an
  MLP of the box's sine encoding, recomputed each layer (DAB-DETR, Liu et al. 2022; DINO, Zhang et al. 2023).
* ``box_refine``: each decoder layer predicts its box as a correction of its input reference box, and the next
  layer takes that box (detached) as its reference (iterative bounding-box refinement, Deformable DETR).
* ``two_stage``: the encoder output at every pixel predicts classes and a box around a fixed-size proposal at
  that pixel; the top-``Q`` pixels by best class score give the decoder's reference boxes, while the content
  queries stay learned ("mixed query selection", DINO; two-stage Deformable DETR).
* Query groups: ``G`` copies of the queries at training time that do not attend to each other, each matched
  one-to-one to the ground truth (Group DETR, Chen et al. 2023); inference runs group 0 only.
* Denoising queries: noised ground truth fed as extra training-time queries (DN-DETR / DINO; see
  :mod:`detectors.detr.denoising`).

Tensors are batch-first; flattened sequences concatenate the levels' pixels row-major in level order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .deformable import MSDeformAttn
from .denoising import block_attention_mask
from .position_encoding import box_sine_embed
from .transformer import _FFN, MLP, MultiheadAttention

__all__ = ["DeformableTransformer", "inverse_sigmoid", "valid_ratios"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``logit(x)`` with ``x`` clamped to ``[eps, 1 - eps]`` (so boxes at the border stay finite)."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def valid_ratios(masks: Sequence[Tensor]) -> Tensor:
    """Fraction of each level's map that is image (not padding): ``[B, L, 2]`` as ``(width, height)``."""
    ratios = []
    for mask in masks:
        height = (~mask[:, :, 0]).sum(1).float() / mask.shape[1]
        width = (~mask[:, 0, :]).sum(1).float() / mask.shape[2]
        ratios.append(torch.stack((width, height), -1))
    return torch.stack(ratios, 1)


def pixel_centres(shapes: Sequence[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Centre of every pixel of every level, normalised over the image's VALID region: ``[B, S, 2]`` (x, y)."""
    centres = []
    for level, (h, w) in enumerate(shapes):
        ys = (torch.arange(h, dtype=torch.float32, device=ratios.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=ratios.device) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(1, h * w, 2)
        centres.append(grid / ratios[:, None, level])
    return torch.cat(centres, 1)


class DeformableEncoderLayer(_FFN):
    """Post-norm: ``x = norm1(x + msda(x + pos, ref, x)); x = norm2(x + ffn(x))``."""

    def __init__(
        self, d_model: int, num_heads: int, dim_ff: int, dropout: float, levels: int, points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, levels, num_heads, points)
        self._build_ffn_and_norms(d_model, dim_ff, dropout, residuals=2)

    def forward(
        self, src: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]], mask: Tensor | None
    ) -> Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference, src, shapes, mask)))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class DeformableDecoderLayer(_FFN):
    """Post-norm: dense self-attention among queries, deformable cross-attention to the memory, FFN."""

    def __init__(
        self, d_model: int, num_heads: int, dim_ff: int, dropout: float, levels: int, points: int
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads, None, dropout)
        self.cross_attn = MSDeformAttn(d_model, levels, num_heads, points)
        self._build_ffn_and_norms(d_model, dim_ff, dropout, residuals=3)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        memory: Tensor,
        shapes: list[tuple[int, int]],
        mask: Tensor | None,
        self_attn_mask: Tensor | None,
    ) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, attn_mask=self_attn_mask)))
        cross = self.cross_attn(tgt + query_pos, reference, memory, shapes, mask)
        tgt = self.norm2(tgt + self.dropout2(cross))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class DeformableTransformer(nn.Module):
    """Deformable encoder, query selection and a box-conditioned deformable decoder.

    Args:
        d_model / num_heads / dim_feedforward / dropout: Width, heads, FFN width, dropout.
        enc_layers / dec_layers: Depths.
        num_levels / num_points: Feature levels ``L`` and sampling points per head and level.
        num_queries: Queries ``Q`` per group.
        num_query_groups: Groups ``G`` at training time (Group DETR); parameters for ``G·Q`` learned queries.
        box_refine: Iterative box refinement.
        two_stage: Encoder proposals (then ``enc_class_outputs`` classes are predicted per pixel).
        enc_class_outputs: Class logits of the proposal head (two-stage only).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        enc_layers: int,
        dec_layers: int,
        dim_feedforward: int,
        dropout: float,
        num_levels: int,
        num_points: int,
        num_queries: int,
        num_query_groups: int = 1,
        box_refine: bool = False,
        two_stage: bool = False,
        enc_class_outputs: int = 0,
    ) -> None:
        super().__init__()
        args = (d_model, num_heads, dim_feedforward, dropout, num_levels, num_points)
        self.encoder = nn.ModuleList(DeformableEncoderLayer(*args) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DeformableDecoderLayer(*args) for _ in range(dec_layers))
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        total = num_queries * num_query_groups
        self.tgt_embed = nn.Embedding(total, d_model)
        self.d_model, self.num_queries, self.num_query_groups = d_model, num_queries, num_query_groups
        self.box_refine, self.two_stage = box_refine, two_stage
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.enc_class_embed = nn.Linear(d_model, enc_class_outputs)
            self.enc_bbox_embed = MLP(d_model, d_model, 4, 3)
        else:
            # Learned anchor boxes (logits); uniform in [0, 1] so the queries start spread over the image.
            self.refpoint_embed = nn.Embedding(total, 4)
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():  # then the deformable attentions' own initialisation
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)
        if self.two_stage:
            nn.init.zeros_(self.enc_bbox_embed.layers[-1].weight)
            nn.init.zeros_(self.enc_bbox_embed.layers[-1].bias)
        else:
            self.refpoint_embed.weight.uniform_(0.0, 1.0)
            self.refpoint_embed.weight.copy_(inverse_sigmoid(self.refpoint_embed.weight))

    def _select(
        self, memory: Tensor, mask: Tensor | None, shapes: list[tuple[int, int]], ratios: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Two-stage: top-``Q`` encoder proposals -> reference boxes ``[B, Q, 4]`` (detached) and their outputs."""
        centres = pixel_centres(shapes, ratios).expand(memory.shape[0], -1, -1)
        sizes = torch.cat(
            [
                torch.full((h * w, 2), 0.05 * 2.0**level, device=memory.device)
                for level, (h, w) in enumerate(shapes)
            ]
        )
        proposals = torch.cat((centres, sizes.expand(memory.shape[0], -1, -1)), -1)  # [B, S, 4]
        # Pixels on padding, or whose centre falls outside the image, propose nothing.
        invalid = ((centres <= 0.01) | (centres >= 0.99)).any(-1)
        if mask is not None:
            invalid = invalid | mask
        if memory.shape[1] < self.num_queries:
            raise ValueError(
                f"two-stage query selection needs at least num_queries={self.num_queries} feature pixels, "
                f"got {memory.shape[1]} (levels {shapes}): use larger images or fewer queries"
            )
        hidden = self.enc_output_norm(self.enc_output(memory.masked_fill(invalid[..., None], 0.0)))
        logits = self.enc_class_embed(hidden)
        boxes = (self.enc_bbox_embed(hidden) + inverse_sigmoid(proposals)).sigmoid()
        scores = logits.max(-1).values.masked_fill(invalid, float("-inf"))
        index = scores.topk(self.num_queries, dim=1).indices  # [B, Q]
        logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
        boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
        return boxes.detach(), {"pred_logits": logits, "pred_boxes": boxes}

    def forward(
        self,
        srcs: Sequence[Tensor],
        masks: Sequence[Tensor] | None,
        pos: Sequence[Tensor],
        box_heads: Sequence[nn.Module],
        denoising: tuple[Tensor, Tensor, dict[str, int]] | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor] | None]:
        """Run encoder, query selection and decoder.

        Args:
            srcs: Projected features per level ``[B, d_model, h_l, w_l]``.
            masks: Padding masks per level ``[B, h_l, w_l]`` (True = padding), or None (no padding).
            pos: Position encodings per level ``[B, d_model, h_l, w_l]``.
            box_heads: Per decoder layer a module ``[..., d_model] -> [..., 4]`` predicting the box as a logit-space
                correction of the layer's reference box (the same module repeated when heads are shared).
            denoising: ``(content [B, N, d], reference [B, N, 4], {"num_groups": K, "pad_size": M})`` from
                :func:`~detectors.detr.denoising.denoising_queries`: ``N = K·M`` queries put BEFORE the
                matching ones, in ``K`` attention blocks of ``M``.

        Returns:
            ``hs [L_dec, B, N + G·Q, d_model]`` (``G = 1`` in eval mode, ``N = 0`` without denoising),
            ``boxes [L_dec, B, N + G·Q, 4]`` (normalised
            cxcywh over each image's valid region) and, for two-stage, the selected proposals' outputs
            ``{"pred_logits" [B, Q, C], "pred_boxes" [B, Q, 4]}`` (else None).
        """
        batch = srcs[0].shape[0]
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i] for i, p in enumerate(pos)], 1
        )
        if masks is None:
            mask = None
            ratios = torch.ones(batch, len(srcs), 2, device=src.device)
        else:
            mask = torch.cat([m.flatten(1) for m in masks], 1)
            ratios = valid_ratios(masks)
        # Encoder reference points: pixel centres, mapped back into each level's padded map.
        enc_ref = pixel_centres(shapes, ratios)[:, :, None] * ratios[:, None]
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos_flat, enc_ref, shapes, mask)
        groups = self.num_query_groups if self.training else 1
        total = groups * self.num_queries
        enc_outputs = None
        if self.two_stage:
            ref, enc_outputs = self._select(memory, mask, shapes, ratios)
            ref = ref.repeat(1, groups, 1)
        else:
            ref = self.refpoint_embed.weight[:total].sigmoid().expand(batch, -1, -1)
        tgt = self.tgt_embed.weight[:total].expand(batch, -1, -1)
        blocks = [self.num_queries] * groups
        if denoising is not None:
            dn_tgt, dn_ref, meta = denoising
            tgt = torch.cat((dn_tgt.to(tgt.dtype), tgt), 1)
            ref = torch.cat((dn_ref.to(ref.dtype), ref), 1)
            blocks = [meta["pad_size"]] * meta["num_groups"] + blocks
        attn_mask = block_attention_mask(blocks, src.device)
        scale = torch.cat((ratios, ratios), -1)[:, None]  # [B, 1, L, 4]
        hs, boxes = [], []
        for layer, head in zip(self.decoder, box_heads):
            query_pos = self.ref_point_head(box_sine_embed(ref, self.d_model // 2).to(tgt.dtype))
            tgt = layer(tgt, query_pos, ref[:, :, None] * scale, memory, shapes, mask, attn_mask)
            box = (head(tgt) + inverse_sigmoid(ref)).sigmoid()
            hs.append(tgt)
            boxes.append(box)
            if self.box_refine:
                ref = box.detach()
        return torch.stack(hs), torch.stack(boxes), enc_outputs
