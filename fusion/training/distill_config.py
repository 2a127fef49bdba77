"""Distillation configs (``configs/distill/*.yaml``): a training config plus a teacher, validated like it.

The shape is ``configs/train/*.yaml``'s (``name``, ``seed``, ``device``, ``data``, ``train``, ``options``, and
``model`` = the student's member config) plus::

    teacher: {type: detr, checkpoint: runs/train/detr-shapes/weights/best.safetensors}   # a member teacher
    teacher: {ensemble: configs/ensembles/shapes.yaml, threshold: auto, labeled: extra}   # an ensemble teacher
    student: {cut: {encoder_layers: 1, decoder_layers: 1, num_heads: 4, dim_feedforward: 256}}
    distill: {gt: 1.0, class: 1.0, bbox: 5.0, giou: 2.0, temperature: 2.0, pairing: identity}
    unlabeled: null                                                                        # or an image folder

With ``student.cut`` the student is cut from the (member) teacher with its kept weights; ``model`` then only
names the student's inference settings and defaults to the teacher's (without its checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, model_validator

from fusion.config import ConfigError, read_config_source
from fusion.detector import MemberConfig
from fusion.registry import DETECTORS, UnknownNameError
from fusion.training.config import TrainConfigBase, _format_errors, _Strict

__all__ = ["DistillConfigBase", "EnsembleTeacherConfig", "StudentConfig", "load_distill_config"]


class EnsembleTeacherConfig(_Strict):
    """An ensemble teacher (see ``configs/distill/ensemble_teacher_yolo.yaml`` for the keys).

    Attributes:
        ensemble: An ensemble config: a YAML path, a shipped name or an inline mapping.
        threshold: Pseudo-label score cut: ``auto`` (best F1 on the val split) or a number.
        iou_thr: Matching IoU of the F1 choice.
        labeled: What the fused boxes do on labelled images: ``extra`` (a second, score-weighted target set
            matched separately: Teach-DETR), ``replace`` (pseudo-labels instead of the ground truth), ``none``.
        teacher_weight: Weight of the loss on the teacher's target set (``extra``).
        batch_size: Images per teacher batch (default: the ensemble's).
    """

    ensemble: str | dict[str, Any]
    threshold: Literal["auto"] | float = "auto"
    iou_thr: float = Field(0.5, gt=0, le=1)
    labeled: Literal["extra", "replace", "none"] = "extra"
    teacher_weight: float = Field(1.0, ge=0)
    batch_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_threshold(self) -> EnsembleTeacherConfig:
        if not isinstance(self.threshold, str) and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be 'auto' or in [0, 1], got {self.threshold}")
        return self


class StudentConfig(_Strict):
    """``cut``: what a student cut from a member teacher keeps (the plugin's plan: for DETR, ``encoder_layers``,
    ``decoder_layers``, ``num_heads``, ``dim_feedforward``, ``backbone``)."""

    cut: dict[str, Any] | None = None


class DistillConfigBase(TrainConfigBase):
    """A distillation job; ``model`` and ``teacher`` are added per config as detector member configs."""

    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: dict[str, Any] = Field(default_factory=dict)
    unlabeled: str | None = None

    @property
    def ensemble_teacher(self) -> bool:
        return isinstance(self.teacher, EnsembleTeacherConfig)  # type: ignore[attr-defined]


def _member_schema(section: Any, key: str, where: str) -> type[MemberConfig]:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: {key}: expected a member config mapping with a `type`, got {section!r}")
    if "type" not in section:
        raise ConfigError(f"{where}: {key}.type: missing; one of {', '.join(DETECTORS.names())}")
    try:
        return DETECTORS.get(str(section["type"])).Config
    except UnknownNameError as exc:
        raise ConfigError(f"{where}: {key}.type: {exc}") from None


def _check(cfg: Any, where: str) -> None:
    """Rules across sections (the YAML path of the problem in each message)."""
    ensemble = isinstance(cfg.teacher, EnsembleTeacherConfig)
    if cfg.student.cut is not None and ensemble:
        raise ConfigError(
            f"{where}: student.cut: a student is cut from a member teacher, not from an ensemble"
        )
    if cfg.student.cut is not None and cfg.model.type != cfg.teacher.type:
        raise ConfigError(f"{where}: model.type: a student cut from a {cfg.teacher.type} teacher is one too")
    if cfg.student.cut is not None and getattr(cfg.model, "checkpoint", None) is not None:
        raise ConfigError(
            f"{where}: model.checkpoint: a cut student starts from the teacher's weights; unset it"
        )
    if ensemble and cfg.distill:
        raise ConfigError(
            f"{where}: distill: KD settings apply to a member teacher; an ensemble teacher is set under teacher"
        )
    if cfg.unlabeled is not None and not ensemble:
        raise ConfigError(f"{where}: unlabeled: pseudo-labels on unlabelled images need an ensemble teacher")


def load_distill_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> DistillConfigBase:
    """Load, override and validate a distillation config.

    Args:
        source: A YAML path, a shipped config name (``configs/distill/<name>.yaml``) or a mapping.
        overrides: ``dotted.path=value`` strings applied before validation (``train.epochs=3``).

    Raises:
        ConfigError: any invalid field; the message names the source and the YAML path of each problem.
    """
    data, where = read_config_source(source, "distill", overrides)
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and "ensemble" in teacher:
        teacher_schema: type = EnsembleTeacherConfig
    else:
        teacher_schema = _member_schema(teacher, "teacher", where)
        data["teacher"] = {"name": "teacher", **teacher}
    student = data.get("student") or {}
    if "model" not in data and isinstance(student, dict) and student.get("cut") is not None:
        if teacher_schema is EnsembleTeacherConfig:
            raise ConfigError(
                f"{where}: student.cut: a student is cut from a member teacher, not an ensemble"
            )
        # The cut student runs as its teacher does; its weights come from the cut, not from a checkpoint.
        data["model"] = {
            k: v for k, v in data["teacher"].items() if k not in ("name", "checkpoint", "weights")
        }
    model_schema = _member_schema(data.get("model"), "model", where)
    if isinstance(data.get("name"), str):
        data["model"] = {"name": data["name"], **data["model"]}
    schema = create_model(
        "DistillConfig",
        __base__=DistillConfigBase,
        model=(model_schema, ...),
        teacher=(teacher_schema, ...),
    )
    try:
        cfg = schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            _format_errors(exc, where).replace("training config", "distillation config")
        ) from None
    _check(cfg, where)
    return cfg
