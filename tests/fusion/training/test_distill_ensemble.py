"""``fusion distill`` with an ensemble teacher (saved-prediction members): a DETR and a YOLO student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from distill_toy import ensemble_config, make_splits

from fusion.cli import main
from fusion.coco.annotations import load_annotations
from fusion.coco.evaluate import evaluate
from fusion.training.distillation import distill
from fusion.training.teacher import TeacherCache, TeacherChangedError


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_splits(tmp_path_factory.mktemp("ens") / "data", train=4, val=3, unlabeled=3)
    ensemble_config(folder, ("train", "val", "unlabeled"))
    return folder


def _split(folder: Path) -> dict[str, str]:
    return {"annotations": str(folder / "annotations.json"), "images": str(folder / "images")}


def _config(data: Path, model: dict[str, Any], labeled: str, **train: Any) -> dict[str, Any]:
    return {
        "name": "ens",
        "seed": 0,
        "device": "cpu",
        "teacher": {"ensemble": str(data / "ensemble.yaml"), "labeled": labeled, "teacher_weight": 0.5},
        "model": model,
        "data": {"train": _split(data / "train"), "val": _split(data / "val"), "image_size": 64,
                 "augment": {"scale": [0.8, 1.2], "hflip": 0.5, "crop": 0.5, "color": 0.0}},
        "train": {"epochs": 1, "batch_size": 2, "log_every": 1, **train},
    }  # fmt: skip


DETR = {"type": "detr", "model": "detr_tiny", "arch": {"dropout": 0.0}, "min_size": None, "max_size": None}
YOLO = {"type": "ultralytics", "model": "yolo11n.yaml"}


def _rows(run: Path) -> list[tuple[str, str]]:
    return [(r["role"], r["name"]) for r in json.loads((run / "report.json").read_text())["rows"]]


@pytest.mark.slow
def test_ensemble_to_detr_with_unlabelled_images(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "ens.yaml"
    config.write_text(yaml.safe_dump(_config(data, DETR, "extra", eval_every=0)))
    unlabeled = data / "unlabeled" / "images"
    argv = ["distill", "--config", str(config), "--unlabeled", str(unlabeled), "--project", str(tmp_path)]
    assert main(argv) == 0
    run = tmp_path / "distill" / "ens"

    steps = [
        r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"
    ]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # 4 labelled + 3 unlabelled images, batch 2
    # One matching against the ground truth (or pseudo-labels), a second against the teacher's boxes.
    assert {"loss_ce", "loss_bbox", "teacher_loss_ce", "teacher_loss_bbox", "teacher_loss_giou"} <= set(
        steps[0]["losses"]
    )

    caches = {split: TeacherCache.load(run / "teacher" / split) for split in ("val", "train", "unlabeled")}
    threshold = caches["val"].meta["threshold"]
    assert all(c.meta["threshold"] == threshold for c in caches.values())
    assert 0 < threshold["threshold"] < 1 and threshold["f1"] > 0.5

    # The report: both members, the fused ensemble (as cached: the student learnt from exactly that) and the student.
    assert _rows(run) == [
        ("teacher", "a"),
        ("teacher", "b"),
        ("fused ensemble", "fused ensemble"),
        ("student", "ens"),
    ]
    report = json.loads((run / "report.json").read_text())
    gt_val = load_annotations(data / "val" / "annotations.json")
    assert report["rows"][2]["AP"] == pytest.approx(evaluate(gt_val, caches["val"].predictions).stats["AP"])
    assert (
        report["rows"][2]["AP"] > 0.3
        and report["pseudo_label_threshold"]["threshold"] == threshold["threshold"]
    )

    # `fusion score` takes the run's student.yaml as it is and agrees with the report.
    val = data / "val"
    score = ["score", "--config", str(run / "student.yaml"), "--annotations", str(val / "annotations.json"),
             "--images", str(val / "images"), "--project", str(tmp_path), "--workers", "0"]  # fmt: skip
    assert main(score) == 0
    metrics = json.loads((tmp_path / "score" / "ens" / "metrics.json").read_text())
    assert metrics["num_detections"]["ens"] == report["rows"][3]["detections"] > 0
    assert metrics["members"]["ens"]["AP"] == pytest.approx(report["rows"][3]["AP"])

    # A member's saved predictions change: resuming refuses the changed teacher.
    member = data / "a.json"
    saved = member.read_text()
    try:
        records = json.loads(saved)
        member.write_text(json.dumps(records[:-1]))
        with pytest.raises(TeacherChangedError, match=r"members\[0\]\.path: file .*a\.json changed"):
            distill(resume=run, report=False, verbose=False)
    finally:
        member.write_text(saved)


def test_a_yolo_student_cannot_take_a_second_target_set(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="teacher.labeled: 'extra' needs a student whose loss"):
        distill(_config(data, YOLO, "extra"), root=tmp_path, verbose=False)
    assert not (tmp_path / "distill" / "ens" / "teacher").exists()  # refused before the teacher ran


@pytest.mark.slow
def test_ensemble_to_yolo_from_pseudo_labels(data: Path, tmp_path: Path) -> None:
    config = _config(data, YOLO, "none", batch_size=4)
    config["options"] = {"workers": 0, "stream": False}
    summary = distill(config, root=tmp_path, unlabeled=data / "unlabeled" / "images", verbose=False)
    assert summary is not None
    run = tmp_path / "distill" / "ens"
    counts = json.loads((run / "fit_result.json").read_text())["dataset"]["train"]
    unlabeled = TeacherCache.load(run / "teacher" / "unlabeled")
    kept = int((unlabeled.predictions.scores >= unlabeled.threshold).sum())
    gt_boxes = len(json.loads((data / "train" / "annotations.json").read_text())["annotations"])
    # labeled: none -> ground truth on the 4 labelled images, the teacher's boxes at the threshold on the 3 others.
    assert counts["images"] == 7 and counts["pseudo_boxes"] == kept > 0
    assert counts["boxes"] - counts["pseudo_boxes"] == gt_boxes
    rows = json.loads((run / "report.json").read_text())["rows"]
    assert (
        rows[-1]["role"] == "student" and rows[-1]["params"] > 2_000_000
    )  # yolo11n, loaded from its member YAML
    member = yaml.safe_load((run / "student.yaml").read_text())["members"][0]
    assert member["type"] == "ultralytics" and member["weights"].endswith("best.safetensors")
