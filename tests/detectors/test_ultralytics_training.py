"""ultralytics members trained by ultralytics' trainer: the YOLO folder read by ultralytics, an end-to-end fit whose
metrics are ultralytics' own, safetensors export that rebuilds the same network, kill -9 + resume, option errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from detectors.ultralytics_detector import UltralyticsDetector
from detectors.ultralytics_training import (
    UltralyticsTrainable,
    load_safetensors_model,
    save_safetensors_model,
)
from fusion.classes import ClassMap
from fusion.training import ExternalTrainJob
from fusion.training.yolo_dataset import YoloSplit, write_yolo_dataset

NAMES = ["square", "disc"]


def shapes_split(folder: Path, count: int, size: int, seed: int) -> Path:
    """``count`` noisy ``size``-px images, each with a square (category 1) or disc (category 2) of 80-95 % of the
    image side. An untrained YOLO predicts boxes of ~15 strides (120 px at stride 8): at 128 px such objects
    match some of them at IoU > 0.5, so the metrics of a 1-epoch run are not all zero."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        canvas = Image.fromarray(rng.integers(0, 80, (size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(1):
            side = int(rng.integers(int(0.8 * size), int(0.95 * size)))
            x, y = (int(v) for v in rng.integers(0, size - side, 2))
            category = int(rng.integers(1, 3))
            shape = draw.rectangle if category == 1 else draw.ellipse
            shape(
                [x, y, x + side - 1, y + side - 1], fill=(230, 200, 40) if category == 1 else (40, 200, 230)
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, side, side],
                }
            )
        canvas.save(folder / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": size, "height": size})
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}],
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {"train": shapes_split(root / "train", 16, 128, 0), "val": shapes_split(root / "val", 4, 128, 1)}


def _job(data: dict[str, Path], out: Path, epochs: int = 1, **options: Any) -> ExternalTrainJob:
    return ExternalTrainJob(
        train_annotations=data["train"],
        train_images=data["train"].parent,
        val_annotations=data["val"],
        val_images=data["val"].parent,
        out_dir=out,
        class_names=NAMES,
        epochs=epochs,
        batch_size=8,
        image_size=128,
        seed=0,
        options={"threads": 1, "stream": False, "mosaic": 0.0, **options},
    )


@pytest.mark.slow
def test_ultralytics_reads_the_labels_we_wrote(data: dict[str, Path], tmp_path: Path) -> None:
    from ultralytics.data import YOLODataset

    splits = {k: YoloSplit(v, v.parent) for k, v in data.items()}
    written = write_yolo_dataset(tmp_path / "yolo", ["disc", "square"], splits)
    read = YOLODataset(
        img_path=str(written.root / "images" / "train"),
        data={"names": {0: "disc", 1: "square"}, "channels": 3},
        augment=False,
    )
    coco = json.loads(data["train"].read_text())
    for label in read.labels:
        image_id = int(Path(label["im_file"]).stem)
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
        expected = np.array(
            [[(a["bbox"][0] + a["bbox"][2] / 2) / 128, (a["bbox"][1] + a["bbox"][3] / 2) / 128] for a in anns]
        )
        np.testing.assert_allclose(label["bboxes"][:, :2], expected, atol=1e-6)
        assert label["cls"].ravel().tolist() == [0.0 if a["category_id"] == 2 else 1.0 for a in anns]


def test_trainable_from_the_detector_refuses_non_yaml() -> None:
    config = UltralyticsDetector.Config(name="y", model="yolo11n.yaml")
    trainable = UltralyticsDetector.trainable(config, ClassMap(NAMES), torch.device("cpu"))
    assert isinstance(trainable, UltralyticsTrainable) and trainable.owns_loop
    with pytest.raises(ValueError, match=r"from a model YAML \(e\.g\. yolo11n\.yaml\), got 'yolo11n\.pt'"):
        UltralyticsTrainable("yolo11n.pt")


def test_option_errors_name_the_option(data: dict[str, Path], tmp_path: Path) -> None:
    trainable = UltralyticsTrainable("yolo11n.yaml")
    with pytest.raises(ValueError, match=r"\['lr_zero'\] are neither ultralytics training arguments"):
        trainable.fit(_job(data, tmp_path / "a", lr_zero=0.1))
    with pytest.raises(ValueError, match=r"\['imgsz'\] are set from the training job"):
        trainable.fit(_job(data, tmp_path / "b", imgsz=32))


def test_existing_run_is_not_overwritten(data: dict[str, Path], tmp_path: Path) -> None:
    last = tmp_path / "run" / "ultralytics" / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    with pytest.raises(FileExistsError, match="already holds an ultralytics run; resume it"):
        UltralyticsTrainable("yolo11n.yaml").fit(_job(data, tmp_path / "run"))


@pytest.mark.slow
def test_trainer_errors_come_back_with_their_type(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ultralytics training: .*yolo_nothing\.yaml"):
        UltralyticsTrainable("yolo_nothing.yaml").fit(_job(data, tmp_path / "run"))


@pytest.mark.slow
def test_safetensors_round_trip_keeps_the_network(tmp_path: Path) -> None:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    fields = save_safetensors_model(model, ["a", "b", "c"], tmp_path, "member")
    assert fields == {"type": "ultralytics", "model": "member.yaml", "weights": "member.safetensors"}
    loaded = load_safetensors_model(tmp_path / "member.yaml", tmp_path / "member.safetensors")
    assert loaded.names == {0: "a", 1: "b", 2: "c"} and loaded.yaml["scale"] == "n"
    with torch.no_grad():
        for value in model.state_dict().values():  # the fp16 storage, as ultralytics' checkpoints hold it
            if value.is_floating_point():
                value.copy_(value.half().float())
        x = torch.rand(2, 3, 64, 64)
        assert torch.equal(loaded(x)[0], model(x)[0])
    (tmp_path / "member.yaml").write_text((tmp_path / "member.yaml").read_text().replace("nc: 3", "nc: 4"))
    with pytest.raises(ValueError, match="member.safetensors does not fit the model of .*member.yaml"):
        load_safetensors_model(tmp_path / "member.yaml", tmp_path / "member.safetensors")


@pytest.mark.slow
def test_fit_end_to_end(data: dict[str, Path], tmp_path: Path) -> None:
    from ultralytics import YOLO

    out = tmp_path / "run"
    # conf 1e-6: an untrained model's scores are ~1e-4, under ultralytics' default 0.001 (metrics would all be 0)
    result = UltralyticsTrainable("yolo11n.yaml").fit(_job(data, out, conf=1e-6))
    assert result["epochs"] == 1
    assert result["member"] == {
        "type": "ultralytics",
        "model": "weights/best.yaml",
        "weights": "weights/best.safetensors",
        "imgsz": 128,
    }
    assert result["dataset"]["train"]["boxes"] == len(json.loads(data["train"].read_text())["annotations"])
    settings = json.loads((out / "ultralytics_config" / "Ultralytics" / "settings.json").read_text())
    # the run's own settings file, analytics and trackers off
    assert not settings["sync"] and not settings["mlflow"] and not settings["clearml"]
    assert (out / "ultralytics_config" / "Ultralytics" / "Arial.ttf").is_file()  # never downloaded
    # ultralytics' own validation of its best.pt gives the numbers fit() returned
    best = out / "ultralytics" / "weights" / "best.pt"
    metrics = YOLO(best).val(
        data=str(out / "yolo_data" / "data.yaml"), batch=16, imgsz=128, conf=1e-6, plots=False, verbose=False
    )
    assert metrics.results_dict["metrics/recall(B)"] > 0  # non-trivial numbers, so the comparison can fail
    for key, value in result["metrics"].items():
        assert value == pytest.approx(metrics.results_dict[key], abs=1e-9), key
    # the exported member is ultralytics' best.pt, tensor for tensor
    loaded = load_safetensors_model(out / result["member"]["model"], out / result["member"]["weights"])
    reference = YOLO(best).model.float().eval()
    assert loaded.names == {0: "square", 1: "disc"}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], reference(x)[0])
    # a finished run resumed returns its results without training again
    again = UltralyticsTrainable("yolo11n.yaml").fit(_resumed(data, out, conf=1e-6))
    assert again == result
    # killed after the last epoch was saved: resume only runs ultralytics' final validation, to the same numbers
    (out / "fit.json").unlink()
    finished = UltralyticsTrainable("yolo11n.yaml").fit(_resumed(data, out, conf=1e-6))
    assert finished["metrics"] == pytest.approx(result["metrics"], abs=1e-9) and finished["epochs"] == 1


def _resumed(data: dict[str, Path], out: Path, epochs: int = 1, **options: Any) -> ExternalTrainJob:
    job = _job(data, out, epochs=epochs, **options)
    job.resume = True
    return job


@pytest.mark.slow
def test_kill_9_then_resume_finishes(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = (
        "import sys, pickle; from detectors.ultralytics_training import UltralyticsTrainable; "
        "UltralyticsTrainable('yolo11n.yaml').fit(pickle.loads(bytes.fromhex(sys.argv[1])))"
    )
    import pickle

    job = _job(data, out, epochs=3)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, pickle.dumps(job).hex()], env=env, start_new_session=True
    )
    last = out / "ultralytics" / "weights" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last.exists(), "the first epoch never finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    result = UltralyticsTrainable("yolo11n.yaml").fit(_resumed(data, out, epochs=3))
    assert result["epochs"] == 3
    log = (out / "ultralytics" / "train.log").read_text()
    assert "Resuming training" in log
    rows = (out / "ultralytics" / "results.csv").read_text().splitlines()[1:]
    assert [int(float(r.split(",")[0])) for r in rows][-1] == 3
