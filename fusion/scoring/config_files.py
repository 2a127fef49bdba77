"""Score an ensemble config whose members are all saved results files: no images, no models.

``fusion fuse --config best.yaml`` and ``fusion score --config best.yaml`` without ``--images`` come here: each
``predictions`` member's file is read (its ``classes`` translated into the dataset's categories by name, its
``score_thr`` and ``drop_classes`` applied), and the ensemble's own pipeline (policy, weights, member and fused
calibrators, exactly as :class:`~fusion.Ensemble` builds it) runs column-wise through
:func:`~fusion.scoring.run.fuse_and_evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["fuse_config", "only_files"]


def only_files(config: Any) -> list[str]:
    """Names of the config's members that are NOT saved results files (empty: it can be scored without images)."""
    return [m.name for m in config.members if getattr(m, "type", None) != "predictions"]


def _member_results(member: Any, gt: Any) -> Any:
    from fusion.classes import ClassMap
    from fusion.coco.predictions import load_predictions

    source = ClassMap.load(member.classes)
    same = tuple(source.names) == tuple(gt.class_map.names) and tuple(source.ids) == tuple(gt.class_map.ids)
    try:
        preds = load_predictions(member.path, gt, None if same else source)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"member {member.name!r} ({member.path}): {exc}") from None
    keep = preds.scores >= member.score_thr
    if member.drop_classes:
        names = np.asarray(gt.class_map.names, dtype=object)
        labels = gt.class_map.labels_from_ids(torch.from_numpy(preds.category_ids)).numpy()
        keep &= ~np.isin(names[labels], list(member.drop_classes))
    return preds.select(keep)


def fuse_config(
    config: str | Path | Mapping[str, Any],
    annotations: str | Path,
    *,
    command: str = "fuse",
    name: str | None = None,
    root: str | Path = "runs",
    overrides: Sequence[str] = (),
    backend: str = "auto",
    device: str = "cpu",
    plots: bool = True,
    verbose: bool = True,
) -> Path:
    """Fuse and score the saved results files an ensemble config names; outputs in ``<root>/<command>/<name>/``.

    Raises:
        ValueError: a member that runs a model (it needs images: ``fusion score --images``).
    """
    from fusion.coco.annotations import load_annotations
    from fusion.coco.evaluate import resolve_backend
    from fusion.config import load_ensemble_config
    from fusion.ensemble import Ensemble
    from fusion.io import run_dir
    from fusion.scoring.report import format_run, write_run
    from fusion.scoring.run import fuse_and_evaluate

    cfg = load_ensemble_config(config, overrides)
    models = only_files(cfg)
    if models:
        raise ValueError(
            f"member(s) {models} of {cfg.name!r} run a model, not a saved results file: they need images "
            "(fusion score --config ... --images FOLDER)"
        )
    if cfg.tta.hflip or cfg.tta.scales:
        raise ValueError("saved results files cannot be re-run under TTA; remove tta from the config")
    backend = resolve_backend(backend)
    if verbose:
        print(f"evaluation backend: {backend}")
    ensemble = Ensemble.from_config(cfg, device=device)
    gt = load_annotations(annotations)
    members = {m.name: _member_results(m, gt) for m in cfg.members}
    pipeline = ensemble.pipeline.in_vocabulary(gt.class_map)
    run = fuse_and_evaluate(members, gt, pipeline, backend=backend, device=device)
    out = run_dir(command, name or cfg.name, root)
    record = {
        "command": f"{command} --config",
        "config": cfg.model_dump(mode="json"),
        "annotations": str(annotations),
        "backend": backend,
    }
    write_run(out, gt, run, pipeline.describe(), record, plots=plots)
    if verbose:
        print(format_run(run))
        print(f"results in {out}")
    return out
