"""The contract between ``fusion train`` / ``fusion distill`` and a detector plugin that can be trained.

A plugin returns a :class:`Trainable` from ``Detector.trainable(config, class_map, device)``. Two kinds exist:

* in-loop (``owns_loop = False``): the core's trainer drives the optimisation and asks the plugin only for
  named losses of a batch (``loss``) and for detections in eval mode (``predict``, used for validation);
  torchvision detectors use their own train-mode losses, our DETR its set criterion.
* own-loop (``owns_loop = True``): the plugin delegates to its library's trainer (ultralytics) through
  :meth:`Trainable.fit`, given the data and output folder in an :class:`ExternalTrainJob`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypedDict

from torch import Tensor, nn

from fusion.detections import Detections

__all__ = ["ExternalTrainJob", "NotTrainableError", "TrainTarget", "Trainable"]


class NotTrainableError(TypeError):
    """The detector type has no training support."""


class TrainTarget(TypedDict, total=False):
    """Supervision of one image, in the image's own pixel frame after augmentation.

    Keys:
        boxes: float32 ``[N, 4]`` xyxy pixel boxes.
        labels: int64 ``[N]`` contiguous class indices of the job's :class:`~fusion.classes.ClassMap`.
        scores: optional float32 ``[N]`` per-box weights in ``[0, 1]`` (1 for ground truth; a teacher's fused
            score for pseudo-labels), used by score-weighted losses.
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor


@dataclass
class ExternalTrainJob:
    """Everything an own-loop plugin needs to train on a COCO-format dataset.

    Attributes:
        train_annotations: COCO annotations of the training split.
        train_images: Folder of the training images (``file_name`` is relative to it).
        val_annotations: COCO annotations of the validation split.
        val_images: Folder of the validation images.
        out_dir: The run folder (``runs/train/<name>``); the plugin writes its files under it.
        class_names: The job's vocabulary, in label order.
        epochs: Training epochs.
        batch_size: Images per step (global).
        image_size: Training image size (longest side, pixels).
        seed: Seed of every random generator.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        resume: Continue the run found in ``out_dir``.
        options: Plugin-specific settings passed through from the config (e.g. ultralytics' ``lr0``).
    """

    train_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path
    out_dir: Path
    class_names: list[str]
    epochs: int
    batch_size: int
    image_size: int
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)


class Trainable(ABC):
    """A detector being trained.

    Attributes:
        model: The ``nn.Module`` whose parameters the core's optimiser updates (in-loop plugins). The trainer
            moves it to the device, switches it between ``train()`` (for :meth:`loss`) and ``eval()`` (for
            :meth:`predict`), gives parameters whose name starts with ``backbone`` the backbone learning rate,
            and saves its ``state_dict`` in checkpoints (EMA weights are swapped in for predict and export).
        owns_loop: True when the plugin trains with its library's own loop through :meth:`fit`.
    """

    owns_loop: ClassVar[bool] = False
    model: nn.Module

    def loss(self, images: list[Tensor], targets: list[TrainTarget]) -> dict[str, Tensor]:
        """Named scalar losses of one batch in train mode; the trainer minimises their sum.

        Called under ``torch.autocast`` (bf16) on CUDA. Under ``torchrun`` each rank passes its share of the
        global batch and the trainer averages the gradients over ranks, so a loss that is a mean over the batch's
        images gives one process's gradient; a loss normalised by a count over the batch (e.g. DETR's number of
        boxes) should all-reduce that count.

        Args:
            images: One float32 ``[3, H, W]`` RGB tensor in ``[0, 1]`` per image, on the model's device; sizes
                may differ (the plugin pads as its model needs).
            targets: One :class:`TrainTarget` per image, on the same device.
        """
        raise NotImplementedError(f"{type(self).__name__} trains with its own loop (fit), not with loss()")

    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Detections of every image in eval mode (pixel xyxy, contiguous labels), for validation."""
        raise NotImplementedError(f"{type(self).__name__} does not predict in the core's loop")

    @abstractmethod
    def export(self, out_dir: Path, stem: str) -> dict[str, Any]:
        """Write the trained weights under ``out_dir`` (``<stem>.safetensors`` and what the plugin needs).

        Returns:
            The member-config fields (``type``, ``model``, ``weights``, ...) that load them back as an
            ensemble member, paths relative to ``out_dir``.
        """

    def cut_student(self, plan: Mapping[str, Any], member: Any) -> Trainable:
        """A smaller trainable of the same family cut from this (trained) one, starting from its kept weights.

        Args:
            plan: The plugin's cut settings (``student.cut`` of a distillation config).
            member: The student's member config (its inference settings and name; no checkpoint).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot cut a student from itself (cut_student)")

    def distill_modules(self, teacher: Trainable, weights: Mapping[str, Any]) -> nn.Module:
        """Modules that distillation from ``teacher`` trains beside :attr:`model` (e.g. a feature adapter).

        The distillation trainer calls this once, before it builds the optimiser, adds the returned module's
        parameters to it and keeps its ``state_dict`` in the checkpoint. Default: an empty module.
        """
        return nn.Module()

    def distill_loss(
        self, images: list[Tensor], targets: list[TrainTarget], teacher: Trainable, weights: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        """Named scalar losses of one batch distilled from ``teacher`` (optional; in-loop plugins only).

        The student's own loss on ``targets`` plus the plugin's knowledge-distillation terms, each already
        multiplied by its weight; the trainer minimises their sum. The teacher runs in eval mode without
        gradients on the same batch.

        Args:
            images / targets: As for :meth:`loss`.
            teacher: A trained :class:`Trainable` of a kind the plugin can distill from.
            weights: Named weights of each term and the plugin's distillation options (e.g. DETR's
                ``temperature``, ``pairing``); unknown names are refused.
        """
        raise NotImplementedError(f"{type(self).__name__} has no teacher distillation (distill_loss)")

    def fit(self, job: ExternalTrainJob) -> dict[str, Any]:
        """Train with the plugin's own loop.

        Returns:
            ``{"metrics": {...}, "member": {member-config fields of the best weights, paths relative to
            job.out_dir}}``; the trainer writes it to ``fit_result.json`` and ``member`` to
            ``weights/best.member.yaml``.
        """
        raise NotImplementedError(f"{type(self).__name__} trains in the core's loop, not with fit()")
