"""What a job built on the training loop hands it: the run's config and folder, and the parts it changes.

``fusion train`` and ``fusion distill`` share :func:`resolve_run` (new run or resume) and the loop of
:mod:`fusion.training.loop`; distillation changes the loop only through a :class:`LoopHook` (model, loss,
modules trained beside it, data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusion.classes import ClassMap
from fusion.distributed import DistContext
from fusion.training.config import TrainConfigBase
from fusion.training.trainable import Trainable, TrainTarget

__all__ = ["HookFactory", "LoopHook", "LossFn", "resolve_run"]

LossFn = Callable[[list[Tensor], list[TrainTarget]], dict[str, Tensor]]


@dataclass
class LoopHook:
    """What a job built on this loop (``fusion distill``) changes in it; ``None`` keeps the loop's own part.

    Attributes:
        trainable: The model trained (e.g. a student cut from a teacher) instead of the one ``cfg.model`` builds.
        loss: Named losses of a batch instead of ``trainable.loss`` (e.g. ``trainable.distill_loss`` with its
            teacher); called under autocast like it.
        modules: Trained beside ``trainable.model`` (a distillation adapter): its parameters join the
            optimiser's ``rest`` group and its ``state_dict`` the checkpoint.
        dataset: The training items (keyed by ``(index, epoch)``, as :class:`~fusion.training.data.
            CocoTrainDataset`) instead of ``cfg.data.train``'s.
        kind: The job's name in the progress bar (``train``, ``distill``).
    """

    trainable: Trainable | None = None
    loss: LossFn | None = None
    modules: nn.Module | None = None
    dataset: Any = None
    kind: str = "train"


#: Builds a job's :class:`LoopHook` once the data, vocabulary and device are known and the seeds are set.
HookFactory = Callable[[Any, Any, ClassMap, torch.device], LoopHook]


def resolve_run(
    kind: str,
    load: Callable[..., TrainConfigBase],
    schema: type[TrainConfigBase],
    config: Any,
    overrides: list[str] | tuple[str, ...],
    root: str | Path,
    resume: str | Path | None,
    dist: DistContext,
) -> tuple[TrainConfigBase, Path]:
    """The validated config and run folder of a new run (``<root>/<kind>/<name>``) or of one to resume."""
    if resume is not None:
        out = Path(resume)
        if not (out / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume {out}: no config.yaml there (is it a fusion {kind} run?)")
        return load(out / "config.yaml", overrides), out
    if config is None:
        raise ValueError(f"{kind}: give a config or a run folder to resume")
    if isinstance(config, schema) and not overrides:
        cfg = config
    else:
        cfg = load(config.model_dump(mode="json") if isinstance(config, schema) else config, overrides)
    from fusion.io import run_dir

    out = Path(dist.broadcast(str(run_dir(kind, cfg.name, root)) if dist.is_main else None))
    return cfg, out
