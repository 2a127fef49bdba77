"""``fusion train``: own-loop plugins get an ExternalTrainJob; user errors are one line, no traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from training_toy import make_dataset, register, toy_config

from fusion.cli import main
from fusion.detector import Detector, MemberConfig
from fusion.registry import DETECTORS
from fusion.training.trainable import ExternalTrainJob, Trainable

JOBS: list[ExternalTrainJob] = []


class OwnLoopConfig(MemberConfig):
    type: Literal["ownloop"] = "ownloop"


class OwnLoop(Trainable):
    owns_loop = True

    def fit(self, job: ExternalTrainJob) -> dict[str, Any]:
        JOBS.append(job)
        return {"metrics": {"AP": 0.5}, "member": {"type": "ownloop"}}

    def export(self, out_dir: Path, stem: str) -> dict[str, Any]:
        raise AssertionError("own-loop plugins export in fit")


class OwnLoopDetector(Detector):
    Config = OwnLoopConfig

    @classmethod
    def trainable(cls, config: Any, class_map: Any, device: Any) -> Trainable:
        return OwnLoop()

    def predict(self, batch: Any) -> list:  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    make_dataset(folder, 4, seed=1)
    return folder


def test_own_loop_plugin_gets_the_job(data: Path, tmp_path: Path) -> None:
    if "ownloop" not in DETECTORS:
        DETECTORS.register("ownloop", OwnLoopDetector)
    config = toy_config(data, name="ext", epochs=7, batch_size=2)
    config["model"] = {"type": "ownloop"}
    config["options"] = {"lr0": 0.002}
    (tmp_path / "ext.yaml").write_text(yaml.safe_dump(config))
    assert (
        main(["train", "--config", str(tmp_path / "ext.yaml"), "--project", str(tmp_path), "--device", "cpu"])
        == 0
    )
    job = JOBS[-1]
    run = tmp_path / "train" / "ext"
    assert job.out_dir == run and not job.resume and job.class_names == ["square", "disc"]
    assert (job.epochs, job.batch_size, job.image_size, job.seed, job.device) == (7, 2, 64, 3, "cpu")
    assert job.train_annotations == data / "annotations.json" and job.val_images == data / "images"
    assert job.options == {"lr0": 0.002}
    assert json.loads((run / "fit_result.json").read_text())["metrics"] == {"AP": 0.5}
    assert yaml.safe_load((run / "weights" / "best.member.yaml").read_text()) == {
        "name": "ext",
        "type": "ownloop",
    }
    assert main(["train", "--resume", str(run)]) == 0
    assert JOBS[-1].resume and JOBS[-1].out_dir == run


def test_user_errors_are_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register()
    assert main(["train"]) == 2
    assert "give either --config C" in capsys.readouterr().err
    config = toy_config(data)
    config["train"]["lr"] = "fast"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: invalid training config" in err and "train.lr" in err and "Traceback" not in err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err
    config = toy_config(data)
    config["data"]["val"]["annotations"] = str(tmp_path / "missing.json")
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--project", str(tmp_path)]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
