"""The DETR model, its architecture config and ``build_detr``.

Layout (state-dict keys and shapes) is that of facebookresearch/detr, so official checkpoints load with
``strict=True``::

    model = build_detr("detr_resnet50", num_classes=91)
    model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    out = model(images, mask)   # images float [B,3,H,W]; mask bool [B,H,W] (True = padding) or None
    out["pred_logits"]          # [B, Q, num_classes + 1], last column = no-object
    out["pred_boxes"]           # [B, Q, 4] normalised (cx, cy, w, h) relative to each image's VALID region
    out["aux_outputs"]          # [{"pred_logits", "pred_boxes"}] of decoder layers 1..L-1 (when aux_loss)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import BACKBONES, Backbone, Joiner
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer

__all__ = ["DETR", "MLP", "PRESETS", "DetrConfig", "build_detr"]


@dataclass(frozen=True)
class DetrConfig:
    """Architecture of a DETR (what our checkpoint YAML stores).

    Attributes:
        backbone: ``resnet18|resnet34|resnet50|resnet101``.
        dilation: Dilated C5 ("DC5"; stride 16).
        num_classes: Classes of the class head (+1 no-object logit). Official COCO models: 91 (ids 0..90).
        d_model: Transformer width (must be a multiple of 4: half per axis of the sine encoding, sin/cos pairs).
        num_heads: Attention heads.
        head_dim: Width of each head; None = ``d_model // num_heads`` (a pruned student keeps the teacher's).
        enc_layers / dec_layers: Depths.
        dim_feedforward: FFN hidden width.
        dropout: Dropout (training only).
        num_queries: Learned object queries.
        aux_loss: Return ``aux_outputs`` (outputs of the earlier decoder layers).
        train_backbone: Let layer2-4 of the backbone train (conv1/layer1 are always frozen, as officially).
        uncertainty_modulation: Cal-DETR: modulate the final logits by their decoder-layer variance (see
            :mod:`detectors.detr.calibration`); off by default and off in the official models.
    """

    backbone: str = "resnet50"
    dilation: bool = False
    num_classes: int = 91
    d_model: int = 256
    num_heads: int = 8
    head_dim: int | None = None
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 100
    aux_loss: bool = True
    train_backbone: bool = True
    uncertainty_modulation: bool = False

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"DetrConfig.backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        for name in ("num_classes", "d_model", "num_heads", "dec_layers", "dim_feedforward", "num_queries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DetrConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.enc_layers, int) or self.enc_layers < 0:
            raise ValueError(f"DetrConfig.enc_layers must be an int >= 0, got {self.enc_layers!r}")
        if self.d_model % 4:
            raise ValueError(
                f"DetrConfig.d_model must be a multiple of 4 (sine encoding), got {self.d_model}"
            )
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"DetrConfig: d_model {self.d_model} is not divisible by num_heads {self.num_heads}; set head_dim"
            )
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            raise ValueError(f"DetrConfig.head_dim must be a positive int or None, got {self.head_dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DetrConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> DetrConfig:
        """From a plain mapping (our YAML); unknown keys raise ``ValueError`` naming them and ``where``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown DETR architecture keys {unknown}; known: {sorted(known)}")
        return cls(**data)


#: Named architectures. The four official ones plus small variants (random init) for students and tests.
PRESETS: dict[str, dict[str, Any]] = {
    "detr_resnet50": {"backbone": "resnet50"},
    "detr_resnet101": {"backbone": "resnet101"},
    "detr_resnet50_dc5": {"backbone": "resnet50", "dilation": True},
    "detr_resnet101_dc5": {"backbone": "resnet101", "dilation": True},
    "detr_resnet18": {"backbone": "resnet18"},
    "detr_resnet34": {"backbone": "resnet34"},
    "detr_tiny": {
        "backbone": "resnet18",
        "d_model": 64,
        "num_heads": 4,
        "enc_layers": 2,
        "dec_layers": 2,
        "dim_feedforward": 128,
        "num_queries": 10,
    },
}


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


class DETR(nn.Module):
    """DEtection TRansformer (Carion et al. 2020) with the official module tree.

    Args:
        config: The architecture.
    """

    def __init__(self, config: DetrConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.num_queries = config.num_queries
        # Attribute order follows the official __init__ so state_dict() lists keys in the official order.
        self.transformer = Transformer(
            d_model=d,
            num_heads=config.num_heads,
            num_encoder_layers=config.enc_layers,
            num_decoder_layers=config.dec_layers,
            dim_feedforward=config.dim_feedforward,
            dropout=config.dropout,
            head_dim=config.head_dim,
        )
        self.class_embed = nn.Linear(d, config.num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(config.num_queries, d)
        backbone = Backbone(config.backbone, config.dilation, config.train_backbone)
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        self.backbone = Joiner(backbone, PositionEmbeddingSine(d // 2, normalize=True))
        self.aux_loss = config.aux_loss

    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict[str, Any]:
        """Predict.

        Args:
            images: Normalised images ``[B, 3, H, W]`` (see :func:`detectors.detr.preprocess.nested_batch`).
            mask: Padding mask bool ``[B, H, W]``, True = padding; None = no padding anywhere.

        Returns:
            ``pred_logits [B, Q, num_classes + 1]``, ``pred_boxes [B, Q, 4]`` (sigmoid cxcywh, normalised to
            each image's valid region) and, with ``aux_loss``, ``aux_outputs`` (list of L-1 dicts of the same).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
        has_mask = mask is not None
        if mask is None:
            mask = torch.zeros((images.shape[0], *images.shape[-2:]), dtype=torch.bool, device=images.device)
        elif mask.shape != (images.shape[0], *images.shape[-2:]) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool [B, H, W] = {[images.shape[0], *images.shape[-2:]]}, "
                f"got {mask.dtype} {list(mask.shape)}"
            )
        features, small_mask, pos = self.backbone(images, mask)
        hs, _ = self.transformer(
            self.input_proj(features), small_mask if has_mask else None, self.query_embed.weight, pos
        )
        if not self.aux_loss:
            hs = hs[-1:]  # only the last layer's heads are needed
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        if self.config.uncertainty_modulation:
            from .calibration import modulate_logits, query_uncertainty

            out["pred_logits"] = modulate_logits(logits[-1], query_uncertainty(logits))
        return out


def build_detr(name: str | DetrConfig = "detr_resnet50", num_classes: int = 91, **overrides: Any) -> DETR:
    """Build a DETR with random weights (no download ever).

    Args:
        name: A key of :data:`PRESETS` (``detr_resnet50``, ``detr_resnet101``, ``detr_resnet50_dc5``,
            ``detr_resnet101_dc5``, ``detr_resnet18``, ``detr_resnet34``, ``detr_tiny``) or a :class:`DetrConfig`.
        num_classes: Classes without no-object (official COCO checkpoints: 91).
        **overrides: Any :class:`DetrConfig` field, e.g. ``enc_layers=4, d_model=64``.
    """
    if isinstance(name, DetrConfig):
        return DETR(dataclasses.replace(name, **overrides) if overrides else name)
    if name not in PRESETS:
        raise ValueError(f"unknown DETR architecture {name!r}; known: {sorted(PRESETS)}")
    fields = {**PRESETS[name], "num_classes": num_classes, **overrides}
    return DETR(DetrConfig.from_dict(fields, where=f"build_detr({name!r})"))
