"""Test helpers for the trainer: a tiny rendered COCO dataset and a tiny real ``nn.Module`` trainable.

The toy detector predicts one box per image (the first ground-truth object) from pooled conv features; its loss
is a mean over images, so a global batch split over ranks gives the same gradient as one process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from fusion.detections import Detections
from fusion.detector import Detector, ImageBatch, MemberConfig
from fusion.io import atomic_write_bytes
from fusion.registry import DETECTORS
from fusion.training.trainable import Trainable, TrainTarget

CLASSES = ("square", "disc")


def make_dataset(folder: Path, num_images: int, seed: int, size: tuple[int, int] = (48, 64)) -> Path:
    """PIL shapes on noise: 1-3 objects per image, squares (category 1) and discs (category 2). Returns the json."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    height, width = size
    for image_id in range(1, num_images + 1):
        pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        canvas = Image.fromarray(pixels)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.integers(1, 3))
            w, h = (int(v) for v in rng.integers(10, 24, 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            colour = tuple(int(c) for c in rng.integers(150, 256, 3))
            (draw.rectangle if cat == 1 else draw.ellipse)([x, y, x + w - 1, y + h - 1], fill=colour)
            anns.append(
                {"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                 "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        name = f"{image_id:04d}.png"
        canvas.save(folder / "images" / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


class ToyConfig(MemberConfig):
    type: Literal["toy"] = "toy"
    weights: str | None = None
    dropout: float = 0.0
    num_classes: int = 2
    delay: float = 0.0  # seconds slept per training step (lets a test kill the run mid-way)
    grad_dump: str | None = (
        None  # folder where each loss() call saves the gradients the previous step applied
    )


class ToyNet(nn.Module):
    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, num_classes + 4)

    def forward(self, images: list[Tensor]) -> Tensor:
        """``[B, C + 4]``: class logits and a sigmoid cxcywh box (normalised) per image."""
        feats = torch.stack([self.backbone(im[None]).mean(dim=(2, 3))[0] for im in images])
        return self.head(self.drop(torch.relu(feats)))


class ToyTrainable(Trainable):
    def __init__(self, config: ToyConfig, class_map: Any, device: Any) -> None:
        self.config = config
        self.model = ToyNet(len(class_map), config.dropout).to(device)

    def loss(self, images: list[Tensor], targets: list[TrainTarget]) -> dict[str, Tensor]:
        import time

        if self.config.delay:
            time.sleep(self.config.delay)
        if self.config.grad_dump:
            self._dump_grads()
        out = self.model(images)
        c = out.shape[1] - 4
        sizes = torch.tensor([[im.shape[2], im.shape[1]] * 2 for im in images], dtype=torch.float32)
        first = torch.stack([t["boxes"][0] if len(t["boxes"]) else torch.zeros(4) for t in targets]) / sizes
        labels = torch.stack([t["labels"][0] if len(t["labels"]) else torch.tensor(0) for t in targets])
        box = torch.sigmoid(out[:, c:])
        xyxy = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], dim=1)
        return {
            "loss_cls": nn.functional.cross_entropy(out[:, :c], labels),
            "loss_box": (xyxy - first).abs().sum(dim=1).mean(),
        }

    def _dump_grads(self) -> None:
        import os

        self.calls = getattr(self, "calls", 0) + 1
        grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
        if grads:
            rank = os.environ.get("RANK", "0")
            torch.save(grads, Path(self.config.grad_dump) / f"rank{rank}_step{self.calls - 1}.pt")

    def predict(self, images: list[Tensor]) -> list[Detections]:
        out = self.model(images)
        c = out.shape[1] - 4
        scores, labels = out[:, :c].softmax(-1).max(-1)
        box = torch.sigmoid(out[:, c:])
        dets = []
        for i, im in enumerate(images):
            h, w = im.shape[1:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            xyxy = torch.cat([box[i, :2] - box[i, 2:] / 2, box[i, :2] + box[i, 2:] / 2]).clamp(0, 1) * scale
            dets.append(
                Detections(xyxy[None], scores[i : i + 1], labels[i : i + 1], (h, w), check_values=False)
            )
        return dets

    def export(self, out_dir: Path, stem: str) -> dict[str, Any]:
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write_bytes(Path(out_dir) / f"{stem}.safetensors", save(state))
        return {"type": "toy", "weights": f"{stem}.safetensors", "dropout": self.config.dropout}


class ToyDetector(Detector):
    Config = ToyConfig

    @classmethod
    def trainable(cls, config: ToyConfig, class_map: Any, device: Any) -> Trainable:
        return ToyTrainable(config, class_map, device)

    def predict(
        self, batch: ImageBatch
    ) -> list[Detections]:  # pragma: no cover - not an ensemble member here
        raise NotImplementedError


def register() -> None:
    if "toy" not in DETECTORS:
        DETECTORS.register("toy", ToyDetector)


def toy_config(data: Path, name: str = "toy", **train: Any) -> dict[str, Any]:
    split = {"annotations": str(data / "annotations.json"), "images": str(data / "images")}
    loop = {"epochs": 2, "batch_size": 4, "lr": 1e-2, "backbone_lr": 1e-3, "warmup_steps": 2, "log_every": 1,
            "checkpoint_every": 2, "clip_grad": 1.0, **train}  # fmt: skip
    return {
        "name": name,
        "seed": 3,
        "device": "cpu",
        "model": {"type": "toy"},
        "data": {"train": split, "val": split, "image_size": 64,
                 "augment": {"scale": [0.7, 1.3], "hflip": 0.5, "crop": 0.5, "color": 0.3}},
        "train": loop,
    }  # fmt: skip
