"""``fusion tune`` on saved member results files: held-out searches per policy, ``best.yaml`` and the report.

Writes under ``runs/tune/<name>/``: ``best.yaml`` (an ensemble config of ``predictions`` members with the winning
fusion and weights, usable by ``fusion fuse --config`` and ``fusion score --config``), ``trials.csv`` (every trial of
every policy's final search), ``metrics.json``, ``report.md``, ``trials.png`` and ``config.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusion.coco.predictions import Predictions
from fusion.tuning.search import Trial

__all__ = ["best_config", "tune_files"]


def _check_policies(policies: Sequence[str]) -> list[str]:
    from fusion.registry import POLICIES

    names = [p.strip() for p in policies if p.strip()]
    if not names:
        raise ValueError(
            f"--policies names no policy (got {','.join(policies)!r}); e.g. --policies wbf,voting"
        )
    known = POLICIES.names()
    unknown = [p for p in names if p not in known]
    if unknown:
        raise ValueError(f"--policies: unknown policy {unknown[0]!r}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--policies names a policy twice: {','.join(names)}")
    return names


def tune_files(
    paths: Sequence[str | Path],
    annotations: str | Path | None,
    *,
    policies: Sequence[str] = ("wbf",),
    trials: int = 40,
    seed: int = 0,
    backend: str = "auto",
    name: str = "tune",
    root: str | Path = "runs",
    pred_classes: str | None = None,
    classes: str | None = None,
    progress: bool = True,
    calibrators: str | Path | None = None,
    folds: int = 5,
    holdout: float | None = None,
    val: str | None = None,
    test: str | None = None,
    plots: bool = True,
) -> Path:
    """Tune on saved member results files with a held-out protocol (see :mod:`fusion.tuning.heldout`).

    ``trials`` is the budget of EACH policy's search (equal budgets: the winner does not depend on how a shared
    budget was split). ``classes``: the ensemble vocabulary of ``best.yaml`` (default: the annotations' categories,
    a shipped name when they are one, else a ``classes.yaml`` written next to it). ``calibrators`` (a ``calibrators.json`` naming members by file stem) calibrates members
    before the search; ``best.yaml`` then references it.

    Returns:
        The run folder.
    """
    from fusion.coco.evaluate import resolve_backend
    from fusion.holdout import resolve_protocol
    from fusion.io import check_run_name, check_runs_root, run_dir
    from fusion.pipeline import Calibration
    from fusion.scoring.fuse_files import load_member_files
    from fusion.tuning.heldout import tune_heldout, winner
    from fusion.tuning.report import write_tune_report
    from fusion.tuning.search import Scorer

    check_run_name(name)
    check_runs_root("tune", root)  # said before the trials run, not after
    policies = _check_policies(policies)
    if trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials}")
    backend = resolve_backend(backend)
    protocol = resolve_protocol(
        None if annotations is None else str(annotations), folds, holdout, val, test, seed
    )
    if progress:
        print(f"evaluation backend: {backend}\nprotocol: {protocol.describe()}")
    members = load_member_files(paths, protocol.gt, pred_classes)
    calibration = Calibration.from_file(calibrators) if calibrators is not None else None
    scorer = Scorer(members, protocol.gt, calibration, backend)
    results = tune_heldout(scorer, protocol, policies, trials, seed, progress=progress)
    best = winner(results)
    out = run_dir("tune", name, root)
    classes = classes or dataset_classes(protocol.gt, out / "classes.yaml")
    config = best_config(
        name, classes, members, paths, pred_classes or classes, best.best, calibration, calibrators
    )
    record = {
        "command": "tune",
        "annotations": None if annotations is None else str(annotations),
        "members": {n: str(p) for n, p in zip(members, paths)},
        "policies": list(policies),
        "trials_per_policy": trials,
        "seed": seed,
        "backend": backend,
        "calibrators": str(calibrators) if calibrators is not None else None,
        "protocol": protocol.as_dict(),
    }
    write_tune_report(out, config, record, protocol, results, best, plots=plots, verbose=progress)
    return out


def dataset_classes(gt: Any, path: Path) -> str:
    """The annotations' categories as a ``classes`` value: ``coco91`` / ``coco80`` when they are exactly that, else
    the absolute path of a ``{id: name}`` YAML written at ``path``."""
    from fusion.classes import ClassMap
    from fusion.io import atomic_write_yaml

    for shipped in ("coco91", "coco80"):
        if ClassMap.load(shipped) == gt.class_map:
            return shipped
    names = dict(zip(gt.class_map.ids, gt.class_map.names))
    return str(atomic_write_yaml(path, {"names": {int(i): n for i, n in names.items()}}).resolve())


def best_config(
    name: str,
    classes: str,
    members: Mapping[str, Predictions],
    paths: Sequence[str | Path],
    pred_classes: str,
    best: Trial,
    calibration: Any,
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
                "classes": pred_classes,
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
    if calibration is not None and calibration.fused is not None and calibrators:
        # every trial was scored after it
        config["fused_calibrator"] = str(Path(calibrators).resolve())
    return config
