"""DETR's post-norm encoder-decoder transformer, batch-first, on fused scaled-dot-product attention.

Parameter names and shapes are those of the official code (which uses ``torch.nn.MultiheadAttention``):
``self_attn.in_proj_weight [3E, E]``, ``self_attn.in_proj_bias``, ``self_attn.out_proj.{weight,bias}``,
``linear1``, ``linear2``, ``norm1..3`` and ``decoder.norm``; the encoder has no final norm (post-norm).
Our :class:`MultiheadAttention` differs from torch's in two ways that keep the keys but add freedom: the head
width is independent of ``embed_dim`` (a student may keep 6 of 8 heads of width 32 in a 256-wide model), and it
calls ``F.scaled_dot_product_attention`` directly (no attention-weight output, so fused kernels run).

Tensors are batch-first: sequences ``[B, L, d_model]``, key padding masks ``[B, S]`` with True = padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .denoising import block_attention_mask

__all__ = [
    "MLP",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "MultiheadAttention",
    "Transformer",
    "group_attention_mask",
]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (the official box head: ``layers.{0,1,2}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim, *hidden], [*hidden, output_dim])
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


def group_attention_mask(
    num_queries: int, num_groups: int, device: torch.device | None = None
) -> Tensor | None:
    """Group DETR's decoder self-attention mask: bool ``[G·Q, G·Q]``, True where the two queries' groups differ.

    Groups are consecutive blocks of ``num_queries``; None when there is one group (nothing to block).
    """
    return block_attention_mask([num_queries] * num_groups, device)


class MultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout.

    Args:
        embed_dim: Model width ``E`` (input and output).
        num_heads: Number of heads ``H``.
        head_dim: Width of each head ``D`` (default ``E // H``); the projections are ``[3·H·D, E]`` and ``[E, H·D]``.
        dropout: Dropout on the attention probabilities (training only).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        head_dim = embed_dim // num_heads if head_dim is None else head_dim
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"num_heads and head_dim must be >= 1, got {num_heads} and {head_dim}")
        self.embed_dim, self.num_heads, self.head_dim, self.dropout = embed_dim, num_heads, head_dim, dropout
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner))
        self.out_proj = nn.Linear(inner, embed_dim)
        # Same initialisation as torch.nn.MultiheadAttention.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``query [B, L, E]``, ``key``/``value [B, S, E]``, ``key_padding_mask [B, S]`` -> ``[B, L, E]``.

        ``attn_mask`` bool ``[L, S]``: True = query ``l`` may NOT attend to key ``s`` (e.g. other query groups).
        """
        inner = self.num_heads * self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key:
            # Self-attention with q = k (pos added to both): one matmul for both projections.
            q, k = F.linear(query, w[: 2 * inner], b[: 2 * inner]).chunk(2, dim=-1)
        else:
            q = F.linear(query, w[:inner], b[:inner])
            k = F.linear(key, w[inner : 2 * inner], b[inner : 2 * inner])
        v = F.linear(value, w[2 * inner :], b[2 * inner :])
        allowed = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            allowed = ~attn_mask if allowed is None else allowed & ~attn_mask
        out = F.scaled_dot_product_attention(
            self._heads(q),
            self._heads(k),
            self._heads(v),
            attn_mask=allowed,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _FFN(nn.Module):
    """Mixin holding ``linear1 -> relu -> dropout -> linear2`` under the official names."""

    linear1: nn.Linear
    linear2: nn.Linear
    dropout: nn.Dropout

    def _build_ffn_and_norms(self, d_model: int, dim_ff: int, dropout: float, residuals: int) -> None:
        """The FFN and, per residual branch ``i``, ``norm{i}`` and ``dropout{i}`` (the official key names)."""
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_ff, d_model)
        for i in range(1, residuals + 1):
            setattr(self, f"norm{i}", nn.LayerNorm(d_model))
        for i in range(1, residuals + 1):
            setattr(self, f"dropout{i}", nn.Dropout(dropout))

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(_FFN):
    """Post-norm encoder layer: ``x = norm1(x + attn(x + pos, x + pos, x)); x = norm2(x + ffn(x))``."""

    def __init__(
        self, d_model: int, num_heads: int, head_dim: int | None, dim_ff: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads, head_dim, dropout)
        self._build_ffn_and_norms(d_model, dim_ff, dropout, residuals=2)

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:
        q = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src, mask)))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class DecoderLayer(_FFN):
    """Post-norm decoder layer; the query position is added to queries in both attentions, ``pos`` to memory keys."""

    def __init__(
        self, d_model: int, num_heads: int, head_dim: int | None, dim_ff: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads, head_dim, dropout)
        self.multihead_attn = MultiheadAttention(d_model, num_heads, head_dim, dropout)
        self._build_ffn_and_norms(d_model, dim_ff, dropout, residuals=3)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        mask: Tensor | None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, attn_mask=self_attn_mask)))
        tgt2 = self.multihead_attn(tgt + query_pos, memory + pos, memory, mask)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` (no final norm: the official post-norm encoder has none)."""

    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, mask)
        return src


class Decoder(nn.Module):
    """A stack of :class:`DecoderLayer`; returns ``norm(output)`` of EVERY layer, ``[L, B, Q, d_model]``."""

    def __init__(self, layers: list[DecoderLayer], d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        mask: Tensor | None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, mask, self_attn_mask)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)


class Transformer(nn.Module):
    """DETR's encoder-decoder.

    Args:
        d_model: Width.
        num_heads: Heads per attention.
        num_encoder_layers / num_decoder_layers: Depths (official 6 / 6).
        dim_feedforward: FFN hidden width (official 2048).
        dropout: Dropout everywhere (official 0.1).
        head_dim: Width of each head (default ``d_model // num_heads``).
    """

    def __init__(
        self,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        args = (d_model, num_heads, head_dim, dim_feedforward, dropout)
        self.encoder = Encoder([EncoderLayer(*args) for _ in range(num_encoder_layers)])
        self.decoder = Decoder([DecoderLayer(*args) for _ in range(num_decoder_layers)], d_model)
        self.d_model = d_model
        for p in self.parameters():  # the official _reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None,
        query_embed: Tensor,
        pos: Tensor,
        self_attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run encoder and decoder.

        Args:
            src: Projected features ``[B, d_model, h, w]``.
            mask: Padding mask ``[B, h, w]`` (True = padding) or None (no padding: no masking at all).
            query_embed: Learned queries ``[Q, d_model]``.
            pos: Position encoding ``[B, d_model, h, w]``.
            self_attn_mask: Decoder self-attention mask ``[Q, Q]``, True = blocked (query groups), or None.

        Returns:
            Decoder outputs of every layer ``[L, B, Q, d_model]`` and the memory ``[B, h*w, d_model]``.
        """
        batch = src.shape[0]
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        key_mask = None if mask is None else mask.flatten(1)
        query_pos = query_embed.unsqueeze(0).expand(batch, -1, -1)
        tgt = torch.zeros_like(query_pos)
        memory = self.encoder(src, pos, key_mask)
        hs = self.decoder(tgt, memory, pos, query_pos, key_mask, self_attn_mask)
        return hs, memory
