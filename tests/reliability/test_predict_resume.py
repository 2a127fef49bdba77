"""``fusion predict`` keeps its results: killed with SIGKILL, the same command resumes to byte-identical files; an
unreadable image stops the run with one line naming it, or is skipped and listed with ``--skip-bad-images``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusion.cli import main

# YOLO only: random-init Faster R-CNN breaks score ties differently from run to run (see test_cli_predict.py).
YOLO = "members=[{name: yolo, type: ultralytics, model: yolo11n.yaml, classes: coco80, conf: 0.0001, imgsz: 64, max_det: 4}]"
REPO = Path(__file__).resolve().parents[2]


def _images(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (48 + index % 3, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{index:02d}.png")
    return folder


def _command(images: Path, name: str) -> list[str]:
    fusion = [
        sys.executable,
        "-m",
        "fusion",
        "predict",
        "--config",
        "tiny",
        str(images),
        YOLO,
        "batch_size=1",
    ]
    return [*fusion, "--name", name, "--device", "cpu"]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_kill_9_then_the_same_command_gives_identical_files(tmp_path: Path) -> None:
    images = _images(tmp_path / "imgs", 24)
    run = lambda name: subprocess.run(_command(images, name), cwd=tmp_path, env=_env(), capture_output=True)  # noqa: E731
    assert run("full").returncode == 0

    progress = tmp_path / "runs" / "predict" / "killed" / "cache" / "progress.json"
    victim = subprocess.Popen(
        _command(images, "killed"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = 0
    while victim.poll() is None and done < 3:
        time.sleep(0.05)
        with contextlib.suppress(OSError, ValueError, KeyError):  # not written yet, or being replaced
            done = json.loads(progress.read_text())["done"]
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL  # killed mid-run, not finished
    killed = tmp_path / "runs" / "predict" / "killed"
    assert not (killed / "predictions.json").exists()
    assert 3 <= json.loads(progress.read_text())["done"] < 24

    resumed = run("killed")
    assert resumed.returncode == 0, resumed.stderr
    full = tmp_path / "runs" / "predict" / "full"
    assert sorted(p.name for p in (tmp_path / "runs" / "predict").iterdir()) == [
        "full",
        "killed",
    ]  # no killed2
    for file in ("predictions.json", "images.json", "config.yaml"):
        assert (killed / file).read_bytes() == (full / file).read_bytes(), file
    assert len(json.loads((full / "predictions.json").read_text())) > 0
    assert not (killed / "cache").exists()  # finished runs keep only their outputs


def test_an_unreadable_image_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _images(tmp_path / "imgs", 3)
    (images / "im01.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--config", "tiny", str(images), YOLO, "--name", "bad", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "im01.png" in err and "--skip-bad-images" in err
    assert err.strip().splitlines()[-1].startswith("fusion predict: error: cannot read image file")


def test_skip_bad_images_lists_them_and_keeps_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _images(tmp_path / "imgs", 5)
    (images / "im01.png").write_bytes(b"")
    (images / "im03.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    monkeypatch.chdir(tmp_path)
    argv = ["predict", "--config", "tiny", str(images), YOLO, "batch_size=1", "--device", "cpu"]
    assert main([*argv, "--name", "skip", "--skip-bad-images"]) == 0
    out = tmp_path / "runs" / "predict" / "skip"
    errors = json.loads((out / "errors.json").read_text())
    assert [e["file"] for e in errors] == [str(images / "im01.png"), str(images / "im03.png")]
    assert all("cannot read image file" in e["error"] for e in errors)
    index = json.loads((out / "images.json").read_text())["images"]
    assert [(im["id"], Path(im["file_name"]).name) for im in index] == [
        (1, "im00.png"),
        (3, "im02.png"),
        (5, "im04.png"),
    ]
    records = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in records} == {1, 3, 5}
    assert "2 unreadable image(s) skipped" in capsys.readouterr().err

    # The readable images give the same records as a run on them alone (ids are positions in the full list).
    for name in ("im01.png", "im03.png"):
        (images / name).unlink()
    assert main([*argv, "--name", "clean"]) == 0
    clean = json.loads((tmp_path / "runs" / "predict" / "clean" / "predictions.json").read_text())
    renumber = {1: 1, 2: 3, 3: 5}
    assert [{**r, "image_id": renumber[r["image_id"]]} for r in clean] == records


def test_only_an_unfinished_run_of_the_same_inputs_is_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _images(tmp_path / "imgs", 2)
    monkeypatch.chdir(tmp_path)
    argv = ["predict", "--config", "tiny", str(images), YOLO, "--device", "cpu", "--name", "p"]
    assert main(argv) == 0
    # A finished run is never reopened: the same command writes p2, with the same results.
    assert main(argv) == 0
    runs = tmp_path / "runs" / "predict"
    assert (runs / "p2" / "predictions.json").read_bytes() == (runs / "p" / "predictions.json").read_bytes()
    # An unfinished run made from other inputs is left alone.
    (runs / "p3" / "cache").mkdir(parents=True)
    other = {"version": 2, "fingerprint": {"config": "other"}, "done": 1, "streams": {}}
    (runs / "p3" / "cache" / "progress.json").write_text(json.dumps(other))
    assert main(argv) == 0
    assert json.loads((runs / "p3" / "cache" / "progress.json").read_text()) == other
    assert (runs / "p4" / "predictions.json").read_bytes() == (runs / "p" / "predictions.json").read_bytes()
