"""Ensemble configs: discriminated unions from plug-ins, overrides, errors with YAML paths."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import pytest
import yaml
from pydantic import Field

from fusion import Detections
from fusion.config import ConfigError, apply_overrides, load_ensemble_config
from fusion.detector import Detector, ImageBatch, MemberConfig
from fusion.policy import FusionPolicy, PolicyParams
from fusion.registry import DETECTORS, POLICIES


class ConstantConfig(MemberConfig):
    type: Literal["constant"] = "constant"
    score: float = Field(0.5, ge=0, le=1)


class ConstantDetector(Detector):
    """One fixed box per image (a real plug-in, registered at run time)."""

    Config = ConstantConfig

    def predict(self, batch: ImageBatch) -> list[Detections]:
        return [Detections([[0, 0, 1, 1]], [self.config.score], [0], size) for size in batch.sizes]


class KeepAllParams(PolicyParams):
    type: Literal["keep_all"] = "keep_all"
    min_score: float = Field(0.0, ge=0, le=1)


class KeepAll(FusionPolicy):
    """Concatenate every member's boxes."""

    name = "keep_all"
    Params = KeepAllParams

    def fuse_batch(self, per_image: Sequence[Sequence[Detections]]) -> list[Detections]:
        return [Detections.cat(list(members)) for members in per_image]


@pytest.fixture(autouse=True)
def plugins() -> Iterator[None]:
    DETECTORS.register("constant", ConstantDetector)
    POLICIES.register("keep_all", KeepAll)
    yield
    DETECTORS.unregister("constant")
    POLICIES.unregister("keep_all")


def config(**changes: object) -> dict:
    base = {
        "name": "tiny",
        "members": [
            {"name": "a", "type": "constant"},
            {"name": "b", "type": "constant", "score": 0.9, "weight": 2},
        ],
        "fusion": {"type": "keep_all", "min_score": 0.1},
    }
    base.update(changes)
    return base


def test_valid_config_uses_each_plugins_model() -> None:
    cfg = load_ensemble_config(config())
    assert [type(m).__name__ for m in cfg.members] == ["ConstantConfig", "ConstantConfig"]
    assert cfg.members[1].score == 0.9 and cfg.members[1].weight == 2.0
    assert type(cfg.fusion).__name__ == "KeepAllParams" and cfg.fusion.min_score == 0.1
    assert (cfg.classes, cfg.device, cfg.tta.hflip) == ("coco80", "auto", False)
    dumped = cfg.model_dump(mode="json")
    assert load_ensemble_config(dumped).model_dump(mode="json") == dumped


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"members": [{"name": "a", "type": "constant", "score": 2}]},
            r"members\[0\]\.score: Input should be less",
        ),
        (
            {"members": [{"name": "a", "type": "constant", "colour": 1}]},
            r"members\[0\]\.colour: Extra inputs",
        ),
        ({"members": [{"type": "constant"}]}, r"members\[0\]\.name: Field required"),
        (
            {"members": [{"name": "a", "type": "constnt"}]},
            r"members\[0\]\.type: unknown detector.*'constant'",
        ),
        ({"members": [{"name": "a"}]}, r"members\[0\]\.type: missing; one of"),
        (
            {"members": [{"name": "a", "type": "constant", "weight": -1}]},
            r"members\[0\]\.weight: Input should be greater",
        ),
        ({"fusion": {"type": "keep_al"}}, r"fusion\.type: unknown policy 'keep_al'. Did you mean 'keep_all'"),
        ({"fusion": {"type": "keep_all", "min_score": -0.5}}, r"fusion\.min_score: Input should be greater"),
        ({"fusion": {"type": "keep_all", "weights": [1, 2]}}, r"fusion\.weights: set each member's `weight`"),
        ({"device": "gpu"}, r"device: device must be auto, cpu, cuda"),
        ({"tta": {"scales": [0]}}, r"tta\.scales\[0\]: Input should be greater than 0"),
        ({"extra_key": 1}, r"extra_key: Extra inputs are not permitted"),
        ({"members": []}, r"members: an ensemble needs at least one member"),
        (
            {"members": [{"name": "a", "type": "constant"}, {"name": "a", "type": "constant"}]},
            r"members\[1\]\.name: 'a' is already used by members\[0\]",
        ),
    ],
)
def test_errors_name_the_yaml_path(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_ensemble_config(config(**changes))


def test_file_errors_name_the_file(tmp_path) -> None:
    path = tmp_path / "ens.yaml"
    path.write_text(yaml.safe_dump(config(members=[{"name": "a", "type": "constant", "score": "high"}])))
    with pytest.raises(ConfigError, match=rf"{path}: invalid ensemble config:\n  members\[0\]\.score"):
        load_ensemble_config(path)
    with pytest.raises(FileNotFoundError, match="nowhere.yaml does not exist"):
        load_ensemble_config(tmp_path / "nowhere.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_ensemble_config(path)


def test_overrides() -> None:
    data = config()
    out = apply_overrides(
        data, ["fusion.min_score=0.7", "members[1].score=0.25", "members.0.weight=3", "device=cpu"]
    )
    assert data["fusion"]["min_score"] == 0.1, "overrides must not mutate their input"
    cfg = load_ensemble_config(
        data, overrides=["fusion.min_score=0.7", "members[1].score=0.25", "tta.hflip=true"]
    )
    assert cfg.fusion.min_score == 0.7 and cfg.members[1].score == 0.25 and cfg.tta.hflip is True
    assert out["members"][0]["weight"] == 3 and out["device"] == "cpu"
    with pytest.raises(ConfigError, match=r"members\[5\] does not exist"):
        apply_overrides(data, ["members.5.weight=1"])
    with pytest.raises(ConfigError, match=r"fuson: Extra inputs are not permitted"):
        load_ensemble_config(data, overrides=["fuson.iou_thr=1"])
    with pytest.raises(ConfigError, match=r"name is not a mapping"):
        apply_overrides(data, ["name.first=x"])
    with pytest.raises(ConfigError, match="must look like dotted.path=value"):
        apply_overrides(data, ["fusion.iou_thr"])
    with pytest.raises(ConfigError, match=r"members\[0\]\.score: Input should be a valid number"):
        load_ensemble_config(data, overrides=["members.0.score=[1, 2]"])


def test_fusion_shorthand_and_default() -> None:
    assert type(load_ensemble_config(config(fusion="keep_all")).fusion).__name__ == "KeepAllParams"
