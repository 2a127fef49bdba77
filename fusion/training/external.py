"""Own-loop plugins (ultralytics): the job handed to their trainer, and the member YAML of what they trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fusion.classes import ClassMap
from fusion.distributed import DistContext
from fusion.io import atomic_write_text, atomic_write_yaml
from fusion.training.config import TrainConfigBase
from fusion.training.trainable import ExternalTrainJob, Trainable

__all__ = ["fit_external", "write_member"]


# Member-config keys that describe how a model was BUILT for training, never how the trained one loads.
_TRAINING_ONLY = frozenset({"arch", "loss", "checkpoint", "weights", "model", "trust_pickle", "calibrator"})


def write_member(
    base: Path, path: Path, name: str, fields: dict[str, Any], settings: dict[str, Any] | None = None
) -> None:
    """Write the member config YAML ``path``: ``name``, the inference ``settings`` the training config gave its
    model (``conf``, ``imgsz``, ``top_k``, ...: what the user set, less the keys in ``_TRAINING_ONLY``), then the
    plugin's ``fields`` (what to load), which win.

    The plugin names its files relative to ``base``; the YAML names them as seen from the working directory, so
    ``fusion score`` / ``predict`` load the member from where ``fusion train`` ran.
    """
    member: dict[str, Any] = {"name": name}
    member.update({k: v for k, v in (settings or {}).items() if k not in _TRAINING_ONLY and k != "name"})
    for key, value in fields.items():
        is_file = isinstance(value, str) and value and (base / value).is_file()
        member[key] = str(base / value) if is_file else value
    atomic_write_yaml(path, member)


def fit_external(
    cfg: TrainConfigBase,
    out: Path,
    trainable: Trainable,
    class_map: ClassMap,
    device: torch.device,
    dist: DistContext,
    resuming: bool,
) -> dict[str, Any]:
    """Hand the data and the run folder to ``trainable.fit``; write ``fit_result.json`` and the member YAML.

    Raises:
        ValueError: no validation split, or a ``torchrun`` launch (the plugin's trainer runs its own processes).
    """
    if cfg.data.val is None:
        raise ValueError("data.val: this model trains with its own loop, which needs a validation split")
    if dist.world_size > 1:
        raise ValueError(f"model.type {cfg.model.type!r} trains with its own loop; run it without torchrun")
    job = ExternalTrainJob(
        train_annotations=Path(cfg.data.train.annotations),
        train_images=Path(cfg.data.train.images),
        val_annotations=Path(cfg.data.val.annotations),
        val_images=Path(cfg.data.val.images),
        out_dir=out,
        class_names=list(class_map.names),
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        image_size=cfg.data.image_size,
        seed=cfg.seed,
        device=str(device),
        resume=resuming,
        options=dict(cfg.options),
    )
    result = trainable.fit(job)
    atomic_write_text(out / "fit_result.json", json.dumps(result, indent=2, default=str) + "\n")
    if isinstance(result.get("member"), dict):
        settings = cfg.model.model_dump(mode="json", exclude_unset=True)
        write_member(out, out / "weights" / "best.member.yaml", cfg.model.name, result["member"], settings)
    return {"out": str(out), **result}
