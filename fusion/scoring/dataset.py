"""COCO images as a torch ``Dataset``: images decoded in DataLoader worker processes, ids and sizes kept.

Labels are not needed to run members (evaluation reads the annotations directly), so an item is just the decoded
image, its COCO id and its original ``(height, width)``. An image that cannot be read travels to the main process as
a message (:class:`ImageError`), not as an exception: a worker's exception would come back wrapped in the worker's
traceback text, and the user needs one line naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fusion.coco.annotations import CocoGroundTruth

__all__ = ["CocoImages", "ImageError", "collate", "iterate_batches", "make_loader"]


class ImageError(str):
    """The message of an image that could not be read (an item, or a batch holding such an item)."""


class CocoImages(Dataset):
    """The images of a COCO annotation set, read from ``images_dir / file_name``.

    Args:
        gt: Validated annotations (every image needs a ``file_name``).
        images_dir: Folder the ``file_name`` paths are relative to.
        indices: Rows of ``gt.image_ids`` to serve (a shard, or the images left after a resume); default all.

    Items are ``(uint8 [3, H, W] RGB tensor, image_id, (height, width))``; an unreadable or wrongly sized image is
    an :class:`ImageError` item naming the file.

    Raises:
        ValueError: an image has no ``file_name``.
        FileNotFoundError: an image file is missing (checked up front, naming the first missing files).
    """

    def __init__(
        self, gt: CocoGroundTruth, images_dir: str | Path, indices: Sequence[int] | None = None
    ) -> None:
        self.gt = gt
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.images_dir} does not exist")
        self.indices = list(range(len(gt))) if indices is None else [int(i) for i in indices]
        missing_name = [i for i in self.indices if not gt.file_names[i]]
        if missing_name:
            i = missing_name[0]
            raise ValueError(f"{gt.source}: images[{i}] (id {int(gt.image_ids[i])}) has no 'file_name'")
        missing = [
            gt.file_names[i] for i in self.indices if not (self.images_dir / str(gt.file_names[i])).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image file(s) of {gt.source} are missing under {self.images_dir}: {missing[:5]}"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[Tensor, int, tuple[int, int]] | ImageError:
        from fusion.images import load_image

        row = self.indices[item]
        path = self.images_dir / str(self.gt.file_names[row])
        try:
            image = load_image(path)
        except (ValueError, OSError) as exc:
            return ImageError(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
        size = (int(self.gt.sizes[row, 0]), int(self.gt.sizes[row, 1]))
        if tuple(image.shape[1:]) != size:
            # Boxes are scored in the annotation's pixel grid; a resized file would silently shift every box.
            return ImageError(
                f"{path}: decoded size (h, w) = {tuple(image.shape[1:])} but the annotations say {size} "
                f"(image id {int(self.gt.image_ids[row])})"
            )
        return image, int(self.gt.image_ids[row]), size


def collate(
    items: list[tuple[Tensor, int, tuple[int, int]] | ImageError],
) -> tuple[list[Tensor], list[int], list[tuple[int, int]]] | ImageError:
    """Keep images of different sizes as a list (members resize them themselves); a batch with an unreadable image
    is that image's :class:`ImageError`."""
    for item in items:
        if isinstance(item, ImageError):
            return item
    images, ids, sizes = zip(*items) if items else ((), (), ())
    return list(images), list(ids), list(sizes)


def make_loader(
    gt: CocoGroundTruth,
    images_dir: str | Path,
    batch_size: int = 4,
    num_workers: int = 2,
    indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader in dataset order (never shuffled: resuming and sharding rely on the order)."""
    dataset = CocoImages(gt, images_dir, indices)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        **kwargs,
    )


def iterate_batches(loader: DataLoader) -> Iterator[tuple[list[Tensor], list[int], list[tuple[int, int]]]]:
    """The loader's batches; ``ValueError`` naming the file at the first image that cannot be read."""
    for batch in loader:
        if isinstance(batch, ImageError):
            raise ValueError(str(batch))
        yield batch
