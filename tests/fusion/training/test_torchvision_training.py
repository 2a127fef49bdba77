"""torchvision members trained by ``fusion train``: torchvision's own losses, and exports that load back as members."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from training_toy import CLASSES, make_dataset

from detectors.torchvision_detector import TorchvisionConfig, TorchvisionDetector
from fusion.classes import ClassMap
from fusion.coco.annotations import load_annotations
from fusion.detector import ImageBatch

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tv")
    make_dataset(folder, 6, seed=7)
    return folder


def _member(**fields: object) -> TorchvisionConfig:
    base = {"name": "frcnn", "model": MODEL, "weights": None, "score_thr": 0.0, "min_size": 64, "max_size": 96,
            "proposals": 64}  # fmt: skip
    return TorchvisionConfig(**{**base, **fields})


@pytest.mark.slow
def test_losses_are_torchvisions_and_labels_shift_past_background(data: Path) -> None:
    class_map = load_annotations(data / "annotations.json").class_map
    trainable = TorchvisionDetector.trainable(_member(), class_map, torch.device("cpu"))
    model = trainable.model
    assert model.roi_heads.box_predictor.cls_score.out_features == len(CLASSES) + 1  # background + 2 classes
    images = [torch.rand(3, 48, 64), torch.rand(3, 40, 56)]
    targets = [
        {"boxes": torch.tensor([[4.0, 5.0, 30.0, 28.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    seen = {}
    hook = model.roi_heads.register_forward_pre_hook(lambda m, args: seen.update(targets=args[3]))
    torch.manual_seed(0)
    losses = trainable.loss(images, targets)
    hook.remove()
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(bool(torch.isfinite(v)) and v.ndim == 0 for v in losses.values())
    assert seen["targets"][0]["labels"].tolist() == [
        2
    ]  # label 1 ("disc") is torchvision id 2; 0 = background
    sum(losses.values()).backward()
    assert model.backbone.body["0"][0].weight.grad is not None


def test_named_weights_are_refused(data: Path) -> None:
    class_map = load_annotations(data / "annotations.json").class_map
    with pytest.raises(ValueError, match=r"model\.weights.*'DEFAULT'"):
        TorchvisionDetector.trainable(_member(weights="DEFAULT"), class_map, torch.device("cpu"))


@pytest.mark.slow
def test_export_loads_back_as_member_with_identical_detections(data: Path, tmp_path: Path) -> None:
    class_map = load_annotations(data / "annotations.json").class_map
    torch.manual_seed(1)
    trainable = TorchvisionDetector.trainable(_member(detections_per_img=20), class_map, torch.device("cpu"))
    trainable.model.eval()
    fields = trainable.export(tmp_path, "best")
    assert fields["weights"] == "best.safetensors" and fields["classes"] == "best.classes.yaml"
    assert yaml.safe_load((tmp_path / "best.classes.yaml").read_text()) == {"names": {1: "square", 2: "disc"}}
    fields = {
        **fields,
        "weights": str(tmp_path / fields["weights"]),
        "classes": str(tmp_path / fields["classes"]),
    }
    ensemble_classes = ClassMap(["disc", "square"])  # another order: members are mapped by name
    member = TorchvisionDetector(TorchvisionConfig(name="trained", **fields), ensemble_classes, "cpu")
    images = [torch.rand(3, 48, 64), torch.rand(3, 48, 64)]
    expected = trainable.predict(images)
    got = member.predict(ImageBatch(images))
    assert sum(len(d) for d in expected) > 0
    for want, have in zip(expected, got):
        assert torch.equal(want.boxes, have.boxes) and torch.equal(want.scores, have.scores)
        assert have.labels.tolist() == (1 - want.labels).tolist()  # square 0 -> 1, disc 1 -> 0


@pytest.mark.slow
def test_fusion_train_cli_then_fusion_score_the_trained_member(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion.cli import main
    from fusion.scoring import score

    monkeypatch.chdir(tmp_path)
    split = {"annotations": str(data / "annotations.json"), "images": str(data / "images")}
    config = {
        "name": "tv",
        "device": "cpu",
        "model": {"type": "torchvision", "model": MODEL, "weights": None, "min_size": 64, "max_size": 96,
                  "score_thr": 0.0, "proposals": 64},
        "data": {"train": split, "val": split, "image_size": 64},
        "train": {"epochs": 5, "batch_size": 3, "lr": 1e-3, "log_every": 1},
    }  # fmt: skip
    (tmp_path / "tv.yaml").write_text(yaml.safe_dump(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", "tv.yaml", "train.epochs=2", "--name", "tv-small"]) == 0
    finally:
        torch.set_num_threads(threads)
    run = Path("runs/train/tv-small")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [
        1,
        2,
        3,
        4,
    ]  # 6 images / 3 per step, 2 epochs
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert (run / "results.png").stat().st_size > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    member = yaml.safe_load((run / "weights" / "last.member.yaml").read_text())
    assert member["type"] == "torchvision" and Path(member["weights"]).is_file()
    ensemble = {"name": "trained", "classes": str(run / "classes.yaml"), "device": "cpu", "members": [member]}
    metrics = score(ensemble, data / "annotations.json", data / "images", root=tmp_path, plots=False,
                    verbose=False, num_workers=0)  # fmt: skip
    # The member scored by `fusion score` is the model the trainer last evaluated: the same AP.
    assert metrics["members"]["tv-small"]["AP"] == pytest.approx(evals[-1]["stats"]["AP"], abs=1e-9)
