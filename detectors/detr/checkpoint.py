"""DETR weights on disk: our checkpoints (safetensors + architecture YAML) and the official ``.pth`` files.

Our format, for ``path = "student.safetensors"``: the weights in ``student.safetensors`` and the
:class:`~detectors.detr.model.DetrConfig` in ``student.yaml`` beside it (``arch:`` mapping, plus optional
``classes:`` names). Both are written atomically. Official facebookresearch/detr files (``detr-r50-e632da11.pth``
...) are ``{"model": state_dict}`` and are read with ``torch.load(weights_only=True)`` only — never unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save

from detectors.safe_loading import read_safetensors, read_weights_only
from fusion.io import atomic_write_bytes, atomic_write_yaml

from .model import DETR, DetrConfig, build_detr

__all__ = ["config_path", "load_checkpoint", "load_official", "read_pth_state_dict", "save_checkpoint"]

_OFFICIAL_URLS = {
    "detr_resnet50": "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
    "detr_resnet101": "https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth",
    "detr_resnet50_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth",
    "detr_resnet101_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r101-dc5-a2e86def.pth",
}


def config_path(weights: str | Path) -> Path:
    """The YAML beside a safetensors file: ``x.safetensors`` -> ``x.yaml``."""
    return Path(weights).with_suffix(".yaml")


def _missing(path: Path, what: str, hint: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} {path} does not exist; {hint}")


def save_checkpoint(model: DETR, path: str | Path, classes: Sequence[str] | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and its architecture to ``path.with_suffix('.yaml')``.

    Args:
        model: The DETR to save.
        path: Target ``.safetensors`` file (its folder is created).
        classes: Optional class names of the ``num_classes`` logits, stored in the YAML.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path}")
    if classes is not None and len(classes) != model.config.num_classes:
        raise ValueError(
            f"{len(classes)} class names for a model with num_classes={model.config.num_classes}"
        )
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"format": "pt", "arch": "detr"}))
    meta: dict[str, Any] = {"arch": model.config.to_dict()}
    if classes is not None:
        meta["classes"] = [str(c) for c in classes]
    atomic_write_yaml(config_path(path), meta)
    return path


def read_pth_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of an official ``.pth`` (``{"model": ...}``), loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.exists():
        raise _missing(
            path,
            "DETR checkpoint",
            "download the official file (e.g. "
            + _OFFICIAL_URLS["detr_resnet50"]
            + ") on a machine with network access and put it at that path",
        )
    # weights_only: a .pth holding Python objects is refused (UntrustedPickleError), a non-torch file is a
    # WeightsFileError; neither is unpickled
    data = read_weights_only(path, "DETR checkpoint")
    if isinstance(data, dict) and "model" in data:
        data = data["model"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: expected {{'model': state_dict}} or a state dict of tensors")
    return data


def load_official(
    path: str | Path, name: str = "detr_resnet50", num_classes: int = 91, **overrides: Any
) -> DETR:
    """Build ``name`` and load an official facebookresearch/detr ``.pth`` into it strictly.

    Example URLs: ``detr_resnet50`` -> ``https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth``.
    """
    path = Path(path)
    if not path.exists():
        url = _OFFICIAL_URLS.get(name, _OFFICIAL_URLS["detr_resnet50"])
        raise _missing(path, "DETR checkpoint", f"download {url} elsewhere and copy it to that path")
    model = build_detr(name, num_classes=num_classes, **overrides)
    state = read_pth_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not fit architecture {name!r} (num_classes={num_classes}): {error}"
        ) from error
    return model


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[DETR, list[str] | None]:
    """Load one of our checkpoints: ``(model in eval mode, class names or None)``.

    Args:
        path: The ``.safetensors`` file; its ``.yaml`` must lie beside it.
        device: Where to put the model.
    """
    path = Path(path)
    if not path.exists():
        raise _missing(path, "DETR weights", "save one with detectors.detr.checkpoint.save_checkpoint")
    meta_path = config_path(path)
    if not meta_path.exists():
        raise _missing(
            meta_path,
            "DETR architecture file",
            f"it must lie beside {path.name} (written by save_checkpoint)",
        )
    meta = yaml.safe_load(meta_path.read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), dict):
        raise ValueError(f"{meta_path}: expected a mapping with an 'arch:' mapping of DetrConfig fields")
    config = DetrConfig.from_dict(meta["arch"], where=str(meta_path))
    model = build_detr(config)
    state = read_safetensors(path, "DETR checkpoint")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match the architecture in {meta_path}: {error}") from error
    classes = meta.get("classes")
    if classes is not None and len(classes) != config.num_classes:
        raise ValueError(
            f"{meta_path}: {len(classes)} classes listed but arch.num_classes = {config.num_classes}"
        )
    return model.to(device).eval(), classes
