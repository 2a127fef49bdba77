"""The calibrator base class: fitting per class with shrinkage, vectorised application, JSON data.

A calibrator has one ``default`` curve (fitted on all classes) and optional ``per_class`` curves keyed by the
ensemble's contiguous label. A class curve fitted on ``n`` matched detections is blended with the default one,
``w·class(s) + (1 − w)·default(s)`` with ``w = n / (n + shrinkage)``, so a class with few detections stays close to
the class-agnostic fit (a convex blend of two monotone curves is monotone). Labels without a curve use the default.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["METHODS", "MIN_PER_CLASS", "SHRINKAGE", "Calibrator", "check_floats", "isotonic_fit"]

# Classes with fewer matched detections (or without both outcomes) fall back to the default curve.
MIN_PER_CLASS = 30
# Pseudo-count of the default curve in a class curve's blend weight n / (n + SHRINKAGE).
SHRINKAGE = 100.0
# Every calibrator class by method name, filled as the classes are defined (``from_json`` reads it).
METHODS: dict[str, type[Calibrator]] = {}


def isotonic_fit(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the weighted least-squares non-decreasing fit of ``y``."""
    from scipy.optimize import isotonic_regression

    return np.asarray(isotonic_regression(y, weights=weights, increasing=True).x, dtype=np.float64)


def check_floats(curve: Mapping[str, Any], key: str, where: str, method: str) -> list[float]:
    """``curve[key]`` as a non-empty list of finite floats; ``ValueError`` naming ``where.key`` otherwise."""
    value = curve.get(key)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ValueError(
            f"{method} calibrator {where}.{key} must be a non-empty list of finite numbers, got {value!r}"
        )
    return [float(v) for v in value]


def _as_float64(values: Any) -> np.ndarray:
    return np.asarray(torch.as_tensor(values).detach().cpu().double().numpy(), dtype=np.float64).reshape(-1)


# method name -> Calibrator subclass, filled as the subclasses are defined (fusion.calibration.calibrators).
_METHODS: dict[str, type[Calibrator]] = {}


class Calibrator(ABC):
    """A fitted monotone score map; subclasses hold one parameter dict per curve (``default`` and ``per_class``).

    Args:
        default: The class-agnostic curve's parameters.
        per_class: ``{label: parameters}`` of classes with their own curve.
        class_weights: ``{label: w}`` blend weight of each class curve against the default (1 when absent).
    """

    method: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__:
            METHODS[cls.method] = cls

    def __init__(
        self,
        default: Mapping[str, Any],
        per_class: Mapping[int, Mapping[str, Any]] | None = None,
        class_weights: Mapping[int, float] | None = None,
    ) -> None:
        self.default: dict[str, Any] = self._check(dict(default), "default")
        self.per_class: dict[int, dict[str, Any]] = {
            int(k): self._check(dict(v), f"per_class[{k}]") for k, v in (per_class or {}).items()
        }
        if any(k < 0 for k in self.per_class):
            raise ValueError(
                f"{self.method} calibrator: per_class labels must be >= 0, got {sorted(self.per_class)}"
            )
        self.class_weights: dict[int, float] = {}
        for label, weight in (class_weights or {}).items():
            if int(label) not in self.per_class:
                raise ValueError(f"{self.method} calibrator: class_weights[{label}] has no per_class curve")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
                raise ValueError(
                    f"{self.method} calibrator: class_weights[{label}] must be in [0, 1], got {weight!r}"
                )
            self.class_weights[int(label)] = float(weight)
        self._cache: dict[torch.device, Any] = {}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        scores: Any,
        is_tp: Any,
        labels: Any = None,
        per_class: bool = False,
        min_per_class: int = MIN_PER_CLASS,
        shrinkage: float = SHRINKAGE,
        **options: Any,
    ) -> Calibrator:
        """Fit on matched pairs: ``scores`` ``[N]``, ``is_tp`` ``[N]`` (bool or 0/1), ``labels`` ``[N]`` when ``per_class``.

        Args:
            per_class: Also fit a curve for each class with at least ``min_per_class`` detections and both outcomes.
            shrinkage: Pseudo-count of the default curve in each class curve's blend (0: class curves alone).
            **options: Method options (``bins`` for histogram, ``prior_strength`` for isotonic).
        """
        s, y = _as_float64(scores), _as_float64(is_tp)
        if len(s) != len(y):
            raise ValueError(f"{cls.method} calibrator: {len(s)} scores but {len(y)} is_tp values")
        if len(s) == 0:
            raise ValueError(f"{cls.method} calibrator: no matched detections to fit on")
        if not np.isfinite(s).all():
            raise ValueError(
                f"{cls.method} calibrator: score[{int(np.flatnonzero(~np.isfinite(s))[0])}] is not finite"
            )
        if shrinkage < 0:
            raise ValueError(f"{cls.method} calibrator: shrinkage must be >= 0, got {shrinkage}")
        default = cls._fit_curve(s, y, **options)
        curves: dict[int, dict[str, Any]] = {}
        weights: dict[int, float] = {}
        if per_class:
            if labels is None:
                raise ValueError(f"{cls.method} calibrator: per_class fitting needs labels")
            lab = torch.as_tensor(labels).detach().cpu().long().numpy().reshape(-1)
            if len(lab) != len(s):
                raise ValueError(f"{cls.method} calibrator: {len(s)} scores but {len(lab)} labels")
            for label in np.unique(lab):
                rows = lab == label
                count, positives = int(rows.sum()), y[rows].sum()
                if count >= min_per_class and 0 < positives < count:
                    curves[int(label)] = cls._fit_curve(s[rows], y[rows], **options)
                    weights[int(label)] = count / (count + shrinkage)
        return cls(default, curves, weights)

    @classmethod
    @abstractmethod
    def _fit_curve(cls, scores: np.ndarray, is_tp: np.ndarray, **options: Any) -> dict[str, Any]:
        """One curve's parameters (plain Python floats / lists) from float64 scores and 0/1 targets."""

    @classmethod
    @abstractmethod
    def _check(cls, curve: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate a curve's parameters; ``ValueError`` naming ``where`` otherwise."""

    # ------------------------------------------------------------------ applying
    def rows_of(self, labels: Tensor) -> Tensor:
        """Curve row of each label: 0 = default, ``1 + i`` = the i-th per-class curve (sorted by label)."""
        classes = sorted(self.per_class)
        if not classes:
            return torch.zeros_like(labels, dtype=torch.int64)
        table = torch.zeros(classes[-1] + 1, dtype=torch.int64, device=labels.device)
        table[torch.tensor(classes, device=labels.device)] = torch.arange(
            1, len(classes) + 1, device=labels.device
        )
        labels = labels.long()
        inside = (labels >= 0) & (labels < table.numel())
        return torch.where(inside, table[labels.clamp(0, table.numel() - 1)], torch.zeros_like(labels))

    def curves(self) -> list[dict[str, Any]]:
        """The curves in row order (see :meth:`rows_of`)."""
        return [self.default] + [self.per_class[k] for k in sorted(self.per_class)]

    def apply(self, scores: Tensor, labels: Tensor | None = None) -> Tensor:
        """Calibrated scores: float32 ``[N]`` on ``scores``' device, from ``scores`` ``[N]`` and ``labels`` ``[N]``."""
        if scores.ndim != 1:
            raise ValueError(f"scores must be [N], got shape {list(scores.shape)}")
        if labels is None:
            labels = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
        if labels.shape != scores.shape:
            raise ValueError(f"labels {list(labels.shape)} must match scores {list(scores.shape)}")
        if scores.numel() == 0:
            return scores.to(torch.float32).clone()
        rows = self.rows_of(labels.to(scores.device))
        scores64 = scores.to(torch.float64)
        out = self._apply(scores64, rows)
        blend = self._blend_weights(scores.device)
        if blend is not None:
            w = blend[rows]
            out = w * out + (1 - w) * self._apply(scores64, torch.zeros_like(rows))
        return out.to(torch.float32)

    def _blend_weights(self, device: torch.device) -> Tensor | None:
        if not any(w != 1.0 for w in self.class_weights.values()):
            return None
        return self._tables(
            ("blend", device),
            lambda d: torch.tensor(
                [1.0] + [self.class_weights.get(k, 1.0) for k in sorted(self.per_class)],
                dtype=torch.float64,
                device=d,
            ),
        )

    @abstractmethod
    def _apply(self, scores: Tensor, rows: Tensor) -> Tensor:
        """float64 scores ``[N]`` and curve rows ``[N]`` -> float64 calibrated scores."""

    def _tables(self, key: Any, build: Any) -> Any:
        if key not in self._cache:
            device = key[1] if isinstance(key, tuple) else key
            self._cache[key] = build(device)
        return self._cache[key]

    # ------------------------------------------------------------------ data
    def to_json(self) -> dict[str, Any]:
        """JSON-ready data: ``{"method", "default", "per_class": {"<label>": curve}, "class_weights"}``."""
        data: dict[str, Any] = {
            "method": self.method,
            "default": self.default,
            "per_class": {str(k): self.per_class[k] for k in sorted(self.per_class)},
        }
        if self.class_weights:
            data["class_weights"] = {str(k): self.class_weights[k] for k in sorted(self.class_weights)}
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Calibrator:
        """Rebuild any calibrator from :meth:`to_json` data; ``ValueError`` for an unknown method or bad field."""
        if not isinstance(data, Mapping) or "method" not in data or "default" not in data:
            raise ValueError("calibrator JSON must be an object with 'method' and 'default'")
        method = data["method"]
        if method not in METHODS:
            raise ValueError(f"unknown calibrator method {method!r}; known: {sorted(METHODS)}")
        tables = {}
        for key in ("per_class", "class_weights"):
            table = data.get(key) or {}
            try:
                tables[key] = {int(k): v for k, v in table.items()}
            except (TypeError, ValueError, AttributeError):
                raise ValueError(
                    f"{method} calibrator: {key} keys must be integer labels, got {list(table)}"
                ) from None
        return METHODS[method](data["default"], tables["per_class"], tables["class_weights"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Calibrator) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(per_class={len(self.per_class)} classes)"
