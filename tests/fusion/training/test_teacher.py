"""Ensemble teacher: fused detections cached once (reused, resumed), fingerprint refusal, F1 threshold, targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.predictions import PredictionsConfig, PredictionsDetector
from fusion.classes import ClassMap
from fusion.coco.annotations import load_annotations
from fusion.coco.predictions import Predictions
from fusion.ensemble import Ensemble
from fusion.registry import DETECTORS
from fusion.synthetic import synthetic_annotations, synthetic_predictions
from fusion.training.pseudo_labels import choose_threshold, pseudo_targets
from fusion.training.teacher import (
    TeacherCache,
    TeacherChangedError,
    prepare_teacher,
    run_teacher,
    unlabeled_images,
)


class CountedConfig(PredictionsConfig):
    type: Literal["counted"] = "counted"  # type: ignore[assignment]


class CountedPredictions(PredictionsDetector):
    """Saved predictions that count the images they are run on (to see whether members ran)."""

    Config = CountedConfig
    calls: ClassVar[list[int]] = []

    def predict(self, batch):  # type: ignore[no-untyped-def]
        CountedPredictions.calls.append(len(batch))
        return super().predict(batch)


@pytest.fixture(scope="module", autouse=True)
def _counted_type() -> None:
    DETECTORS.register("counted", CountedPredictions)
    yield
    DETECTORS.unregister("counted")


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    dataset = synthetic_annotations(num_images=6, coco_ids=True, image_size=(64, 96), seed=4)
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for image in dataset["images"]:
        pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / image["file_name"])
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    synthetic_predictions(dataset, detections_per_image=8, seed=5).save(tmp_path / "a.json")
    synthetic_predictions(dataset, detections_per_image=8, seed=6).save(tmp_path / "b.jsonl")
    return tmp_path


def _config(folder: Path, policy: str = "wbf") -> dict:
    return {
        "name": "teacher",
        "classes": "coco80",
        "device": "cpu",
        "batch_size": 2,
        "members": [
            {"name": "a", "type": "counted", "path": str(folder / "a.json")},
            {"name": "b", "type": "predictions", "path": str(folder / "b.jsonl"), "weight": 2},
        ],
        "fusion": {"type": policy, "iou_thr": 0.6},
    }


class KilledError(RuntimeError):
    pass


def test_cached_once_resumed_after_a_kill_and_refused_when_the_teacher_changes(data: Path) -> None:
    gt = load_annotations(data / "gt.json")
    folder = data / "run" / "teacher" / "train"
    config = _config(data)

    def kill(done: int) -> None:
        if done >= 2:
            raise KilledError

    with pytest.raises(KilledError):
        run_teacher(config, gt, data / "images", folder, verbose=False, on_batch=kill)
    done: list[int] = []
    cache = run_teacher(config, gt, data / "images", folder, verbose=False, on_batch=done.append)
    assert done == [4, 6]  # resumed after the 2 images cached before the kill
    # Same as running the ensemble directly over all images.
    ensemble = Ensemble.from_config(config)
    paths = [str(data / "images" / f) for f in gt.file_names]
    direct = Predictions.from_detections(
        ensemble.predict(paths, gt.image_ids.tolist()), gt.image_ids, gt.class_map
    )
    assert len(direct) > 0
    for column in ("image_ids", "category_ids", "boxes", "scores"):
        np.testing.assert_array_equal(getattr(cache.predictions, column), getattr(direct, column))

    # Reuse: members do not run again, the file is not rewritten.
    fused = folder / "fused.jsonl"
    mtime, CountedPredictions.calls = fused.stat().st_mtime_ns, []
    again = run_teacher(config, gt, data / "images", folder, verbose=False)
    assert CountedPredictions.calls == [] and fused.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.predictions.scores, cache.predictions.scores)

    with pytest.raises(
        TeacherChangedError,
        match=r"refusing to resume with a changed teacher. What changed: .*fusion\.type: 'wbf' -> 'nms'",
    ):
        run_teacher(_config(data, "nms"), gt, data / "images", folder, verbose=False)
    original = (data / "a.json").read_bytes()
    records = json.loads(original)
    records[0]["score"] = round(records[0]["score"] / 2, 5)
    (data / "a.json").write_text(json.dumps(records))
    with pytest.raises(
        TeacherChangedError, match=r"members\[0\]\.path: file .*a\.json changed \(size .*sha256"
    ):
        run_teacher(config, gt, data / "images", folder, verbose=False)
    (data / "a.json").write_bytes(original)
    subset = gt.subset(gt.image_ids[:4])
    with pytest.raises(TeacherChangedError, match="the image list"):
        run_teacher(config, subset, data / "images", folder, verbose=False)
    assert CountedPredictions.calls == []  # a refused run never starts the members


def _gt(tmp_path: Path) -> tuple[Path, dict]:
    def box(x: float, y: float) -> list[float]:
        return [x, y, 10.0, 10.0]

    dataset = {
        "images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": box(0, 0), "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": box(50, 50), "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": box(20, 20), "area": 100, "iscrowd": 0},
        ],
    }
    return tmp_path, dataset


def test_threshold_is_the_best_f1_cut_by_hand_and_becomes_score_weighted_targets(tmp_path: Path) -> None:
    _, dataset = _gt(tmp_path)
    gt = load_annotations(dataset)
    rows = [  # image, category, box, score, outcome at IoU 0.5
        (1, 1, [0, 0, 10, 10], 0.9),  # TP (cat)
        (1, 1, [80, 80, 10, 10], 0.8),  # FP
        (1, 3, [51, 50, 10, 10], 0.6),  # TP (dog, IoU 0.82)
        (1, 3, [0, 60, 10, 10], 0.3),  # FP
        (2, 1, [20, 20, 10, 10], 0.7),  # TP
        (2, 3, [20, 20, 10, 10], 0.6),  # FP: wrong class (ties with the TP at 0.6)
        (2, 1, [21, 20, 10, 10], 0.2),  # FP: its GT is taken
    ]
    preds = Predictions(
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows]),
    )
    choice = choose_threshold(preds, gt)
    # 3 GT. Cuts: 0.9 -> TP1/kept1: F1 2/4; 0.8 -> 2/5; 0.7 -> 4/6; 0.6 -> TP3/kept5: 6/8 (both tied 0.6 boxes
    # kept together; counting only the TP would give 6/7); 0.3 -> 6/9; 0.2 -> 6/10.
    assert choice.threshold == 0.6 and choice.f1 == pytest.approx(0.75)
    assert choice.precision == pytest.approx(3 / 5) and choice.recall == 1.0 and choice.num_gt == 3

    fixed = choose_threshold(preds, gt, fixed=0.65)  # keeps 0.9, 0.8, 0.7: TP 2 of 3 kept
    assert (fixed.threshold, fixed.f1, fixed.precision, fixed.recall) == pytest.approx(
        (0.65, 4 / 6, 2 / 3, 2 / 3)
    )

    job = ClassMap(["dog", "cat"])  # another order than the file's categories: by name
    targets = pseudo_targets(preds, gt, job, choice.threshold)
    assert set(targets) == {1, 2}
    torch.testing.assert_close(
        targets[1]["boxes"], torch.tensor([[0.0, 0, 10, 10], [80, 80, 90, 90], [51, 50, 61, 60]])
    )
    assert targets[1]["labels"].tolist() == [1, 1, 0]
    assert targets[1]["scores"].tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert targets[2]["labels"].tolist() == [1, 0] and targets[2]["scores"].dtype == torch.float32
    empty = pseudo_targets(preds, gt, job, 0.95)
    assert empty[1]["boxes"].shape == (0, 4) and empty[2]["labels"].numel() == 0
    with pytest.raises(ValueError, match=r"class 'dog' \(image 1\) but the training vocabulary is \['cat'\]"):
        pseudo_targets(preds, gt, ClassMap(["cat"]), 0.5)
    with pytest.raises(ValueError, match="cannot choose a pseudo-label threshold with 0 detections"):
        choose_threshold(Predictions.empty(), gt)


def test_unlabeled_folder_and_recorded_threshold(data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "unlabeled"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(folder / "b.png")
    Image.new("RGB", (20, 50)).save(folder / "sub" / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    categories = json.loads((data / "gt.json").read_text())["categories"]
    images = unlabeled_images(folder, categories, first_id=100)
    assert images.image_ids.tolist() == [100, 101] and images.file_names == ["b.png", "sub/a.jpg"]
    assert images.sizes.tolist() == [[30, 40], [50, 20]] and len(images.dataset["annotations"]) == 0
    with pytest.raises(FileNotFoundError, match="holds no images"):
        unlabeled_images(_empty(tmp_path), categories)

    gt = load_annotations(data / "gt.json")
    split = (gt, data / "images")
    teacher = prepare_teacher(_config(data), data / "run", split, split, folder, verbose=False)
    choice = teacher.threshold
    assert choice == choose_threshold(TeacherCache.load(data / "run" / "teacher" / "val").predictions, gt)
    assert 0 < choice.threshold < 1 and 0 < choice.f1 <= 1
    for name in ("val", "train", "unlabeled"):
        meta = json.loads((data / "run" / "teacher" / name / "teacher.json").read_text())
        assert meta["complete"] and meta["threshold"]["threshold"] == choice.threshold
    targets = teacher.targets("train", gt.class_map)
    scores = teacher.caches["train"].predictions.scores
    assert sum(len(t["labels"]) for t in targets.values()) == int((scores >= choice.threshold).sum()) > 0
    assert all(bool((t["scores"] >= choice.threshold).all()) for t in targets.values())
    first = int(gt.image_ids.max()) + 1  # unlabelled ids continue after the labelled ones; no saved records
    assert sorted(teacher.targets("unlabeled", gt.class_map)) == [first, first + 1]
    CountedPredictions.calls = []
    prepare_teacher(_config(data), data / "run", split, split, folder, verbose=False)
    assert CountedPredictions.calls == []  # every split came from its cache


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty
