"""Images in, :class:`~fusion.detector.ImageBatch` out: paths, PIL images, numpy arrays and tensors.

Every image becomes a float32 ``[3, H, W]`` RGB tensor in ``[0, 1]`` on the ensemble's device. Uint8 data is moved
to the device before it is converted to float, so a host-to-GPU copy carries 1 byte per value instead of 4.

Image modes: 16-bit images (PIL modes ``I;16*`` and ``I``, as 16-bit PNG/TIFF files open; numpy ``uint16``) are
SCALED to 8 bits (``0..65535 -> 0..255``, rounded) -- PIL's own ``convert("RGB")`` would clip them, turning almost
every pixel white; 32-bit float images (mode ``F``) must hold values in ``[0, 1]``; every other mode (palette,
grey, alpha, CMYK, YCbCr, ...) goes through PIL's RGB conversion (alpha is dropped).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusion.detector import ImageBatch

__all__ = ["IMAGE_SUFFIXES", "expand_sources", "load_image", "load_images", "to_image_tensor"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_image(path: str | Path) -> Tensor:
    """Read an image file as a uint8 ``[3, H, W]`` RGB tensor on the CPU (EXIF orientation applied).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file exists but is not an image PIL can decode (the message names the file).
    """
    from PIL import ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with _pil_open()(path) as image:
            array = _rgb_array(ImageOps.exif_transpose(image), f"image file {path}")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """``0..65535`` integers -> ``0..255`` uint8, rounded to nearest (values outside are clipped first)."""
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _rgb_array(image: Any, where: str) -> np.ndarray:
    """A PIL image of any mode -> uint8 ``[H, W, 3]`` RGB; 16-bit and float modes scaled, not clipped."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":  # PIL reads 16-bit grey PNG/TIFF as I;16 (or I, 32-bit ints)
        grey = _scale_16bit(np.asarray(image))
    elif mode == "F":
        values = np.asarray(image)
        if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"{where}: a 32-bit float image (mode F) must hold values in [0, 1], got "
                f"[{values.min():.3g}, {values.max():.3g}]; save it as 8 or 16 bits"
            )
        grey = np.rint(values * 255.0).astype(np.uint8)
    else:
        try:
            return np.asarray(image.convert("RGB"))
        except ValueError as exc:
            raise ValueError(f"{where}: cannot convert a PIL image of mode {mode} to RGB ({exc})") from None
    return np.repeat(grey[:, :, None], 3, axis=2)


def _pil_open() -> Any:
    """PIL's own ``Image.open``.

    Importing ultralytics replaces ``PIL.Image.open`` by a wrapper that, on a file PIL cannot identify, tries to
    pip-install ``pi-heif`` (and fails offline with ``ModuleNotFoundError``); an unreadable file must instead give
    our ``ValueError``, without touching the network, so the wrapped original is used when present.
    """
    from PIL import Image

    opener = Image.open
    original = getattr(sys.modules.get(getattr(opener, "__module__", "") or ""), "_image_open", None)
    return original if callable(original) else opener


def to_image_tensor(image: Any, device: torch.device | str = "cpu", where: str = "image") -> Tensor:
    """One image in any supported form -> float32 ``[3, H, W]`` RGB in ``[0, 1]`` on ``device``.

    Accepted forms:
        * a path (``str`` or ``Path``) to an image file;
        * a PIL image (any mode; converted to RGB, 16-bit modes scaled to 8 bits);
        * a numpy ``[H, W, 3]`` uint8 or uint16 array in RGB order (OpenCV users: convert BGR first), or
          ``[H, W]`` grey; uint16 is scaled to 8 bits;
        * a torch ``[3, H, W]`` tensor, uint8 (0..255) or floating point in ``[0, 1]``.

    Args:
        image: The image.
        device: Where the result lives.
        where: How to name this image in error messages (e.g. ``images[3]``).

    Raises:
        ValueError: unsupported type, shape or dtype, or float values outside ``[0, 1]``.
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(image, str | Path):
        tensor = load_image(image)
    elif isinstance(image, Tensor):
        tensor = image
    elif isinstance(image, np.ndarray):
        tensor = _from_numpy(image, where)
    elif _is_pil(image):
        tensor = torch.from_numpy(_rgb_array(image, where).copy()).permute(2, 0, 1)
    else:
        raise ValueError(
            f"{where}: unsupported image type {type(image).__name__}; give a path, a PIL image, an HWC uint8 "
            f"numpy array or a CHW tensor"
        )
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(
            f"{where}: a tensor image must be [3, H, W] (RGB, channels first), got {list(tensor.shape)}"
        )
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise ValueError(f"{where}: image has zero size {list(tensor.shape)}")
    tensor = tensor.to(device, non_blocking=True)
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    if not tensor.is_floating_point():
        raise ValueError(f"{where}: tensor dtype {tensor.dtype} is not supported; use uint8 or a float dtype")
    tensor = tensor.float()
    low, high = torch.aminmax(tensor)
    if float(low) < 0.0 or float(high) > 1.0:
        raise ValueError(
            f"{where}: float image values must lie in [0, 1], got [{float(low):.3g}, {float(high):.3g}] "
            f"(divide 0..255 data by 255, or pass it as uint8)"
        )
    return tensor


def _is_pil(image: Any) -> bool:
    module = type(image).__module__
    return module.startswith("PIL.") and hasattr(image, "convert")


def _from_numpy(array: np.ndarray, where: str) -> Tensor:
    if array.dtype == np.uint16:
        array = _scale_16bit(array)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{where}: numpy images must be uint8 or uint16 [H, W, 3] RGB, got dtype {array.dtype}"
        )
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"{where}: numpy images must be [H, W, 3] RGB (channels last), got shape {list(array.shape)}"
        )
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def load_images(
    images: Any,
    device: torch.device | str = "cpu",
    image_ids: Sequence[int | str] | None = None,
) -> ImageBatch:
    """Images in any supported form (one, or a list/tuple of them) -> an :class:`ImageBatch` on ``device``.

    Args:
        images: One image or a sequence of images (see :func:`to_image_tensor` for the accepted forms). A 4-D
            ``[B, 3, H, W]`` tensor is a batch of ``B`` images.
        device: Where the image tensors live.
        image_ids: One id per image; default: the position in the input.

    Returns:
        The batch, with ``paths`` set for the images given as paths.
    """
    if isinstance(images, Tensor) and images.ndim == 4:
        items: list[Any] = list(images.unbind(0))
    elif isinstance(images, list | tuple):
        items = list(images)
    else:
        items = [images]
    tensors = [to_image_tensor(item, device, where=f"images[{index}]") for index, item in enumerate(items)]
    paths = [str(item) if isinstance(item, str | Path) else None for item in items]
    return ImageBatch(tensors, list(image_ids) if image_ids is not None else [], paths)


def expand_sources(sources: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their images, sorted, recursively) and glob patterns -> a sorted, de-duplicated list of files.

    Raises:
        FileNotFoundError: a source that is neither an existing file, a folder nor a matching glob pattern.
    """
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            )
        elif path.is_file():
            found.append(path)
        elif any(ch in str(source) for ch in "*?["):
            matches = (
                sorted(p for p in Path().glob(str(source)) if p.is_file())
                if not path.is_absolute()
                else sorted(
                    p for p in Path(path.anchor).glob(str(path.relative_to(path.anchor))) if p.is_file()
                )
            )
            if not matches:
                raise FileNotFoundError(f"source pattern {source!r} matches no file")
            found.extend(matches)
        else:
            raise FileNotFoundError(f"source {source} is not a file, a folder or a glob pattern that matches")
    unique: dict[Path, None] = dict.fromkeys(found)
    return list(unique)
