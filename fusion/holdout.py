"""Held-out protocols over images: k-fold and single holdout splits, and the mean ± spread of per-fold numbers.

Calibration and tuning fit on some images and report numbers measured on others; every split here is a partition
of the image ids, seeded, and independent of the order the ids arrive in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Fold", "Spread", "holdout_split", "kfold_splits", "spread"]


@dataclass(frozen=True)
class Fold:
    """One split: fit on ``fit``, measure on ``held_out`` (disjoint image ids)."""

    fit: tuple[Hashable, ...]
    held_out: tuple[Hashable, ...]


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of per-fold values (``std`` is 0 for one fold)."""

    mean: float
    std: float
    values: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f}"


def _canonical(image_ids: Sequence[Hashable]) -> list[Hashable]:
    ids = list(image_ids)
    if len(set(ids)) != len(ids):
        duplicate = next(i for i, count in Counter(ids).items() if count > 1)
        raise ValueError(f"image id {duplicate!r} appears more than once")
    # Sorted by type name then value, so the split depends on the set of ids, not on their order.
    return sorted(ids, key=lambda i: (type(i).__name__, i))


def kfold_splits(image_ids: Sequence[Hashable], k: int = 5, seed: int = 0) -> list[Fold]:
    """``k`` folds: the ids shuffled with ``seed`` and cut into ``k`` parts of sizes differing by at most one.

    Raises:
        ValueError: ``k < 2``, fewer images than folds, or a duplicated id.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k-fold needs k >= 2 folds, got {k!r}")
    ids = _canonical(image_ids)
    if len(ids) < k:
        raise ValueError(f"{k}-fold split needs at least {k} images, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, k)
    folds = []
    for part in parts:
        held = set(part.tolist())
        folds.append(
            Fold(
                fit=tuple(ids[i] for i in order if i not in held),
                held_out=tuple(ids[i] for i in sorted(held)),
            )
        )
    return folds


def holdout_split(image_ids: Sequence[Hashable], fraction: float, seed: int = 0) -> Fold:
    """One split holding out ``round(fraction · n)`` images (at least one on each side).

    Raises:
        ValueError: ``fraction`` not in ``(0, 1)``, fewer than two images, or a duplicated id.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    ids = _canonical(image_ids)
    if len(ids) < 2:
        raise ValueError(f"a holdout split needs at least 2 images, got {len(ids)}")
    n_held = min(max(round(fraction * len(ids)), 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    held = set(order[:n_held].tolist())
    return Fold(
        fit=tuple(ids[i] for i in range(len(ids)) if i not in held),
        held_out=tuple(ids[i] for i in sorted(held)),
    )


def spread(values: Sequence[float]) -> Spread:
    """Mean ± sample standard deviation of per-fold values."""
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("no values to summarise")
    mean = math.fsum(vals) / len(vals)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return Spread(mean, std, vals)
