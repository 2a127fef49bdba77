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


def _dyadic_member(data: dict, temperature: float, seed: int) -> list[dict]:
    """A simulated member whose scores (k/1024) and boxes (whole pixels) float32 holds exactly, so the
    ``predictions`` adapter (float32) and the results reader (float64) start from the same numbers."""
    from fusion.synthetic import simulate_miscalibrated_member

    out = []
    for r in simulate_miscalibrated_member(data, temperature, seed=seed):
        x, y, w, h = (float(np.floor(v)) for v in r["bbox"])
        out.append(
            {**r, "bbox": [x, y, max(w, 1.0), max(h, 1.0)], "score": max(round(r["score"] * 1024), 1) / 1024}
        )
    return out


@pytest.mark.slow
# No warning: the fused calibrator is applied under the policy it was fitted for.
@pytest.mark.filterwarnings("error::UserWarning")
def test_predict_with_calibrators_equals_ensemble_predict_and_fuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion.synthetic import make_coco_ground_truth

    monkeypatch.chdir(tmp_path)
    data = make_coco_ground_truth(12, seed=7, image_size=(48, 64))
    (tmp_path / "val.json").write_text(json.dumps(data))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for image in data["images"]:
        Image.new("RGB", (image["width"], image["height"])).save(folder / image["file_name"])
    for name, temperature, seed in (("a", 0.35, 1), ("b", 2.5, 2)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_dyadic_member(data, temperature, seed)))
    calibrators = tmp_path / "runs" / "calibrate" / "cal" / "calibrators.json"
    config = {
        "name": "cal",
        "classes": "coco91",  # the dataset's category ids, so predict's records and fused.json compare directly
        "device": "cpu",
        "batch_size": 5,
        "members": [
            {
                "name": n,
                "type": "predictions",
                "path": f"{n}.json",
                "images": "val.json",
                "calibrator": str(calibrators),
            }
            for n in ("a", "b")
        ],
        "fusion": {"type": "wbf", "iou_thr": 0.55},
        "fused_calibrator": str(calibrators),
    }
    (tmp_path / "ens.yaml").write_text(yaml.safe_dump(config))
    fit = ["calibrate", "--config", "ens.yaml", "--annotations", "val.json", "--name", "cal", "--per-class"]
    fit += ["--method", "isotonic"]
    assert main([*fit, "--predictions", "a=a.json", "--predictions", "b=b.json"]) == 0
    assert main(["predict", "--config", "ens.yaml", str(folder), "--name", "p"]) == 0
    fuse = ["fuse", "a.json", "b.json", "--annotations", "val.json", "--name", "f", "--no-plots"]
    assert main([*fuse, "--policy", "wbf", "iou_thr=0.55", "--calibrators", str(calibrators)]) == 0

    out = tmp_path / "runs" / "predict" / "p"
    records = json.loads((out / "predictions.json").read_text())
    names = {
        im["id"]: Path(im["file_name"]).name for im in json.loads((out / "images.json").read_text())["images"]
    }
    ids = {im["file_name"]: im["id"] for im in data["images"]}
    files = [folder / names[i] for i in sorted(names)]

    # fusion predict == Ensemble.predict (the same pipeline: member calibrators, WBF, fused calibrator).
    ensemble = Ensemble.from_config(config)
    assert set(ensemble.calibrators) == {"a", "b"} and ensemble.fused_calibrator is not None
    expected = [
        r
        for i, det in enumerate(ensemble.predict(files), start=1)
        for r in to_coco_records(det.cpu(), i, ensemble.class_map)
    ]
    assert records == expected and len(records) > 0

    # == fusion fuse --calibrators on the same member files (column-wise), record for record.
    fused = json.loads((tmp_path / "runs" / "fuse" / "f" / "fused.json").read_text())
    assert len(fused) == len(records)
    by_image: dict[int, list[dict]] = {}
    for r in fused:
        by_image.setdefault(r["image_id"], []).append(r)
    mine = [dict(r, image_id=ids[names[r["image_id"]]]) for r in records]
    theirs = [r for i in (ids[names[k]] for k in sorted(names)) for r in by_image.get(i, [])]
    assert [(r["image_id"], r["category_id"]) for r in mine] == [
        (r["image_id"], r["category_id"]) for r in theirs
    ]
    assert mine == theirs

    # The calibrators are applied: without them (the old `fusion predict`), the scores differ.
    plain = {
        **config,
        "fused_calibrator": None,
        "members": [{**m, "calibrator": None} for m in config["members"]],
    }
    raw = [
        r
        for i, det in enumerate(Ensemble.from_config(plain).predict(files), start=1)
        for r in to_coco_records(det.cpu(), i, ensemble.class_map)
    ]
    assert [r["score"] for r in raw] != [r["score"] for r in records]

    # The set records what its fused calibrator was fitted under; another policy warns, naming what differs.
    recorded = json.loads(calibrators.read_text())["fused_fit"]
    assert recorded["members"] == ["a", "b"] and recorded["policy"]["iou_thr"] == 0.55
    with pytest.warns(
        UserWarning, match=r"--calibrators .*calibrators\.json: fitted under .*differs in iou_thr"
    ):
        assert (
            main(
                [
                    *fuse[:5],
                    "--name",
                    "g",
                    "--no-plots",
                    "--policy",
                    "wbf",
                    "iou_thr=0.7",
                    "--calibrators",
                    str(calibrators),
                ]
            )
            == 0
        )
