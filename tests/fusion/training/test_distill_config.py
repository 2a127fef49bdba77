"""Distillation configs: the shipped examples validate, and bad fields are refused naming their YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion.classes import CONFIGS_DIR
from fusion.config import ConfigError, load_ensemble_config
from fusion.training.distill_config import EnsembleTeacherConfig, load_distill_config

SPLIT = {"annotations": "a.json", "images": "img"}
DETR = {"type": "detr", "model": "detr_tiny", "min_size": None, "max_size": None}


def _config(**changes: object) -> dict:
    base = {
        "name": "kd",
        "teacher": {"type": "detr", "checkpoint": "t.safetensors", "min_size": None, "max_size": None},
        "student": {"cut": {"encoder_layers": 1, "decoder_layers": 1}},
        "data": {"train": SPLIT, "val": SPLIT},
    }
    return {**base, **changes}


@pytest.mark.parametrize("name", ["detr_teacher", "ensemble_teacher_detr", "ensemble_teacher_yolo"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_distill_config(name)
    assert cfg.name and cfg.data.val is not None
    if cfg.ensemble_teacher:
        ensemble = load_ensemble_config(cfg.teacher.ensemble)  # the referenced ensemble exists and validates
        assert [m.type for m in ensemble.members] == ["ultralytics", "ultralytics"]
    else:
        # A cut student runs as its teacher does, from the cut weights (no checkpoint), under the run's name.
        assert cfg.model.type == "detr" and cfg.model.checkpoint is None and cfg.model.name == cfg.name
        assert cfg.model.min_size is None and cfg.teacher.checkpoint.endswith("best.safetensors")


def test_ensemble_teacher_defaults() -> None:
    cfg = load_distill_config(
        _config(teacher={"ensemble": "tiny"}, student={}, model=DETR), overrides=["unlabeled=u"]
    )
    assert isinstance(cfg.teacher, EnsembleTeacherConfig)
    assert (cfg.teacher.threshold, cfg.teacher.labeled, cfg.teacher.teacher_weight) == ("auto", "extra", 1.0)
    assert cfg.unlabeled == "u" and cfg.model.name == "kd"


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"teacher": {"ensemble": "tiny", "threshold": 2.0}, "student": {}, "model": DETR}, "teacher"),
        (
            {"teacher": {"ensemble": "tiny", "labeled": "both"}, "student": {}, "model": DETR},
            "teacher.labeled",
        ),
        ({"teacher": {"ensemble": "tiny"}}, "student.cut"),
        ({"teacher": {"ensemble": "tiny"}, "student": {}, "model": DETR, "distill": {"gt": 1}}, "distill"),
        ({"unlabeled": "u"}, "unlabeled"),
        ({"teacher": {"checkpoint": "t.safetensors"}}, "teacher.type"),
        ({"teacher": {"type": "nope"}}, "teacher.type"),
        ({"model": {**DETR, "checkpoint": "x.safetensors"}}, "model.checkpoint"),
        ({"student": {"cut": {}, "extra": 1}}, "student.extra"),
        ({"train": {"epochs": 0}}, "train.epochs"),
    ],
)
def test_bad_fields_name_their_yaml_path(changes: dict, where: str, tmp_path: Path) -> None:
    path = tmp_path / "kd.yaml"
    import yaml

    path.write_text(yaml.safe_dump(_config(**changes)))
    with pytest.raises(ConfigError) as error:
        load_distill_config(path)
    assert str(path) in str(error.value) and where in str(error.value)


@pytest.mark.parametrize("path", sorted((CONFIGS_DIR / "distill").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_distill_config_validates(path: Path) -> None:
    cfg = load_distill_config(path)
    assert cfg.name and cfg.data.val is not None


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fusion.cli import main

    assert main(["distill"]) == 2
    assert "give either --config C (a new run) or --resume" in capsys.readouterr().err
    assert main(["distill", "--config", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert "none.yaml does not exist" in err and "Traceback" not in err
    assert main(["distill", "--resume", str(tmp_path), "train.epochs=2"]) == 2
    assert "no overrides" in capsys.readouterr().err


def test_the_package_names_stay_the_functions_after_their_modules_are_imported() -> None:
    # A submodule named like a lazily exported function would replace it on the package once imported.
    import fusion.training.distillation
    import fusion.training.loop  # noqa: F401
    from fusion.training import distill, train

    assert callable(distill) and distill.__name__ == "distill"
    assert callable(train) and train.__name__ == "train"
