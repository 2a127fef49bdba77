"""Test-time augmentation as virtual ensemble members.

Each augmentation transforms the batch, runs a member on it, and maps the member's boxes back into the original
image's pixels before fusion, so ``member@hflip`` and ``member@x1.5`` are fused like any other member. The
augmentations are run one at a time next to the plain pass (a flip and a scale are not combined).

Box mappings (boxes xyxy in pixels; ``W``, ``H`` the original size, ``W'``, ``H'`` the augmented one):
    * ``hflip``: ``(x1, y1, x2, y2) -> (W - x2, y1, W - x1, y2)``; its own inverse.
    * ``x<s>`` (rescale by ``s``): the image is resized to ``(round(H*s), round(W*s))`` and boxes are mapped back
      with the ACTUAL ratios ``W / W'`` and ``H / H'`` (not ``1/s``), so rounding of the size does not shift them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.config import TTAConfig
from fusion.detections import Detections
from fusion.detector import ImageBatch

__all__ = ["Augmentation", "HorizontalFlip", "Rescale", "augmentations_from_config", "hflip_boxes"]


def hflip_boxes(boxes: Tensor, width: float) -> Tensor:
    """Mirror xyxy boxes ``[N, 4]`` across the vertical axis of an image ``width`` pixels wide."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


class Augmentation(ABC):
    """An invertible image transform: ``apply`` to the batch, ``invert`` the boxes predicted on its output."""

    name: str

    @abstractmethod
    def apply(self, batch: ImageBatch) -> ImageBatch:
        """The augmented batch (same ids and paths)."""

    @abstractmethod
    def invert(self, detections: Sequence[Detections], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Boxes predicted on the augmented images -> boxes in the original images of ``(height, width)`` ``sizes``."""


class HorizontalFlip(Augmentation):
    """Mirror the image left-right."""

    name = "hflip"

    def apply(self, batch: ImageBatch) -> ImageBatch:
        return ImageBatch(
            [image.flip(-1) for image in batch.images], list(batch.image_ids), list(batch.paths)
        )

    def invert(self, detections: Sequence[Detections], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        return [
            Detections(
                hflip_boxes(det.boxes, float(w)),
                det.scores,
                det.labels,
                (h, w),
                det.extras,
                check_values=False,
            )
            for det, (h, w) in zip(detections, sizes)
        ]


class Rescale(Augmentation):
    """Resize the image by ``scale`` (bilinear, antialiased when shrinking)."""

    def __init__(self, scale: float) -> None:
        if scale <= 0:
            raise ValueError(f"TTA scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.name = f"x{self.scale:g}"

    def size_of(self, size: tuple[int, int]) -> tuple[int, int]:
        """The augmented ``(height, width)`` of an image of ``size`` (at least 1 pixel each)."""
        return max(1, round(size[0] * self.scale)), max(1, round(size[1] * self.scale))

    def apply(self, batch: ImageBatch) -> ImageBatch:
        images = [
            F.interpolate(
                image[None],
                size=self.size_of(size),
                mode="bilinear",
                align_corners=False,
                antialias=self.scale < 1,
            )[0].clamp_(0, 1)
            for image, size in zip(batch.images, batch.sizes)
        ]
        return ImageBatch(images, list(batch.image_ids), list(batch.paths))

    def invert(self, detections: Sequence[Detections], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        out = []
        for det, (h, w) in zip(detections, sizes):
            h2, w2 = self.size_of((h, w))
            # Multiply then divide: exact whenever the true result is representable (a ratio like 101/152 is not).
            original = torch.tensor([w, h, w, h], dtype=det.boxes.dtype, device=det.device)
            augmented = torch.tensor([w2, h2, w2, h2], dtype=det.boxes.dtype, device=det.device)
            boxes = det.boxes * original / augmented
            out.append(Detections(boxes, det.scores, det.labels, (h, w), det.extras, check_values=False))
        return out


def augmentations_from_config(config: TTAConfig) -> list[Augmentation]:
    """The augmentations a :class:`~fusion.config.TTAConfig` asks for (the plain pass is not included)."""
    augs: list[Augmentation] = [HorizontalFlip()] if config.hflip else []
    augs.extend(Rescale(scale) for scale in config.scales if scale != 1.0)
    return augs
