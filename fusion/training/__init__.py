"""Training and distillation jobs: the generic loop, data, checkpoints and the contract trainable detectors meet.

The core never imports ``detectors``: a detector plugin makes itself trainable by implementing
:meth:`fusion.detector.Detector.trainable`, which returns a :class:`~fusion.training.trainable.Trainable`.

Entry points: :func:`~fusion.training.loop.train` (``fusion train --config C``; ``--resume runs/train/<name>``;
``torchrun --nproc_per_node N -m fusion train ...``), :func:`~fusion.training.distillation.distill` (``fusion distill``)
and :func:`~fusion.training.config.load_train_config` / :func:`~fusion.training.distill_config.load_distill_config`.
They load lazily: importing this package (as ``fusion.detector`` does) pulls in no training machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

from fusion.training.trainable import ExternalTrainJob, NotTrainableError, Trainable, TrainTarget

_LAZY = {
    "train": "fusion.training.loop",
    "load_train_config": "fusion.training.config",
    "distill": "fusion.training.distillation",
    "load_distill_config": "fusion.training.distill_config",
}

__all__ = ["ExternalTrainJob", "NotTrainableError", "TrainTarget", "Trainable", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion.training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
