"""Training data: boxes follow the image through the v2 transforms; order and augmentation are seeded by key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_toy import make_dataset

from fusion.coco.annotations import load_annotations
from fusion.training.config import AugmentConfig
from fusion.training.data import CocoTrainDataset, EpochSampler, build_augment, collate_train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    path = make_dataset(folder, 6, seed=11)
    dataset = json.loads(path.read_text())
    # A crowd region (never trained on) and a half-pixel box (dropped by SanitizeBoundingBoxes with its label).
    dataset["annotations"] += [
        {"id": 900, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 400, "iscrowd": 1},
        {"id": 901, "image_id": 1, "category_id": 2, "bbox": [30, 30, 0.5, 8], "area": 4, "iscrowd": 0},
    ]
    path.write_text(json.dumps(dataset))
    return folder


def _dataset(data: Path, image_size: int = 64, **augment: object) -> CocoTrainDataset:
    gt = load_annotations(data / "annotations.json")
    aug = build_augment(AugmentConfig(**{"scale": (1.0, 1.0), "hflip": 0.0, **augment}), image_size)
    return CocoTrainDataset(gt, data / "images", gt.class_map, aug, seed=5)


def _raw(data: Path, image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    anns = [
        a
        for a in json.loads((data / "annotations.json").read_text())["annotations"]
        if a["image_id"] == image_id and not a["iscrowd"] and a["bbox"][2] >= 1
    ]
    xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), torch.tensor(
        [a["category_id"] - 1 for a in anns]
    )


def test_plain_item_is_the_file_with_xyxy_boxes_and_contiguous_labels(data: Path) -> None:
    image, target, image_id = _dataset(data)[(0, 0)]
    boxes, labels = _raw(data, 1)
    assert image_id == 1 and image.dtype == torch.float32 and tuple(image.shape) == (3, 48, 64)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert torch.equal(target["boxes"], boxes) and torch.equal(target["labels"], labels)  # crowd, sliver gone


def test_flip_and_resize_move_the_boxes_with_the_pixels(data: Path) -> None:
    plain, _, _ = _dataset(data)[(0, 0)]
    flipped, target, _ = _dataset(data, hflip=1.0)[(0, 0)]
    boxes, _ = _raw(data, 1)
    assert torch.equal(flipped, plain.flip(-1))
    expected = torch.stack([64 - boxes[:, 2], boxes[:, 1], 64 - boxes[:, 0], boxes[:, 3]], 1)
    assert torch.equal(target["boxes"], expected)
    small, target, _ = _dataset(data, image_size=32)[(0, 0)]  # fits 48x64 into 32x32: factor 1/2
    assert tuple(small.shape) == (3, 24, 32)
    torch.testing.assert_close(target["boxes"], boxes / 2)


def test_augmentation_is_a_function_of_seed_epoch_and_index(data: Path) -> None:
    dataset = _dataset(data, scale=(0.5, 1.5), hflip=0.5, crop=0.8, color=0.4)
    torch.manual_seed(0)
    first = dataset[(2, 7)]
    torch.manual_seed(123)  # the caller's RNG does not matter, nor what was drawn before
    dataset[(3, 7)]
    again = dataset[(2, 7)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    other_epoch = dataset[(2, 8)]
    assert first[0].shape != other_epoch[0].shape or not torch.equal(first[0], other_epoch[0])
    state = torch.get_rng_state()
    dataset[(4, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left untouched


def test_sampler_skip_resumes_and_ranks_split_the_global_batch() -> None:
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(4)
    full = list(sampler)
    assert sorted(i for i, _ in full) == list(range(10)) and {e for _, e in full} == {4}
    sampler.set_epoch(4, skip=6)
    assert list(sampler) == full[6:] and len(sampler) == 4
    sampler.set_epoch(5)
    assert [i for i, _ in sampler] != [i for i, _ in full]  # a new order each epoch
    ranks = [EpochSampler(12, seed=3, rank=r, world_size=2) for r in range(2)]
    single = EpochSampler(12, seed=3)
    for s in (*ranks, single):
        s.set_epoch(1)
    one = [i for i, _ in single]
    two = [[i for i, _ in s] for s in ranks]
    for step in range(3):  # global batch 4 = 2 per rank: the same images in each step
        assert sorted(two[0][2 * step : 2 * step + 2] + two[1][2 * step : 2 * step + 2]) == sorted(
            one[4 * step : 4 * step + 4]
        )


def test_collate_keeps_lists() -> None:
    items = [(torch.zeros(3, 4, 5), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}, 7)] * 2
    images, targets, ids = collate_train(items)
    assert len(images) == len(targets) == 2 and ids == [7, 7]


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(data: Path) -> None:
    from fusion.training.data import make_train_loader

    dataset = _dataset(data, scale=(0.5, 1.5), hflip=0.5, crop=0.5, color=0.3)
    batches = []
    for workers in (0, 2):
        sampler = EpochSampler(len(dataset), seed=1)
        sampler.set_epoch(3, skip=1)
        batches.append(list(make_train_loader(dataset, sampler, batch_size=2, workers=workers)))
    assert len(batches[0]) == len(batches[1]) == 3
    for (images_a, targets_a, ids_a), (images_b, targets_b, ids_b) in zip(*batches):
        assert ids_a == ids_b
        assert all(torch.equal(a, b) for a, b in zip(images_a, images_b))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets_a, targets_b))
