"""The Ensemble: end to end on the tiny random-weight config, one vocabulary, weights, devices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ensemble_boxes import weighted_boxes_fusion

from fusion.classes import ClassMap
from fusion.config import ConfigError
from fusion.ensemble import Ensemble, resolve_device

COCO80 = ClassMap.load("coco80")
COCO91 = ClassMap.load("coco91")


@pytest.fixture(scope="module")
def tiny() -> Ensemble:
    torch.manual_seed(0)
    ens = Ensemble.from_config(
        "tiny", ["members.0.detections_per_img=15", "fusion.iou_thr=0.5"], device="cpu"
    )
    # A random backbone gives every Faster R-CNN box the same score, and torch.topk breaks such ties differently
    # from call to call; scaling the box head's first layer separates the scores so repeated passes agree.
    with torch.no_grad():
        ens.members[0].model.roi_heads.box_head.fc6.weight.mul_(1e9)
    return ens


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
        rng.integers(0, 256, (144, 112, 3), dtype=np.uint8),
    ]


def _canonical(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows ``[label, score, x1, y1, x2, y2]`` in a fixed order, so equal sets compare equal despite score ties."""
    rows = np.column_stack([labels, np.round(scores, 5), np.round(boxes, 2)])
    return rows[np.lexsort(rows.T[::-1])]


def test_tiny_end_to_end_equals_ensemble_boxes_on_the_members_outputs(tiny: Ensemble, images: list) -> None:
    assert tiny.member_names == ["frcnn", "yolo"]
    per_member = tiny.predict_members(images)
    assert [len(d) for d in per_member["frcnn"]] == [15, 15]  # the override reached the member
    assert all(len(d) > 0 for d in per_member["yolo"])
    fused = tiny.fuse([per_member["frcnn"], per_member["yolo"]])
    for index, (image, det) in enumerate(zip(images, fused)):
        h, w = image.shape[:2]
        assert det.image_size == (h, w)
        scale = np.array([w, h, w, h], dtype=np.float64)
        members = [per_member[name][index].numpy() for name in tiny.member_names]
        ref = weighted_boxes_fusion(
            [m["boxes"] / scale for m in members],
            [m["scores"] for m in members],
            [m["labels"] for m in members],
            iou_thr=0.5,
            skip_box_thr=0.0,
        )
        ours = det.numpy()
        assert len(ours["boxes"]) == len(ref[0]) > 0
        np.testing.assert_allclose(
            _canonical(ours["boxes"], ours["scores"], ours["labels"]),
            _canonical(ref[0] * scale, ref[1], ref[2]),
            atol=0.02,
        )
        assert ((ours["labels"] >= 0) & (ours["labels"] < 80)).all()


def test_predict_equals_members_then_fusion(tiny: Ensemble, images: list) -> None:
    fused = tiny.predict(images)
    again = tiny.fuse(list(tiny.predict_members(images).values()))
    for a, b in zip(fused, again):
        assert a == b


def test_91_id_and_80_class_members_share_one_vocabulary(tiny: Ensemble) -> None:
    frcnn, yolo = tiny.members
    # Every class: torchvision's COCO id and YOLO's class id land on the same ensemble label.
    tv_labels = frcnn.lookup[torch.tensor(COCO91.ids)]
    yolo_labels = yolo.lookup[torch.tensor(COCO80.ids)]
    assert torch.equal(tv_labels, yolo_labels)
    assert torch.equal(tv_labels, torch.arange(80))
    assert frcnn.lookup[90] == COCO80.index("toothbrush") == yolo.lookup[79]


def _predictions_config(tmp_path: Path, **member_b: object) -> dict:
    records = [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(records))
    return {
        "name": "w",
        "device": "cpu",
        "members": [
            {"name": "a", "type": "predictions", "path": str(path), "weight": 2.0},
            {"name": "b", "type": "predictions", "path": str(path), **member_b},
        ],
    }


def test_class_weights_make_a_member_by_class_matrix(tmp_path: Path) -> None:
    ens = Ensemble.from_config(
        _predictions_config(tmp_path, class_weights={"person": 3.0, "toothbrush": 0.0})
    )
    weights = ens.fusion_weights()
    assert len(weights) == 2 and len(weights[0]) == 80
    assert weights[0] == [2.0] * 80
    assert weights[1][0] == 3.0 and weights[1][79] == 0.0 and weights[1][1:79] == [1.0] * 78
    assert ens.policy.params.weights == weights
    assert Ensemble.from_config(_predictions_config(tmp_path)).fusion_weights() == [2.0, 1.0]


def test_class_weights_with_an_unknown_class_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"member 'b': class_weights: class 'persn' is not in this vocabulary.*'person'"
    ):
        Ensemble.from_config(_predictions_config(tmp_path, class_weights={"persn": 3.0}))


def test_config_errors_name_the_member(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"members\[1\]\.score_thr"):
        Ensemble.from_config(_predictions_config(tmp_path, score_thr=2))
    with pytest.raises(
        ValueError, match=r"member 'a': 77 of its classes are not in the ensemble vocab.*'bicycle'"
    ):
        Ensemble.from_config(_predictions_config(tmp_path), ["classes=" + str(_two_classes(tmp_path))])


def _two_classes(tmp_path: Path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text("names: [person, car, dog]\n")
    return path


def test_drop_classes_is_explicit(tmp_path: Path) -> None:
    config = _predictions_config(tmp_path)
    path = _two_classes(tmp_path)
    others = [n for n in COCO91.names if n not in ("person", "car", "dog")]
    for member in config["members"]:
        member["drop_classes"] = others
    config["classes"] = str(path)
    ens = Ensemble.from_config(config)
    (fused,) = ens.predict([np.zeros((20, 20, 3), dtype=np.uint8)])
    assert fused.labels.tolist() == [0] and fused.boxes.tolist() == [[0.0, 0.0, 10.0, 10.0]]


def test_devices_and_autocast(tmp_path: Path) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device cuda was asked for but CUDA is not available"):
            resolve_device("cuda")
        with pytest.warns(UserWarning, match=r"autocast fp16 is ignored on cpu"):
            Ensemble.from_config(_predictions_config(tmp_path), ["autocast=fp16"])


@pytest.mark.cuda
def test_tiny_on_cuda_matches_cpu_labels_and_stays_on_device(images: list) -> None:
    torch.manual_seed(0)
    ens = Ensemble.from_config("tiny", ["members.0.detections_per_img=15"], device="cuda")
    fused = ens.predict(images)
    assert all(d.device.type == "cuda" and d.image_size == im.shape[:2] for d, im in zip(fused, images))
    members = ens.predict_members(images)
    assert all(d.device.type == "cuda" for dets in members.values() for d in dets)


def test_shipped_coco_config_validates_and_names_missing_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion.config import load_ensemble_config

    config = load_ensemble_config("coco")
    assert [(m.name, m.type) for m in config.members] == [
        ("frcnn_v2", "torchvision"),
        ("yolo11x", "ultralytics"),
        ("detr_r50", "detr"),
    ]
    monkeypatch.setenv(
        "TORCH_HOME", str(tmp_path)
    )  # an empty cache: the first member must say what is missing
    with pytest.raises(
        FileNotFoundError, match=r"put fasterrcnn_resnet50_fpn_v2_coco-dd69338a\.pth in .*checkpoints"
    ):
        Ensemble.from_config("coco", device="cpu")
