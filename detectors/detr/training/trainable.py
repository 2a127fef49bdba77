"""Our DETR as a :class:`~fusion.training.Trainable`: set-criterion losses in the core's loop, export as a member.

Built by :meth:`detectors.detr.adapter.DetrDetector.trainable` from a ``type: detr`` member config:

* ``checkpoint`` unset: a fresh :func:`~detectors.detr.model.build_detr` of ``model`` (+ ``arch`` overrides),
  random init, one logit per class of the job's vocabulary.
* our ``.safetensors``: fine-tuned as it is; its YAML's classes must be the job's.
* an official ``.pth``: loaded, then its class head is replaced by a fresh one for the job's vocabulary (the
  usual DETR fine-tuning recipe: the COCO-id logits mean nothing for other classes).

Logit ``i`` is class ``i`` of the job's :class:`~fusion.classes.ClassMap`, and the exported YAML lists the
names, so the member loads back with no ``classes`` setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from fusion.classes import ClassMap
from fusion.detections import Detections
from fusion.training.trainable import Trainable, TrainTarget

from ..checkpoint import load_checkpoint, load_official, save_checkpoint
from ..model import DETR, PRESETS, DetrConfig, build_detr
from ..postprocess import postprocess
from ..preprocess import nested_batch, resize_shorter_side
from .criterion import SetCriterion
from .distill import DetrDistiller, KDSettings, capture_memory
from .fast_losses import criterion_for
from .matcher import HungarianMatcher

if TYPE_CHECKING:
    from ..adapter import DetrMemberConfig

__all__ = ["DetrTrainable", "build_criterion", "build_trainable_model"]

_CRITERION_KEYS = ("eos_coef", "weight_ce", "weight_bbox", "weight_giou", "mixing_weight", "mixing_lambda")
_MATCHER_KEYS = ("cost_class", "cost_bbox", "cost_giou")
_FOCAL_KEYS = ("weight_focal", "weight_bbox", "weight_giou", "alpha", "gamma", "encoder_matches")


def build_criterion(config: DetrMemberConfig, num_classes: int, arch: DetrConfig | None = None) -> nn.Module:
    """The set criterion of ``config.loss`` for a model of architecture ``arch`` (None: a softmax DETR).

    Softmax: :class:`SetCriterion` weights plus the matcher's ``cost_*`` (wrapped for query groups).
    Sigmoid (the fast DETR): :class:`~detectors.detr.training.fast_losses.FocalSetCriterion` settings
    ``weight_focal``, ``weight_bbox``, ``weight_giou``, ``alpha``, ``gamma``, ``encoder_matches`` plus ``cost_*``.
    """
    sigmoid = arch is not None and arch.classification == "sigmoid"
    known = [*(_FOCAL_KEYS if sigmoid else _CRITERION_KEYS), *_MATCHER_KEYS]
    unknown = sorted(set(config.loss) - set(known))
    if unknown:
        raise ValueError(f"member {config.name!r}: unknown loss settings {unknown}; known: {known}")
    if arch is not None:
        return criterion_for(dataclasses.replace(arch, num_classes=num_classes), **config.loss)
    costs = {k: v for k, v in config.loss.items() if k in _MATCHER_KEYS}
    settings = {k: v for k, v in config.loss.items() if k in _CRITERION_KEYS}
    return SetCriterion(num_classes, HungarianMatcher(**costs), **settings)


def build_trainable_model(config: DetrMemberConfig, class_map: ClassMap) -> DETR:
    """The DETR to train for ``config`` with one class logit per class of ``class_map`` (see module doc)."""
    where = f"member {config.name!r}"
    if config.checkpoint is None:
        if config.model not in PRESETS:
            raise ValueError(f"{where}: model must be one of {sorted(PRESETS)}, got {config.model!r}")
        try:
            return build_detr(config.model, num_classes=len(class_map), **config.arch)
        except ValueError as error:
            raise ValueError(f"{where}: arch: {error}") from error
    path = Path(config.checkpoint)
    if path.suffix == ".safetensors":
        model, saved = load_checkpoint(path)
        if saved is None or tuple(saved) != class_map.names:
            raise ValueError(
                f"{where}: {path} has classes {saved} but the training job's are {list(class_map.names)}; "
                "train from its weights only with the same vocabulary in the same order"
            )
        return model
    if path.suffix == ".pth":
        try:
            model = load_official(path, config.model, config.num_classes, **config.arch)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        model.class_embed = nn.Linear(model.config.d_model, len(class_map) + 1)
        model.config = dataclasses.replace(model.config, num_classes=len(class_map))
        return model
    raise ValueError(f"{where}: checkpoint must be an official .pth or our .safetensors, got {path}")


class DetrTrainable(Trainable):
    """DETR in the core's training loop.

    Args:
        model: The DETR to train (moved to ``device``).
        class_map: The job's vocabulary (logit ``i`` = ``class_map.names[i]``).
        criterion: The set criterion (its per-loss weights scale the returned losses): a
            :class:`SetCriterion`, or what :func:`build_criterion` makes for the model's architecture.
        device: Where the model runs.
        member: The member config; its ``score_thr``, ``top_k``, ``min_size``, ``max_size`` rule validation
            predictions exactly as the exported member will run.
    """

    owns_loop = False

    def __init__(
        self,
        model: DETR,
        class_map: ClassMap,
        criterion: nn.Module,
        device: torch.device,
        member: DetrMemberConfig,
    ) -> None:
        if model.config.num_classes != len(class_map):
            raise ValueError(
                f"member {member.name!r}: the model has {model.config.num_classes} class logits but the job "
                f"has {len(class_map)} classes"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.criterion = criterion.to(self.device)
        self.class_map = class_map
        self.member = member
        self._distiller: tuple[tuple[int, KDSettings], DetrDistiller] | None = None

    def loss(self, images: list[Tensor], targets: list[TrainTarget]) -> dict[str, Tensor]:
        """Weighted set-criterion losses (``loss_ce``, ``loss_bbox``, ``loss_giou``, their ``_<i>`` aux copies,
        ``loss_mix`` if on); their sum is the official total loss.

        Args:
            images: Float ``[3, H_i, W_i]`` in ``[0, 1]``, padded together here (mask: padding).
            targets: Pixel xyxy ``boxes`` ``[n, 4]``, ``labels`` ``[n]``, optional ``scores`` ``[n]`` box weights.
        """
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        batch, mask = nested_batch(images)
        self.model.train()
        self.criterion.train()
        normalised = self._normalised_targets(images, targets)
        outputs = self.model(batch, mask, targets=normalised)  # denoising queries need the ground truth
        return self.criterion.weighted(self.criterion(outputs, normalised))

    def cut_student(self, plan: Mapping[str, Any], member: Any) -> DetrTrainable:
        """A student :func:`~detectors.detr.training.student.build_student` cuts from this DETR (``plan``:
        ``plan_student``'s ``encoder_layers``, ``decoder_layers``, ``num_heads``, ``dim_feedforward``,
        ``backbone``), trained with ``member``'s criterion settings."""
        from .student import build_student, plan_student

        known = {"encoder_layers", "decoder_layers", "num_heads", "dim_feedforward", "backbone"}
        unknown = sorted(set(plan) - known)
        if unknown:
            raise ValueError(f"student.cut: unknown settings {unknown}; known: {sorted(known)}")
        try:
            student = build_student(self.model, plan_student(self.model, **plan))
        except ValueError as error:
            raise ValueError(f"student.cut: {error}") from None
        criterion = build_criterion(member, len(self.class_map))
        return DetrTrainable(student, self.class_map, criterion, self.device, member)

    def distill_modules(self, teacher: Trainable, weights: Mapping[str, Any]) -> nn.Module:
        """The :class:`~detectors.detr.training.distill.DetrDistiller` for ``teacher`` (its feature adapter, if
        any, trains with the student: add its parameters to the optimiser)."""
        settings = KDSettings.from_mapping(weights, where=f"member {self.member.name!r}: distill")
        teacher_model = self._teacher_model(teacher)
        distiller = DetrDistiller(
            settings,
            _classification(self.model),
            self.criterion.matcher,
            self.model.config.d_model,
            teacher_model.config.d_model,
        ).to(self.device)
        self._distiller = ((id(teacher_model), settings), distiller)
        return distiller

    def distill_loss(
        self, images: list[Tensor], targets: list[TrainTarget], teacher: Trainable, weights: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        """Weighted set-criterion losses on ``targets`` (times ``gt``; none when ``gt`` is 0) plus the KD terms
        of :mod:`detectors.detr.training.distill` against ``teacher`` (a DETR of the same vocabulary)."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        settings = KDSettings.from_mapping(weights, where=f"member {self.member.name!r}: distill")
        teacher_model = self._teacher_model(teacher)
        if self._distiller is None or self._distiller[0] != (id(teacher_model), settings):
            if settings.feature > 0 and self.model.config.d_model != teacher_model.config.d_model:
                raise ValueError(
                    f"member {self.member.name!r}: feature imitation between widths {self.model.config.d_model} "
                    f"and {teacher_model.config.d_model} trains an adapter: call distill_modules(teacher, "
                    "weights) first and add its parameters to the optimiser"
                )
            self.distill_modules(teacher, weights)
        assert self._distiller is not None
        distiller = self._distiller[1]
        batch, mask = nested_batch(images)
        teacher_model.eval()
        with torch.no_grad(), capture_memory(teacher_model, settings.feature > 0) as teacher_memory:
            teacher_out = teacher_model(batch, mask)
        self.model.train()
        self.criterion.train()
        distiller.train()
        normalised = self._normalised_targets(images, targets)
        with capture_memory(self.model, settings.feature > 0) as student_memory:
            outputs = self.model(batch, mask, targets=normalised)
        losses: dict[str, Tensor] = {}
        if settings.gt > 0:
            gt = self.criterion(outputs, normalised)
            losses.update({k: v * settings.gt for k, v in self.criterion.weighted(gt).items()})
        losses.update(distiller(outputs, teacher_out, student_memory, teacher_memory))
        return losses

    def _teacher_model(self, teacher: Trainable) -> DETR:
        """The teacher's DETR after checking it can teach this student (same vocabulary, classification)."""
        where = f"member {self.member.name!r}: distill"
        if not isinstance(teacher, DetrTrainable):
            raise TypeError(
                f"{where}: a DETR student learns from a DETR teacher, got {type(teacher).__name__}"
            )
        model = teacher.model
        if model.config.num_classes != self.model.config.num_classes:
            raise ValueError(
                f"{where}: teacher has {model.config.num_classes} classes, student {self.model.config.num_classes}"
            )
        if _classification(model) != _classification(self.model):
            raise ValueError(
                f"{where}: teacher classification {_classification(model)!r} but student "
                f"{_classification(self.model)!r}"
            )
        if next(model.parameters()).device != self.device:
            raise ValueError(
                f"{where}: teacher is on {next(model.parameters()).device}, student on {self.device}"
            )
        return model

    @staticmethod
    def _normalised_targets(images: list[Tensor], targets: list[TrainTarget]) -> list[dict[str, Tensor]]:
        """Pixel xyxy -> cxcywh relative to each image (DETR's boxes are relative to the unpadded image)."""
        out = []
        for i, (image, target) in enumerate(zip(images, targets)):
            if "boxes" not in target or "labels" not in target:
                raise ValueError(f"targets[{i}] needs 'boxes' (pixel xyxy) and 'labels'")
            height, width = image.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=image.device)
            boxes = target["boxes"].to(image.device, torch.float32).reshape(-1, 4)
            normalised = {"boxes": box_convert(boxes, "xyxy", "cxcywh") / scale, "labels": target["labels"]}
            if "scores" in target:
                normalised["scores"] = target["scores"]
            out.append(normalised)
        return out

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Eval-mode detections with the member's resize, threshold, top-k and bf16 (labels = the job's classes)."""
        cfg = self.member
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        if cfg.min_size is not None:
            images = [resize_shorter_side(im, cfg.min_size, cfg.max_size) for im in images]
        batch, mask = nested_batch(images)
        self.model.eval()
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            outputs = self.model(batch, mask)
        return postprocess(
            outputs,
            sizes,
            score_thr=cfg.score_thr,
            top_k=cfg.top_k,
            classification=_classification(self.model),
        )

    def export(self, out_dir: Path, stem: str) -> dict[str, Any]:
        """Write ``<stem>.safetensors`` + ``<stem>.yaml`` (architecture, class names) under ``out_dir``.

        Returns:
            Member-config fields loading them back: ``type``, ``checkpoint`` (relative to ``out_dir``) and the
            inference settings validation used.
        """
        save_checkpoint(self.model, Path(out_dir) / f"{stem}.safetensors", classes=list(self.class_map.names))
        cfg = self.member
        return {
            "type": "detr",
            "checkpoint": f"{stem}.safetensors",
            "score_thr": cfg.score_thr,
            "top_k": cfg.top_k,
            "min_size": cfg.min_size,
            "max_size": cfg.max_size,
            "bf16": cfg.bf16,
        }


def _classification(model: nn.Module) -> str:
    """``softmax`` (DETR's CE with no-object) or ``sigmoid`` (focal; the fast DETR's option)."""
    return getattr(model.config, "classification", "softmax")
