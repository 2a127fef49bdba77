"""Training configs: the member section is validated by its detector's model, errors name the YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from training_toy import register

from fusion.config import ConfigError
from fusion.training.config import load_train_config

register()


def _config(**extra: object) -> dict:
    base = {
        "name": "job",
        "model": {"type": "torchvision", "model": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights": None},
        "data": {"train": {"annotations": "train.json", "images": "train/"}},
    }
    return {**base, **extra}


def test_defaults_overrides_and_member_name() -> None:
    cfg = load_train_config(_config(), ["train.epochs=3", "data.augment.hflip=0.0", "model.min_size=128"])
    assert cfg.train.epochs == 3 and cfg.data.augment.hflip == 0.0
    assert type(cfg.model).__name__ == "TorchvisionConfig" and cfg.model.min_size == 128
    assert cfg.model.name == "job"  # the member is named after the run unless it says otherwise
    assert cfg.data.val is None and cfg.train.schedule == "cosine" and cfg.train.amp == "auto"
    named = load_train_config(_config(model={"type": "toy", "name": "student"}))
    assert named.model.name == "student"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lr=-1"], r"train\.lr: Input should be greater than 0 \(got -1\)"),
        (["model.model=resnet"], r"model\.model: Input should be .*\(got 'resnet'\)"),
        (["data.augment.scale=[2, 1]"], r"data\.augment\.scale: Value error, scale must be \[low, high\]"),
        (["train.schedul=step"], r"train\.schedul: Extra inputs are not permitted"),
        (["data.train.images=null"], r"data\.train\.images: Input should be a valid string"),
        (
            ["train.schedule=step", "train.milestones=[0, 5]", "train.epochs=4"],
            r"milestones must lie in 1\.\.epochs-1",
        ),
        (["device=gpu"], r"device: Value error, device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_errors_name_the_yaml_path(overrides: list[str], message: str, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_config()))
    with pytest.raises(ConfigError, match=message) as info:
        load_train_config(path, overrides)
    assert str(path) in str(info.value)


def test_model_section_problems() -> None:
    with pytest.raises(ConfigError, match=r"model\.type: .*'yolo9000'"):
        load_train_config(_config(model={"type": "yolo9000"}))
    with pytest.raises(ConfigError, match=r"model\.type: missing"):
        load_train_config(_config(model={"model": "x"}))
    with pytest.raises(ConfigError, match=r"model: expected a member config mapping"):
        load_train_config(_config(model="frcnn"))


def test_shipped_configs_validate() -> None:
    from fusion.classes import CONFIGS_DIR

    shipped = sorted((CONFIGS_DIR / "train").glob("*.yaml"))
    types = set()
    for path in shipped:
        data = yaml.safe_load(path.read_text())
        types.add(data["model"]["type"])
        from fusion.registry import DETECTORS

        fields = DETECTORS.get(data["model"]["type"]).Config.model_fields
        if (
            "arch" in fields or data["model"]["type"] != "detr"
        ):  # DETR's training fields land with its trainable
            assert type(load_train_config(path).model).__name__.endswith("Config")
    assert {"torchvision", "detr", "ultralytics"} <= types
