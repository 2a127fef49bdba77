"""detection-fusion: run several object detectors and fuse their outputs into one detection set.

``import fusion`` stays light: the core types load eagerly, everything that pulls in a heavy optional package
(ultralytics, pycocotools, supervision, matplotlib) is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fusion.detections import Detections
from fusion.fuse import fuse, fuse_batch, make_policy
from fusion.registry import DETECTORS, POLICIES

__version__ = "0.1.0"

# Public names that live in modules too heavy to import eagerly: name -> module.
_LAZY = {
    "ClassMap": "fusion.classes",
    "Ensemble": "fusion.ensemble",
    "load_ensemble_config": "fusion.config",
    "score": "fusion.scoring",
}

__all__ = ["DETECTORS", "POLICIES", "Detections", "__version__", "fuse", "fuse_batch", "make_policy", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
