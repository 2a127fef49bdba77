"""Training data: a COCO split as (image, :class:`TrainTarget`) pairs, box-aware augmentation, seeded sampling.

Reproducibility is by construction, not by luck: the order of an epoch is a function of ``(seed, epoch)``
(``DistributedSampler``), and the augmentation of one image is a function of ``(seed, epoch, index)`` (each item
is transformed under its own seeded torch generator state). So a run stopped in the middle of an epoch resumes
with exactly the batches it would have seen, whatever the number of DataLoader workers, and two ``torchrun``
ranks see together the same images and augmentations as one process with the same global batch.

``torchvision.transforms`` is imported when a dataset is built, never at ``import fusion``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth
from fusion.training.config import AugmentConfig
from fusion.training.trainable import TrainTarget

__all__ = [
    "CocoTrainDataset",
    "ConcatTrainDataset",
    "EpochSampler",
    "build_augment",
    "collate_train",
    "item_seed",
    "make_train_loader",
]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed of one image's augmentation in one epoch."""
    return (
        int(
            np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
        )
        >> 1
    )


def build_augment(config: AugmentConfig, image_size: int) -> Any:
    """The ``transforms.v2`` pipeline: colour jitter, IoU crop, flip, random resize, sanitize, to float.

    Inputs and outputs are ``(tv_tensors.Image uint8 [3, H, W], {"boxes": BoundingBoxes XYXY, "labels"})``;
    boxes that become smaller than one pixel are dropped with their labels (``SanitizeBoundingBoxes``).
    """
    from torchvision.transforms import v2

    steps: list[Any] = []
    if config.color > 0:
        c = config.color
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 4, 0.5)))
    if config.crop > 0:
        steps.append(v2.RandomApply([v2.RandomIoUCrop()], p=config.crop))
    if config.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=config.hflip))
    steps.append(v2.ScaleJitter((image_size, image_size), scale_range=tuple(config.scale)))
    steps += [v2.SanitizeBoundingBoxes(min_size=1.0), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


class CocoTrainDataset(Dataset):
    """The images and boxes of a COCO split, augmented per ``(epoch, index)``.

    Args:
        gt: Validated annotations (:func:`fusion.coco.annotations.load_annotations`).
        images_dir: Folder the images' ``file_name`` paths are relative to.
        class_map: The job's vocabulary; annotation category ids become its contiguous labels.
        augment: The augmentation pipeline (``build_augment``), or ``None`` for float images as they are.
        seed: The job's seed.
        extra_targets: ``{name: {image_id: TrainTarget}}``: more box sets per image (a teacher's fused
            detections) carried through the SAME augmentation as the ground truth; item targets get
            ``<name>_boxes``, ``<name>_labels`` and ``<name>_scores`` (1 where a set has no scores).

    Items are keyed by ``(index, epoch)`` (what :class:`EpochSampler` yields) and are
    ``(float32 [3, H, W] image in [0, 1], TrainTarget, image_id)``. Crowd annotations are not trained on.
    """

    def __init__(
        self,
        gt: CocoGroundTruth,
        images_dir: str | Path,
        class_map: ClassMap,
        augment: Any,
        seed: int = 0,
        extra_targets: dict[str, dict[int, TrainTarget]] | None = None,
    ) -> None:
        from fusion.scoring.dataset import CocoImages

        self.images = CocoImages(gt, images_dir)
        self.augment = augment
        self.seed = seed
        anns = [a for a in gt.dataset["annotations"] if not a.get("iscrowd", 0)]
        rows = gt.positions(np.asarray([a["image_id"] for a in anns], dtype=np.int64))
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = class_map.labels_from_ids(torch.tensor([a["category_id"] for a in anns], dtype=torch.int64))
        if len(labels) and bool((labels < 0).any()):
            bad = anns[int((labels < 0).nonzero()[0])]
            raise ValueError(
                f"{gt.source}: annotation id {bad['id']} has category_id {bad['category_id']}, which the job's "
                f"vocabulary ({len(class_map)} classes) lacks"
            )
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=len(gt)) if len(rows) else np.zeros(len(gt), dtype=np.int64)
        self._boxes = list(torch.split(boxes[order], counts.tolist()))
        self._labels = list(torch.split(labels[order], counts.tolist()))
        self._ids = gt.image_ids.tolist()
        self.extra = {
            name: _check_extra(name, sets, self._ids) for name, sets in (extra_targets or {}).items()
        }

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, TrainTarget, int]:
        from torchvision import tv_tensors

        index, epoch = key
        image, image_id, (height, width) = self.images[index]
        boxes, labels = self._boxes[index], self._labels[index]
        if self.extra:
            return self._with_extra(index, epoch, image, image_id, (height, width))
        if self.augment is None:
            return image.float().div_(255), {"boxes": boxes.clone(), "labels": labels.clone()}, image_id
        sample = (
            tv_tensors.Image(image),
            {
                "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
                "labels": labels,
            },
        )
        # The item's own generator state: independent of workers, of resume points and of the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, epoch, index))
            out_image, out = self.augment(sample)
        target: TrainTarget = {"boxes": out["boxes"].as_subclass(Tensor), "labels": out["labels"]}
        return out_image.as_subclass(Tensor), target, image_id

    def _with_extra(
        self, index: int, epoch: int, image: Tensor, image_id: int, size: tuple[int, int]
    ) -> tuple[Tensor, TrainTarget, int]:
        """The item with its extra box sets: all sets are stacked into ONE box tensor whose "labels" are row
        numbers, so every geometric step (crop, flip, resize, sanitize) treats them alike; rows map back after."""
        from torchvision import tv_tensors

        sets = {"": {"boxes": self._boxes[index], "labels": self._labels[index]}}
        sets |= {name: extra[image_id] for name, extra in self.extra.items()}
        boxes = torch.cat([s["boxes"].reshape(-1, 4).float() for s in sets.values()])
        labels = torch.cat([s["labels"].long() for s in sets.values()])
        scores = torch.cat([s.get("scores", torch.ones(len(s["labels"]))).float() for s in sets.values()])
        source = torch.cat([torch.full((len(s["labels"]),), i) for i, s in enumerate(sets.values())])
        rows = torch.arange(len(labels))
        if self.augment is None:
            out_image, out_boxes = image.float().div_(255), boxes
        else:
            sample = (
                tv_tensors.Image(image),
                {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size), "labels": rows},
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed(self.seed, epoch, index))
                out_image, out = self.augment(sample)
            out_image, out_boxes, rows = (
                out_image.as_subclass(Tensor),
                out["boxes"].as_subclass(Tensor),
                out["labels"],
            )
        target: dict[str, Tensor] = {}
        for i, name in enumerate(sets):
            keep = source[rows] == i
            prefix = f"{name}_" if name else ""
            target[f"{prefix}boxes"] = out_boxes[keep]
            target[f"{prefix}labels"] = labels[rows[keep]]
            if name:
                target[f"{prefix}scores"] = scores[rows[keep]]
        return out_image, target, image_id  # type: ignore[return-value]


def _check_extra(name: str, sets: dict[int, TrainTarget], ids: list[int]) -> dict[int, TrainTarget]:
    """``sets`` with an (empty) entry for every image, after checking its ids and shapes."""
    unknown = sorted(set(sets) - set(ids))
    if unknown:
        raise ValueError(f"extra targets {name!r}: image ids {unknown[:5]} are not in the dataset")
    empty: TrainTarget = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out = {}
    for image_id in ids:
        target = sets.get(image_id, empty)
        if len(target["boxes"].reshape(-1, 4)) != len(target["labels"]):
            raise ValueError(f"extra targets {name!r}, image {image_id}: boxes and labels differ in length")
        out[image_id] = target
    return out


class ConcatTrainDataset(Dataset):
    """Several :class:`CocoTrainDataset` (labelled and unlabelled images) as one, keyed by ``(index, epoch)``."""

    def __init__(self, parts: list[CocoTrainDataset]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, TrainTarget, int]:
        index, epoch = key
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part][(index - int(self.starts[part]), epoch)]


class EpochSampler(Sampler):
    """This rank's ``(index, epoch)`` keys of one epoch, shuffled by ``DistributedSampler`` and skippable.

    Args:
        size: Dataset length.
        seed: The job's seed (the epoch's order is a function of ``(seed, epoch)``).
        rank, world_size: This process's share (``DistributedSampler`` interleaves ranks).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        from torch.utils.data import DistributedSampler

        self.inner = DistributedSampler(
            range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Serve epoch ``epoch`` from its ``skip``-th key on (resuming mid-epoch)."""
        self.inner.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in list(self.inner)[self.skip :]:
            yield index, self.epoch

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def collate_train(
    items: list[tuple[Tensor, TrainTarget, int]],
) -> tuple[list[Tensor], list[TrainTarget], list[int]]:
    """Lists of images (sizes differ: the plugin pads), targets and image ids."""
    images, targets, ids = zip(*items) if items else ((), (), ())
    return list(images), list(targets), list(ids)


def make_train_loader(
    dataset: CocoTrainDataset, sampler: EpochSampler, batch_size: int, workers: int = 0
) -> DataLoader:
    """A DataLoader over ``sampler``'s keys; its own generator keeps the global torch RNG untouched."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_train,
        generator=torch.Generator().manual_seed(0),
        pin_memory=torch.cuda.is_available(),
    )
