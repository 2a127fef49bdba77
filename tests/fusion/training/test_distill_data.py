"""Teacher boxes go through the ground truth's augmentation, and the ensemble-teacher loss picks its targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from training_toy import make_dataset

from fusion.coco.annotations import load_annotations
from fusion.training.config import AugmentConfig
from fusion.training.data import CocoTrainDataset, ConcatTrainDataset, build_augment
from fusion.training.distillation import _ensemble_loss
from fusion.training.trainable import Trainable


@pytest.fixture(scope="module")
def gt(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("data")
    return load_annotations(make_dataset(folder, 6, seed=5)), folder / "images"


def _copy_of_gt(dataset: CocoTrainDataset, scale: float = 0.5) -> dict[int, dict[str, torch.Tensor]]:
    """Teacher targets equal to the ground truth, with scores."""
    return {
        image_id: {
            "boxes": boxes.clone(),
            "labels": labels.clone(),
            "scores": torch.full((len(labels),), scale),
        }
        for image_id, boxes, labels in zip(dataset._ids, dataset._boxes, dataset._labels)
    }


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_teacher_boxes_follow_the_ground_truth_through_crop_flip_and_resize(gt: Any, epoch: int) -> None:
    annotations, images = gt
    augment = build_augment(AugmentConfig(scale=(0.6, 1.4), hflip=0.5, crop=1.0, color=0.3), 64)
    plain = CocoTrainDataset(annotations, images, annotations.class_map, augment, seed=7)
    taught = CocoTrainDataset(
        annotations,
        images,
        annotations.class_map,
        augment,
        seed=7,
        extra_targets={"teacher": _copy_of_gt(plain)},
    )
    for index in range(len(plain)):
        image, target, image_id = taught[(index, epoch)]
        # The same geometric transform moved both sets: a copy of the ground truth stays equal to it.
        assert torch.equal(target["teacher_boxes"], target["boxes"])
        assert torch.equal(target["teacher_labels"], target["labels"])
        assert torch.equal(target["teacher_scores"], torch.full((len(target["labels"]),), 0.5))
        assert image.shape[0] == 3 and image_id == annotations.image_ids[index]


def test_without_crop_the_extra_set_leaves_image_and_ground_truth_as_plain_training(gt: Any) -> None:
    """The IoU crop looks at all boxes; every other step draws the same numbers with or without teacher boxes."""
    annotations, images = gt
    augment = build_augment(AugmentConfig(scale=(0.6, 1.4), hflip=0.5, crop=0.0, color=0.3), 64)
    plain = CocoTrainDataset(annotations, images, annotations.class_map, augment, seed=3)
    shifted = {
        k: {"boxes": v["boxes"][:1] + 2.0, "labels": v["labels"][:1]} for k, v in _copy_of_gt(plain).items()
    }
    taught = CocoTrainDataset(
        annotations, images, annotations.class_map, augment, seed=3, extra_targets={"teacher": shifted}
    )
    for index in range(len(plain)):
        a_image, a, _ = plain[(index, 1)]
        b_image, b, _ = taught[(index, 1)]
        assert torch.equal(a_image, b_image)
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(b["teacher_scores"], torch.ones(len(b["teacher_labels"])))  # no scores: weight 1
        assert len(b["teacher_boxes"]) == 1


def test_extra_targets_for_unknown_images_are_refused(gt: Any) -> None:
    annotations, images = gt
    bad = {999: {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}}
    with pytest.raises(ValueError, match=r"'teacher'.*\[999\]"):
        CocoTrainDataset(annotations, images, annotations.class_map, None, extra_targets={"teacher": bad})


def test_concat_dataset_routes_keys_to_its_parts(gt: Any) -> None:
    annotations, images = gt
    first = CocoTrainDataset(annotations, images, annotations.class_map, None)
    second = CocoTrainDataset(annotations, images, annotations.class_map, None)
    both = ConcatTrainDataset([first, second])
    assert len(both) == 2 * len(first)
    assert both[(len(first) + 2, 0)][2] == first[(2, 0)][2]
    assert torch.equal(both[(1, 0)][1]["boxes"], first[(1, 0)][1]["boxes"])


class Recording(Trainable):
    """Returns each call's number of target boxes (weighted by their scores) as its loss."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(1, 1)
        self.calls: list[list[dict[str, torch.Tensor]]] = []

    def loss(self, images: list[torch.Tensor], targets: list[Any]) -> dict[str, torch.Tensor]:
        self.calls.append(targets)
        return {
            "loss": torch.tensor(
                float(sum(t.get("scores", torch.ones(len(t["labels"]))).sum() for t in targets))
            )
        }

    def export(self, out_dir: Path, stem: str) -> dict[str, Any]:  # pragma: no cover - not exported here
        raise NotImplementedError


def _target(n_gt: int, n_teacher: int | None = None, n_pseudo: int | None = None) -> dict[str, torch.Tensor]:
    target = {"boxes": torch.zeros(n_gt, 4), "labels": torch.zeros(n_gt, dtype=torch.int64)}
    for name, n in (("teacher", n_teacher), ("pseudo", n_pseudo)):
        if n is not None:
            target |= {f"{name}_boxes": torch.zeros(n, 4), f"{name}_labels": torch.zeros(n, dtype=torch.int64),
                       f"{name}_scores": torch.full((n,), 0.5)}  # fmt: skip
    return target


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # labelled image: 3 GT / 2 teacher boxes; unlabelled image: 4 pseudo-labels (weights 0.5 each)
        ("extra", {"loss": 3 + 2.0, "teacher_loss": 0.25 * (1.0 + 2.0)}),
        ("replace", {"loss": 1.0 + 2.0}),
        ("none", {"loss": 3 + 2.0}),
    ],
)
def test_ensemble_loss_targets_per_mode(mode: str, expected: dict[str, float]) -> None:
    student = Recording()
    images = [torch.zeros(3, 8, 8)] * 2
    targets = [_target(3, n_teacher=2), _target(0, n_pseudo=4)]
    losses = _ensemble_loss(student, mode, 0.25, images, targets)
    assert {k: float(v) for k, v in losses.items()} == pytest.approx(expected)
    assert len(student.calls) == (2 if mode == "extra" else 1)
