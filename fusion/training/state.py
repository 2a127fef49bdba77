"""The optimisation's state: AdamW param groups, the LR schedule, EMA, RNG states and ``checkpoint.pt``.

A checkpoint holds only tensors, numbers, strings and containers of them, so it loads with
``torch.load(weights_only=True)``; it is written atomically (``fusion.io``), so a kill -9 leaves the previous one.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fusion.io import atomic_write_bytes
from fusion.training.config import LoopConfig

__all__ = [
    "build_ema",
    "build_optimizer",
    "get_rng_state",
    "load_checkpoint",
    "lr_schedule",
    "save_checkpoint",
    "set_rng_state",
    "swapped_weights",
]

CHECKPOINT_VERSION = 1


def build_optimizer(
    model: nn.Module, config: LoopConfig, extra: nn.Module | None = None
) -> torch.optim.AdamW:
    """AdamW with two param groups: names starting with ``backbone`` get ``backbone_lr``, the rest ``lr``.

    Frozen parameters (``requires_grad=False``) are left out. A ``backbone_lr`` of 0 freezes the backbone in
    effect (its group is still there, so checkpoints keep one layout). ``extra`` (modules trained beside the
    model, e.g. a distillation adapter) joins the ``rest`` group after the model's parameters.
    """
    backbone_lr = config.lr if config.backbone_lr is None else config.backbone_lr
    groups: dict[str, list[Tensor]] = {"backbone": [], "rest": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["backbone" if name.startswith("backbone") else "rest"].append(param)
    if extra is not None:
        groups["rest"] += [p for p in extra.parameters() if p.requires_grad]
    if not groups["backbone"] and not groups["rest"]:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(
        [
            {"params": groups["rest"], "lr": config.lr, "name": "rest"},
            {"params": groups["backbone"], "lr": backbone_lr, "name": "backbone"},
        ],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )


def lr_schedule(config: LoopConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR factor of a step: linear warmup, then cosine to ``min_lr_ratio`` or ``gamma`` at milestone epochs.

    A plain function (not a callable object), so ``LambdaLR.state_dict`` stores no config in checkpoints.

    Args:
        config: The loop settings.
        steps_per_epoch: Optimiser steps in one epoch.
    """
    total = max(config.epochs * steps_per_epoch, 1)
    start = min(config.warmup_steps, total - 1)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.schedule == "step":
            return warm * config.gamma ** sum(step >= m * steps_per_epoch for m in config.milestones)
        progress = min(max(step - start, 0) / max(total - start, 1), 1.0)
        return warm * (
            config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )

    return factor


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s parameters and buffers."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@contextmanager
def swapped_weights(model: nn.Module, state: dict[str, Tensor] | None) -> Iterator[nn.Module]:
    """``model`` holding ``state`` (e.g. the EMA weights) inside the block; its own weights are back after it."""
    if state is None:
        yield model
        return
    own = {key: value.detach().clone() for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        yield model
    finally:
        model.load_state_dict(own)


def get_rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) generator states, as tensors and plain numbers."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, torch.tensor(words, dtype=torch.int64), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, words, gauss = state["python"]
    random.setstate((int(version), tuple(int(w) for w in words.tolist()), gauss))
    numpy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, containers) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **state}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs from the file).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not a checkpoint of this trainer.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a checkpoint of fusion train (version {CHECKPOINT_VERSION})")
    return state
