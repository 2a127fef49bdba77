"""ResNet backbone with frozen batch norm, laid out exactly like facebookresearch/detr's ``Backbone``.

The official model wraps a torchvision ResNet in ``IntermediateLayerGetter`` as ``backbone.0.body`` and returns
the ``layer4`` output (stride 32, or 16 with a dilated C5). We build the same module tree with an ordered
``nn.Sequential`` (``conv1, bn1, relu, maxpool, layer1..layer4``), so the state-dict keys are identical
(``backbone.0.body.layer1.0.conv1.weight`` ...) and the official checkpoints load strictly.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["BACKBONES", "Backbone", "Joiner"]

#: Supported ResNets and the channel count of their ``layer4`` output.
BACKBONES: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}

# DETR's frozen BN uses eps 1e-5 (torchvision's default changed across versions, so it is pinned here);
# torchvision's FrozenBatchNorm2d drops ``num_batches_tracked`` on load, as the official one does.
_FrozenBN = partial(FrozenBatchNorm2d, eps=1e-5)


class Backbone(nn.Module):
    """A torchvision ResNet trunk (no avgpool/fc) with frozen batch norm.

    Args:
        name: One of :data:`BACKBONES`.
        dilation: Replace the stride of ``layer4`` by dilation (the "DC5" variants; ResNet-50/101 only).
        train_backbone: As the official code, ``conv1``/``layer1`` are always frozen; with ``False`` every
            backbone parameter is frozen.
    """

    def __init__(self, name: str, dilation: bool = False, train_backbone: bool = True) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
        if dilation and name in ("resnet18", "resnet34"):
            raise ValueError(f"dilation (DC5) needs a bottleneck ResNet (resnet50/101), got {name!r}")
        # weights=None: never download anything; the ImageNet/DETR weights come from checkpoints.
        resnet = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=[False, False, dilation], norm_layer=_FrozenBN
        )
        keep = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        self.body = nn.Sequential(OrderedDict((k, getattr(resnet, k)) for k in keep))
        self.num_channels = BACKBONES[name]
        for param_name, param in self.body.named_parameters():
            trainable = train_backbone and param_name.split(".")[0] in ("layer2", "layer3", "layer4")
            param.requires_grad_(trainable)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``[B, C, h, w]`` and the padding mask resized to them ``[B, h, w]`` (True = padding)."""
        features = self.body(images)
        # Nearest-neighbour resize of the mask, exactly as the official code.
        small = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]
        return features, small


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
