"""Post-hoc score calibrators: monotone maps ``score -> P(detection is correct)``, per member, optionally per class.

Three methods, all monotone non-decreasing in the score (so they never reorder one member's detections of a class):

* ``temperature`` (Platt scaling on the logit): ``sigmoid(a * logit(s) + b)`` with ``a >= 0``, fitted by minimising
  the binary NLL with ``scipy.optimize.minimize`` (L-BFGS-B);
* ``isotonic``: pool-adjacent-violators (``scipy.optimize.isotonic_regression``) on the scores, applied by linear
  interpolation between the fitted block ends, constant outside the fitted range (as scikit-learn does);
* ``histogram``: equal-width bins over ``[0, 1]``, each mapped to its precision; the bin values are then made
  monotone by a count-weighted isotonic fit (plain histogram binning is not monotone).

A calibrator has one ``default`` curve (fitted on all classes) and optional ``per_class`` curves keyed by the
ensemble's contiguous label; labels without their own curve use the default. It is data only: ``to_json`` /
``from_json`` round-trip exactly (Python floats survive JSON unchanged), never pickle. ``apply`` is vectorised on the
scores' device.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CALIBRATORS",
    "Calibrator",
    "HistogramCalibrator",
    "IsotonicCalibrator",
    "TemperatureCalibrator",
    "fit_calibrator",
]

_EPS = 1e-6
# Classes with fewer matched detections (or without both outcomes) fall back to the default curve.
MIN_PER_CLASS = 30


def _isotonic(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    from scipy.optimize import isotonic_regression

    return np.asarray(isotonic_regression(y, weights=weights, increasing=True).x, dtype=np.float64)


class Calibrator(ABC):
    """A fitted monotone score map; subclasses hold one parameter dict per curve (``default`` and ``per_class``)."""

    method: ClassVar[str]

    def __init__(
        self, default: Mapping[str, Any], per_class: Mapping[int, Mapping[str, Any]] | None = None
    ) -> None:
        self.default: dict[str, Any] = self._check(dict(default), "default")
        self.per_class: dict[int, dict[str, Any]] = {
            int(k): self._check(dict(v), f"per_class[{k}]") for k, v in (per_class or {}).items()
        }
        if any(k < 0 for k in self.per_class):
            raise ValueError(
                f"{self.method} calibrator: per_class labels must be >= 0, got {sorted(self.per_class)}"
            )
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
        **options: Any,
    ) -> Calibrator:
        """Fit on matched pairs: ``scores`` ``[N]``, ``is_tp`` ``[N]`` (bool or 0/1), ``labels`` ``[N]`` when ``per_class``."""
        s = np.asarray(torch.as_tensor(scores).detach().cpu().double().numpy(), dtype=np.float64).reshape(-1)
        y = np.asarray(torch.as_tensor(is_tp).detach().cpu().double().numpy(), dtype=np.float64).reshape(-1)
        if len(s) != len(y):
            raise ValueError(f"{cls.method} calibrator: {len(s)} scores but {len(y)} is_tp values")
        if len(s) == 0:
            raise ValueError(f"{cls.method} calibrator: no matched detections to fit on")
        if not np.isfinite(s).all():
            raise ValueError(
                f"{cls.method} calibrator: score[{int(np.flatnonzero(~np.isfinite(s))[0])}] is not finite"
            )
        default = cls._fit_curve(s, y, **options)
        curves: dict[int, dict[str, Any]] = {}
        if per_class:
            if labels is None:
                raise ValueError(f"{cls.method} calibrator: per_class fitting needs labels")
            lab = torch.as_tensor(labels).detach().cpu().long().numpy().reshape(-1)
            if len(lab) != len(s):
                raise ValueError(f"{cls.method} calibrator: {len(s)} scores but {len(lab)} labels")
            for label in np.unique(lab):
                rows = lab == label
                positives = y[rows].sum()
                if rows.sum() >= min_per_class and 0 < positives < rows.sum():
                    curves[int(label)] = cls._fit_curve(s[rows], y[rows], **options)
        return cls(default, curves)

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
        return self._apply(scores.to(torch.float64), rows).to(torch.float32)

    @abstractmethod
    def _apply(self, scores: Tensor, rows: Tensor) -> Tensor:
        """float64 scores ``[N]`` and curve rows ``[N]`` -> float64 calibrated scores."""

    def _tables(self, device: torch.device, build: Any) -> Any:
        if device not in self._cache:
            self._cache[device] = build(device)
        return self._cache[device]

    # ------------------------------------------------------------------ data
    def to_json(self) -> dict[str, Any]:
        """JSON-ready data: ``{"method", "default", "per_class": {"<label>": curve}}``."""
        return {
            "method": self.method,
            "default": self.default,
            "per_class": {str(k): self.per_class[k] for k in sorted(self.per_class)},
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Calibrator:
        """Rebuild any calibrator from :meth:`to_json` data; ``ValueError`` for an unknown method or bad field."""
        if not isinstance(data, Mapping) or "method" not in data or "default" not in data:
            raise ValueError("calibrator JSON must be an object with 'method' and 'default'")
        method = data["method"]
        if method not in CALIBRATORS:
            raise ValueError(f"unknown calibrator method {method!r}; known: {sorted(CALIBRATORS)}")
        per_class = data.get("per_class") or {}
        try:
            per_class = {int(k): v for k, v in per_class.items()}
        except (TypeError, ValueError, AttributeError):
            raise ValueError(
                f"{method} calibrator: per_class keys must be integer labels, got {list(per_class)}"
            ) from None
        return CALIBRATORS[method](data["default"], per_class)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Calibrator) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(per_class={len(self.per_class)} classes)"


def _floats(curve: dict[str, Any], key: str, where: str, method: str) -> list[float]:
    value = curve.get(key)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in value)
    ):
        raise ValueError(
            f"{method} calibrator {where}.{key} must be a non-empty list of finite numbers, got {value!r}"
        )
    return [float(v) for v in value]


class TemperatureCalibrator(Calibrator):
    """Platt scaling on the logit: ``sigmoid(a * logit(s) + b)``, ``a >= 0`` (``a = 1/T``: temperature scaling + bias)."""

    method = "temperature"

    @classmethod
    def _fit_curve(cls, scores: np.ndarray, is_tp: np.ndarray, **options: Any) -> dict[str, Any]:
        from scipy.optimize import minimize

        z = np.log(np.clip(scores, _EPS, 1 - _EPS)) - np.log1p(-np.clip(scores, _EPS, 1 - _EPS))

        def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
            a, b = params
            t = a * z + b
            # log(1 + exp(t)) - y * t, stable; its gradient is (sigmoid(t) - y) * dt
            loss = np.logaddexp(0.0, t) - is_tp * t
            g = 1.0 / (1.0 + np.exp(-t)) - is_tp
            return float(loss.mean()), np.array([float((g * z).mean()), float(g.mean())])

        result = minimize(
            nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(0.0, 100.0), (-50.0, 50.0)]
        )
        a, b = (float(v) for v in result.x)
        return {"a": a, "b": b}

    @classmethod
    def _check(cls, curve: dict[str, Any], where: str) -> dict[str, Any]:
        for key in ("a", "b"):
            if not isinstance(curve.get(key), int | float) or not math.isfinite(curve[key]):
                raise ValueError(
                    f"temperature calibrator {where}.{key} must be a finite number, got {curve.get(key)!r}"
                )
        if curve["a"] < 0:
            raise ValueError(f"temperature calibrator {where}.a must be >= 0 (monotone), got {curve['a']}")
        return {"a": float(curve["a"]), "b": float(curve["b"])}

    def _apply(self, scores: Tensor, rows: Tensor) -> Tensor:
        a, b = self._tables(
            scores.device,
            lambda d: (
                torch.tensor([c["a"] for c in self.curves()], dtype=torch.float64, device=d),
                torch.tensor([c["b"] for c in self.curves()], dtype=torch.float64, device=d),
            ),
        )
        return torch.sigmoid(a[rows] * torch.logit(scores.clamp(_EPS, 1 - _EPS)) + b[rows])


class IsotonicCalibrator(Calibrator):
    """Isotonic regression (PAV); curve = knots ``x`` (increasing) and ``y`` (non-decreasing), interpolated."""

    method = "isotonic"

    @classmethod
    def _fit_curve(cls, scores: np.ndarray, is_tp: np.ndarray, **options: Any) -> dict[str, Any]:
        xs, inverse = np.unique(scores, return_inverse=True)
        weights = np.bincount(inverse).astype(np.float64)
        means = np.bincount(inverse, weights=is_tp) / weights
        fitted = _isotonic(means, weights)
        # Keep each constant block's two ends: interpolation between them reproduces the step function's
        # plateaus and joins consecutive blocks linearly (scikit-learn's choice).
        change = np.r_[True, fitted[1:] != fitted[:-1]]
        keep = change | np.r_[change[1:], True]
        return {"x": xs[keep].tolist(), "y": fitted[keep].tolist()}

    @classmethod
    def _check(cls, curve: dict[str, Any], where: str) -> dict[str, Any]:
        x, y = _floats(curve, "x", where, cls.method), _floats(curve, "y", where, cls.method)
        if len(x) != len(y):
            raise ValueError(f"isotonic calibrator {where}: {len(x)} x knots but {len(y)} y values")
        if any(b <= a for a, b in itertools.pairwise(x)):
            raise ValueError(f"isotonic calibrator {where}.x must be strictly increasing")
        if any(b < a for a, b in itertools.pairwise(y)):
            raise ValueError(f"isotonic calibrator {where}.y must be non-decreasing (monotone)")
        if not all(0.0 <= v <= 1.0 for v in y):
            raise ValueError(f"isotonic calibrator {where}.y must be probabilities in [0, 1], got {y}")
        return {"x": x, "y": y}

    def _apply(self, scores: Tensor, rows: Tensor) -> Tensor:
        def build(device: torch.device) -> tuple[Tensor, ...]:
            curves = self.curves()
            # All curves in one sorted array, curve r shifted by OFFSET * r, so one searchsorted serves every row.
            lengths = torch.tensor([len(c["x"]) for c in curves], device=device)
            starts = torch.cumsum(lengths, 0) - lengths
            x = torch.tensor([v for c in curves for v in c["x"]], dtype=torch.float64, device=device)
            y = torch.tensor([v for c in curves for v in c["y"]], dtype=torch.float64, device=device)
            span = float(x.max() - x.min()) + 1.0
            shift = span * torch.repeat_interleave(
                torch.arange(len(curves), device=device, dtype=torch.float64), lengths
            )
            lo = torch.tensor([c["x"][0] for c in curves], dtype=torch.float64, device=device)
            hi = torch.tensor([c["x"][-1] for c in curves], dtype=torch.float64, device=device)
            return x + shift, y, starts, lengths, lo, hi, span

        x, y, starts, lengths, lo, hi, span = self._tables(scores.device, build)
        q = torch.minimum(torch.maximum(scores, lo[rows]), hi[rows]) + span * rows.to(torch.float64)
        first, last = starts[rows], starts[rows] + lengths[rows] - 1
        upper = torch.minimum(torch.maximum(torch.searchsorted(x, q), first), last)
        lower = torch.maximum(upper - 1, first)
        x0, x1, y0, y1 = x[lower], x[upper], y[lower], y[upper]
        width = x1 - x0
        t = torch.where(width > 0, (q - x0) / width.clamp(min=1e-300), torch.ones_like(q))
        return y0 + t.clamp(0, 1) * (y1 - y0)


class HistogramCalibrator(Calibrator):
    """Histogram binning: equal-width bins over ``[0, 1]``, each -> its (monotonised) precision."""

    method = "histogram"

    @classmethod
    def _fit_curve(
        cls, scores: np.ndarray, is_tp: np.ndarray, bins: int = 15, **options: Any
    ) -> dict[str, Any]:
        index = np.clip(np.floor(scores * bins), 0, bins - 1).astype(np.int64)
        counts = np.bincount(index, minlength=bins).astype(np.float64)
        hits = np.bincount(index, weights=is_tp, minlength=bins)
        filled = counts > 0
        values = np.empty(bins)
        values[filled] = _isotonic(hits[filled] / counts[filled], counts[filled])
        # Empty bins take the value of the nearest filled bin below (or above, at the start): still monotone.
        position = np.maximum.accumulate(np.where(filled, np.arange(bins), -1))
        first = int(np.flatnonzero(filled)[0])
        values = values[np.where(position >= 0, position, first)]
        return {"values": values.tolist()}

    @classmethod
    def _check(cls, curve: dict[str, Any], where: str) -> dict[str, Any]:
        values = _floats(curve, "values", where, cls.method)
        if any(b < a for a, b in itertools.pairwise(values)):
            raise ValueError(f"histogram calibrator {where}.values must be non-decreasing (monotone)")
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(
                f"histogram calibrator {where}.values must be probabilities in [0, 1], got {values}"
            )
        return {"values": values}

    def _apply(self, scores: Tensor, rows: Tensor) -> Tensor:
        n_bins = len(self.default["values"])
        if any(len(c["values"]) != n_bins for c in self.curves()):
            raise ValueError("histogram calibrator: every curve must have the same number of bins")
        table = self._tables(
            scores.device,
            lambda d: torch.tensor([c["values"] for c in self.curves()], dtype=torch.float64, device=d),
        )
        index = (scores * n_bins).floor().clamp(0, n_bins - 1).long()
        return table[rows, index]


CALIBRATORS: dict[str, type[Calibrator]] = {
    c.method: c for c in (TemperatureCalibrator, IsotonicCalibrator, HistogramCalibrator)
}


def fit_calibrator(
    method: str, scores: Any, is_tp: Any, labels: Any = None, per_class: bool = False, **options: Any
) -> Calibrator:
    """Fit a calibrator by method name (``temperature``, ``isotonic``, ``histogram``) on matched pairs."""
    if method not in CALIBRATORS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(CALIBRATORS)}")
    return CALIBRATORS[method].fit(scores, is_tp, labels, per_class=per_class, **options)
