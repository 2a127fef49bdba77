"""``fusion distill`` with a DETR teacher: a cut student end to end, kill -9 + resume, a changed teacher refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from distill_toy import CLASSES, detr_config, make_splits, save_teacher
from safetensors.torch import load_file

from fusion.cli import main
from fusion.training.distillation import distill
from fusion.training.teacher import TeacherChangedError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kd")
    make_splits(folder / "data")
    save_teacher(folder / "teacher.safetensors")
    return folder


def _steps(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step"]


def test_cut_student_end_to_end_loads_back_and_scores_as_reported(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "kd.yaml"
    config.write_text(yaml.safe_dump(detr_config(data / "data", data / "teacher.safetensors")))
    teacher_before = load_file(data / "teacher.safetensors")
    assert main(["distill", "--config", str(config), "--project", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "distill" / "kd"

    steps = _steps(run)
    assert [r["step"] for r in steps] == [1, 2]  # 4 images, batch 2, 1 epoch
    names = set(steps[0]["losses"])
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= names  # the student's set loss on the ground truth
    assert {"kd_class", "kd_bbox", "kd_giou", "kd_feature"} <= names  # and the KD terms
    assert all(v > 0 for k, v in steps[0]["losses"].items() if k.startswith("kd_"))
    # The teacher is read, never trained.
    assert all(torch.equal(v, load_file(data / "teacher.safetensors")[k]) for k, v in teacher_before.items())
    fingerprint = json.loads((run / "teacher.json").read_text())["fingerprint"]
    assert fingerprint["files"]["checkpoint"]["path"] == str(data / "teacher.safetensors")

    # The student is the cut (1 encoder, 1 decoder layer) and loads back as a member from its YAML.
    member = yaml.safe_load((run / "weights" / "best.member.yaml").read_text())
    student = yaml.safe_load(Path(member["checkpoint"]).with_suffix(".yaml").read_text())
    assert (student["arch"]["enc_layers"], student["arch"]["dec_layers"], student["arch"]["num_heads"]) == (
        1,
        1,
        2,
    )
    assert student["classes"] == list(CLASSES)

    report = json.loads((run / "report.json").read_text())
    assert [(r["role"], r["name"]) for r in report["rows"]] == [("teacher", "teacher"), ("student", "kd")]
    assert report["rows"][1]["params"] < report["rows"][0]["params"]
    assert "| student | kd |" in (run / "report.md").read_text()

    # `fusion score` scores the member YAML as it is, and agrees with the report.
    from fusion.scoring.score import score

    ensemble = {"name": "s", "classes": str(run / "classes.yaml"), "device": "cpu", "members": [member]}
    val = data / "data" / "val"
    metrics = score(ensemble, val / "annotations.json", val / "images", root=tmp_path / "runs", plots=False,
                    verbose=False, num_workers=0)  # fmt: skip
    assert metrics is not None
    assert metrics["num_detections"]["kd"] == report["rows"][1]["detections"] > 0
    assert metrics["members"]["kd"]["AP"] == pytest.approx(report["rows"][1]["AP"])


def test_identity_cut_without_ground_truth_has_zero_distillation_loss(data: Path, tmp_path: Path) -> None:
    """A student keeping every layer, head and unit IS the teacher: every KD term is 0 before any update."""
    config = detr_config(data / "data", data / "teacher.safetensors", eval_every=0)
    config["student"]["cut"] = {
        "encoder_layers": 2,
        "decoder_layers": 2,
        "num_heads": 4,
        "dim_feedforward": 128,
    }
    config["distill"]["gt"] = 0.0
    distill(config, root=tmp_path, report=False, verbose=False)
    first = _steps(tmp_path / "distill" / "kd")[0]
    assert set(first["losses"]) >= {"kd_class", "kd_bbox", "kd_giou", "kd_feature"}
    assert not any(k.startswith("loss_ce") for k in first["losses"])  # gt: 0 -> no ground-truth loss
    assert first["loss"] == pytest.approx(0.0, abs=1e-5)


def test_a_fresh_student_of_another_width_trains_its_feature_adapter(data: Path, tmp_path: Path) -> None:
    """A DETR config as student (not cut): Hungarian pairing, and the 1x1 adapter joins optimiser + checkpoint."""
    config = detr_config(data / "data", data / "teacher.safetensors", eval_every=0)
    del config["student"]
    config["model"] = {"type": "detr", "model": "detr_tiny", "arch": {"d_model": 32, "num_heads": 2},
                       "min_size": None, "max_size": None}  # fmt: skip
    config["distill"]["pairing"] = "hungarian"
    distill(config, root=tmp_path, report=False, verbose=False)
    state = torch.load(tmp_path / "distill" / "kd" / "checkpoint.pt", weights_only=True)
    adapter = {k: v for k, v in state["modules"].items()}
    assert adapter and all(v.shape[0] in (64, 32) for v in adapter.values())
    from detectors.detr import build_detr

    student = build_detr("detr_tiny", num_classes=len(CLASSES), d_model=32, num_heads=2)
    trained = sum(1 for p in student.parameters() if p.requires_grad)
    optimised = sum(len(group["params"]) for group in state["optimizer"]["param_groups"])
    assert optimised == trained + len(adapter)  # the adapter's weight and bias joined the optimiser
    # ... and were updated (Adam has state for every optimised tensor, the adapter's last).
    assert len(state["optimizer"]["state"]) == optimised


SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from fusion.training.distillation import distill
args = json.loads(sys.argv[1])
distill(args.get("config"), root=args["root"], resume=args.get("resume"), report=False, verbose=False)
"""


def _launch(args: dict, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(args)], env=env, cwd=cwd, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=400)
    assert process.returncode == 0, err[-3000:]


def test_kill_9_then_resume_gives_the_uninterrupted_weights(data: Path, tmp_path: Path) -> None:
    config = detr_config(data / "data", data / "teacher.safetensors", epochs=2, eval_every=0)
    config["data"]["augment"]["crop"] = 0.5  # every random draw must be restored
    _finish(_launch({"config": config, "root": str(tmp_path / "a")}, tmp_path))

    process = _launch({"config": config, "root": str(tmp_path / "b")}, tmp_path)
    run = tmp_path / "b" / "distill" / "kd"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (run / "checkpoint.pt").is_file():
            try:
                step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
            except (RuntimeError, EOFError):  # pragma: no cover - read while being replaced
                step = 0
            if step >= 3:
                break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()  # SIGKILL
    process.wait()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and state["epoch_step"] == 1  # killed inside the last epoch
    _finish(_launch({"resume": str(run), "root": str(tmp_path / "b")}, tmp_path))

    uninterrupted = tmp_path / "a" / "distill" / "kd"
    a = load_file(uninterrupted / "weights" / "last.safetensors")
    b = load_file(run / "weights" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _steps(run)] == [r["loss"] for r in _steps(uninterrupted)]


def test_resume_refuses_a_changed_teacher(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    teacher = save_teacher(tmp_path / "teacher.safetensors", seed=1)
    config = detr_config(data / "data", teacher, eval_every=0)
    distill(config, root=tmp_path / "runs", report=False, verbose=False)
    run = tmp_path / "runs" / "distill" / "kd"
    save_teacher(teacher, seed=2)  # retrained in place: same path, other weights
    with pytest.raises(TeacherChangedError, match=r"checkpoint: file .*teacher.safetensors changed"):
        distill(resume=run, report=False, verbose=False)
    assert main(["distill", "--resume", str(run)]) == 2
    assert "refusing to resume with a changed teacher" in capsys.readouterr().err
