"""Every command, given a bad input, exits with status 2 and one ``fusion <verb>: error:`` line naming what is wrong;
never a traceback, never a huge message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusion.cli import main
from fusion.synthetic import synthetic_annotations, synthetic_predictions

YOLO = "{name: yolo, type: ultralytics, model: yolo11n.yaml, classes: coco80, imgsz: 64, max_det: 4}"
YOLO_CAL = YOLO[:-1] + ", calibrator: latin1.json}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    data = synthetic_annotations(num_images=4, coco_ids=True, image_size=(48, 64), seed=2)
    (root / "images").mkdir()
    for image in data["images"]:
        Image.new("RGB", (image["width"], image["height"])).save(root / "images" / image["file_name"])
    (root / "gt.json").write_text(json.dumps(data))
    (root / "bad_images").mkdir()
    for image in data["images"]:
        (root / "bad_images" / image["file_name"]).write_bytes(b"not an image")
    synthetic_predictions(data, detections_per_image=5, seed=1).save(root / "a.json")
    synthetic_predictions(data, detections_per_image=5, seed=2).save(root / "b.json")
    member = "{{name: {0}, type: predictions, path: {0}.json, classes: coco91}}"
    (root / "c.yaml").write_text(
        f"name: c\ndevice: cpu\nmembers:\n- {member.format('a')}\n- {member.format('b')}\n"
    )
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "a.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    (root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (root / "latin1.json").write_bytes('{"fused": "caf\xe9"}'.encode("latin-1"))
    (root / "empty.yaml").write_text("")
    (root / "list.yaml").write_text("- a\n- b\n")
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefg", "bcdefgh")]
    (root / "bomb.yaml").write_text("\n".join([*bomb, "name: t"]) + "\n")
    assert len((root / "bomb.yaml").read_bytes()) < 1024  # 9**8 = 43 million values once expanded
    (root / "a_file").write_text("x")
    for verb, name in (("score", "torn"), ("predict", "torn")):
        (root / "runs" / verb / name / "cache").mkdir(parents=True)
        (root / "runs" / verb / name / "cache" / "progress.json").write_text("")
    return root


SCORE = ["score", "--config", "c.yaml", "--annotations", "gt.json", "--images", "images", "--no-plots"]
FUSE = ["fuse", "a.json", "b.json", "--annotations", "gt.json", "--no-plots"]
PREDICT = ["predict", "--config", "tiny", "a.png"]
CASES = [
    # broken YAML in overrides and policy parameters: the override is named
    ([*PREDICT, "members[0].weight=[1"], "override members[0].weight='[1': not valid YAML"),
    ([*SCORE, "members[0].weight=[1"], "override members[0].weight='[1': not valid YAML"),
    ([*FUSE, "--policy", "wbf", "weights=[1,"], "--policy weights='[1,': not valid YAML"),
    (["demo", "--images", "2", "--policy", "wbf", "weights=[1,"], "--policy weights='[1,': not valid YAML"),
    ([*FUSE, "--policy", "wbf", "type=nms"], "give the policy's name as the first word"),
    # devices
    ([*PREDICT, "--device", "tpu"], "--device 'tpu' is not a device; devices here: auto, cpu"),
    ([*PREDICT, "--device", "cuda:99"], "--device cuda:99 was asked for but"),
    ([*SCORE, "--device", "tpu"], "device (--device) 'tpu' is not a device; devices here: auto, cpu"),
    ([*FUSE, "--device", "tpu"], "--device 'tpu' is not a device"),
    # config files: missing, a folder, not UTF-8, empty, not a mapping, an alias bomb
    (["predict", "--config", "missing.yaml", "a.png"], "config file missing.yaml does not exist"),
    (["predict", "--config", "images", "a.png"], "config file images is a folder; a file was expected"),
    (["predict", "--config", "latin1.yaml", "a.png"], "latin1.yaml: not UTF-8 text (byte 0xe9 at offset 9)"),
    (["predict", "--config", "empty.yaml", "a.png"], "empty.yaml: expected a mapping at the top level"),
    (
        ["predict", "--config", "list.yaml", "a.png"],
        "list.yaml: expected a mapping at the top level, got list",
    ),
    (["predict", "--config", "bomb.yaml", "a.png"], "bomb.yaml: its aliases (*name) expand to more than"),
    ([*SCORE[:2], "bomb.yaml", *SCORE[3:]], "bomb.yaml: its aliases (*name) expand to more than"),
    (["calibrate", "--config", "latin1.yaml", "--annotations", "gt.json"], "latin1.yaml: not UTF-8 text"),
    ([*PREDICT, "fusion=42"], "fusion: expected a policy name or a mapping {type: ..., ...}, got 42"),
    ([*SCORE, "classes=latin1.yaml"], "latin1.yaml: not UTF-8 text"),  # a class list file
    ([*SCORE, "classes=bomb.yaml"], "bomb.yaml: its aliases (*name) expand to more than"),
    # calibrator files
    ([*FUSE, "--calibrators", "latin1.json"], "latin1.json: not UTF-8 text"),
    ([*FUSE, "--calibrators", "images"], "calibrator file images is a folder; a file was expected"),
    ([*PREDICT, f"members=[{YOLO_CAL}]"], "members[0].calibrator ('yolo'): latin1.json: not UTF-8 text"),
    # folders where files are expected, files where folders are expected
    (["fuse", "images", "b.json", "--annotations", "gt.json"], "images is a folder; a file was expected"),
    ([*FUSE[:4], "images"], "images is a folder; a file was expected"),
    ([*SCORE[:4], "images", "--images", "images"], "images is a folder; a file was expected"),
    ([*SCORE[:6], "gt.json"], "image folder gt.json does not exist"),
    # images
    ([*PREDICT[:3], "missing.png"], "missing.png is not a file"),
    ([*PREDICT[:3], "bad.png", f"members=[{YOLO}]"], "cannot read image file bad.png"),
    ([*SCORE[:6], "bad_images", "--workers", "1"], "cannot read image file bad_images/"),
    ([*SCORE[:6], "bad_images", "--workers", "0"], "cannot read image file bad_images/"),
    # numbers out of range
    ([*PREDICT, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ([*SCORE, "--batch-size", "0"], "batch_size (--batch-size) must be at least 1, got 0"),
    ([*SCORE, "--workers", "-1"], "num_workers (--workers) must be 0 or more, got -1"),
    (["demo", "--images", "0"], "--images must be at least 1, got 0"),
    (["demo", "--images", "2", "--seed", "-1"], "--seed must be 0 or more, got -1"),
    (["render", "--size", "0"], "--size: must be at least 16"),
    # run folders: under a file, names leaving --project, a torn checkpoint
    ([*PREDICT, "--project", "a_file"], "cannot write runs under a_file: it is a file, not a folder"),
    ([*SCORE, "--project", "a_file/sub"], "cannot write runs under a_file"),
    ([*FUSE, "--project", "a_file"], "cannot write runs under a_file: it is a file"),
    (["tune", "a.json", "b.json", "--annotations", "gt.json", "--project", "a_file"], "it is a file"),
    (["demo", "--images", "2", "--project", "a_file"], "cannot write runs under a_file: it is a file"),
    (["render", "--project", "a_file"], "cannot write runs under a_file: it is a file"),
    ([*PREDICT, "--name", "../x"], "--name '../x' is not a plain folder name"),
    ([*PREDICT, "name=.."], "the config's name '..' is not a plain folder name"),
    (["demo", "--images", "2", "--name", ".."], "name '..' is not a plain folder name"),
    ([*SCORE, "--name", "torn"], "runs/score/torn/cache/progress.json: the run's checkpoint is unreadable"),
    ([*PREDICT, f"members=[{YOLO}]", "--name", "torn"], "progress.json: the run's checkpoint is unreadable"),
]


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[" ".join(argv)[:70] for argv, _ in CASES])
def test_bad_input_is_one_clear_line(
    folder: Path,
    argv: list[str],
    fragment: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(folder)
    monkeypatch.delenv("FUSION_DEBUG", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"fusion {argv[0]}: error: ")]
    assert len(errors) == 1, err
    assert fragment in err, err
    assert len(err[err.index(errors[0]) :]) < 2000  # the message (after any progress bar) is short


def test_a_huge_override_value_is_not_echoed_whole(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)
    assert main([*PREDICT, "batch_size=" + "x" * 100_000]) == 2
    err = capsys.readouterr().err
    assert "batch_size: Input should be a valid integer" in err and "(100002 chars)" in err
    assert len(err) < 1000
