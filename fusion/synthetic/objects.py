"""Generated COCO-format data: ground truth and simulated ensemble members with known flaws.

Used by the demo, the benchmarks and the tests, so that everything runs offline. A simulated member sees each
ground-truth box with some probability (``recall``), jitters it (``box_noise``, relative to the box size),
adds false positives, and reports confidences that are a controlled distortion of its true reliability
(``temperature`` < 1 over-confident, > 1 under-confident), so calibration and fusion have something real to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusion.boxes import box_convert
from fusion.classes import ClassMap

__all__ = ["SimulatedMember", "make_coco_ground_truth", "simulate_member"]


def make_coco_ground_truth(
    num_images: int,
    seed: int = 0,
    class_map: ClassMap | None = None,
    objects_per_image: float = 7.2,
    image_size: tuple[int, int] = (480, 640),
    crowd_fraction: float = 0.0,
) -> dict[str, Any]:
    """A COCO annotation dict with random boxes of all scales (annotation ids start at 1, as pycocotools needs).

    Args:
        num_images: Number of images; ids ``1..num_images``.
        seed: Random seed; the same seed gives the same dataset.
        class_map: Categories (default ``coco91``: COCO's names and ids).
        objects_per_image: Mean of the Poisson number of objects per image (COCO val2017: ~7.3).
        image_size: ``(height, width)`` of every image.
        crowd_fraction: Fraction of annotations marked ``iscrowd``.
    """
    rng = np.random.default_rng(seed)
    class_map = class_map or ClassMap.load("coco91")
    height, width = image_size
    counts = rng.poisson(objects_per_image, size=num_images)
    total = int(counts.sum())
    # Log-uniform sizes give small, medium and large objects in COCO-like proportions.
    w = np.exp(rng.uniform(np.log(6), np.log(width * 0.8), total))
    h = np.clip(w * np.exp(rng.normal(0, 0.4, total)), 4, height * 0.9)
    x = rng.uniform(0, width - w)
    y = rng.uniform(0, height - h)
    categories = rng.integers(0, len(class_map), total)
    image_ids = np.repeat(np.arange(1, num_images + 1), counts)
    crowd = rng.random(total) < crowd_fraction
    annotations = [
        {
            "id": i + 1,
            "image_id": int(image_ids[i]),
            "category_id": int(class_map.ids[categories[i]]),
            "bbox": [
                round(float(x[i]), 2),
                round(float(y[i]), 2),
                round(float(w[i]), 2),
                round(float(h[i]), 2),
            ],
            "area": round(float(w[i] * h[i]), 2),
            "iscrowd": int(crowd[i]),
        }
        for i in range(total)
    ]
    return {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "height": height, "width": width}
            for i in range(1, num_images + 1)
        ],
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in zip(class_map.ids, class_map.names)],
    }


@dataclass(frozen=True)
class SimulatedMember:
    """How a simulated detector errs.

    Attributes:
        recall: Probability of detecting each ground-truth object.
        box_noise: Standard deviation of the box-corner jitter, as a fraction of the box's width/height.
        false_positives: Mean number of spurious boxes per image.
        temperature: Confidence = sigmoid(logit(true reliability) / temperature): < 1 over-confident, > 1 under.
        label_noise: Probability of reporting a random wrong class.
        detections_per_image: Cap on the boxes per image, highest scores kept (pads with low-score FPs).
    """

    recall: float = 0.8
    box_noise: float = 0.06
    false_positives: float = 5.0
    temperature: float = 1.0
    label_noise: float = 0.05
    detections_per_image: int | None = None


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def simulate_member(ground_truth: dict[str, Any], member: SimulatedMember, seed: int) -> list[dict[str, Any]]:
    """COCO results records of a simulated detector on ``ground_truth`` (see :class:`SimulatedMember`)."""
    rng = np.random.default_rng(seed)
    images = ground_truth["images"]
    category_ids = np.array([c["id"] for c in ground_truth["categories"]])
    size_of = {im["id"]: (im["height"], im["width"]) for im in images}
    anns = [a for a in ground_truth["annotations"] if not a.get("iscrowd", 0)]
    gt_boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_images = np.array([a["image_id"] for a in anns], dtype=np.int64)
    gt_cats = np.array([a["category_id"] for a in anns], dtype=np.int64)

    seen = rng.random(len(anns)) < member.recall
    boxes, image_ids, cats = gt_boxes[seen].copy(), gt_images[seen], gt_cats[seen].copy()
    jitter = rng.normal(0, member.box_noise, size=(len(boxes), 4)) * boxes[:, [2, 3, 2, 3]]
    x1, y1, x2, y2 = (box_convert(boxes, "xywh", "xyxy") + jitter).T
    # The true chance that a detection is right falls with its localisation error.
    error = np.abs(jitter).mean(axis=1) / np.maximum(boxes[:, 2:].mean(axis=1), 1)
    reliability = np.clip(0.95 - 4 * error + rng.normal(0, 0.05, len(boxes)), 0.05, 0.99)
    relabel = rng.random(len(cats)) < member.label_noise
    cats[relabel] = rng.choice(category_ids, relabel.sum())
    reliability[relabel] *= 0.3

    n_fp = rng.poisson(member.false_positives, size=len(images))
    fp_images = np.repeat([im["id"] for im in images], n_fp)
    fp_sizes = np.array([size_of[i] for i in fp_images], dtype=np.float64).reshape(-1, 2)
    fw = np.exp(rng.uniform(np.log(6), np.log(200), len(fp_images)))
    fh = fw * np.exp(rng.normal(0, 0.4, len(fp_images)))
    fx = rng.uniform(0, 1, len(fp_images)) * np.maximum(fp_sizes[:, 1] - fw, 1)
    fy = rng.uniform(0, 1, len(fp_images)) * np.maximum(fp_sizes[:, 0] - fh, 1)
    fp_reliability = rng.uniform(0.02, 0.3, len(fp_images))

    all_x1 = np.concatenate([x1, fx])
    all_y1 = np.concatenate([y1, fy])
    all_x2 = np.concatenate([x2, fx + fw])
    all_y2 = np.concatenate([y2, fy + fh])
    all_images = np.concatenate([image_ids, fp_images]).astype(np.int64)
    all_cats = np.concatenate([cats, rng.choice(category_ids, len(fp_images))])
    logit = np.log(np.concatenate([reliability, fp_reliability]))
    logit -= np.log1p(-np.exp(logit))
    scores = _sigmoid(logit / member.temperature)

    heights = np.array([size_of[i][0] for i in all_images], dtype=np.float64)
    widths = np.array([size_of[i][1] for i in all_images], dtype=np.float64)
    all_x1, all_x2 = np.clip(all_x1, 0, widths), np.clip(all_x2, 0, widths)
    all_y1, all_y2 = np.clip(all_y1, 0, heights), np.clip(all_y2, 0, heights)
    keep = (all_x2 - all_x1 > 1) & (all_y2 - all_y1 > 1)
    order = np.lexsort((-scores, all_images))
    order = order[keep[order]]
    if member.detections_per_image is not None:
        sorted_images = all_images[order]
        position = np.arange(len(order))
        is_start = np.r_[True, sorted_images[1:] != sorted_images[:-1]] if len(order) else np.zeros(0, bool)
        rank = position - np.maximum.accumulate(np.where(is_start, position, 0))
        order = order[rank < member.detections_per_image]
    xywh = box_convert(np.stack([all_x1, all_y1, all_x2, all_y2], axis=1), "xyxy", "xywh")
    return [
        {
            "image_id": int(all_images[i]),
            "category_id": int(all_cats[i]),
            "bbox": [round(v, 2) for v in xywh[i].tolist()],
            "score": round(float(scores[i]), 5),
        }
        for i in order
    ]


def default_members() -> Sequence[tuple[str, SimulatedMember]]:
    """Three members that err differently: a sharp over-confident one, a careful under-confident one, a noisy one."""
    return (
        ("sharp", SimulatedMember(recall=0.85, box_noise=0.04, false_positives=6, temperature=0.5)),
        ("careful", SimulatedMember(recall=0.7, box_noise=0.05, false_positives=2, temperature=2.0)),
        (
            "noisy",
            SimulatedMember(recall=0.8, box_noise=0.09, false_positives=8, temperature=1.0, label_noise=0.1),
        ),
    )
