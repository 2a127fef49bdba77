"""torchvision detectors as :class:`~fusion.training.Trainable`: their own train-mode losses, safetensors export.

Label space: torchvision heads reserve id 0 for the background, so the job's contiguous labels ``0..C-1`` are
trained as ids ``1..C`` (``num_classes = C + 1``). The export writes that vocabulary as ``<stem>.classes.yaml``
(``{1: first class, ...}``) beside ``<stem>.safetensors``, and the member config that loads both back
(``type: torchvision``, ``weights``, ``classes``) maps the ids to an ensemble's vocabulary BY NAME, as for any
torchvision member.

Training starts from random weights (``weights: null``; backbone too: nothing is downloaded) or from a local weights
file of the same architecture and class count (a previous export, to continue training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detectors.torchvision_detector import _WEIGHT_FILE_SUFFIXES, TorchvisionConfig, build_model
from fusion.classes import ClassMap
from fusion.detections import Detections
from fusion.io import atomic_write_bytes, atomic_write_yaml
from fusion.training.trainable import Trainable, TrainTarget

__all__ = ["TorchvisionTrainable"]


class TorchvisionTrainable(Trainable):
    """A torchvision detection model trained in the core's loop.

    Args:
        config: The member config (``weights`` must be ``null`` or a local file; ``classes`` is replaced by the
            job's vocabulary; Faster R-CNN's ``proposals`` also caps training proposals and sampled RoIs).
        class_map: The job's vocabulary (the training annotations' categories).
        device: Where the model trains.

    Raises:
        ValueError: ``weights`` names a torchvision weights enum (those heads have COCO's 91 classes).
    """

    def __init__(self, config: TorchvisionConfig, class_map: ClassMap, device: torch.device | str) -> None:
        weights = config.weights
        is_file = weights is not None and (weights.endswith(_WEIGHT_FILE_SUFFIXES) or "/" in weights)
        if weights is not None and not is_file:
            raise ValueError(
                f"model.weights: training starts from `null` (random init) or a weights file of this model with "
                f"{len(class_map)} classes, not torchvision's named weights {weights!r}"
            )
        self.config = config
        self.class_map = class_map
        self.model = build_model(config, num_classes=len(class_map) + 1).to(device).train()
        if config.proposals is not None and hasattr(self.model, "rpn"):
            # The member's proposal budget applies in training too, and bounds the RoIs sampled per image: the
            # box head runs on every sampled RoI, the bulk of a Faster R-CNN step on small images.
            rpn = self.model.rpn
            rpn._post_nms_top_n["training"] = config.proposals
            rpn._pre_nms_top_n["training"] = max(config.proposals, rpn._pre_nms_top_n["testing"])
            sampler = self.model.roi_heads.fg_bg_sampler
            sampler.batch_size_per_image = min(sampler.batch_size_per_image, config.proposals)

    def loss(self, images: list[Tensor], targets: list[TrainTarget]) -> dict[str, Tensor]:
        """torchvision's own losses in train mode (e.g. ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``).

        Shapes: images ``[3, H, W]`` each; targets' boxes ``[N, 4]`` xyxy pixels, labels ``[N]`` in ``0..C-1``.
        """
        tv_targets = [{"boxes": t["boxes"].float(), "labels": t["labels"] + 1} for t in targets]
        return self.model(images, tv_targets)

    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Eval-mode detections, labels back in ``0..C-1``, boxes in each input image's pixels."""
        with torch.no_grad():
            outputs = self.model(images)
        return [
            Detections(
                out["boxes"], out["scores"], out["labels"] - 1, (int(im.shape[1]), int(im.shape[2])),
                check_values=False,
            )
            for out, im in zip(outputs, images)
        ]  # fmt: skip

    def export(self, out_dir: Path, stem: str) -> dict[str, Any]:
        """``<stem>.safetensors`` (the state dict) and ``<stem>.classes.yaml``; returns the member fields."""
        from safetensors.torch import save

        state = {key: value.detach().cpu().contiguous() for key, value in self.model.state_dict().items()}
        atomic_write_bytes(Path(out_dir) / f"{stem}.safetensors", save(state))
        ids = range(1, len(self.class_map) + 1)
        atomic_write_yaml(
            Path(out_dir) / f"{stem}.classes.yaml", {"names": dict(zip(ids, self.class_map.names))}
        )
        fields = self.config.model_dump(mode="json", exclude={"name", "drop_classes"})
        return {**fields, "weights": f"{stem}.safetensors", "classes": f"{stem}.classes.yaml"}
