"""ResNet backbone with frozen batch norm, laid out exactly like facebookresearch/detr's ``Backbone``.

The official model wraps a torchvision ResNet in ``IntermediateLayerGetter`` as ``backbone.0.body`` and returns
the ``layer4`` output (stride 32, or 16 with a dilated C5). We build the same module tree with an ordered
``nn.Sequential`` (``conv1, bn1, relu, maxpool, layer1..layer4``), so the state-dict keys are identical
(``backbone.0.body.layer1.0.conv1.weight`` ...) and the official checkpoints load strictly.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["BACKBONES", "BACKBONE_NORMS", "Backbone", "Joiner", "backbone_of", "stage_channels"]

#: Supported ResNets and the channel count of their ``layer4`` output.
BACKBONES: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


def stage_channels(name: str, stage: int) -> int:
    """Output channels of ``layer{stage}`` (1..4) of a ResNet of :data:`BACKBONES`: halved per stage down."""
    return BACKBONES[name] >> (4 - stage)


# DETR's frozen BN uses eps 1e-5 (torchvision's default changed across versions, so it is pinned here);
# torchvision's FrozenBatchNorm2d drops ``num_batches_tracked`` on load, as the official one does.
_FrozenBN = partial(FrozenBatchNorm2d, eps=1e-5)
BACKBONE_NORMS = {"frozen": _FrozenBN, "batch": nn.BatchNorm2d}


class Backbone(nn.Module):
    """A torchvision ResNet trunk (no avgpool/fc) with frozen batch norm.

    Args:
        name: One of :data:`BACKBONES`.
        dilation: Replace the stride of ``layer4`` by dilation (the "DC5" variants; ResNet-50/101 only).
        train_backbone: As the official code, ``conv1``/``layer1`` are always frozen; with ``False`` every
            backbone parameter is frozen (a frozen backbone's features may be cached by a trainer).
        return_layers: The stages (2 = stride 8, 3 = stride 16, 4 = stride 32) whose outputs
            :meth:`levels` returns, ascending; the trunk ends at the last one, so ``(3,)`` drops ``layer4``
            (for ResNet-18 that is 75 % of its weights). ``forward`` returns the last of them.
        norm: ``"frozen"``: the official FrozenBatchNorm2d, ``conv1``/``layer1`` frozen (right for a pretrained
            trunk). ``"batch"``: trainable BatchNorm2d and every stage trainable, for a trunk trained from random
            init (a frozen identity norm and a frozen random stem keep such a DETR near AP 0 on the rendered
            shapes).
    """

    def __init__(
        self,
        name: str,
        dilation: bool = False,
        train_backbone: bool = True,
        return_layers: tuple[int, ...] = (4,),
        norm: str = "frozen",
    ) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
        if (
            not return_layers
            or list(return_layers) != sorted(set(return_layers))
            or not set(return_layers) <= {1, 2, 3, 4}
        ):
            raise ValueError(f"return_layers must be ascending distinct stages in 1..4, got {return_layers}")
        if dilation and return_layers[-1] != 4:
            raise ValueError("dilation (DC5) dilates layer4, but return_layers does not reach it")
        if dilation and name in ("resnet18", "resnet34"):
            raise ValueError(f"dilation (DC5) needs a bottleneck ResNet (resnet50/101), got {name!r}")
        if norm not in BACKBONE_NORMS:
            raise ValueError(f"backbone norm must be one of {sorted(BACKBONE_NORMS)}, got {norm!r}")
        # weights=None: never download anything; the ImageNet/DETR weights come from checkpoints.
        resnet = getattr(torchvision.models, name)(
            weights=None,
            replace_stride_with_dilation=[False, False, dilation],
            norm_layer=BACKBONE_NORMS[norm],
        )
        keep = ("conv1", "bn1", "relu", "maxpool", *(f"layer{i}" for i in range(1, return_layers[-1] + 1)))
        self.body = nn.Sequential(OrderedDict((k, getattr(resnet, k)) for k in keep))
        self.return_layers = tuple(return_layers)
        self.level_channels = [stage_channels(name, stage) for stage in self.return_layers]
        self.num_channels = self.level_channels[-1]
        for param_name, param in self.body.named_parameters():
            stage = param_name.split(".")[0]
            trainable = train_backbone and (norm == "batch" or stage in ("layer2", "layer3", "layer4"))
            param.requires_grad_(trainable)

    def levels(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per returned stage: features ``[B, C_l, h_l, w_l]`` and the padding mask resized to them."""
        out = []
        x = images
        for key, module in self.body.named_children():
            x = module(x)
            if key.startswith("layer") and int(key[5:]) in self.return_layers:
                # Nearest-neighbour resize of the mask, exactly as the official code.
                small = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
                out.append((x, small))
        return out

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``[B, C, h, w]`` of the last returned stage and the padding mask resized to them (True = padding)."""
        return self.levels(images, mask)[-1]


def backbone_of(config: Any) -> Backbone:
    """The :class:`Backbone` a :class:`~detectors.detr.model.DetrConfig` describes."""
    return Backbone(
        config.backbone, config.dilation, config.train_backbone, config.backbone_layers, config.backbone_norm
    )


class Joiner(nn.Sequential):
    """``backbone[0]`` = :class:`Backbone`, ``backbone[1]`` = position encoding (no parameters)."""

    def __init__(self, backbone: Backbone, position_embedding: nn.Module) -> None:
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        """Features ``[B, C, h, w]``, mask ``[B, h, w]`` and position encoding ``[B, d_model, h, w]``."""
        features, small = self[0](images, mask)
        pos = self[1](small).to(features.dtype)
        return features, small, pos
