"""``fusion tune``: search fusion settings that maximise the fused COCO AP on a validation set.

Search space (each dimension only for the policies whose ``Params`` have that field): the policy, ``iou_thr``,
``skip_box_thr``, every ``Literal`` field (``conf_type``, voting's ``quorum``, soft-NMS's ``method``) and the member
weights (when there are several members).

Optimiser, and why: the objective (fused AP) is piecewise constant in the thresholds and mixes categorical with
continuous dimensions, so gradient methods do not apply and a population method such as
``scipy.optimize.differential_evolution`` needs ``popsize x dims`` evaluations per generation, too many for a
budget of a few dozen trials. We therefore (1) sample ``~70%`` of the budget as a seeded Latin hypercube
(``scipy.stats.qmc``: space-filling, categorical dimensions included), then (2) polish the continuous dimensions of
the best trial with bounded Nelder-Mead (``scipy.optimize.minimize``) for the rest of the budget. Every trial is
deterministic, so a seed reproduces the whole search.
"""

from __future__ import annotations

import csv
import io
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusion.coco.annotations import CocoGroundTruth
from fusion.coco.evaluate import evaluate, resolve_backend
from fusion.coco.predictions import Predictions
from fusion.pipeline import Calibration, Pipeline

__all__ = ["Scorer", "SearchSpace", "Trial", "default_setting", "trials_csv", "tune"]

CONTINUOUS = {"iou_thr": (0.3, 0.85), "skip_box_thr": (0.0, 0.3)}
WEIGHT_RANGE = (0.2, 3.0)


@dataclass
class Trial:
    """One evaluated setting: ``policy`` (full params dict incl. ``type`` and ``weights``) and its fused stats."""

    number: int
    phase: str
    policy: dict[str, Any]
    stats: dict[str, float]


class SearchSpace:
    """Maps a vector in ``[0, 1]^D`` to a policy setting.

    Dimensions: policy choice, the continuous fields of :data:`CONTINUOUS`, each ``Literal`` field of any searched
    policy, and one weight per member (when ``M > 1``).
    """

    def __init__(self, policies: Sequence[str], num_members: int) -> None:
        from fusion.registry import POLICIES

        self.policies = list(policies)
        self.params = {name: POLICIES.get(name).Params for name in self.policies}
        self.continuous = [k for k in CONTINUOUS if any(k in p.model_fields for p in self.params.values())]
        choices: dict[str, list[Any]] = {}
        for params in self.params.values():
            for key, info in params.model_fields.items():
                allowed = _literal_choices(info.annotation)
                if key == "type" or not allowed:
                    continue
                choices.setdefault(key, [])
                choices[key] += [c for c in allowed if c not in choices[key]]
        self.categorical = choices
        self.num_weights = num_members if num_members > 1 else 0
        self.dims = 1 + len(self.continuous) + len(self.categorical) + self.num_weights

    def decode(self, u: np.ndarray) -> dict[str, Any]:
        """``u`` in ``[0, 1]^D`` -> ``{"type": ..., field: value, "weights": [...]}`` (only the policy's fields)."""
        u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0 - 1e-12)
        name = self.policies[int(u[0] * len(self.policies))]
        fields = self.params[name].model_fields
        out: dict[str, Any] = {"type": name}
        k = 1
        for key in self.continuous:
            low, high = CONTINUOUS[key]
            if key in fields:
                out[key] = round(float(low + u[k] * (high - low)), 4)
            k += 1
        for key in self.categorical:
            if key in fields:
                allowed = _literal_choices(fields[key].annotation)
                out[key] = allowed[int(u[k] * len(allowed))]
            k += 1
        if self.num_weights:
            low, high = WEIGHT_RANGE
            out["weights"] = [round(float(low + v * (high - low)), 3) for v in u[k : k + self.num_weights]]
        return out

    def continuous_slots(self) -> list[int]:
        """Indices of ``u`` that Nelder-Mead may move (thresholds and weights)."""
        slots = list(range(1, 1 + len(self.continuous)))
        start = 1 + len(self.continuous) + len(self.categorical)
        return slots + list(range(start, start + self.num_weights))


class Scorer:
    """Fused COCO stats of a policy setting on any subset of the images, each setting fused once.

    Members are calibrated once (``calibration``); a setting is fused over ALL images and cached, so the searches of
    several folds (whose explore points coincide: same seed) share fusions and differ only in the images scored.
    """

    MAX_CACHED = 512

    def __init__(
        self,
        members: Mapping[str, Predictions],
        gt: CocoGroundTruth,
        calibration: Calibration | None = None,
        backend: str = "auto",
    ) -> None:
        self.gt, self.backend = gt, resolve_backend(backend)
        self.pipeline = Pipeline.build(calibration=calibration, vocabulary=gt.class_map)
        self.calibrated = self.pipeline.calibrate_columns(members, gt)
        self._fused: dict[str, Predictions] = {}
        self._subsets: dict[tuple, CocoGroundTruth] = {}

    def fused(self, setting: Mapping[str, Any]) -> Predictions:
        """The pipeline's fused output under ``setting`` (``{"type", field..., "weights"}``) on every image."""
        key = repr(sorted(setting.items()))
        if key not in self._fused:
            if len(self._fused) >= self.MAX_CACHED:
                self._fused.clear()
            trial = self.pipeline.with_policy(
                {k: v for k, v in setting.items() if k != "weights"}, {"weights": setting.get("weights")}
            )
            self._fused[key] = trial.fuse_columns(self.calibrated, self.gt)
        return self._fused[key]

    def subset(self, ids: Sequence[Any] | None) -> CocoGroundTruth:
        """The ground truth of ``ids`` (all images when ``None``), cached."""
        if ids is None:
            return self.gt
        key = tuple(sorted(int(i) for i in ids))
        if key not in self._subsets:
            self._subsets[key] = self.gt.subset(np.asarray(key, dtype=np.int64))
        return self._subsets[key]

    def restrict(self, preds: Predictions, ids: Sequence[Any] | None) -> Predictions:
        if ids is None:
            return preds
        return preds.select(np.isin(preds.image_ids, np.asarray([int(i) for i in ids], dtype=np.int64)))

    def stats(self, setting: Mapping[str, Any], ids: Sequence[Any] | None = None) -> dict[str, float]:
        """Fused stats of ``setting`` on the images ``ids``."""
        fused = self.restrict(self.fused(setting), ids)
        return evaluate(self.subset(ids), fused, self.backend, source="fused").stats

    def member_stats(self, ids: Sequence[Any] | None = None) -> dict[str, dict[str, float]]:
        """Each (calibrated) member's stats on the images ``ids``."""
        gt = self.subset(ids)
        return {
            name: evaluate(gt, self.restrict(p, ids), self.backend, source=f"member {name!r}").stats
            for name, p in self.calibrated.items()
        }


def default_setting(policy: str, num_members: int) -> dict[str, Any]:
    """``policy`` at its defaults with equal weights, as the search writes settings."""
    space = SearchSpace([policy], num_members)
    return space.decode(_default_point(space))


def tune(
    members: Mapping[str, Predictions],
    gt: CocoGroundTruth,
    *,
    policies: Sequence[str] = ("wbf",),
    trials: int = 40,
    seed: int = 0,
    backend: str = "auto",
    metric: str = "AP",
    progress: bool = True,
    calibration: Calibration | None = None,
    scorer: Scorer | None = None,
    image_ids: Sequence[Any] | None = None,
) -> tuple[Trial, list[Trial]]:
    """Search fusion settings for ``members`` on ``gt``; returns the best trial and all trials in order.

    With ``calibration``, members are calibrated once, before the search, so every trial fuses calibrated scores
    (as the ensemble will), and the fused output's calibrator (if any) is applied to every trial's fusion.
    ``scorer`` (a :class:`Scorer` of these members) shares fusions between searches; ``image_ids`` scores the
    trials on those images only (a fold's fit images).
    """
    from scipy.optimize import minimize
    from scipy.stats import qmc
    from tqdm.auto import tqdm

    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    scorer = scorer or Scorer(members, gt, calibration, backend)
    space = SearchSpace(policies, len(scorer.calibrated))
    history: list[Trial] = []
    seen: dict[str, float] = {}
    bar = tqdm(total=trials, desc="tune", unit="trial", disable=not progress)

    def objective(u: np.ndarray, phase: str) -> float:
        setting = space.decode(u)
        key = repr(sorted(setting.items()))
        if key not in seen:  # Nelder-Mead revisits points whose decoded (rounded) setting is identical
            stats = scorer.stats(setting, image_ids)
            history.append(Trial(len(history), phase, setting, stats))
            seen[key] = stats[metric]
            bar.update(1)
            best = max(t.stats[metric] for t in history)
            bar.set_postfix({metric: f"{best:.4f}"})
        return -seen[key]

    explore = max(1, round(trials * 0.7)) if trials > 2 else trials
    sampler = qmc.LatinHypercube(d=space.dims, seed=seed)
    points = sampler.random(explore)
    # The defaults of the first policy are always tried first: tuning never returns worse than the default.
    points[0] = _default_point(space)
    for u in points:
        objective(u, "explore")
    remaining = trials - len(history)
    slots = space.continuous_slots()
    if remaining > 0 and slots:
        best = min(range(len(points)), key=lambda i: seen[repr(sorted(space.decode(points[i]).items()))])
        base = points[best].copy()

        def polish(x: np.ndarray) -> float:
            u = base.copy()
            u[slots] = x
            return objective(u, "polish") if len(history) < trials else -max(seen.values())

        minimize(
            polish,
            base[slots],
            method="Nelder-Mead",
            bounds=[(0.0, 1.0)] * len(slots),
            options={"maxfev": remaining * 3, "xatol": 1e-3, "fatol": 1e-6},
        )
    bar.close()
    best_trial = max(history, key=lambda t: (t.stats[metric], -t.number))
    return best_trial, history


def _literal_choices(annotation: Any) -> list[Any]:
    """The choices of a ``Literal`` field, also inside a union (voting's ``quorum: Literal[...] | float``)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    found: list[Any] = []
    for arg in typing.get_args(annotation):
        found += [c for c in _literal_choices(arg) if c not in found]
    return found


def _default_point(space: SearchSpace) -> np.ndarray:
    name = space.policies[0]
    params = space.params[name]()
    u = np.full(space.dims, 0.5)
    u[0] = 0.5 / len(space.policies)
    k = 1
    for key in space.continuous:
        low, high = CONTINUOUS[key]
        if key in type(params).model_fields:
            u[k] = np.clip((getattr(params, key) - low) / (high - low), 0, 1 - 1e-9)
        k += 1
    for key in space.categorical:
        if key in type(params).model_fields:
            allowed = _literal_choices(type(params).model_fields[key].annotation)
            value = getattr(params, key)
            u[k] = (allowed.index(value) + 0.5) / len(allowed) if value in allowed else 0.5
        k += 1
    if space.num_weights:
        u[k:] = (1.0 - WEIGHT_RANGE[0]) / (WEIGHT_RANGE[1] - WEIGHT_RANGE[0])
    return u


def trials_csv(history: Sequence[Trial]) -> str:
    """The trials as CSV: number, phase, every policy field, then the 12 stats."""
    from fusion.coco.evaluate import STAT_KEYS

    keys: list[str] = []
    for trial in history:
        keys += [k for k in trial.policy if k not in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "phase", *keys, *STAT_KEYS])
    for t in history:
        writer.writerow(
            [
                t.number,
                t.phase,
                *[t.policy.get(k, "") for k in keys],
                *[f"{t.stats[k]:.6f}" for k in STAT_KEYS],
            ]
        )
    return buffer.getvalue()
