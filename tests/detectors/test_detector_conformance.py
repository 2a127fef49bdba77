"""Every detector adapter that builds offline honours the Detector contract on the same batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fusion.classes import ClassMap
from fusion.detector import Detector, ImageBatch, MemberConfig
from fusion.registry import DETECTORS

COCO80 = ClassMap.load("coco80")

# One offline-buildable config per adapter (DETR needs a checkpoint file and is covered by its own tests).
CONFIGS: dict[str, dict[str, Any]] = {
    "torchvision": {
        "model": "fasterrcnn_mobilenet_v3_large_320_fpn",
        "weights": None,
        "score_thr": 0.0,
        "detections_per_img": 10,
        "min_size": 96,
        "max_size": 160,
        "proposals": 50,
    },
    "ultralytics": {"model": "yolo11n.yaml", "classes": "coco80", "conf": 1e-5, "imgsz": 96, "max_det": 10},
    "predictions": {},
}


@pytest.fixture(scope="module")
def records_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("conformance") / "r.json"
    records = [
        {"image_id": 0, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.9},
        {"image_id": 1, "category_id": 90, "bbox": [3, 4, 5, 6], "score": 0.4},
    ]
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(params=sorted(CONFIGS))
def detector(request: pytest.FixtureRequest, records_file: Path) -> Detector:
    kind = request.param
    cls = DETECTORS.get(kind)
    fields = {**CONFIGS[kind], **({"path": str(records_file)} if kind == "predictions" else {})}
    torch.manual_seed(0)
    return cls(cls.Config(name=f"m_{kind}", **fields), COCO80, torch.device("cpu"))


def test_config_class_is_a_member_config_tagged_with_its_registry_name() -> None:
    for kind in CONFIGS:
        config_cls = DETECTORS.get(kind).Config
        assert issubclass(config_cls, MemberConfig)
        assert config_cls.model_fields["type"].default == kind
        with pytest.raises(ValueError, match="extra"):
            config_cls(
                name="x", not_a_field=1, **CONFIGS[kind], **({"path": "p"} if kind == "predictions" else {})
            )


def test_contract_on_a_mixed_size_batch(detector: Detector) -> None:
    sizes = [(80, 120), (100, 64), (64, 64)]
    batch = ImageBatch([torch.rand(3, h, w) for h, w in sizes])
    out = detector.predict(batch)
    assert len(out) == len(sizes)
    assert sum(len(d) for d in out) > 0
    # models give float32; saved results are replayed as the file's values, float64 (as `fusion fuse` reads them)
    floats = torch.float64 if detector.config.type == "predictions" else torch.float32
    for det, size in zip(out, sizes):
        assert det.image_size == size
        assert det.device == detector.device
        assert det.boxes.dtype == floats and det.scores.dtype == floats and det.labels.dtype == torch.int64
        if len(det):
            assert int(det.labels.min()) >= 0 and int(det.labels.max()) < len(COCO80)
            assert bool(torch.isfinite(det.boxes).all()) and bool(
                (det.boxes[:, 2:] >= det.boxes[:, :2]).all()
            )
    assert detector.predict(ImageBatch([])) == []
