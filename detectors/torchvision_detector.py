"""torchvision detection models (Faster R-CNN, RetinaNet, FCOS, SSD) as ensemble members.

Label mapping: torchvision's COCO heads output category ids ``1..90`` (91 logits: background plus 80 classes plus 10
unused "N/A" slots). The ids are read through the member's ``classes`` vocabulary (default ``coco91``: the 80 COCO
names under their official ids) and translated BY NAME into the ensemble's vocabulary; boxes with an "N/A" id are
removed (no class has that id) and so are boxes of the classes listed in ``drop_classes``. A model class that the
ensemble lacks is an error at construction unless it is listed in ``drop_classes``.

Offline: a named weight (``DEFAULT``, ``COCO_V1``, ...) must already be in the torch hub cache
(``torch.hub.get_dir()/checkpoints/<file>``); it is looked up BEFORE torchvision is called, so nothing downloads and
a missing file is a ``FileNotFoundError`` naming the file and the folder. ``weights: null`` builds a random-init
model, backbone included (``weights_backbone=None``).

Safe loading: weights files are read from ``.safetensors`` or with ``torch.load(weights_only=True)``. torchvision
itself reads a named weight from the hub cache with full unpickling, so that file is first read with
``weights_only=True``; a file that needs more (Python objects, which can run code) is refused before torchvision
opens it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from pydantic import Field
from torch import nn

from detectors.labels import label_lookup, map_labels
from detectors.safe_loading import read_safetensors, read_weights_only
from fusion.classes import ClassMap
from fusion.detections import Detections
from fusion.detector import Detector, ImageBatch, MemberConfig
from fusion.training.trainable import Trainable

__all__ = ["MODELS", "TorchvisionDetector", "hub_checkpoint_dir", "load_state_dict_file"]

MODELS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
)
_WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class TorchvisionConfig(MemberConfig):
    """A torchvision detection member.

    Attributes:
        model: The torchvision builder name.
        weights: A weights enum name of that model (``DEFAULT``, ``COCO_V1``, ...), a local ``.pth``/``.pt`` (state
            dict, or ``{"model": state_dict}``) or ``.safetensors`` file, or ``null`` for random init.
        classes: The vocabulary of the model's output ids (``coco91`` for torchvision's COCO weights; a YAML path
            for a custom model, whose head then has ``max id + 1`` logits).
        score_thr: Boxes scoring below this are dropped by the model's own post-processing.
        detections_per_img: Most boxes per image after the model's NMS.
        min_size, max_size: Override the model's resize (``GeneralizedRCNNTransform``); ``null`` keeps its own.
            SSD models resize every image to one fixed square: ``min_size`` sets its side (SSDlite's 320 px
            upsamples 128-px images 6x in area for nothing, since its anchors are relative to the image).
        proposals: Faster R-CNN only: RPN proposals kept per image at inference (torchvision: 1000); fewer is
            faster, since every proposal is scored for every class.
        drop_classes: Model classes whose boxes are dropped (needed for classes the ensemble vocabulary lacks).
    """

    type: Literal["torchvision"] = "torchvision"
    model: Literal[MODELS]  # type: ignore[valid-type]
    weights: str | None = "DEFAULT"
    classes: str = "coco91"
    score_thr: float = Field(0.05, ge=0, le=1)
    detections_per_img: int = Field(100, ge=1)
    min_size: int | None = Field(None, ge=16)
    max_size: int | None = Field(None, ge=16)
    proposals: int | None = Field(None, ge=1)
    drop_classes: list[str] = Field(default_factory=list)


def hub_checkpoint_dir() -> Path:
    """Where torchvision looks for (and would download) named weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``; ``{"model": sd}`` unwrapped)."""
    if path.suffix == ".safetensors":
        return read_safetensors(path, "torchvision member")
    state = read_weights_only(path, "torchvision member")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(
            f"{path}: expected a state dict (or {{'model': state_dict}}), got {type(state).__name__}"
        )
    return state


def _resolve_weights(model: str, weights: str | None) -> tuple[object | None, Path | None]:
    """``(weights enum member, None)``, ``(None, local file)`` or ``(None, None)``; checks files exist first."""
    if weights is None:
        return None, None
    if weights.endswith(_WEIGHT_FILE_SUFFIXES) or "/" in weights or "\\" in weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"torchvision member {model}: weights file {path} does not exist")
        return None, path
    from torchvision.models import get_model_weights

    enum = get_model_weights(model)
    try:
        member = enum[weights]
    except KeyError:
        known = ", ".join(enum.__members__)
        raise ValueError(
            f"torchvision model {model} has no weights named {weights!r}; known: {known} "
            f"(or a path to a .pth/.safetensors file, or null for random init)"
        ) from None
    file = _hub_file(member)
    if not file.is_file():
        raise FileNotFoundError(
            f"torchvision weights {model} {weights} are not in the local cache: put {file.name} in {file.parent} "
            f"(download {member.url} on a machine with internet access; this engine never downloads)"
        )
    return member, None


def _hub_file(member: object) -> Path:
    """The hub-cache file torchvision reads for a weights enum member."""
    return hub_checkpoint_dir() / Path(urlparse(member.url).path).name  # type: ignore[attr-defined]


def loading_mode(config: TorchvisionConfig) -> str:
    """How ``config``'s weights would be loaded, without loading them (``fusion check --config``)."""
    if config.weights is None:
        return "random init"
    try:
        _, path = _resolve_weights(config.model, config.weights)
    except (FileNotFoundError, ValueError) as error:
        return f"refused: {error}"
    if path is not None:
        return "safetensors" if path.suffix == ".safetensors" else "weights_only"
    return f"weights_only (torchvision {config.weights}, checked before torchvision unpickles it)"


def build_model(config: TorchvisionConfig, num_classes: int) -> nn.Module:
    """The torchvision model of ``config``, weights loaded, in eval mode on the CPU (nothing is downloaded)."""
    from torchvision.models import get_model

    weights, path = _resolve_weights(config.model, config.weights)
    if weights is not None:
        # torchvision unpickles the cached file fully; a file that weights_only reads holds nothing that runs code
        read_weights_only(_hub_file(weights), f"member {config.name!r}")
    kwargs = {"num_classes": num_classes} if weights is None else {}
    model = get_model(config.model, weights=weights, weights_backbone=None, **kwargs)
    if path is not None:
        state = load_state_dict_file(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights file {path} does not fit torchvision {config.model}: {exc}") from None
    # Two families of attribute names for the same knobs: Faster R-CNN keeps them on roi_heads.
    heads = model.roi_heads if hasattr(model, "roi_heads") else model
    heads.score_thresh = config.score_thr
    heads.detections_per_img = config.detections_per_img
    if config.proposals is not None:
        if not hasattr(model, "rpn"):
            raise ValueError(
                f"member {config.name!r}: proposals applies to Faster R-CNN only, not {config.model}"
            )
        model.rpn._post_nms_top_n["testing"] = config.proposals
        model.rpn._pre_nms_top_n["testing"] = max(config.proposals, model.rpn._pre_nms_top_n["testing"])
    if config.min_size is not None:
        model.transform.min_size = (config.min_size,)
        if getattr(model.transform, "fixed_size", None):
            model.transform.fixed_size = (config.min_size, config.min_size)
            model.transform.max_size = config.min_size
    if config.max_size is not None and not getattr(model.transform, "fixed_size", None):
        model.transform.max_size = config.max_size
    return model.eval()


class TorchvisionDetector(Detector):
    """torchvision detection models: Faster R-CNN, RetinaNet, FCOS, SSD (COCO ids mapped to the ensemble by name).

    Args:
        config: A :class:`TorchvisionConfig`.
        class_map: The ensemble vocabulary.
        device: Where the model runs and where outputs live.

    Raises:
        FileNotFoundError: a named weight missing from the hub cache, or a missing weights file.
        ValueError: unknown weights name, a weights file that does not fit, or model classes absent from
            ``class_map`` and not listed in ``drop_classes``.
    """

    Config = TorchvisionConfig

    @classmethod
    def trainable(cls, config: TorchvisionConfig, class_map: ClassMap, device: torch.device) -> Trainable:
        """The model trained with torchvision's own losses (see :mod:`detectors.torchvision_training`)."""
        from detectors.torchvision_training import TorchvisionTrainable

        return TorchvisionTrainable(config, class_map, device)

    @classmethod
    def loading_mode(cls, config: TorchvisionConfig) -> str:
        """How the member's weights would be loaded (``fusion check --config``); loads nothing."""
        return loading_mode(config)

    def __init__(self, config: TorchvisionConfig, class_map: ClassMap, device: torch.device | str) -> None:
        super().__init__(config, class_map, torch.device(device))
        source = ClassMap.load(config.classes)
        self.source_classes = source
        # The lookup is built (and validated) before the model so a vocabulary mistake fails fast.
        self.lookup = label_lookup(source, class_map, config.drop_classes, config.name).to(self.device)
        self.model = build_model(config, num_classes=max(source.ids) + 1).to(self.device)

    def _check_sizes(self, batch: ImageBatch) -> None:
        """Refuse an image that the model's resize would shrink to under one pixel (e.g. 1 x 20000), by name,
        instead of torchvision's RuntimeError from inside its transform."""
        transform = self.model.transform
        if getattr(transform, "fixed_size", None):  # SSD: every image becomes the same square
            return
        short_target, long_limit = transform.min_size[-1], transform.max_size
        for index, (height, width) in enumerate(batch.sizes):
            scale = min(short_target / min(height, width), long_limit / max(height, width))
            if min(height, width) * scale < 1:
                name = batch.paths[index] or f"image {batch.image_ids[index]}"
                raise ValueError(
                    f"member {self.name!r}: {name} ({height}x{width} pixels) is too elongated for this model's "
                    f"resize (short side to {short_target}, long side at most {long_limit}): its short side "
                    "would be under one pixel; crop it into tiles first"
                )

    def predict(self, batch: ImageBatch) -> list[Detections]:
        """One :class:`Detections` per image: xyxy pixels of each image, ensemble labels, on ``self.device``.

        All images go through the model in one call (torchvision resizes and pads them into one tensor).
        """
        if len(batch) == 0:
            return []
        self._check_sizes(batch)
        with torch.inference_mode():
            outputs = self.model([image.to(self.device) for image in batch.images])
        return [
            map_labels(
                Detections(out["boxes"], out["scores"], out["labels"], size, check_values=False), self.lookup
            )
            for out, size in zip(outputs, batch.sizes)
        ]
