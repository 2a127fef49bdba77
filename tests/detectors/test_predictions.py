"""Saved-predictions member: COCO JSON/JSONL -> member -> fused output, matching by id and by file name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ensemble_boxes import weighted_boxes_fusion

from detectors.predictions import PredictionsDetector
from fusion.classes import ClassMap
from fusion.detector import ImageBatch
from fusion.ensemble import Ensemble
from fusion.interop import from_coco_records, to_coco_records

COCO80 = ClassMap.load("coco80")
SIZES = {1: (100, 200), 2: (80, 60), 3: (50, 50)}  # image id -> (height, width); image 3 has no records

# Member A: COCO category ids (coco91): 1 person, 3 car, 90 toothbrush.
RECORDS_A = [
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 50], "score": 0.9},
    {"image_id": 1, "category_id": 3, "bbox": [100, 20, 50, 30], "score": 0.6},
    {"image_id": 2, "category_id": 90, "bbox": [5, 5, 20, 20], "score": 0.7},
    {"image_id": 2, "category_id": 1, "bbox": [30, 30, 10, 10], "score": 0.02},
]
# Member B: ultralytics-style ids (coco80): 0 person, 2 car, 79 toothbrush.
RECORDS_B = [
    {"image_id": 1, "category_id": 0, "bbox": [12, 8, 40, 52], "score": 0.8},
    {"image_id": 1, "category_id": 2, "bbox": [160, 60, 30, 30], "score": 0.5},
    {"image_id": 2, "category_id": 79, "bbox": [6, 4, 20, 21], "score": 0.4},
]


def _write(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "a.json"
    a.write_text(json.dumps(RECORDS_A))
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join(json.dumps(r) for r in RECORDS_B) + "\n")
    return a, b


def _batch(ids: list[int], paths: list[str | None] | None = None) -> ImageBatch:
    return ImageBatch([torch.zeros(3, *SIZES[i]) for i in ids], list(ids), paths or [])


def test_round_trip_through_the_member_and_fusion(tmp_path: Path) -> None:
    a, b = _write(tmp_path)
    config = {
        "name": "saved",
        "classes": "coco80",
        "device": "cpu",
        "members": [
            {"name": "a", "type": "predictions", "path": str(a), "weight": 2.0, "score_thr": 0.05},
            {"name": "b", "type": "predictions", "path": str(b), "classes": "coco80"},
        ],
        "fusion": {"type": "wbf", "iou_thr": 0.55},
    }
    ens = Ensemble.from_config(config)
    batch = _batch([1, 2, 3])
    fused = ens.predict(batch)
    assert len(fused) == 3 and len(fused[2]) == 0 and fused[2].image_size == SIZES[3]

    # Oracle: ensemble-boxes on the same records, labels as coco80 indices, the 0.02 record filtered out.
    for image_id, det in zip([1, 2], fused):
        h, w = SIZES[image_id]
        boxes, scores, labels = [], [], []
        for records, lookup in ((RECORDS_A, ClassMap.load("coco91")), (RECORDS_B, COCO80)):
            rows = [
                r
                for r in records
                if r["image_id"] == image_id and r["score"] >= (0.05 if lookup is not COCO80 else 0)
            ]
            xyxy = np.array(
                [[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in rows)], dtype=float
            )
            boxes.append(xyxy / [w, h, w, h])
            scores.append([r["score"] for r in rows])
            labels.append([COCO80.index(lookup.names[lookup.ids.index(r["category_id"])]) for r in rows])
        ref_boxes, ref_scores, ref_labels = weighted_boxes_fusion(
            boxes, scores, labels, weights=[2, 1], iou_thr=0.55
        )
        order = np.argsort(-ref_scores, kind="stable")
        np.testing.assert_allclose(det.boxes.numpy(), ref_boxes[order] * [w, h, w, h], atol=1e-3)
        np.testing.assert_allclose(det.scores.numpy(), ref_scores[order], atol=1e-6)
        assert det.labels.tolist() == ref_labels[order].astype(int).tolist()
    # person (A id 1, B id 0) fused into one box voted by both members.
    person = fused[0][fused[0].labels == COCO80.index("person")]
    assert len(person) == 1 and person.extras["votes"].tolist() == [2]

    # And back to COCO JSON: the fused records re-read give the same detections.
    records = to_coco_records(fused[0], 1, COCO80)
    again = from_coco_records(records, COCO80)[1]
    np.testing.assert_allclose(again.boxes.numpy(), fused[0].boxes.numpy(), atol=2e-3)
    assert again.labels.tolist() == fused[0].labels.tolist()


def test_jsonl_equals_json_and_missing_images_are_empty(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"annotations": RECORDS_B}))
    _, jsonl = _write(tmp_path)
    cfg = {"name": "b", "classes": "coco80"}
    from_json = PredictionsDetector(PredictionsDetector.Config(path=str(path), **cfg), COCO80, "cpu")
    from_jsonl = PredictionsDetector(PredictionsDetector.Config(path=str(jsonl), **cfg), COCO80, "cpu")
    batch = _batch([2, 3, 1])
    for x, y in zip(from_json.predict(batch), from_jsonl.predict(batch)):
        assert x == y
    out = from_json.predict(batch)
    assert [len(d) for d in out] == [1, 0, 2]
    assert out[0].boxes.tolist() == [[6.0, 4.0, 26.0, 25.0]] and out[0].labels.tolist() == [79]
    assert out[0].boxes.dtype == out[0].scores.dtype == torch.float64  # the file's values
    assert [d.image_size for d in out] == [SIZES[2], SIZES[3], SIZES[1]]


def test_matching_by_file_name(tmp_path: Path) -> None:
    a, _ = _write(tmp_path)
    images = tmp_path / "images.json"
    images.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "val/one.jpg"}, {"id": 2, "file_name": "two.jpg"}]})
    )
    det = PredictionsDetector(
        PredictionsDetector.Config(name="a", path=str(a), images=str(images)), COCO80, "cpu"
    )
    # Batch ids are positions (0, 1); the file names say which records belong to which image.
    batch = ImageBatch(
        [torch.zeros(3, 80, 60), torch.zeros(3, 100, 200)], [0, 1], ["/data/two.jpg", "/x/val/one.jpg"]
    )
    out = det.predict(batch)
    assert [len(d) for d in out] == [2, 2]
    assert out[0].labels.tolist() == [COCO80.index("toothbrush"), 0]
    with pytest.raises(
        ValueError, match=r"image file /data/three\.jpg matches no file_name in .*images\.json"
    ):
        det.predict(ImageBatch([torch.zeros(3, 8, 8)], [0], ["/data/three.jpg"]))


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"predictions file .*nope\.json does not exist"):
        PredictionsDetector(
            PredictionsDetector.Config(name="p", path=str(tmp_path / "nope.json")), COCO80, "cpu"
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS_B[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        PredictionsDetector(PredictionsDetector.Config(name="p", path=str(bad)), COCO80, "cpu")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(
        json.dumps([*RECORDS_A, {"image_id": 1, "category_id": 12, "bbox": [0, 0, 1, 1], "score": 1}])
    )
    with pytest.raises(ValueError, match=r"member 'p'.*record \[4\] has category_id 12"):
        PredictionsDetector(PredictionsDetector.Config(name="p", path=str(unknown)), COCO80, "cpu")
