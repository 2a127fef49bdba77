"""`fusion predict`: COCO-style JSON under runs/predict/<name>, equal to Ensemble.predict on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fusion.cli import main
from fusion.ensemble import Ensemble
from fusion.interop import to_coco_records

# YOLO only: random-init Faster R-CNN scores every box alike and torch.topk breaks those ties differently from
# run to run, so two runs of the full tiny ensemble are not comparable box for box.
OVERRIDES = [
    "members=[{name: yolo, type: ultralytics, model: yolo11n.yaml, classes: coco80, conf: 0.0001, imgsz: 96, max_det: 5}]",
    "fusion.iou_thr=0.6",
]


def test_predict_writes_the_ensembles_fused_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = []
    for index, (h, w) in enumerate([(90, 120), (110, 96)]):
        files.append(folder / f"im{index}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    monkeypatch.chdir(tmp_path)

    torch.manual_seed(0)
    status = main(
        [
            "predict",
            "--config",
            "tiny",
            str(folder),
            *OVERRIDES,
            "--name",
            "t",
            "--save-images",
            "--draw-thr",
            "0",
        ]
    )
    assert status == 0
    out = tmp_path / "runs" / "predict" / "t"
    records = json.loads((out / "predictions.json").read_text())
    index = json.loads((out / "images.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert [im["file_name"] for im in index["images"]] == [str(f) for f in files]
    assert [(im["id"], im["height"], im["width"]) for im in index["images"]] == [(1, 90, 120), (2, 110, 96)]
    assert len(index["categories"]) == 80
    assert (
        config["members"][0]["max_det"] == 5
        and config["fusion"]["iou_thr"] == 0.6
        and config["name"] == "tiny"
    )
    assert sorted(p.name for p in (out / "images").iterdir()) == ["im0.jpg", "im1.jpg"]
    assert Image.open(out / "images" / "im0.jpg").size == (120, 90)

    torch.manual_seed(0)  # the same random weights as the command's ensemble
    ens = Ensemble.from_config("tiny", OVERRIDES, device="cpu")
    expected = [
        r
        for i, det in enumerate(ens.predict(files), start=1)
        for r in to_coco_records(det.cpu(), i, ens.class_map)
    ]
    assert len(records) == len(expected) > 0
    assert records == expected


def test_predict_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--config", "tiny", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg is not a file" in capsys.readouterr().err
    assert main(["predict", "--config", "tiny", str(tmp_path), "members.9.weight=2"]) == 2
    assert "members[9] does not exist" in capsys.readouterr().err
