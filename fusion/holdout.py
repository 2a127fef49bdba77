"""Held-out protocols over images: k-fold and single holdout splits, and the mean ± spread of per-fold numbers.

Calibration and tuning fit on some images and report numbers measured on others; every split here is a partition
of the image ids, seeded, and independent of the order the ids arrive in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Fold",
    "HeldOutProtocol",
    "Spread",
    "holdout_split",
    "kfold_splits",
    "merge_annotations",
    "resolve_protocol",
    "spread",
]


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


@dataclass
class HeldOutProtocol:
    """Where numbers are measured and what the final fit uses.

    Attributes:
        gt: The ground truth of every image involved (``--val`` and ``--test`` merged).
        folds: The splits measured (k folds, one holdout split, or val -> test).
        final: Image ids the final calibrators / config are fitted on.
        kind: ``"k-fold"``, ``"holdout"`` or ``"val/test"``.
        details: What the report prints about it (k, fraction, seed, files).
    """

    gt: Any
    folds: list[Fold]
    final: tuple[Hashable, ...]
    kind: str
    details: dict[str, Any]

    def describe(self) -> str:
        """One line: the split, the fold sizes, and what the final fit uses."""
        n = len(self.gt)
        if self.kind == "k-fold":
            k = len(self.folds)
            text = (
                f"{k}-fold over {n} images (seed {self.details['seed']}): fit on {k - 1} folds, measured on the "
                f"held-out fold, mean ± std over the {k} folds"
            )
        elif self.kind == "holdout":
            fold = self.folds[0]
            text = (
                f"holdout {self.details['fraction']:g} of {n} images (seed {self.details['seed']}): fit on "
                f"{len(fold.fit)}, measured on {len(fold.held_out)}"
            )
        else:
            fold = self.folds[0]
            text = (
                f"fit on --val {self.details['val']} ({len(fold.fit)} images), measured on --test "
                f"{self.details['test']} ({len(fold.held_out)} images)"
            )
        final = "the --val images only" if self.kind == "val/test" else f"all {len(self.final)} images"
        return f"{text}; the final fit uses {final}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.details,
            "folds": [{"fit": len(f.fit), "held_out": len(f.held_out)} for f in self.folds],
            "final_fit_images": len(self.final),
            "description": self.describe(),
        }


def resolve_protocol(
    annotations: str | None,
    folds: int = 5,
    holdout: float | None = None,
    val: str | None = None,
    test: str | None = None,
    seed: int = 0,
) -> HeldOutProtocol:
    """The protocol the CLI options ask for (``--annotations`` + ``--folds`` / ``--holdout``, or ``--val/--test``).

    Raises:
        ValueError: options that do not go together, or ``--val``/``--test`` files that cannot be merged.
    """
    from fusion.coco.annotations import load_annotations

    if (val is None) != (test is None):
        raise ValueError("--val and --test go together: one annotation file to fit on, one to measure on")
    if val is not None:
        if annotations is not None or holdout is not None:
            raise ValueError("--val/--test replace --annotations and --holdout; give one protocol")
        gt = load_annotations(merge_annotations(val, test))
        fit = tuple(int(i["id"]) for i in load_annotations(val).dataset["images"])
        held = tuple(sorted(set(int(i) for i in gt.image_ids.tolist()) - set(fit)))
        return HeldOutProtocol(gt, [Fold(fit, held)], fit, "val/test", {"val": str(val), "test": str(test)})
    if annotations is None:
        raise ValueError("give --annotations (k-fold or --holdout over its images) or --val and --test")
    gt = load_annotations(annotations)
    ids = [int(i) for i in gt.image_ids.tolist()]
    if holdout is not None:
        return HeldOutProtocol(
            gt,
            [holdout_split(ids, holdout, seed)],
            tuple(ids),
            "holdout",
            {"fraction": holdout, "seed": seed},
        )
    return HeldOutProtocol(
        gt, kfold_splits(ids, folds, seed), tuple(ids), "k-fold", {"k": folds, "seed": seed}
    )


def merge_annotations(first: str, second: str) -> dict[str, Any]:
    """Two COCO annotation files as one dataset (same categories, disjoint image ids; annotation ids renumbered)."""
    from fusion.coco.annotations import read_json

    a, b = read_json(first), read_json(second)
    for path, data in ((first, a), (second, b)):
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "categories")
        ):
            raise ValueError(f"{path}: not a COCO annotation file (needs 'images' and 'categories' lists)")
    if a["categories"] != b["categories"]:
        raise ValueError(f"{first} and {second} have different categories; they must describe one dataset")
    shared = {i.get("id") for i in a["images"]} & {i.get("id") for i in b["images"]}
    if shared:
        raise ValueError(
            f"{first} and {second} share image id(s) {sorted(shared, key=str)[:5]}; they must be disjoint"
        )
    annotations = [dict(x) for x in [*a.get("annotations", []), *b.get("annotations", [])]]
    for number, annotation in enumerate(annotations, start=1):
        annotation["id"] = number
    return {**a, "images": [*a["images"], *b["images"]], "annotations": annotations}
