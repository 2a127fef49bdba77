"""Training configs: YAML validated by pydantic, ``dotted.path=value`` overrides, errors that name the YAML path.

The config shape (``configs/train/*.yaml``)::

    name: frcnn-shapes
    seed: 0
    device: auto                      # auto | cpu | cuda | cuda:N
    model: {type: torchvision, model: fasterrcnn_mobilenet_v3_large_320_fpn, weights: null}
    data:
      train: {annotations: data/train.json, images: data/train}
      val: {annotations: data/val.json, images: data/val}
      image_size: 320                 # longest side after augmentation (before random scaling)
      augment: {scale: [0.75, 1.25], hflip: 0.5, crop: 0.3, color: 0.2}
    train: {epochs: 12, batch_size: 8, lr: 1.0e-4, backbone_lr: 1.0e-5, schedule: cosine, warmup_steps: 100}
    options: {}                       # passed to own-loop plugins (ultralytics' trainer settings)

``model`` is an ensemble member config (``type: detr | torchvision | ultralytics ...``), validated by that
detector's own ``Config`` model, so a trained member loads back with the same fields. Its ``name`` defaults to the
run's name. The class vocabulary is the training annotations' ``categories``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from fusion.config import ConfigError, _format_path, read_config_source
from fusion.detector import MemberConfig
from fusion.registry import DETECTORS, UnknownNameError

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "LoopConfig",
    "SplitConfig",
    "TrainConfigBase",
    "load_train_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    """One split: a COCO annotation file and the folder its ``file_name`` paths are relative to."""

    annotations: str
    images: str


class AugmentConfig(_Strict):
    """Box-aware training augmentation (``torchvision.transforms.v2``); every part can be switched off.

    Attributes:
        scale: Random resize: the image is fitted into ``image_size`` times a factor drawn from this range.
        hflip: Probability of a horizontal flip.
        crop: Probability of a random IoU-constrained crop (SSD-style ``RandomIoUCrop``).
        color: Strength of colour jitter (brightness, contrast, saturation; hue at a quarter of it); 0 = off.
    """

    scale: tuple[float, float] = (0.75, 1.25)
    hflip: float = Field(0.5, ge=0, le=1)
    crop: float = Field(0.0, ge=0, le=1)
    color: float = Field(0.0, ge=0, le=1)

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {list(value)}")
        return value


class DataConfig(_Strict):
    """Training and validation data.

    Attributes:
        train: The training split.
        val: The validation split (``null``: no evaluation; best weights = last weights).
        image_size: Longest side of training images after augmentation, before random scaling.
        augment: Training augmentation.
        workers: DataLoader worker processes (augmentation is seeded per image, so results do not depend on it).
    """

    train: SplitConfig
    val: SplitConfig | None = None
    image_size: int = Field(640, ge=16)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    workers: int = Field(0, ge=0)


class EMAConfig(_Strict):
    enabled: bool = False
    decay: float = Field(0.9998, gt=0, lt=1)


class LoopConfig(_Strict):
    """The optimisation.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Images per step, GLOBAL (split evenly over ``torchrun`` ranks).
        lr: AdamW learning rate of every parameter outside the backbone.
        backbone_lr: Learning rate of parameters whose name starts with ``backbone`` (``null``: ``lr``).
        weight_decay: AdamW weight decay.
        schedule: ``cosine`` (to ``min_lr_ratio`` × lr at the end) or ``step`` (× ``gamma`` at each epoch
            in ``milestones``), after a linear warmup of ``warmup_steps``.
        clip_grad: Max global gradient norm (0 = no clipping).
        amp: Autocast dtype: ``auto`` = bf16 on CUDA, none on CPU.
        ema: Exponential moving average of the weights (evaluated and exported instead of the raw weights).
        eval_every: Evaluate every N epochs (and after the last); 0 = never.
        checkpoint_every: Write ``checkpoint.pt`` every N steps (and at each epoch end); a resumed run continues
            from the last one.
        log_every: Append the step's losses to ``metrics.jsonl`` every N steps.
        metric: The COCO stat that picks the best weights.
    """

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    backbone_lr: float | None = Field(1e-5, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)
    clip_grad: float = Field(0.1, ge=0)
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    ema: EMAConfig = Field(default_factory=EMAConfig)
    eval_every: int = Field(1, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    metric: Literal["AP", "AP50", "AP75"] = "AP"


class TrainConfigBase(_Strict):
    """A training job; ``model`` is added per config as the named detector's member ``Config``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = 0
    device: str = "auto"
    data: DataConfig
    train: LoopConfig = Field(default_factory=LoopConfig)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_milestones(self) -> TrainConfigBase:
        bad = [m for m in self.train.milestones if not 0 < m < self.train.epochs]
        if self.train.schedule == "step" and bad:
            raise ValueError(f"train.milestones must lie in 1..epochs-1 ({self.train.epochs}), got {bad}")
        return self


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        shown = not isinstance(item["input"], dict) and item["type"] != "missing"
        got = f" (got {item['input']!r})" if shown else ""
        lines.append(f"{_format_path(item['loc'])}: {item['msg']}{got}")
    return f"{source}: invalid training config:\n  " + "\n  ".join(lines)


def load_train_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> TrainConfigBase:
    """Load, override and validate a training config.

    Args:
        source: A YAML path, a shipped config name (``configs/train/<name>.yaml``) or a mapping.
        overrides: ``dotted.path=value`` strings applied before validation (``train.epochs=3``).

    Returns:
        A validated config whose ``model`` is the named detector's member ``Config``.

    Raises:
        ConfigError: any invalid field; the message names the source and the YAML path of each problem.
    """
    data, where = read_config_source(source, "train", overrides)
    model = data.get("model")
    if not isinstance(model, dict):
        raise ConfigError(f"{where}: model: expected a member config mapping with a `type`, got {model!r}")
    if "type" not in model:
        raise ConfigError(f"{where}: model.type: missing; one of {', '.join(DETECTORS.names())}")
    try:
        member_config: type[MemberConfig] = DETECTORS.get(str(model["type"])).Config
    except UnknownNameError as exc:
        raise ConfigError(f"{where}: model.type: {exc}") from None
    if isinstance(data.get("name"), str):
        data["model"] = {"name": data["name"], **model}
    schema = create_model("TrainConfig", __base__=TrainConfigBase, model=(member_config, ...))
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, where)) from None
