"""Validation during training: the trainable's eval-mode detections scored with the project's COCO evaluator.

Under ``torchrun`` each rank predicts an interleaved shard of the validation images (no padding, so no image is
scored twice), rank 0 gathers the predictions, evaluates, and broadcasts the stats.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth
from fusion.distributed import DistContext
from fusion.training.trainable import Trainable

__all__ = ["evaluate_trainable"]


def evaluate_trainable(
    trainable: Trainable,
    gt: CocoGroundTruth,
    images_dir: str | Path,
    class_map: ClassMap,
    device: torch.device,
    dist: DistContext,
    batch_size: int = 4,
    workers: int = 0,
) -> dict[str, float]:
    """COCO stats (``AP``, ``AP50``, ...) of ``trainable.predict`` on ``gt``'s images, on every rank.

    The model is put in eval mode and back in train mode after; the training RNG is left as it was.
    """
    from fusion.coco.evaluate import evaluate
    from fusion.coco.predictions import Predictions
    from fusion.scoring.dataset import make_loader

    indices = list(range(dist.rank, len(gt), dist.world_size))
    loader = make_loader(gt, images_dir, batch_size=batch_size, num_workers=workers, indices=indices)
    parts = []
    trainable.model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for images, ids, _ in loader:
                batch = [image.to(device, non_blocking=True).float().div_(255) for image in images]
                detections = trainable.predict(batch)
                parts.append(Predictions.from_detections(detections, ids, class_map))
    finally:
        trainable.model.train()
    gathered = dist.gather(Predictions.concat(parts))
    stats = None
    if dist.is_main:
        assert gathered is not None
        result = evaluate(gt, Predictions.concat(gathered), source="validation predictions")
        stats = dict(result.stats)
    return dist.broadcast(stats)
