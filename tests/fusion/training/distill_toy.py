"""Test helpers of ``fusion distill``: the toy shapes dataset, a saved DETR teacher, saved-prediction members."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from training_toy import CLASSES, make_dataset

__all__ = ["CLASSES", "detr_config", "ensemble_config", "make_splits", "save_teacher"]


def make_splits(folder: Path, train: int = 4, val: int = 3, unlabeled: int = 0) -> Path:
    """``train/``, ``val/`` (image ids from 101) and optionally ``unlabeled/images`` with the ids
    ``unlabeled_images`` gives them (after the training split's); its ``annotations.json`` only feeds the
    saved-prediction members."""
    make_dataset(folder / "train", train, seed=1)
    make_dataset(folder / "val", val, seed=2)
    val_json = folder / "val" / "annotations.json"
    data = json.loads(val_json.read_text())
    for image in data["images"]:
        image["id"] += 100
    for ann in data["annotations"]:
        ann["image_id"] += 100
    val_json.write_text(json.dumps(data))
    if unlabeled:
        path = make_dataset(folder / "unlabeled", unlabeled, seed=3)
        data = json.loads(path.read_text())
        for item in data["images"] + data["annotations"]:
            item["image_id" if "image_id" in item else "id"] += train
        path.write_text(json.dumps(data))
    return folder


def save_teacher(path: Path, seed: int = 0, **arch: Any) -> Path:
    """A random-init ``detr_tiny`` (no dropout) saved as our safetensors + YAML, vocabulary ``CLASSES``."""
    from detectors.detr import build_detr
    from detectors.detr.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = build_detr("detr_tiny", num_classes=len(CLASSES), **{"dropout": 0.0, **arch})
    save_checkpoint(model, path, classes=list(CLASSES))
    return path


def _split(folder: Path) -> dict[str, str]:
    return {"annotations": str(folder / "annotations.json"), "images": str(folder / "images")}


def detr_config(data: Path, teacher: Path, name: str = "kd", **train: Any) -> dict[str, Any]:
    """DETR teacher -> a student cut from it (1 encoder, 1 decoder layer, 2 heads, FFN 64), 64 px."""
    loop = {"epochs": 1, "batch_size": 2, "lr": 1e-3, "backbone_lr": 1e-4, "weight_decay": 0.0,
            "log_every": 1, "checkpoint_every": 1, **train}  # fmt: skip
    return {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "teacher": {"type": "detr", "checkpoint": str(teacher), "min_size": None, "max_size": None},
        "student": {"cut": {"encoder_layers": 1, "decoder_layers": 1, "num_heads": 2, "dim_feedforward": 64}},
        "distill": {"gt": 1.0, "class": 1.0, "bbox": 5.0, "giou": 2.0, "feature": 1.0, "pairing": "identity"},
        "data": {"train": _split(data / "train"), "val": _split(data / "val"), "image_size": 64,
                 "augment": {"scale": [0.8, 1.2], "hflip": 0.5, "crop": 0.0, "color": 0.0}},
        "train": loop,
    }  # fmt: skip


def jittered_predictions(folder: Path, path: Path, seed: int, extra: int = 2) -> Path:
    """Saved COCO results from a split's ground truth: each box jittered with a high score, plus ``extra``
    random low-scoring boxes per image (category ids as the dataset's)."""
    rng = np.random.default_rng(seed)
    data = json.loads((folder / "annotations.json").read_text())
    records = []
    for ann in data["annotations"]:
        x, y, w, h = (v + float(rng.normal(0, 1.0)) for v in ann["bbox"])
        records.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [x, y, max(w, 2.0), max(h, 2.0)], "score": float(rng.uniform(0.6, 0.95))})  # fmt: skip
    for image in data["images"]:
        for _ in range(extra):
            records.append({"image_id": image["id"], "category_id": int(rng.integers(1, 3)),
                            "bbox": [float(rng.uniform(0, 30)), float(rng.uniform(0, 20)), 12.0, 12.0],
                            "score": float(rng.uniform(0.05, 0.4))})  # fmt: skip
    path.write_text(json.dumps(records))
    return path


def ensemble_config(data: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """Two saved-prediction members (jittered ground truth of every split, ids disjoint) fused by WBF."""
    (data / "classes.yaml").write_text("names: {1: square, 2: disc}\n")
    members = []
    for seed, member in enumerate(("a", "b")):
        records: list[dict[str, Any]] = []
        for split in splits:
            part = jittered_predictions(
                data / split, data / f"{member}_{split}.json", seed=10 * seed + len(records)
            )
            records += json.loads(part.read_text())
        (data / f"{member}.json").write_text(json.dumps(records))
        members.append({"name": member, "type": "predictions", "path": str(data / f"{member}.json"),
                        "classes": str(data / "classes.yaml")})  # fmt: skip
    config = {"name": "shapes-teacher", "classes": str(data / "classes.yaml"), "device": "cpu", "batch_size": 2,
              "members": members, "fusion": {"type": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0}}  # fmt: skip
    path = data / "ensemble.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path
