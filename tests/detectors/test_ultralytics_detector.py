"""ultralytics adapter: exact parity with YOLO's own predict on files, names-based labels, offline errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.ultralytics_detector import UltralyticsDetector, import_ultralytics
from fusion.classes import ClassMap
from fusion.images import load_images

COCO80 = ClassMap.load("coco80")
REVERSED = ClassMap(list(reversed(COCO80.names)))  # label = 79 - class id: a skipped translation shows


def _config(**fields: object) -> UltralyticsDetector.Config:
    base = {
        "name": "yolo",
        "model": "yolo11n.yaml",
        "classes": "coco80",
        "conf": 0.01,
        "imgsz": 160,
        "max_det": 300,
    }
    return UltralyticsDetector.Config(**{**base, **fields})


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("yolo_images")
    files = []
    for index, (h, w) in enumerate([(96, 128), (150, 112), (64, 64)]):
        path = folder / f"im{index}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def detector() -> UltralyticsDetector:
    torch.manual_seed(0)
    det = UltralyticsDetector(_config(), REVERSED, torch.device("cpu"))
    # Random init scores ~2e-4 with one class and image-sized boxes. Give each pyramid level its own class and
    # score, and box logits favouring short distances, so outputs have several labels and distinct boxes.
    head = det.model.model.model[-1]
    with torch.no_grad():
        for level, (cls_branch, box_branch) in enumerate(zip(head.cv3, head.cv2)):
            bias = cls_branch[-1].bias
            bias.fill_(-8.0)
            bias[[0, 41, 79][level]] = float(level)
            box_branch[-1].bias.copy_((-0.7 * torch.arange(16.0)).repeat(4))
    return det


def test_matches_yolo_predict_on_the_files(detector: UltralyticsDetector, image_files: list[Path]) -> None:
    # Reference: ultralytics reads the files itself (cv2, BGR); ours goes through fusion.images (PIL, RGB floats).
    reference = detector.model.predict([str(p) for p in image_files], **detector._args)
    ours = detector.predict(load_images(image_files))
    assert len(ours) == len(reference) == len(image_files)
    labels_seen: set[int] = set()
    for ref, det in zip(reference, ours):
        assert det.image_size == tuple(ref.orig_shape)
        assert len(det) > 0, "the comparison must not be vacuous"
        assert torch.equal(det.boxes, ref.boxes.xyxy)
        assert torch.equal(det.scores, ref.boxes.conf)
        assert torch.equal(det.labels, 79 - ref.boxes.cls.long())
        labels_seen |= set(det.labels.tolist())
    assert labels_seen == {79 - 0, 79 - 41, 79 - 79}


def test_bgr_conversion_is_bit_exact() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (bgr,) = UltralyticsDetector.to_bgr_arrays(load_images([rgb]))
    assert np.array_equal(bgr, rgb[:, :, ::-1])


def test_names_are_used_when_the_model_has_them(detector: UltralyticsDetector, tmp_path: Path) -> None:
    # A .pt saved from the random model keeps its names; loaded without `classes`, names drive the mapping.
    detector.model.model.names = dict(enumerate(COCO80.names))
    path = tmp_path / "tiny.pt"
    detector.model.save(path)
    config = _config(model=str(path), classes=None, trust_pickle=True)  # our own file: a pickle we trust
    loaded = UltralyticsDetector(config, REVERSED, torch.device("cpu"))
    assert loaded.source_classes == COCO80
    assert loaded.lookup[0] == 79 and loaded.lookup[79] == 0


def test_missing_pt_names_file_and_folder() -> None:
    from ultralytics.utils import SETTINGS

    with pytest.raises(FileNotFoundError) as info:
        UltralyticsDetector(_config(model="yolo11x_not_here.pt", classes=None), COCO80, torch.device("cpu"))
    message = str(info.value)
    assert "yolo11x_not_here.pt" in message
    assert str(Path(SETTINGS["weights_dir"]).resolve()) in message


def test_unknown_yaml_and_bad_suffix() -> None:
    with pytest.raises(FileNotFoundError, match="yolo99"):
        UltralyticsDetector(_config(model="yolo99n.yaml"), COCO80, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"must be a \.pt checkpoint or a model \.yaml"):
        UltralyticsDetector(_config(model="yolo11n.onnx"), COCO80, torch.device("cpu"))


def test_yaml_model_without_classes_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"has no class names .*set the member's `classes`"):
        UltralyticsDetector(_config(classes=None), COCO80, torch.device("cpu"))


def test_classes_with_other_ids_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"classes 'coco91' has ids 1\.\.90 \(80 classes\) but the model has 80"
    ):
        UltralyticsDetector(_config(classes="coco91"), COCO80, torch.device("cpu"))


def test_absent_class_is_an_error_naming_it() -> None:
    vocabulary = ClassMap([n for n in COCO80.names if n != "zebra"])
    with pytest.raises(
        ValueError, match=r"1 of its classes are not in the ensemble vocabulary .*\['zebra'\]"
    ):
        UltralyticsDetector(_config(), vocabulary, torch.device("cpu"))


def test_offline_font_is_in_place() -> None:
    from ultralytics.utils import USER_CONFIG_DIR

    import_ultralytics()
    font = Path(USER_CONFIG_DIR) / "Arial.ttf"
    assert font.is_file() and font.read_bytes()[:4] == b"\x00\x01\x00\x00"  # a TrueType file
