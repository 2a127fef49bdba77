"""ultralytics YOLO and RT-DETR models as ensemble members, quiet and offline-safe.

Label mapping: the model's class ids ``0..nc-1`` are read through ``model.names`` (or the member's ``classes``
vocabulary when given, needed for models built from a ``.yaml``, whose names are just ``"0".."79"``) and translated
BY NAME into the ensemble's vocabulary. A model class the ensemble lacks is an error at construction unless it is
listed in ``drop_classes`` (whose boxes are removed).

Offline: ultralytics is imported lazily with ``YOLO_OFFLINE=1`` (no DNS probes, update checks or analytics), the
``Arial.ttf`` font its plotting code would download is copied from matplotlib's bundled DejaVuSans, and a ``.pt``
that is neither at the given path nor in ultralytics' ``weights_dir`` is a ``FileNotFoundError`` raised before
ultralytics could try to download it. Predictions use ultralytics' own pre- and post-processing (letterbox, NMS).

Safe loading: an ultralytics ``.pt`` checkpoint is a pickle (loading it runs any code stored in it), so a ``.pt`` is
refused before anything is read unless the member sets ``trust_pickle: true`` or its SHA-256 is in
:data:`detectors.safe_loading.KNOWN_PICKLES`. The safe form is a model ``.yaml`` (with ``nc`` and, ideally,
``names``) plus ``weights:`` a ``.safetensors`` state dict of the ultralytics ``DetectionModel`` built from it::

    - {name: yolo, type: ultralytics, model: runs/train/yolo.yaml, weights: runs/train/yolo.safetensors}

The model is built from the YAML and the weights are loaded strictly (every key, every shape).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field

from detectors.labels import label_lookup, map_labels
from detectors.safe_loading import (
    UntrustedPickleError,
    load_state_strict,
    pickle_trust,
    read_safetensors,
    read_weights_only,
)
from fusion.classes import ClassMap
from fusion.detections import Detections
from fusion.detector import Detector, ImageBatch, MemberConfig
from fusion.interop import from_ultralytics
from fusion.training import Trainable

__all__ = ["UltralyticsDetector", "import_ultralytics", "load_model", "loading_mode", "resolve_model_file"]


class UltralyticsConfig(MemberConfig):
    """An ultralytics member (YOLO, or RT-DETR when the model name contains ``rtdetr``).

    Attributes:
        model: A model ``.yaml`` (e.g. ``yolo11n.yaml``, or a YAML with ``nc`` and ``names`` written beside
            trained weights), built offline; or a ``.pt`` checkpoint (path, or a file name found in ultralytics'
            ``weights_dir``), which is a pickle and needs ``trust_pickle``.
        weights: With a ``.yaml`` model: its state dict as ``.safetensors`` (or a plain ``torch.save`` state dict,
            read with ``weights_only=True``), loaded strictly. ``None`` = random init.
        trust_pickle: Allow loading a ``.pt`` checkpoint. Runs code from the file: only for files you trust.
        conf: Score threshold (ultralytics' default 0.25; use ~0.001 for mAP).
        iou: NMS IoU threshold.
        max_det: Most boxes per image.
        imgsz: Inference size (letterboxed square side, or ``[h, w]``).
        classes: Vocabulary of the model's class ids, replacing ``model.names`` (a shipped name or a YAML path).
        drop_classes: Model classes whose boxes are dropped (needed for classes the ensemble vocabulary lacks).
        half: Run the model in fp16 (CUDA only; ultralytics' own ``half``).
        weights: Safetensors weights of the ``model`` YAML (what ``fusion train`` / ``fusion distill`` export),
            loaded without unpickling anything.
    """

    type: Literal["ultralytics"] = "ultralytics"
    model: str
    weights: str | None = None
    trust_pickle: bool = False
    conf: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.7, gt=0, le=1)
    max_det: int = Field(300, ge=1)
    imgsz: int | list[int] = 640
    classes: str | None = None
    drop_classes: list[str] = Field(default_factory=list)
    half: bool = False


def import_ultralytics() -> Any:
    """Import ultralytics with every network access turned off; returns the module."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics
    from ultralytics.utils import USER_CONFIG_DIR

    font = Path(USER_CONFIG_DIR) / "Arial.ttf"
    if not font.exists():
        # ultralytics downloads Arial.ttf the first time it draws text; a bundled TTF avoids the network.
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if source.exists():
            font.parent.mkdir(parents=True, exist_ok=True)
            tmp = font.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, font)
    return ultralytics


def resolve_model_file(model: str) -> str:
    """The file ultralytics should load: an existing ``.pt`` path, or a ``.yaml`` name/path.

    Raises:
        FileNotFoundError: a ``.pt`` found neither at ``model`` nor in ultralytics' ``weights_dir``.
        ValueError: a name that is neither ``.pt`` nor ``.yaml``/``.yml``.
    """
    path = Path(model).expanduser()
    if path.suffix in (".yaml", ".yml"):
        return model
    if path.suffix != ".pt":
        raise ValueError(f"ultralytics model {model!r} must be a .pt checkpoint or a model .yaml")
    if path.is_file():
        return str(path)
    from ultralytics.utils import SETTINGS

    weights_dir = Path(SETTINGS.get("weights_dir", "weights"))
    candidate = weights_dir / path.name
    if not path.is_absolute() and candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(
        f"ultralytics weights {model} not found: put {path.name} in {weights_dir.resolve()} (ultralytics' "
        f"weights_dir) or give its path; this engine never downloads"
    )


def _who(config: UltralyticsConfig) -> str:
    return f"member {config.name!r}"


def loading_mode(config: UltralyticsConfig) -> str:
    """How ``config``'s model would be loaded, decided without loading or unpickling anything.

    Returns one of ``"safetensors"``, ``"weights_only"``, ``"random init"``, ``"trusted pickle (...)"``,
    ``"known pickle (...)"``, or ``"refused: ..."`` (what :func:`load_model` would raise, in short).
    """
    try:
        file = resolve_model_file(config.model)
        if Path(file).suffix == ".pt":
            return pickle_trust(file, config.trust_pickle, _who(config))
    except UntrustedPickleError:
        return "refused: a pickle .pt without trust_pickle (see `weights: <file.safetensors>`)"
    except (FileNotFoundError, ValueError) as error:
        return f"refused: {error}"
    if config.weights is None:
        return "random init"
    if not Path(config.weights).expanduser().is_file():
        return f"refused: weights file {config.weights} does not exist"
    return "safetensors" if Path(config.weights).suffix == ".safetensors" else "weights_only"


def _yaml_names(file: str, nc: int, who: str) -> dict[int, str] | None:
    """The ``names`` of a model YAML on disk (list or ``{id: name}``), or None when it has none."""
    import yaml

    path = Path(file).expanduser()
    if not path.is_file():  # a name ultralytics resolves from its own configs (yolo11n.yaml): no names
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = data.get("names") if isinstance(data, dict) else None
    if names is None:
        return None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or sorted(int(k) for k in names) != list(range(nc)):
        raise ValueError(f"{who}: {path}: names must list the {nc} classes 0..{nc - 1} of its nc: {nc}")
    return {int(k): str(v) for k, v in names.items()}


def load_model(config: UltralyticsConfig) -> tuple[Any, str]:
    """The ultralytics model of ``config`` and how it was loaded (see :func:`loading_mode`).

    Raises:
        UntrustedPickleError: a ``.pt`` without ``trust_pickle`` that is not a known file (nothing is unpickled).
        FileNotFoundError: a missing ``.pt``, ``.yaml`` or weights file.
        ValueError: ``weights`` with a ``.pt`` model, weights that do not fit the model, bad ``names``.
    """
    from ultralytics import RTDETR, YOLO

    who = _who(config)
    file = resolve_model_file(config.model)
    build = RTDETR if "rtdetr" in Path(file).name.lower() else (lambda f: YOLO(f, verbose=False))
    if Path(file).suffix == ".pt":
        if config.weights is not None:
            raise ValueError(f"{who}: weights applies to a model .yaml; {config.model} already holds weights")
        mode = pickle_trust(file, config.trust_pickle, who)  # raises before anything is unpickled
        return build(file), mode
    model = build(file)
    if config.weights is None:
        return model, "random init"
    suffix = Path(config.weights).suffix
    if _is_exported_yaml(file):
        # an exported member: its YAML holds the exact architecture (scale included), which ultralytics would
        # otherwise guess from the file name
        from detectors.ultralytics_training import build_exported_model

        model.model = build_exported_model(file)
    if suffix == ".safetensors":
        state, mode = read_safetensors(config.weights, who), "safetensors"
    else:
        state, mode = read_weights_only(config.weights, who), "weights_only"
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{who}: {config.weights} must hold a state dict of tensors")
    network = model.model
    load_state_strict(
        network, state, f"{who}: weights {config.weights} for the model built from {config.model}"
    )
    names = _yaml_names(file, len(network.names), who)
    if names is not None:
        network.names = names
    return model, mode


def _is_exported_yaml(file: str) -> bool:
    """A model YAML written by an export (``nc``, ``scale`` and ``names`` in the file itself)."""
    path = Path(file)
    if not path.is_file():  # a model name ultralytics resolves from its own configs
        return False
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and {"nc", "scale", "names"} <= set(data)


def _device_arg(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0}"
    return device.type


class UltralyticsDetector(Detector):
    """ultralytics YOLO (.pt or .yaml) and RT-DETR models, labels mapped to the ensemble by class name.

    Raises (at construction):
        UntrustedPickleError: a ``.pt`` (a pickle) without ``trust_pickle: true``; nothing in it is unpickled.
        FileNotFoundError: a missing ``.pt`` or weights file, or an unknown ``.yaml``.
        ValueError: a model without class names and no ``classes``, a ``classes`` vocabulary whose ids differ
            from the model's, or model classes absent from the ensemble and not in ``drop_classes``.
    """

    Config = UltralyticsConfig

    @classmethod
    def loading_mode(cls, config: UltralyticsConfig) -> str:
        """How the member's model would be loaded (``fusion check --config``); loads nothing."""
        return loading_mode(config)

    def __init__(self, config: UltralyticsConfig, class_map: ClassMap, device: torch.device | str) -> None:
        super().__init__(config, class_map, torch.device(device))
        import_ultralytics()
        self.model, self.load_mode = load_model(config)
        names = {int(k): str(v) for k, v in self.model.names.items()}
        if config.classes is not None:
            source = ClassMap.load(config.classes)
            if sorted(source.ids) != sorted(names):
                raise ValueError(
                    f"member {config.name!r}: classes {config.classes!r} has ids {min(source.ids)}..{max(source.ids)} "
                    f"({len(source)} classes) but the model has {len(names)} classes (ids 0..{len(names) - 1})"
                )
        elif all(name == str(class_id) for class_id, name in names.items()):
            raise ValueError(
                f"member {config.name!r}: model {config.model} has no class names (built from a .yaml?); "
                f"set the member's `classes` (e.g. coco80)"
            )
        else:
            source = ClassMap.from_mapping(names)
        self.source_classes = source
        self.lookup = label_lookup(source, class_map, config.drop_classes, config.name).to(self.device)
        self._args = {
            "conf": config.conf,
            "iou": config.iou,
            "max_det": config.max_det,
            "imgsz": config.imgsz,
            "device": _device_arg(self.device),
            "verbose": False,
            "save": False,
        }
        if config.half and self.device.type == "cuda":
            self._args["half"] = True  # only when asked: ultralytics 8.4 warns about the argument itself

    @classmethod
    def trainable(cls, config: UltralyticsConfig, class_map: ClassMap, device: torch.device) -> Trainable:
        """ultralytics' own trainer on the member's model YAML (see :mod:`detectors.ultralytics_training`)."""
        from detectors.ultralytics_training import UltralyticsTrainable

        return UltralyticsTrainable(config.model, _device_arg(torch.device(device)))

    @staticmethod
    def to_bgr_arrays(batch: ImageBatch) -> list[Any]:
        """Float ``[3, H, W]`` RGB in ``[0, 1]`` -> HWC uint8 BGR numpy arrays, ultralytics' native image form.

        Uint8 images that became floats by ``/255`` come back bit-exact (``round(x * 255)``).
        """
        return [
            image.mul(255)
            .round_()
            .clamp_(0, 255)
            .to(torch.uint8)
            .flip(0)
            .permute(1, 2, 0)
            .contiguous()
            .cpu()
            .numpy()
            for image in batch.images
        ]

    def predict(self, batch: ImageBatch) -> list[Detections]:
        """One :class:`Detections` per image: xyxy pixels of each image, ensemble labels, on ``self.device``.

        The whole batch goes to ultralytics as one list, which it letterboxes and runs as one tensor.
        """
        if len(batch) == 0:
            return []
        results = self.model.predict(self.to_bgr_arrays(batch), stream=False, **self._args)
        return [map_labels(from_ultralytics(result).to(self.device), self.lookup) for result in results]
