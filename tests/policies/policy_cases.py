"""Seeded random clustered detection sets shared by the policy tests."""

from __future__ import annotations

import numpy as np
import torch

from fusion.detections import Detections


def clustered_members(
    rng: np.random.Generator,
    n_members: int = 3,
    n_boxes: int | tuple[int, int] = 30,
    n_objects: int = 6,
    n_classes: int = 3,
    size: tuple[int, int] = (120, 160),
    jitter: float = 0.08,
    label_noise: float = 0.1,
    float64: bool = False,
) -> list[Detections]:
    """Members' detections around shared random objects: jittered copies, mostly with the object's label.

    Scores are continuous random numbers (no ties), boxes have positive area and lie inside the image. With
    ``float64`` the Detections hold float64 tensors (as saved results are read), else float32.
    """
    height, width = size
    centre = rng.uniform([0.15 * width, 0.15 * height], [0.85 * width, 0.85 * height], size=(n_objects, 2))
    extent = rng.uniform([0.08 * width, 0.08 * height], [0.4 * width, 0.4 * height], size=(n_objects, 2))
    obj_label = rng.integers(0, n_classes, n_objects)
    members = []
    for _ in range(n_members):
        n = n_boxes if isinstance(n_boxes, int) else int(rng.integers(n_boxes[0], n_boxes[1] + 1))
        obj = rng.integers(0, n_objects, n)
        c = centre[obj] + rng.normal(0, jitter, (n, 2)) * extent[obj]
        e = extent[obj] * np.exp(rng.normal(0, jitter, (n, 2)))
        boxes = np.concatenate([c - e / 2, c + e / 2], axis=1)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        labels = np.where(rng.random(n) < label_noise, rng.integers(0, n_classes, n), obj_label[obj])
        scores = rng.uniform(0.01, 1.0, n)
        if float64:
            boxes, scores = torch.from_numpy(boxes), torch.from_numpy(scores)
        members.append(Detections(boxes, scores, labels, image_size=size))
    return members


def normalised(members: list[Detections]) -> tuple[list, list, list]:
    """ensemble-boxes inputs: per-member boxes normalised to [0, 1] (float64), scores, labels."""
    out_b, out_s, out_l = [], [], []
    for det in members:
        height, width = det.image_size
        out_b.append(det.boxes.double().numpy() / np.array([width, height, width, height]))
        out_s.append(det.scores.double().numpy())
        out_l.append(det.labels.numpy())
    return out_b, out_s, out_l


def match_rows(ours: np.ndarray, ref: np.ndarray, atol: float = 1e-5) -> np.ndarray:
    """For each row of ``ref`` [K, D], the index of the row of ``ours`` within ``atol`` (asserts a 1:1 match)."""
    assert ours.shape == ref.shape, f"{ours.shape} != {ref.shape}"
    taken = np.zeros(len(ours), dtype=bool)
    index = np.empty(len(ref), dtype=int)
    for k, row in enumerate(ref):
        close = np.nonzero(np.all(np.abs(ours - row) <= atol, axis=1) & ~taken)[0]
        assert close.size, f"reference row {row} has no match among ours"
        index[k] = close[0]
        taken[close[0]] = True
    return index
