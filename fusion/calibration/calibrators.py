"""Post-hoc score calibrators: monotone maps ``score -> P(detection is correct)``, per member, optionally per class.

Four methods, all monotone in the score (so they never reorder one member's detections of a class), three of them
strictly increasing (so they introduce no ties, which would change COCO AP):

* ``temperature`` (Platt scaling on the logit): ``sigmoid(a * logit(s) + b)`` with ``a >= 0``, fitted by minimising
  the binary NLL with ``scipy.optimize.minimize`` (L-BFGS-B);
* ``beta`` (Kull et al., AISTATS 2017): ``sigmoid(a * ln s - b * ln(1 - s) + c)`` with ``a, b >= 0``: the logistic
  family that also bends at both ends (temperature scaling is its ``a = b`` case);
* ``isotonic``: pool-adjacent-violators (``scipy.optimize.isotonic_regression``), each constant block smoothed
  towards the overall precision by a pseudo-count and pooled again, then one knot per block at its score centroid,
  interpolated linearly: strictly increasing between the knots (a plain PAV step function turns most scores into
  ties), with tails of 1 % slope beyond them;
* ``histogram``: equal-width bins over ``[0, 1]``, each mapped to its precision; the bin values are then made
  monotone by a count-weighted isotonic fit (plain histogram binning is not monotone).

A calibrator is data only: ``to_json`` / ``from_json`` round-trip exactly (Python floats survive JSON unchanged),
never pickle. ``apply`` is vectorised on the scores' device.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusion.calibration.base import MIN_PER_CLASS, Calibrator, check_floats, isotonic_fit

__all__ = [
    "CALIBRATORS",
    "MIN_PER_CLASS",
    "BetaCalibrator",
    "Calibrator",
    "HistogramCalibrator",
    "IsotonicCalibrator",
    "TemperatureCalibrator",
    "fit_calibrator",
    "introduced_ties",
]

_EPS = 1e-6
# Slope of the isotonic curve's tails, as a fraction of the distance to 0 (below) or 1 (above): keeps the ranking
# of scores beyond the outermost knots without moving their calibration by more than 1 %.
TAIL_SLOPE = 0.01


def _logistic_nll(features: np.ndarray, is_tp: np.ndarray, start: np.ndarray, bounds: list) -> np.ndarray:
    """Parameters ``p`` minimising the binary NLL of ``sigmoid(features @ p)`` (L-BFGS-B within ``bounds``)."""
    from scipy.optimize import minimize

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        t = features @ params
        # log(1 + exp(t)) - y * t, stable; its gradient is (sigmoid(t) - y) * dt
        loss = np.logaddexp(0.0, t) - is_tp * t
        g = 1.0 / (1.0 + np.exp(-t)) - is_tp
        return float(loss.mean()), features.T @ g / len(g)

    return minimize(nll, start, jac=True, method="L-BFGS-B", bounds=bounds).x


def _check_numbers(curve: dict[str, Any], keys: tuple[str, ...], where: str, method: str) -> dict[str, float]:
    out = {}
    for key in keys:
        value = curve.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{method} calibrator {where}.{key} must be a finite number, got {value!r}")
        out[key] = float(value)
    return out


class TemperatureCalibrator(Calibrator):
    """Platt scaling on the logit: ``sigmoid(a * logit(s) + b)``, ``a >= 0`` (``a = 1/T``: temperature scaling + bias)."""

    method = "temperature"

    @classmethod
    def _fit_curve(cls, scores: np.ndarray, is_tp: np.ndarray, **options: Any) -> dict[str, Any]:
        s = np.clip(scores, _EPS, 1 - _EPS)
        features = np.stack([np.log(s) - np.log1p(-s), np.ones_like(s)], 1)
        a, b = _logistic_nll(features, is_tp, np.array([1.0, 0.0]), [(0.0, 100.0), (-50.0, 50.0)])
        return {"a": float(a), "b": float(b)}

    @classmethod
    def _check(cls, curve: dict[str, Any], where: str) -> dict[str, Any]:
        out = _check_numbers(curve, ("a", "b"), where, cls.method)
        if out["a"] < 0:
            raise ValueError(f"temperature calibrator {where}.a must be >= 0 (monotone), got {out['a']}")
        return out

    def _apply(self, scores: Tensor, rows: Tensor) -> Tensor:
        a, b = self._tables(
            scores.device,
            lambda d: tuple(
                torch.tensor([c[k] for c in self.curves()], dtype=torch.float64, device=d) for k in "ab"
            ),
        )
        return torch.sigmoid(a[rows] * torch.logit(scores.clamp(_EPS, 1 - _EPS)) + b[rows])


class BetaCalibrator(Calibrator):
    """Beta calibration: ``sigmoid(a * ln s - b * ln(1 - s) + c)``, ``a, b >= 0`` (Kull et al., 2017)."""

    method = "beta"

    @classmethod
    def _fit_curve(cls, scores: np.ndarray, is_tp: np.ndarray, **options: Any) -> dict[str, Any]:
        s = np.clip(scores, _EPS, 1 - _EPS)
        features = np.stack([np.log(s), -np.log1p(-s), np.ones_like(s)], 1)
        bounds = [(0.0, 100.0), (0.0, 100.0), (-50.0, 50.0)]
        a, b, c = _logistic_nll(features, is_tp, np.array([1.0, 1.0, 0.0]), bounds)
        return {"a": float(a), "b": float(b), "c": float(c)}

    @classmethod
    def _check(cls, curve: dict[str, Any], where: str) -> dict[str, Any]:
        out = _check_numbers(curve, ("a", "b", "c"), where, cls.method)
        for key in ("a", "b"):
            if out[key] < 0:
                raise ValueError(f"beta calibrator {where}.{key} must be >= 0 (monotone), got {out[key]}")
        return out

    def _apply(self, scores: Tensor, rows: Tensor) -> Tensor:
        a, b, c = self._tables(
            scores.device,
            lambda d: tuple(
                torch.tensor([cv[k] for cv in self.curves()], dtype=torch.float64, device=d) for k in "abc"
            ),
        )
        s = scores.clamp(_EPS, 1 - _EPS)
        return torch.sigmoid(a[rows] * torch.log(s) - b[rows] * torch.log1p(-s) + c[rows])


def _pool_blocks(values: np.ndarray, counts: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, ...]:
    """Merge runs of equal ``values``: per run, its total count, count-weighted centre and value.

    "Equal" up to rounding noise: PAV's pooled means can differ in the last bits (0.25 vs 0.25000000000000006),
    and two knots that close would make a flat, tie-making segment.
    """
    run = np.cumsum(np.r_[True, np.abs(np.diff(values)) > 1e-12]) - 1
    n = np.bincount(run, weights=counts)
    return n, np.bincount(run, weights=counts * centres) / n, np.bincount(run, weights=counts * values) / n


class IsotonicCalibrator(Calibrator):
    """Smoothed isotonic regression; curve = strictly increasing knots ``x``, ``y`` and a ``tail_slope``.

    Files written before ``tail_slope`` existed hold PAV block ends and apply with flat tails (``tail_slope`` 0).
    """

    method = "isotonic"

    @classmethod
    def _fit_curve(
        cls, scores: np.ndarray, is_tp: np.ndarray, prior_strength: float = 1.0, **options: Any
    ) -> dict[str, Any]:
        xs, inverse = np.unique(scores, return_inverse=True)
        counts = np.bincount(inverse).astype(np.float64)
        hits = np.bincount(inverse, weights=is_tp)
        n, centre, precision = _pool_blocks(isotonic_fit(hits / counts, counts), counts, xs)
        # A block's precision, shrunk towards the overall one by a pseudo-count, is never exactly 0 or 1 (so the
        # tails can still rank); the shrinkage can reorder neighbouring blocks of unequal size, hence a 2nd pooling.
        prior = hits.sum() / counts.sum()
        smoothed = (precision * n + prior_strength * prior) / (n + prior_strength)
        _, knots_x, knots_y = _pool_blocks(isotonic_fit(smoothed, n), n, centre)
        return {"x": knots_x.tolist(), "y": knots_y.tolist(), "tail_slope": TAIL_SLOPE}

    @classmethod
    def _check(cls, curve: dict[str, Any], where: str) -> dict[str, Any]:
        x = check_floats(curve, "x", where, cls.method)
        y = check_floats(curve, "y", where, cls.method)
        if len(x) != len(y):
            raise ValueError(f"isotonic calibrator {where}: {len(x)} x knots but {len(y)} y values")
        if any(b <= a for a, b in itertools.pairwise(x)):
            raise ValueError(f"isotonic calibrator {where}.x must be strictly increasing")
        if any(b < a for a, b in itertools.pairwise(y)):
            raise ValueError(f"isotonic calibrator {where}.y must be non-decreasing (monotone)")
        slope = _check_numbers(
            {"tail_slope": curve.get("tail_slope", 0.0)}, ("tail_slope",), where, cls.method
        )
        if not 0 <= slope["tail_slope"] <= 1:
            raise ValueError(
                f"isotonic calibrator {where}.tail_slope must be in [0, 1], got {slope['tail_slope']}"
            )
        if not all(0.0 <= v <= 1.0 for v in y):
            raise ValueError(f"isotonic calibrator {where}.y must be probabilities in [0, 1], got {y}")
        return {"x": x, "y": y, **({"tail_slope": slope["tail_slope"]} if "tail_slope" in curve else {})}

    def _build(self, device: torch.device) -> tuple[Any, ...]:
        curves = self.curves()
        # All curves in one sorted array, curve r shifted by span * r, so one searchsorted serves every row.
        lengths = torch.tensor([len(c["x"]) for c in curves], device=device)
        starts = torch.cumsum(lengths, 0) - lengths

        def column(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float64, device=device)

        x = column([v for c in curves for v in c["x"]])
        y = column([v for c in curves for v in c["y"]])
        span = float(x.max() - x.min()) + 1.0
        shift = span * torch.repeat_interleave(
            torch.arange(len(curves), device=device, dtype=torch.float64), lengths
        )
        ends = [column([c[k][i] for c in curves]) for k in ("x", "y") for i in (0, -1)]
        slope = column([c.get("tail_slope", 0.0) for c in curves])
        return x + shift, y, starts, lengths, *ends, slope, span

    def _apply(self, scores: Tensor, rows: Tensor) -> Tensor:
        x, y, starts, lengths, lo, hi, y_lo, y_hi, slope, span = self._tables(scores.device, self._build)
        lo, hi, y_lo, y_hi, slope = lo[rows], hi[rows], y_lo[rows], y_hi[rows], slope[rows]
        q = torch.minimum(torch.maximum(scores, lo), hi) + span * rows.to(torch.float64)
        first, last = starts[rows], starts[rows] + lengths[rows] - 1
        upper = torch.minimum(torch.maximum(torch.searchsorted(x, q), first), last)
        lower = torch.maximum(upper - 1, first)
        x0, x1, y0, y1 = x[lower], x[upper], y[lower], y[upper]
        width = x1 - x0
        t = torch.where(width > 0, (q - x0) / width.clamp(min=1e-300), torch.ones_like(q))
        inside = y0 + t.clamp(0, 1) * (y1 - y0)
        s = scores.clamp(0, 1)
        below = y_lo - slope * y_lo * (lo - s) / lo.clamp(min=1e-300)
        above = y_hi + slope * (1 - y_hi) * (s - hi) / (1 - hi).clamp(min=1e-300)
        return torch.where(s < lo, below, torch.where(s > hi, above, inside))


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
        values[filled] = isotonic_fit(hits[filled] / counts[filled], counts[filled])
        # Empty bins take the value of the nearest filled bin below (or above, at the start): still monotone.
        position = np.maximum.accumulate(np.where(filled, np.arange(bins), -1))
        first = int(np.flatnonzero(filled)[0])
        values = values[np.where(position >= 0, position, first)]
        return {"values": values.tolist()}

    @classmethod
    def _check(cls, curve: dict[str, Any], where: str) -> dict[str, Any]:
        values = check_floats(curve, "values", where, cls.method)
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
    c.method: c for c in (TemperatureCalibrator, BetaCalibrator, IsotonicCalibrator, HistogramCalibrator)
}


def fit_calibrator(
    method: str, scores: Any, is_tp: Any, labels: Any = None, per_class: bool = False, **options: Any
) -> Calibrator:
    """Fit a calibrator by method name (``temperature``, ``beta``, ``isotonic``, ``histogram``) on matched pairs."""
    if method not in CALIBRATORS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(CALIBRATORS)}")
    return CALIBRATORS[method].fit(scores, is_tp, labels, per_class=per_class, **options)


def introduced_ties(raw: Tensor, calibrated: Tensor, labels: Tensor | None = None) -> int:
    """How many distinct raw scores of a class a calibration merged into an already taken calibrated value.

    COCO AP ranks detections per class, so a tie between two classes costs nothing; one inside a class can.

    Args:
        raw: ``[N]`` scores before calibration.
        calibrated: ``[N]`` the same detections' calibrated scores.
        labels: ``[N]`` class labels (all one class when omitted).
    """
    if labels is None:
        labels = torch.zeros_like(raw, dtype=torch.int64)
    labels = labels.to(torch.float64)
    before = torch.unique(torch.stack([labels, raw.to(torch.float64)], 1), dim=0).shape[0]
    after = torch.unique(torch.stack([labels, calibrated.to(torch.float64)], 1), dim=0).shape[0]
    return int(before - after)
