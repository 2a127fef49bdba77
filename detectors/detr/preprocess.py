"""Input batching for DETR: resize like the official evaluation, normalise, pad into a batch plus padding mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "nested_batch", "resize_shorter_side"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_shorter_side(image: Tensor, min_size: int = 800, max_size: int | None = 1333) -> Tensor:
    """Resize ``[3, H, W]`` so the shorter side is ``min_size`` unless the longer one would exceed ``max_size``.

    Same size rule as the official ``T.RandomResize([800], max_size=1333)`` evaluation transform; bilinear.
    Boxes predicted by DETR are normalised to the image, so they scale back to the original size unchanged.
    """
    h, w = image.shape[-2:]
    size = float(min_size)
    if max_size is not None:
        small, large = float(min(h, w)), float(max(h, w))
        if large / small * size > max_size:
            size = round(max_size * small / large)
    if (w <= h and w == size) or (h <= w and h == size):
        return image
    if w < h:
        new_w, new_h = int(size), int(size * h / w)
    else:
        new_h, new_w = int(size), int(size * w / h)
    return F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]


def nested_batch(
    images: Sequence[Tensor], *, normalize: bool = True, size_divisibility: int = 1
) -> tuple[Tensor, Tensor]:
    """Pad images of different sizes into one batch, as the official ``nested_tensor_from_tensor_list``.

    Args:
        images: ``[3, H_i, W_i]`` tensors, float in ``[0, 1]`` or uint8 (divided by 255), on one device.
        normalize: Subtract the ImageNet mean and divide by the std (BEFORE padding, so padding is 0).
        size_divisibility: Round the padded size up to a multiple of this.

    Returns:
        ``batch`` float32 ``[B, 3, H, W]`` and ``mask`` bool ``[B, H, W]`` (True = padding).
    """
    if len(images) == 0:
        raise ValueError("nested_batch needs at least one image")
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"images[{i}] must be [3, H, W], got {list(image.shape)}")
        if image.device != images[0].device:
            raise ValueError(f"images[{i}] is on {image.device}, images[0] on {images[0].device}")
    height = max(int(im.shape[1]) for im in images)
    width = max(int(im.shape[2]) for im in images)
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    device = images[0].device
    batch = torch.zeros((len(images), 3, height, width), dtype=torch.float32, device=device)
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=device)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    for i, image in enumerate(images):  # one copy per image: images differ in size
        pixels = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if normalize:
            pixels = (pixels - mean) / std
        h, w = pixels.shape[-2:]
        batch[i, :, :h, :w] = pixels
        mask[i, :h, :w] = False
    return batch, mask
