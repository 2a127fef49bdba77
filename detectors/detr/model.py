"""The DETR model, its architecture config and ``build_detr`` (which also builds the fast deformable variant).

Layout (state-dict keys and shapes) is that of facebookresearch/detr, so official checkpoints load with
``strict=True``::

    model = build_detr("detr_resnet50", num_classes=91)
    model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    out = model(images, mask)   # images float [B,3,H,W]; mask bool [B,H,W] (True = padding) or None
    out["pred_logits"]          # [B, Q, num_classes + 1], last column = no-object
    out["pred_boxes"]           # [B, Q, 4] normalised (cx, cy, w, h) relative to each image's VALID region
    out["aux_outputs"]          # [{"pred_logits", "pred_boxes"}] of decoder layers 1..L-1 (when aux_loss)

The output dict every model of ``build_detr`` returns, in full (query groups, encoder proposals, denoising):
:mod:`detectors.detr.outputs`.

Fast-convergence switches (all off by default, the official layout): ``backbone_layers`` (lighter / multi-level
backbone), ``deformable`` (+ ``extra_levels``, ``num_points``, ``box_refine``, ``two_stage``),
``classification="sigmoid"`` (focal), ``num_query_groups`` (Group DETR), ``denoising_groups`` (DN-DETR); sources
in :class:`DetrConfig` and :mod:`detectors.detr.deformable_transformer`; their losses in
:mod:`detectors.detr.training.fast_losses`; the preset ``detr_fast_r18`` combines them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .backbone import BACKBONE_NORMS, BACKBONES, Joiner, backbone_of
from .outputs import BackboneLevels, check_inputs, pack_outputs
from .position_encoding import PositionEmbeddingSine
from .transformer import MLP, Transformer, group_attention_mask

__all__ = ["DETR", "MLP", "PRESETS", "DetrConfig", "build_detr"]

_PRIOR_PROB = 0.01  # focal-loss bias init: every class starts at p = 0.01 (RetinaNet, Lin et al. 2017)


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
        train_backbone: Let layer2-4 of the backbone train (conv1/layer1 are frozen, as officially, unless
            ``backbone_norm="batch"``); ``False`` freezes the whole trunk.
        backbone_norm: ``frozen`` (official FrozenBatchNorm, for pretrained weights) or ``batch`` (trainable
            BatchNorm and a trainable stem: a backbone trained from random init, as every backbone here is
            offline; see :class:`detectors.detr.backbone.Backbone`).
        uncertainty_modulation: Cal-DETR: modulate the final logits by their decoder-layer variance (see
            :mod:`detectors.detr.calibration`); off by default and off in the official models.
        backbone_layers: ResNet stages feeding the transformer, ascending (2 = stride 8, 3 = stride 16,
            4 = stride 32); the trunk ends at the last one. Official: ``(4,)``. ``(3,)`` = lighter stride-16
            backbone (ResNet-18 to layer3 keeps 25 % of its weights); several stages need ``deformable``.
        deformable: Multi-scale deformable attention in encoder and decoder (Deformable DETR, Zhu et al. 2021)
            with reference-box queries (DAB-DETR / DINO): see :mod:`detectors.detr.deformable_transformer`.
        extra_levels: Deformable only: extra levels made by stride-2 3×3 convolutions on top of the last stage
            (Deformable DETR adds 1, stride 64).
        num_points: Deformable only: sampling points per head and level (paper 4).
        box_refine: Deformable only: iterative bounding-box refinement, one box head per decoder layer.
        two_stage: Deformable only: decoder reference boxes from the top-``num_queries`` encoder proposals,
            content queries learned ("mixed query selection", DINO); needs ``classification="sigmoid"``.
        classification: ``softmax`` (DETR: ``num_classes + 1`` logits, CE) or ``sigmoid`` (``num_classes``
            logits, focal loss as Deformable DETR / DINO; class biases start at p = 0.01).
        num_query_groups: Group DETR (Chen et al. 2023): ``G`` groups of ``num_queries`` queries at training
            time, not attending to each other, each matched one-to-one (a one-to-many supervision with
            one-to-one inference); eval runs group 0 only. Official: 1.
        denoising_groups: Deformable + sigmoid only: ``K`` groups of denoising queries made from the noised
            ground truth passed as ``forward(..., targets=...)`` in training mode (DN-DETR / DINO, see
            :mod:`detectors.detr.denoising`); 0 = off.
        dn_box_noise: Corner noise of denoising boxes, fraction of half the box size (DN-DETR 0.4).
        dn_label_noise: Probability of a random label on a denoising query (DN-DETR 0.2).
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
    backbone_norm: str = "frozen"
    uncertainty_modulation: bool = False
    backbone_layers: tuple[int, ...] = (4,)
    deformable: bool = False
    extra_levels: int = 0
    num_points: int = 4
    box_refine: bool = False
    two_stage: bool = False
    classification: str = "softmax"
    num_query_groups: int = 1
    denoising_groups: int = 0
    dn_box_noise: float = 0.4
    dn_label_noise: float = 0.2

    def __post_init__(self) -> None:
        # YAML gives lists; the frozen dataclass keeps a tuple (hashable, immutable).
        if isinstance(self.backbone_layers, list):
            object.__setattr__(self, "backbone_layers", tuple(self.backbone_layers))
        self._check_basic()
        self._check_fast()

    def _check_basic(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"DetrConfig.backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        if self.backbone_norm not in BACKBONE_NORMS:
            raise ValueError(
                f"DetrConfig.backbone_norm must be one of {sorted(BACKBONE_NORMS)}, got {self.backbone_norm!r}"
            )
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

    def _check_fast(self) -> None:
        layers = self.backbone_layers
        if (
            not isinstance(layers, tuple)
            or not layers
            or list(layers) != sorted(set(layers))
            or not set(layers) <= {2, 3, 4}
        ):
            raise ValueError(
                f"DetrConfig.backbone_layers must be ascending distinct stages of 2, 3, 4, got {layers!r}"
            )
        if self.dilation and layers[-1] != 4:
            raise ValueError("DetrConfig.dilation dilates layer4, but backbone_layers stops before it")
        if self.classification not in ("softmax", "sigmoid"):
            raise ValueError(
                f"DetrConfig.classification must be 'softmax' or 'sigmoid', got {self.classification!r}"
            )
        if not isinstance(self.denoising_groups, int) or self.denoising_groups < 0:
            raise ValueError(
                f"DetrConfig.denoising_groups must be an int >= 0, got {self.denoising_groups!r}"
            )
        if not (0.0 <= self.dn_box_noise and 0.0 <= self.dn_label_noise <= 1.0):
            raise ValueError(
                f"DetrConfig.dn_box_noise must be >= 0 and dn_label_noise in [0, 1], "
                f"got {self.dn_box_noise} and {self.dn_label_noise}"
            )
        if self.denoising_groups and (not self.deformable or self.classification != "sigmoid"):
            raise ValueError("DetrConfig.denoising_groups needs deformable=True and classification='sigmoid'")
        for name in ("num_points", "num_query_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DetrConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.extra_levels, int) or self.extra_levels < 0:
            raise ValueError(f"DetrConfig.extra_levels must be an int >= 0, got {self.extra_levels!r}")
        if not self.deformable:
            needs = {
                "several backbone_layers": len(layers) > 1,
                "extra_levels": self.extra_levels > 0,
                "box_refine": self.box_refine,
                "two_stage": self.two_stage,
            }
            wrong = [k for k, v in needs.items() if v]
            if wrong:
                raise ValueError(f"DetrConfig: {wrong} need deformable=True (dense attention uses one level)")
        elif self.head_dim is not None or self.d_model % self.num_heads:
            raise ValueError(
                "DetrConfig: deformable attention needs head_dim=None and d_model divisible by num_heads"
            )
        if self.two_stage and self.classification != "sigmoid":
            raise ValueError(
                "DetrConfig.two_stage selects proposals by sigmoid class scores: set classification='sigmoid'"
            )

    @property
    def num_logits(self) -> int:
        """Width of the class head: ``num_classes + 1`` (softmax, with no-object) or ``num_classes``."""
        return self.num_classes + (self.classification == "softmax")

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for YAML (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

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
    # The fast-converging small DETR for CPU-sized problems: ResNet-18 to layer3, strides 8 and 16, deformable
    # attention, box refinement, two-stage mixed query selection, sigmoid (focal) classification. Query groups
    # and denoising are off: at a 100 s CPU budget 3 groups cost 1.5x per step and fitted less
    # (a 100 s memorisation run on 16 rendered images: train AP 0.16 vs 0.52; the held-out ablation is
    # benchmarks/training.py --fast).
    "detr_fast_r18": {
        "backbone": "resnet18",
        "backbone_layers": (2, 3),
        "deformable": True,
        "d_model": 128,
        "num_heads": 8,
        "enc_layers": 2,
        "dec_layers": 3,
        "dim_feedforward": 512,
        "dropout": 0.0,
        "num_queries": 100,
        "num_points": 4,
        "box_refine": True,
        "two_stage": True,
        "classification": "sigmoid",
    },
}


class DETR(nn.Module):
    """DEtection TRansformer (Carion et al. 2020) with the official module tree.

    With the default :class:`DetrConfig` fields the state dict is the official one. ``classification="sigmoid"``
    (``num_classes`` logits), ``backbone_layers=(3,)`` (a shorter trunk) and ``num_query_groups > 1``
    (``G·Q`` query embeddings) change shapes. Deformable configs are built by :func:`build_detr` as
    :class:`~detectors.detr.deformable_detr.DeformableDETR`.

    Args:
        config: The architecture (``deformable=False``).
    """

    def __init__(self, config: DetrConfig) -> None:
        super().__init__()
        if config.deformable:
            raise ValueError(
                "DETR is the dense-attention model; build deformable configs with build_detr(config)"
            )
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
        self.class_embed = nn.Linear(d, config.num_logits)
        if config.classification == "sigmoid":
            nn.init.constant_(self.class_embed.bias, -math.log((1 - _PRIOR_PROB) / _PRIOR_PROB))
        self.bbox_embed = MLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(config.num_queries * config.num_query_groups, d)
        backbone = backbone_of(config)
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        self.backbone = Joiner(backbone, PositionEmbeddingSine(d // 2, normalize=True))
        self.aux_loss = config.aux_loss

    def forward(
        self,
        images: Tensor,
        mask: Tensor | None = None,
        features: BackboneLevels | None = None,
        targets: Any = None,
    ) -> dict[str, Any]:
        """Predict.

        Args:
            images: Normalised images ``[B, 3, H, W]`` (see :func:`detectors.detr.preprocess.nested_batch`).
            mask: Padding mask bool ``[B, H, W]``, True = padding; None = no padding anywhere.
            features: ``self.backbone[0].levels(images, mask)`` computed beforehand, e.g. cached by a trainer
                while the backbone is frozen (``train_backbone=False``); the backbone is then skipped.
            targets: Ignored here (the deformable model's denoising queries use them); same call everywhere.

        Returns:
            The output dict of this module's docstring: ``pred_logits``, ``pred_boxes``, with ``aux_loss``
            ``aux_outputs``, in training mode with query groups ``group_outputs``.
        """
        has_mask = mask is not None
        mask = check_inputs(images, mask)
        groups = self.config.num_query_groups if self.training else 1
        queries = self.query_embed.weight[: groups * self.num_queries]
        if features is None:
            features = self.backbone[0].levels(images, mask)
        last, small_mask = features[-1]
        pos = self.backbone[1](small_mask).to(last.dtype)
        hs, _ = self.transformer(
            self.input_proj(last),
            small_mask if has_mask else None,
            queries,
            pos,
            group_attention_mask(self.num_queries, groups, images.device),
        )
        if not self.aux_loss:
            hs = hs[-1:]  # only the last layer's heads are needed
        return pack_outputs(self.class_embed(hs), self.bbox_embed(hs).sigmoid(), self.config, groups)


def build_detr(name: str | DetrConfig = "detr_resnet50", num_classes: int = 91, **overrides: Any) -> DETR:
    """Build a DETR with random weights (no download ever).

    Args:
        name: A key of :data:`PRESETS` (``detr_resnet50``, ``detr_resnet101``, ``detr_resnet50_dc5``,
            ``detr_resnet101_dc5``, ``detr_resnet18``, ``detr_resnet34``, ``detr_tiny``, ``detr_fast_r18``) or a
            :class:`DetrConfig`. ``deformable`` configs give a :class:`~detectors.detr.deformable_detr.DeformableDETR`.
        num_classes: Classes without no-object (official COCO checkpoints: 91).
        **overrides: Any :class:`DetrConfig` field, e.g. ``enc_layers=4, d_model=64``.
    """
    if isinstance(name, DetrConfig):
        config = dataclasses.replace(name, **overrides) if overrides else name
    elif name not in PRESETS:
        raise ValueError(f"unknown DETR architecture {name!r}; known: {sorted(PRESETS)}")
    else:
        fields = {**PRESETS[name], "num_classes": num_classes, **overrides}
        config = DetrConfig.from_dict(fields, where=f"build_detr({name!r})")
    if config.deformable:
        from .deformable_detr import DeformableDETR

        return DeformableDETR(config)  # type: ignore[return-value]  # same forward contract
    return DETR(config)
