"""DETR models as ensemble members (``type: detr``).

Example member config::

    - name: detr50
      type: detr
      checkpoint: weights/detr-r50-e632da11.pth    # official file (model: detr_resnet50) or our .safetensors
      model: detr_resnet50
      score_thr: 0.05
      top_k: 100

Official checkpoints output COCO category ids (logit ``i`` = category id ``i``; their vocabulary defaults to
``coco91``, whose 11 unnamed "N/A" ids are dropped as for every adapter, see :mod:`detectors.labels`). Our
checkpoints store their class names in the YAML beside the weights (logit ``i`` = ``classes[i]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from pydantic import Field

from detectors.labels import label_lookup, map_labels
from fusion.classes import ClassMap
from fusion.detections import Detections
from fusion.detector import Detector, ImageBatch, MemberConfig

from .checkpoint import load_checkpoint, load_official
from .model import PRESETS
from .postprocess import postprocess
from .preprocess import nested_batch, resize_shorter_side

if TYPE_CHECKING:
    from fusion.training.trainable import Trainable

__all__ = ["DetrDetector", "DetrMemberConfig"]


class DetrMemberConfig(MemberConfig):
    """A DETR member.

    Attributes:
        checkpoint: An official facebookresearch/detr ``.pth`` or one of our ``.safetensors`` (with its ``.yaml``).
            Required to predict; unset only to train a fresh model (``fusion train``).
        model: Architecture of a ``.pth`` or of a fresh model (a :data:`~detectors.detr.model.PRESETS` name);
            ignored for safetensors, whose YAML gives the architecture.
        arch: :class:`~detectors.detr.model.DetrConfig` overrides of ``model`` for a ``.pth`` or a fresh model
            (e.g. ``{num_queries: 20, dropout: 0.0}``).
        loss: Set-criterion settings when training: ``eos_coef``, ``weight_ce``, ``weight_bbox``, ``weight_giou``,
            ``mixing_weight``, ``mixing_lambda`` and the matcher's ``cost_class``, ``cost_bbox``, ``cost_giou``.
        num_classes: Class logits (without no-object) of a ``.pth`` (official: 91).
        classes: Vocabulary of the checkpoint's logits: a shipped name (``coco91``), a class-list YAML path or a
            list of names (logit ``i`` = name ``i``). Default: ``coco91`` for ``.pth``, the YAML's list otherwise.
        drop_classes: Checkpoint classes whose boxes are dropped on purpose (e.g. those the ensemble lacks).
        score_thr: Keep detections scoring at least this.
        top_k: Keep at most this many detections per image (DETR has ``num_queries`` at most).
        min_size / max_size: Resize the shorter side to ``min_size`` unless the longer exceeds ``max_size``
            (the official evaluation: 800 / 1333); ``min_size: null`` runs at the input size.
        bf16: Run the model under bfloat16 autocast (CUDA).
    """

    type: Literal["detr"] = "detr"
    checkpoint: str | None = None
    model: str = "detr_resnet50"
    arch: dict[str, Any] = Field(default_factory=dict)
    loss: dict[str, float] = Field(default_factory=dict)
    num_classes: int = Field(91, ge=1)
    classes: str | list[str] | None = None
    drop_classes: list[str] = Field(default_factory=list)
    score_thr: float = Field(0.05, ge=0.0, le=1.0)
    top_k: int | None = Field(100, ge=1)
    min_size: int | None = Field(800, ge=32)
    max_size: int | None = Field(1333, ge=32)
    bf16: bool = False


class DetrDetector(Detector):
    """Runs a DETR on a batch of images padded together, returns detections in the ensemble's vocabulary."""

    Config = DetrMemberConfig

    def __init__(self, config: DetrMemberConfig, class_map: ClassMap, device: torch.device) -> None:
        super().__init__(config, class_map, device)
        where = f"member {config.name!r}: checkpoint"
        if config.checkpoint is None:
            raise ValueError(f"{where} is required to predict (only a model to train may start without one)")
        path = Path(config.checkpoint)
        if path.suffix == ".pth":
            if config.model not in PRESETS:
                raise ValueError(
                    f"member {config.name!r}: model must be one of {sorted(PRESETS)}, got {config.model!r}"
                )
            model = load_official(path, config.model, config.num_classes, **config.arch).eval()
            saved_classes = None
        elif path.suffix == ".safetensors":
            model, saved_classes = load_checkpoint(path)
        else:
            raise ValueError(f"{where} must be an official .pth or our .safetensors, got {path}")
        self.model = model.to(self.device)
        source = self._source_classes(config, saved_classes, path.suffix)
        num_logits = self.model.config.num_classes
        if max(source.ids) >= num_logits:
            raise ValueError(
                f"member {config.name!r}: class ids up to {max(source.ids)} but the model has {num_logits} class logits"
            )
        self.lookup = label_lookup(source, class_map, config.drop_classes, config.name).to(self.device)

    @classmethod
    def trainable(cls, config: MemberConfig, class_map: ClassMap, device: torch.device) -> Trainable:
        """A :class:`~detectors.detr.training.trainable.DetrTrainable`: set-criterion losses, export as a member.

        The training room is imported here, not at module level, so inference never loads it.
        """
        from .training.trainable import DetrTrainable, build_criterion, build_trainable_model

        cfg = cast(DetrMemberConfig, config)
        model = build_trainable_model(cfg, class_map)
        criterion = build_criterion(cfg, len(class_map), model.config)
        return DetrTrainable(model, class_map, criterion, device, cfg)

    @staticmethod
    def _source_classes(config: DetrMemberConfig, saved: list[str] | None, suffix: str) -> ClassMap:
        if isinstance(config.classes, list):
            return ClassMap(config.classes)
        if config.classes is not None:
            return ClassMap.load(config.classes)
        if suffix == ".pth":
            return ClassMap.load("coco91")
        if saved is None:
            raise ValueError(
                f"member {config.name!r}: the checkpoint's YAML lists no classes; set `classes` in the member config"
            )
        return ClassMap(saved)

    @torch.inference_mode()
    def predict(self, batch: ImageBatch) -> list[Detections]:
        cfg = cast(DetrMemberConfig, self.config)
        images = [im.to(self.device) for im in batch.images]
        if cfg.min_size is not None:
            images = [resize_shorter_side(im, cfg.min_size, cfg.max_size) for im in images]
        tensor, mask = nested_batch(images)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            outputs = self.model(tensor, mask)
        # DETR boxes are relative to each image, so they scale straight to the ORIGINAL sizes.
        detections = postprocess(
            outputs,
            batch.sizes,
            score_thr=cfg.score_thr,
            top_k=cfg.top_k,
            classification=self.model.config.classification,
        )
        return [map_labels(d, self.lookup) for d in detections]
