"""Values that would fail only after a whole dataset ran are refused when the config or calibrator is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fusion.calibration.calibrators import Calibrator
from fusion.config import ConfigError, load_ensemble_config

MEMBER = {"type": "ultralytics", "model": "yolo11n.yaml", "classes": "coco80"}


def _write(tmp_path: Path, weights: list[object], fusion: dict[str, object] | None = None) -> Path:
    members = [{**MEMBER, "name": f"m{i}", "weight": w} for i, w in enumerate(weights)]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "members": members, "fusion": fusion or {"type": "wbf"}}))
    return path


@pytest.mark.parametrize("bad", [".inf", "-.inf", ".nan"])
def test_non_finite_member_weight_is_refused(tmp_path: Path, bad: str) -> None:
    path = _write(tmp_path, [1.0, 1.0])
    with pytest.raises(ConfigError, match=r"members\[1\]\.weight: Input should be a finite number"):
        load_ensemble_config(path, [f"members.1.weight={bad}"])


def test_non_finite_class_weight_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, [1.0, 1.0])
    with pytest.raises(ConfigError, match=r"members\[0\]\.class_weights\.person: Input should be a finite"):
        load_ensemble_config(path, ["members.0.class_weights={person: .inf}"])


def test_all_zero_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: members\[\*\]\.weight: every member weight is 0"):
        load_ensemble_config(_write(tmp_path, [0, 0.0]))
    assert [m.weight for m in load_ensemble_config(_write(tmp_path, [0, 0.5])).members] == [0, 0.5]


def test_quorum_above_the_members_is_refused_at_validation(tmp_path: Path) -> None:
    path = _write(tmp_path, [1, 1], {"type": "voting", "quorum": 9})
    with pytest.raises(ConfigError, match=r"c\.yaml: fusion\.quorum=9 exceeds the total weight 2 of the 2"):
        load_ensemble_config(path)
    assert load_ensemble_config(path, ["fusion.quorum=2"]).fusion.quorum == 2


@pytest.mark.parametrize(
    ("method", "curve", "where"),
    [
        (
            "isotonic",
            {"x": [0.1, 0.5], "y": [0.2, 5.0]},
            r"isotonic calibrator default\.y must be probabilities",
        ),
        (
            "isotonic",
            {"x": [0.1, 0.5], "y": [-0.1, 0.2]},
            r"isotonic calibrator default\.y must be probabilities",
        ),
        ("histogram", {"values": [0.1, 1.5]}, r"histogram calibrator default\.values must be probabilities"),
    ],
)
def test_calibrator_curve_outside_0_1_is_refused(method: str, curve: dict[str, object], where: str) -> None:
    with pytest.raises(ValueError, match=where):
        Calibrator.from_json({"method": method, "default": curve})
