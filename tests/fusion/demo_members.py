"""Tiny random-init demo members written by the project's real export functions into a temporary assets folder.

Used by the ``fusion demo`` tests: the demo then runs the real adapters (torchvision, DETR, ultralytics when its
``weights:`` field exists) through the Ensemble, on files laid out exactly as the shipped ones are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fusion.classes import ClassMap
from fusion.demo.assets import ASSET_PREFIX, half_safetensors, write_manifest
from fusion.synthetic import RENDER_CLASSES


def ultralytics_takes_weights() -> bool:
    """Whether the ultralytics member has the safe ``model: <yaml>, weights: <safetensors>`` form (h-safety)."""
    from detectors.ultralytics_detector import UltralyticsConfig

    return "weights" in UltralyticsConfig.model_fields


def write_tiny_members(assets: Path) -> dict[str, Any]:
    """Export tiny random-init members into ``assets``, write ``MANIFEST.json``; returns the demo config mapping.

    Members: an SSDlite (torchvision's trainable export), a small DETR (its checkpoint export) and, when the
    ultralytics adapter loads safetensors, a YOLO11n (ultralytics' safetensors export).
    """
    from detectors.detr.checkpoint import save_checkpoint
    from detectors.detr.model import build_detr
    from detectors.torchvision_detector import TorchvisionConfig
    from detectors.torchvision_training import TorchvisionTrainable

    assets.mkdir(parents=True, exist_ok=True)
    names = list(RENDER_CLASSES)
    class_map = ClassMap(names)
    torch.manual_seed(0)
    ssd = TorchvisionConfig(
        name="ssdlite",
        model="ssdlite320_mobilenet_v3_large",
        weights=None,
        score_thr=0.05,
        detections_per_img=20,
    )
    fields = TorchvisionTrainable(ssd, class_map, "cpu").export(assets, "ssdlite")
    members: list[dict[str, Any]] = [
        {
            "name": "ssdlite",
            "type": "torchvision",
            "model": fields["model"],
            "weights": ASSET_PREFIX + fields["weights"],
            "classes": ASSET_PREFIX + fields["classes"],
            "score_thr": 0.05,
            "detections_per_img": 20,
        }
    ]
    detr = build_detr("detr_tiny", num_classes=len(names))
    save_checkpoint(detr, assets / "detr.safetensors", classes=names)
    members.append(
        {"name": "detr", "type": "detr", "checkpoint": ASSET_PREFIX + "detr.safetensors", "min_size": None,
         "max_size": None, "score_thr": 0.05}
    )  # fmt: skip
    if ultralytics_takes_weights():
        from ultralytics.nn.tasks import DetectionModel

        from detectors.ultralytics_detector import import_ultralytics
        from detectors.ultralytics_training import save_safetensors_model

        import_ultralytics()
        model = DetectionModel("yolo11n.yaml", nc=len(names), verbose=False)
        exported = save_safetensors_model(model, names, assets, "yolo11n")
        members.append(
            {"name": "yolo11n", "type": "ultralytics", "model": ASSET_PREFIX + exported["model"],
             "weights": ASSET_PREFIX + exported["weights"], "conf": 0.001, "imgsz": 128}
        )  # fmt: skip
    for weights in assets.glob("*.safetensors"):  # packaged as the retrain script packages them
        half_safetensors(weights)
    write_manifest(assets, {"image_size": 128}, produced_by="tests/fusion/demo_members.py", max_bytes=None)
    return {
        "name": "tiny-demo",
        "classes": "shapes",
        "device": "cpu",
        "batch_size": 2,
        "members": members,
        "fusion": {"type": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"},
    }
