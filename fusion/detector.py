"""The contract every detector adapter implements, and the fields every ensemble member config shares.

An adapter wraps one family of detectors (torchvision, ultralytics, DETR, saved predictions) as an ensemble
member. Adapters live in the top-level ``detectors`` package and are found by name through
:data:`fusion.registry.DETECTORS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fusion.classes import ClassMap
from fusion.detections import Detections
from fusion.training.trainable import NotTrainableError, Trainable

__all__ = ["Detector", "ImageBatch", "MemberConfig"]


class MemberConfig(BaseModel):
    """Fields of every ensemble member; each adapter subclasses it with ``type: Literal["<name>"]``.

    Attributes:
        name: Unique member name (used in outputs, caches and reports).
        type: The registered detector name (the discriminator in ensemble configs).
        weight: Fusion weight of this member (finite, >= 0; the members' weights must not all be 0).
        class_weights: Optional per-class fusion weights ``{class name: weight}`` multiplied into ``weight``.
        calibrator: Optional path to a fitted score calibrator (JSON) applied to this member's scores before fusion.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    type: str
    weight: float = Field(1.0, ge=0, allow_inf_nan=False)
    class_weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None
    calibrator: str | None = None


@dataclass
class ImageBatch:
    """A batch of images as members receive it.

    Attributes:
        images: One float32 ``[3, H, W]`` RGB tensor in ``[0, 1]`` per image, on the ensemble's device; sizes may
            differ between images.
        image_ids: One id per image (a COCO image id when scoring a dataset, else the position in the input).
        paths: The file each image was read from, or ``None``.
    """

    images: list[Tensor]
    image_ids: list[int | str] = field(default_factory=list)
    paths: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.image_ids:
            self.image_ids = list(range(len(self.images)))
        if not self.paths:
            self.paths = [None] * len(self.images)
        if not len(self.images) == len(self.image_ids) == len(self.paths):
            raise ValueError(
                f"ImageBatch: {len(self.images)} images, {len(self.image_ids)} image_ids, {len(self.paths)} paths"
            )
        for index, image in enumerate(self.images):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"ImageBatch.images[{index}] must be [3, H, W], got {list(image.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every image."""
        return [(int(im.shape[1]), int(im.shape[2])) for im in self.images]


class Detector(ABC):
    """An ensemble member: a batch of images -> one :class:`Detections` per image in the ensemble's vocabulary.

    Args:
        config: The member's validated config (an instance of ``Config``).
        class_map: The ensemble's vocabulary; outputs' labels are its contiguous indices, translated by class name.
        device: Where the model runs and where the returned detections live.
    """

    Config: ClassVar[type[MemberConfig]]

    def __init__(self, config: MemberConfig, class_map: ClassMap, device: torch.device) -> None:
        self.config = config
        self.class_map = class_map
        self.device = torch.device(device)

    @property
    def name(self) -> str:
        return self.config.name

    @classmethod
    def trainable(cls, config: MemberConfig, class_map: ClassMap, device: torch.device) -> Trainable:
        """A :class:`~fusion.training.Trainable` of this member's model, for ``fusion train`` and ``distill``.

        Raises:
            NotTrainableError: the detector type has no training support (the default).
        """
        raise NotTrainableError(f"detector type {config.type!r} cannot be trained by fusion train")

    @abstractmethod
    def predict(self, batch: ImageBatch) -> list[Detections]:
        """Detections of every image of ``batch``: pixel xyxy boxes in each image's own size, on ``self.device``."""
