"""Members with a known, controlled miscalibration, for the calibration tests and benchmark.

:func:`fusion.synthetic.simulate_member` ties its confidences to box jitter, but at its noise levels almost every
confident box is a true positive, so there is little to calibrate. Here each detection has a latent probability
``q`` of being correct and IS correct with that probability (a box at IoU >= 0.7 with the right class) or not (the
same box shifted to IoU < 0.4, or a wrong class); the reported score is ``sigmoid(logit(q) / temperature)``:
``temperature < 1`` over-confident, ``> 1`` under-confident, ``1`` calibrated by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["simulate_miscalibrated_member"]


def simulate_miscalibrated_member(
    ground_truth: dict[str, Any],
    temperature: float,
    seed: int,
    recall: float = 0.85,
    false_positives: float = 3.0,
    quality: tuple[float, float] = (2.0, 1.2),
) -> list[dict[str, Any]]:
    """COCO results records of a simulated member (see the module docstring).

    Args:
        ground_truth: A COCO annotation dict (e.g. :func:`fusion.synthetic.make_coco_ground_truth`).
        temperature: Miscalibration: < 1 over-confident, > 1 under-confident.
        seed: Random seed.
        recall: Probability of producing a box for each (non-crowd) GT object.
        false_positives: Mean number of random boxes per image (latent ``q`` in ``[0.02, 0.35]``).
        quality: Beta distribution parameters of the latent ``q`` of boxes placed on objects.
    """
    rng = np.random.default_rng(seed)
    anns = [a for a in ground_truth["annotations"] if not a.get("iscrowd", 0)]
    size_of = {im["id"]: (im["height"], im["width"]) for im in ground_truth["images"]}
    category_ids = np.array([c["id"] for c in ground_truth["categories"]])
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    images = np.array([a["image_id"] for a in anns], dtype=np.int64)
    cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
    seen = rng.random(len(anns)) < recall
    boxes, images, cats = boxes[seen], images[seen], cats[seen].copy()
    q = np.clip(rng.beta(*quality, size=len(boxes)), 0.03, 0.97)
    correct = rng.random(len(boxes)) < q
    # Correct: small jitter (IoU ~0.8). Wrong: shifted by 60% of the size (IoU < 0.4), or the right box with a
    # wrong class.
    jitter = rng.normal(0, 0.03, size=(len(boxes), 4)) * boxes[:, [2, 3, 2, 3]]
    shift = rng.choice([-0.6, 0.6], size=(len(boxes), 2)) * boxes[:, 2:]
    wrong_class = ~correct & (rng.random(len(boxes)) < 0.3)
    moved = ~correct & ~wrong_class
    xy = boxes[:, :2] + jitter[:, :2] + np.where(moved[:, None], shift, 0.0)
    wh = np.maximum(boxes[:, 2:] + jitter[:, 2:] - jitter[:, :2], 1.0)
    other = rng.choice(category_ids, size=len(boxes))
    other = np.where(
        other == cats, category_ids[(np.searchsorted(category_ids, cats) + 1) % len(category_ids)], other
    )
    cats = np.where(wrong_class, other, cats)

    image_list = np.array(sorted(size_of), dtype=np.int64)
    n_fp = rng.poisson(false_positives, size=len(image_list))
    fp_images = np.repeat(image_list, n_fp)
    fw = np.exp(rng.uniform(np.log(8), np.log(200), len(fp_images)))
    fh = fw * np.exp(rng.normal(0, 0.4, len(fp_images)))
    sizes = np.array([size_of[i] for i in fp_images], dtype=np.float64).reshape(-1, 2)
    fxy = rng.random((len(fp_images), 2)) * np.maximum(sizes[:, ::-1] - np.stack([fw, fh], 1), 1)
    fq = rng.uniform(0.02, 0.35, len(fp_images))

    all_xy = np.concatenate([xy, fxy])
    all_wh = np.concatenate([wh, np.stack([fw, fh], 1)])
    all_images = np.concatenate([images, fp_images])
    all_cats = np.concatenate([cats, rng.choice(category_ids, len(fp_images))])
    all_q = np.concatenate([q, fq])
    logit = np.log(all_q) - np.log1p(-all_q)
    scores = 1.0 / (1.0 + np.exp(-logit / temperature))
    # Clip to the image, as a detector would.
    hw = np.array([size_of[i] for i in all_images], dtype=np.float64).reshape(-1, 2)
    x1y1 = np.clip(all_xy, 0, hw[:, ::-1])
    x2y2 = np.clip(all_xy + all_wh, 0, hw[:, ::-1])
    keep = ((x2y2 - x1y1) > 1).all(axis=1)
    order = np.flatnonzero(keep)[np.lexsort((-scores[keep], all_images[keep]))]
    return [
        {
            "image_id": int(all_images[i]),
            "category_id": int(all_cats[i]),
            "bbox": [round(float(v), 2) for v in (*x1y1[i], *(x2y2[i] - x1y1[i]))],
            "score": round(float(scores[i]), 5),
        }
        for i in order
    ]
