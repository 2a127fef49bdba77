"""Generated COCO-style ground truth and member predictions, for tests, benchmarks and demos (no download needed).

Everything is vectorised numpy with a seed, so 5000 images x 3 members x 100 detections take well under a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusion.coco.predictions import BOX_DECIMALS, SCORE_DECIMALS, Predictions

__all__ = ["synthetic_annotations", "synthetic_predictions"]


def _boxes(rng: np.random.Generator, sizes: np.ndarray, min_side: float, huge_fraction: float) -> np.ndarray:
    """xywh boxes ``[N, 4]`` inside images of ``sizes`` ``[N, 2]`` (h, w): log-uniform sides from ``min_side``
    pixels to the whole image, plus ``huge_fraction`` boxes covering 60-100% of it."""
    h, w = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    n = len(sizes)
    bw = np.exp(rng.uniform(np.log(min_side), np.log(w), n))
    bh = np.clip(bw * np.exp(rng.normal(0, 0.5, n)), min_side, h)
    huge = rng.random(n) < huge_fraction
    bw = np.where(huge, w * rng.uniform(0.6, 1.0, n), bw)
    bh = np.where(huge, h * rng.uniform(0.6, 1.0, n), bh)
    x = rng.uniform(0, 1, n) * (w - bw)
    y = rng.uniform(0, 1, n) * (h - bh)
    return np.round(np.stack([x, y, bw, bh], axis=1), 2)


def synthetic_annotations(
    num_images: int = 50,
    num_classes: int = 8,
    boxes_per_image: float = 7.2,
    crowd_fraction: float = 0.02,
    empty_fraction: float = 0.1,
    image_size: tuple[int, int] = (64, 640),
    seed: int = 0,
    coco_ids: bool = False,
) -> dict[str, Any]:
    """A COCO annotation dict.

    Args:
        num_images: Number of images (ids 1..num_images; ``file_name`` ``{id:06d}.png``).
        num_classes: Number of categories (names ``class0``...; with ``coco_ids``, COCO's 80 names and 1..90 ids).
        boxes_per_image: Mean GT boxes per image (Poisson); ``empty_fraction`` of images get none.
        crowd_fraction: Share of GT boxes with ``iscrowd: 1``.
        image_size: ``(min, max)`` side of the images in pixels.
        seed: Random seed.
        coco_ids: Use COCO's 80 categories with their 1..90 ids (``num_classes`` is then ignored).
    """
    rng = np.random.default_rng(seed)
    if coco_ids:
        from fusion.classes import ClassMap

        coco = ClassMap.load("coco91")
        categories = [
            {"id": int(i), "name": n, "supercategory": "thing"} for n, i in zip(coco.names, coco.ids)
        ]
    else:
        categories = [
            {"id": k + 1, "name": f"class{k}", "supercategory": "thing"} for k in range(num_classes)
        ]
    sizes = rng.integers(image_size[0], image_size[1] + 1, size=(num_images, 2))
    images = [
        {"id": i + 1, "file_name": f"{i + 1:06d}.png", "height": int(h), "width": int(w)}
        for i, (h, w) in enumerate(sizes.tolist())
    ]
    counts = rng.poisson(boxes_per_image, num_images) * (rng.random(num_images) >= empty_fraction)
    owner = np.repeat(np.arange(num_images), counts)
    boxes = _boxes(rng, sizes[owner], 2.0, 0.05)
    # Some categories never get GT (the last one), to exercise "-1 / NaN" per-class results.
    cat_ids = np.asarray([c["id"] for c in categories])[
        rng.integers(0, max(len(categories) - 1, 1), len(owner))
    ]
    crowd = rng.random(len(owner)) < crowd_fraction
    # Segmentation areas are smaller than the box; COCO uses the GT's `area` for its size ranges.
    area = np.round(boxes[:, 2] * boxes[:, 3] * rng.uniform(0.5, 1.0, len(owner)), 2)
    annotations = [
        {
            "id": k + 1,
            "image_id": int(owner[k]) + 1,
            "category_id": int(c),
            "bbox": b,
            "area": a,
            "iscrowd": int(z),
        }
        for k, (c, b, a, z) in enumerate(zip(cat_ids.tolist(), boxes.tolist(), area.tolist(), crowd.tolist()))
    ]
    return {
        "info": {"description": "synthetic"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def synthetic_predictions(
    dataset: dict[str, Any],
    detections_per_image: int = 100,
    recall: float = 0.8,
    jitter: float = 0.08,
    seed: int = 0,
    skip_image_fraction: float = 0.05,
) -> Predictions:
    """Detections of a simulated detector on ``dataset``: jittered copies of GT boxes (``recall`` of them, with
    a 5% wrong category), topped up with random false positives to ``detections_per_image`` per image, rounded as
    saved results are; ``skip_image_fraction`` of images get no detection at all."""
    rng = np.random.default_rng(seed)
    images = dataset["images"]
    image_ids = np.asarray([im["id"] for im in images], dtype=np.int64)
    sizes = np.asarray([[im["height"], im["width"]] for im in images], dtype=np.float64)
    position = {int(i): p for p, i in enumerate(image_ids.tolist())}
    cats = np.asarray([c["id"] for c in dataset["categories"]], dtype=np.int64)
    anns = dataset["annotations"]
    gt_img = np.asarray([position[a["image_id"]] for a in anns], dtype=np.int64)
    gt_box = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_cat = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
    hit = rng.random(len(anns)) < recall
    tp_img, tp_box, tp_cat = gt_img[hit], gt_box[hit], gt_cat[hit]
    scale = np.maximum(tp_box[:, 2:], 1.0)
    tp_box = tp_box + rng.normal(0, jitter, tp_box.shape) * np.concatenate([scale, scale], axis=1)
    tp_box[:, 2:] = np.maximum(tp_box[:, 2:], 0.5)
    wrong = rng.random(len(tp_cat)) < 0.05
    tp_cat = np.where(wrong, cats[rng.integers(0, len(cats), len(tp_cat))], tp_cat)
    tp_score = rng.beta(5, 2, len(tp_cat))
    tp_per_image = np.bincount(tp_img, minlength=len(images))
    fill = np.maximum(detections_per_image - tp_per_image, 0)
    fp_img = np.repeat(np.arange(len(images)), fill)
    fp_box = _boxes(rng, sizes[fp_img], 4.0, 0.02)
    fp_cat = cats[rng.integers(0, len(cats), len(fp_img))]
    fp_score = rng.beta(1.2, 6, len(fp_img))
    # Detectors clip their boxes to the image (and ensemble-boxes would clip them to [0, 1] anyway).
    tp_size = sizes[tp_img]
    x1 = np.clip(tp_box[:, 0], 0, tp_size[:, 1])
    y1 = np.clip(tp_box[:, 1], 0, tp_size[:, 0])
    x2 = np.clip(tp_box[:, 0] + tp_box[:, 2], x1, tp_size[:, 1])
    y2 = np.clip(tp_box[:, 1] + tp_box[:, 3], y1, tp_size[:, 0])
    tp_box = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    img = np.concatenate([tp_img, fp_img])
    keep = rng.random(len(images)) >= skip_image_fraction
    mask = keep[img]
    boxes = np.round(np.concatenate([tp_box, fp_box])[mask], BOX_DECIMALS)
    scores = np.round(np.clip(np.concatenate([tp_score, fp_score])[mask], 1e-4, 1.0), SCORE_DECIMALS)
    return Predictions(image_ids[img[mask]], np.concatenate([tp_cat, fp_cat])[mask], boxes, scores)
