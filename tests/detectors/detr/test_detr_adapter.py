"""The DETR ensemble member: same detections as running the pieces by hand, labels in the ensemble vocabulary."""

from __future__ import annotations

import pytest
import torch

from detectors.detr import build_detr, nested_batch, postprocess, save_checkpoint
from detectors.detr.adapter import DetrDetector, DetrMemberConfig
from fusion.classes import ClassMap
from fusion.detector import ImageBatch
from fusion.registry import DETECTORS


def test_registered_under_detr() -> None:
    assert DETECTORS.get("detr") is DetrDetector


def test_safetensors_member_matches_manual_pipeline(tmp_path) -> None:
    model = build_detr("detr_tiny", num_classes=3, dropout=0.0).eval()
    path = save_checkpoint(model, tmp_path / "tiny.safetensors", classes=["person", "car", "dog"])
    vocabulary = ClassMap.load("coco80")
    config = DetrMemberConfig(name="d", checkpoint=str(path), score_thr=0.0, top_k=4, min_size=None)
    member = DetrDetector(config, vocabulary, torch.device("cpu"))
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 64)]
    got = member.predict(ImageBatch(images))
    with torch.no_grad():
        expected = postprocess(model(*nested_batch(images)), [(64, 96), (80, 64)], top_k=4)
    to_coco80 = torch.tensor([vocabulary.index("person"), vocabulary.index("car"), vocabulary.index("dog")])
    for g, e in zip(got, expected):
        assert g.image_size == e.image_size and len(g) == 4
        torch.testing.assert_close(g.boxes, e.boxes)
        torch.testing.assert_close(g.scores, e.scores)
        assert torch.equal(g.labels, to_coco80[e.labels])


def test_official_pth_member_maps_coco_ids_and_resizes(tmp_path) -> None:
    model = build_detr("detr_tiny", num_classes=91, dropout=0.0).eval()
    with torch.no_grad():  # make category id 3 ("car") win everywhere, id 12 ("N/A") second
        model.class_embed.bias.zero_()
        model.class_embed.bias[3] = 20.0
    path = tmp_path / "detr-tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    vocabulary = ClassMap.load("coco80")
    config = DetrMemberConfig(
        name="official", checkpoint=str(path), model="detr_tiny", min_size=96, top_k=None
    )
    member = DetrDetector(config, vocabulary, torch.device("cpu"))
    image = torch.rand(3, 48, 64)
    (dets,) = member.predict(ImageBatch([image]))
    assert len(dets) == 10 and set(dets.labels.tolist()) == {vocabulary.index("car")}
    resized = torch.nn.functional.interpolate(
        image[None], size=(96, 128), mode="bilinear", align_corners=False
    )[0]
    with torch.no_grad():
        (expected,) = postprocess(model(*nested_batch([resized])), [(48, 64)])
    torch.testing.assert_close(dets.boxes, expected.boxes)  # boxes in the ORIGINAL 48x64 frame
    assert float(dets.boxes[:, 2].max()) <= 64 * 1.5


def test_config_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="must be an official .pth or our .safetensors"):
        DetrDetector(
            DetrMemberConfig(name="x", checkpoint=str(tmp_path / "w.onnx")), ClassMap.load("coco80"), "cpu"
        )
    with pytest.raises(FileNotFoundError, match=r"w\.pth"):
        DetrDetector(
            DetrMemberConfig(name="x", checkpoint=str(tmp_path / "w.pth")), ClassMap.load("coco80"), "cpu"
        )
    model = build_detr("detr_tiny", num_classes=2)
    path = save_checkpoint(model, tmp_path / "m.safetensors", classes=["person", "unicorn"])
    with pytest.raises(ValueError, match="unicorn"):
        DetrDetector(DetrMemberConfig(name="x", checkpoint=str(path)), ClassMap.load("coco80"), "cpu")
    member = DetrDetector(
        DetrMemberConfig(name="x", checkpoint=str(path), drop_classes=["unicorn"]),
        ClassMap.load("coco80"),
        "cpu",
    )
    assert member.lookup.tolist() == [0, -1]
