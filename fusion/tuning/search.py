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
from pathlib import Path
from typing import Any

import numpy as np

from fusion.coco.annotations import CocoGroundTruth, load_annotations
from fusion.coco.evaluate import evaluate, resolve_backend
from fusion.coco.predictions import Predictions
from fusion.pipeline import Calibration, Pipeline
from fusion.scoring.fuse_files import load_member_files

__all__ = ["SearchSpace", "Trial", "tune", "tune_files"]

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
) -> tuple[Trial, list[Trial]]:
    """Search fusion settings for ``members`` on ``gt``; returns the best trial and all trials in order.

    With ``calibration``, members are calibrated once, before the search, so every trial fuses calibrated scores
    (as the ensemble will), and the fused output's calibrator (if any) is applied to every trial's fusion.
    """
    from scipy.optimize import minimize
    from scipy.stats import qmc
    from tqdm.auto import tqdm

    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    backend = resolve_backend(backend)
    space = SearchSpace(policies, len(members))
    # Members are calibrated once; each trial runs the rest of the same pipeline under its own policy.
    pipeline = Pipeline.build(calibration=calibration, vocabulary=gt.class_map)
    calibrated = pipeline.calibrate_columns(members, gt)
    history: list[Trial] = []
    seen: dict[str, float] = {}
    bar = tqdm(total=trials, desc="tune", unit="trial", disable=not progress)

    def objective(u: np.ndarray, phase: str) -> float:
        setting = space.decode(u)
        key = repr(sorted(setting.items()))
        if key not in seen:  # Nelder-Mead revisits points whose decoded (rounded) setting is identical
            trial = pipeline.with_policy(
                {k: v for k, v in setting.items() if k != "weights"}, {"weights": setting.get("weights")}
            )
            fused = trial.fuse_columns(calibrated, gt)
            stats = evaluate(gt, fused, backend, source="fused").stats
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


def tune_files(
    paths: Sequence[str | Path],
    annotations: str | Path,
    *,
    policies: Sequence[str] = ("wbf",),
    trials: int = 40,
    seed: int = 0,
    backend: str = "auto",
    name: str = "tune",
    root: str | Path = "runs",
    pred_classes: str | None = None,
    classes: str = "coco80",
    progress: bool = True,
    calibrators: str | Path | None = None,
) -> Path:
    """Tune on saved member results files; writes ``best.yaml`` (an ensemble config of ``predictions`` members
    with the best fusion and weights), ``trials.csv`` and ``config.yaml`` under ``runs/tune/<name>/``.

    ``calibrators`` (a ``calibrators.json`` naming members by file stem) calibrates members before the search;
    ``best.yaml`` then references it in each calibrated member's ``calibrator`` field (and as ``fused_calibrator``
    when the set has one).
    """
    from fusion.io import atomic_write_text, atomic_write_yaml, run_dir

    backend = resolve_backend(backend)
    if progress:
        print(f"evaluation backend: {backend}")
    gt = load_annotations(annotations)
    members = load_member_files(paths, gt, pred_classes)
    calibration = Calibration.from_file(calibrators) if calibrators is not None else None
    best, history = tune(
        members,
        gt,
        policies=policies,
        trials=trials,
        seed=seed,
        backend=backend,
        progress=progress,
        calibration=calibration,
    )
    out = run_dir("tune", name, root)
    config = best_config(name, classes, members, paths, pred_classes, best, calibration, calibrators)
    atomic_write_yaml(out / "best.yaml", config)
    atomic_write_text(out / "trials.csv", trials_csv(history))
    atomic_write_yaml(
        out / "config.yaml",
        {
            "command": "tune",
            "annotations": str(annotations),
            "members": {n: str(p) for n, p in zip(members, paths)},
            "policies": list(policies),
            "trials": trials,
            "seed": seed,
            "backend": backend,
            "calibrators": str(calibrators) if calibrators is not None else None,
            "best": {"policy": best.policy, "stats": best.stats, "trial": best.number},
        },
    )
    if progress:
        print(f"best fused AP {best.stats['AP']:.4f} (trial {best.number}): {best.policy}")
        print(f"results in {out}")
    return out


def best_config(
    name: str,
    classes: str,
    members: Mapping[str, Predictions],
    paths: Sequence[str | Path],
    pred_classes: str | None,
    best: Trial,
    calibration: Calibration | None,
    calibrators: str | Path | None,
) -> dict[str, Any]:
    """``best.yaml``: an ensemble config of ``predictions`` members replaying ``paths`` with the best fusion and
    weights, and the calibrators the search was scored with."""
    weights = best.policy.get("weights") or [1.0] * len(members)
    calibrated = calibration.members if calibration is not None else {}
    config = {
        "name": name,
        "classes": classes,
        "members": [
            {
                "name": n,
                "type": "predictions",
                "path": str(Path(p).resolve()),
                "classes": pred_classes or "coco91",
                "weight": float(w),
                **(
                    {"calibrator": str(Path(calibrators).resolve())}
                    if n in calibrated and calibrators
                    else {}
                ),
            }
            for n, p, w in zip(members, paths, weights)
        ],
        "fusion": {k: v for k, v in best.policy.items() if k != "weights"},
    }
    if (
        calibration is not None and calibration.fused is not None and calibrators
    ):  # every trial was scored after it
        config["fused_calibrator"] = str(Path(calibrators).resolve())
    return config
