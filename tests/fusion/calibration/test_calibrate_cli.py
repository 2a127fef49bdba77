"""`fusion calibrate` end to end on generated files, and the reliability diagram."""

import json

import numpy as np
import pytest
import torch
import yaml

from fusion import fuse_batch, make_policy
from fusion.calibration import (
    CalibratorSet,
    apply_calibrators,
    fit_calibrator_set,
    fit_member_calibrator,
)
from fusion.calibration.plots import reliability_diagram
from fusion.classes import ClassMap
from fusion.cli import main
from fusion.coco.annotations import load_annotations
from fusion.coco.predictions import Predictions
from fusion.synthetic import make_coco_ground_truth, simulate_miscalibrated_member


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    gt = make_coco_ground_truth(60, seed=4, crowd_fraction=0.05)
    (root / "val.json").write_text(json.dumps(gt))
    config = {
        "name": "trio",
        "classes": "coco80",
        # A full ensemble config (fusion calibrate validates it as the ensemble does); calibration reads the
        # members' saved results given below, not these paths.
        "members": [
            {"name": "a", "type": "predictions", "path": str(root / "a.json")},
            {"name": "b", "type": "predictions", "path": str(root / "b.json")},
        ],
    }
    (root / "ens.yaml").write_text(yaml.safe_dump(config))
    records = {
        "a": simulate_miscalibrated_member(gt, 0.4, seed=1),
        "b": simulate_miscalibrated_member(gt, 2.5, seed=2),
    }
    (root / "a.json").write_text(json.dumps(records["a"]))
    # member b as a scoring cache (JSONL) at the default location
    cache = root / "runs" / "score" / "trio" / "cache"
    cache.mkdir(parents=True)
    (cache / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records["b"]))
    (cache / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records["a"]))
    return root, gt, records


def test_calibrate_writes_the_set_and_prints_the_snippet(files, capsys):
    root, gt, records = files
    argv = [
        "calibrate",
        "--config",
        str(root / "ens.yaml"),
        "--annotations",
        str(root / "val.json"),
        "--runs",
        str(root / "runs"),
        "--method",
        "isotonic",
    ]
    assert (
        main(
            [
                *argv,
                "--predictions",
                f"a={root / 'a.json'}",
                "--predictions",
                f"b={root / 'runs/score/trio/cache/b.jsonl'}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    path = root / "runs" / "calibrate" / "trio" / "calibrators.json"
    assert f"calibrator: {path}" in out and "- name: a" in out and "- name: b" in out
    coco80 = ClassMap.load("coco80")
    loaded = CalibratorSet.load(path, coco80.names)
    # The same fit done by hand, in the ensemble's vocabulary (coco91 category ids -> coco80 labels by name).
    data_map = ClassMap.from_coco_categories(gt["categories"])
    table = data_map.translation_to(coco80)
    truth = {i: g.replace(labels=table[g.labels]) for i, g in load_annotations(gt).detections().items()}
    # Scores exactly as the files hold them (float64), one Detections per image of the annotation file.
    coco = load_annotations(root / "val.json")
    members = {
        n: {
            int(i): d.replace(labels=table[d.labels])
            for i, d in zip(coco.image_ids.tolist(), Predictions.from_records(r).split_by_image(coco))
        }
        for n, r in records.items()
    }
    expected = fit_calibrator_set(members, truth, "isotonic", classes=coco80.names)
    # The fused output's calibrator: fitted on the config's policy (WBF defaults) over the calibrated members.
    ids = list(truth)
    calibrated = apply_calibrators({n: [m[i] for i in ids] for n, m in members.items()}, expected)
    fused = fuse_batch([list(p) for p in zip(*calibrated.values())], "wbf")
    expected.fused = fit_member_calibrator(dict(zip(ids, fused)), truth, "isotonic")
    # ... and the set records what it was fitted under: the config's policy, resolved, and the members fused.
    expected.fused_fit = {"policy": make_policy("wbf").params.model_dump(mode="json"), "members": ["a", "b"]}
    assert loaded.to_json() == expected.to_json()
    assert loaded.fused_fit["policy"]["type"] == "wbf" and loaded.fused_fit["policy"]["iou_thr"] == 0.55
    assert f"fused_calibrator: {path}" in out
    report = json.loads((root / "runs" / "calibrate" / "trio" / "report.json").read_text())
    assert report["protocol"]["kind"] == "k-fold" and report["protocol"]["final_fit_images"] == 60
    assert [f["held_out"] for f in report["protocol"]["folds"]] == [12] * 5
    held = report["held_out"]
    assert held["chosen"] == "isotonic" and list(held["candidates"]) == ["isotonic"]
    # Held-out numbers: calibrated member b's D-ECE on images it was not fitted on is far below its raw one.
    b = held["candidates"]["isotonic"]["members D-ECE"]["b"]["mean"]
    assert b < 0.6 * held["uncalibrated"]["members D-ECE"]["b"]["mean"]
    fused = held["candidates"]["isotonic"]["fused D-ECE"]["mean"]
    assert fused < 0.6 * held["uncalibrated"]["fused D-ECE"]["mean"]

    # Default inputs: the scoring cache; a second run gets its own folder (trio2), never overwriting.
    assert main([*argv[:-2], "--method", "temperature", "--per-class", "--shrinkage", "50"]) == 0
    second = CalibratorSet.load(root / "runs" / "calibrate" / "trio2" / "calibrators.json")
    assert second["a"].method == "temperature" and second.protocol["per_class"] is True
    assert second.protocol["shrinkage"] == 50
    assert second.fused is not None and second.fused.method == "temperature"
    assert main([*argv, "--no-fused"]) == 0
    assert CalibratorSet.load(root / "runs" / "calibrate" / "trio3" / "calibrators.json").fused is None
    # Predictions of only some members: their fusion is not the ensemble's, so no fused calibrator is fitted.
    capsys.readouterr()
    assert main([*argv, "--predictions", f"a={root / 'a.json'}"]) == 0
    assert "no predictions for member(s) ['b']" in capsys.readouterr().out
    assert CalibratorSet.load(root / "runs" / "calibrate" / "trio4" / "calibrators.json").fused is None


def test_calibrate_errors_name_the_problem(files, tmp_path, capsys):
    root, _, _ = files
    base = ["calibrate", "--config", str(root / "ens.yaml"), "--annotations", str(root / "val.json")]
    assert main([*base, "--runs", str(tmp_path)]) == 2
    assert "run `fusion score` first" in capsys.readouterr().err
    assert main([*base, "--predictions", f"zzz={root / 'a.json'}", "--runs", str(tmp_path)]) == 2
    assert "no member 'zzz'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    assert main([*base, "--predictions", f"a={bad}", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "image id(s) are not in the annotations" in err and "[999]" in err
    # Protocol options that do not go together are named.
    assert main([*base, "--val", str(root / "val.json"), "--runs", str(tmp_path)]) == 2
    assert "--val and --test go together" in capsys.readouterr().err
    assert (
        main([*base, "--folds", "1", "--predictions", f"a={root / 'a.json'}", "--runs", str(tmp_path)]) == 2
    )
    assert "k-fold needs k >= 2 folds" in capsys.readouterr().err


def test_reliability_diagram_png(tmp_path):
    from fusion.calibration import MatchedPairs, dece

    rng = np.random.default_rng(0)
    s = torch.from_numpy(rng.random(200).astype(np.float32))
    pairs = MatchedPairs(
        s, torch.from_numpy(rng.random(200) < 0.5), torch.zeros(200, dtype=torch.int64), torch.zeros(200, 4)
    )
    path = reliability_diagram({"raw": dece(pairs)}, tmp_path / "rel.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (500, 720)


def test_holdout_and_val_test_protocols(files, tmp_path, capsys):
    root, gt, _ = files
    # Two annotation files from one dataset: the first 40 images to fit on, the last 20 to measure on.
    val = {**gt, "images": gt["images"][:40]}
    test = {**gt, "images": gt["images"][40:]}
    keep = {i["id"] for i in val["images"]}
    val["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    test["annotations"] = [a for a in gt["annotations"] if a["image_id"] not in keep]
    (tmp_path / "v.json").write_text(json.dumps(val))
    (tmp_path / "t.json").write_text(json.dumps(test))
    preds = [
        "--predictions",
        f"a={root / 'a.json'}",
        "--predictions",
        f"b={root / 'runs/score/trio/cache/b.jsonl'}",
    ]
    base = [
        "calibrate",
        "--config",
        str(root / "ens.yaml"),
        *preds,
        "--runs",
        str(tmp_path),
        "--method",
        "beta",
    ]
    assert (
        main([*base, "--val", str(tmp_path / "v.json"), "--test", str(tmp_path / "t.json"), "--name", "vt"])
        == 0
    )
    assert "fit on --val" in capsys.readouterr().out
    report = json.loads((tmp_path / "calibrate" / "vt" / "report.json").read_text())
    assert report["protocol"]["kind"] == "val/test" and report["protocol"]["folds"] == [
        {"fit": 40, "held_out": 20}
    ]
    # The final fit uses the --val images only: the same calibrators as a k-fold run on the val file alone.
    # (the val file holds only its images, so predictions on the others must be left out of that run)
    from fusion.coco.predictions import load_predictions

    gt_all = load_annotations(root / "val.json")
    for name, path in (("a", root / "a.json"), ("b", root / "runs/score/trio/cache/b.jsonl")):
        p = load_predictions(path, gt_all)
        p.select(np.isin(p.image_ids, list(keep))).save(tmp_path / f"{name}_val.json")
    only_val = [
        "--predictions",
        f"a={tmp_path / 'a_val.json'}",
        "--predictions",
        f"b={tmp_path / 'b_val.json'}",
    ]
    plain = ["calibrate", "--config", str(root / "ens.yaml"), *only_val, "--runs", str(tmp_path)]
    assert main([*plain, "--method", "beta", "--annotations", str(tmp_path / "v.json"), "--name", "kf"]) == 0
    fitted = [json.loads((tmp_path / "calibrate" / n / "calibrators.json").read_text()) for n in ("vt", "kf")]
    assert fitted[0] == fitted[1] and fitted[0]["fused"]["method"] == "beta"

    assert main([*base, "--annotations", str(root / "val.json"), "--holdout", "0.25", "--name", "ho"]) == 0
    report = json.loads((tmp_path / "calibrate" / "ho" / "report.json").read_text())
    assert (
        report["protocol"]["folds"] == [{"fit": 45, "held_out": 15}] and report["final_fit"]["images"] == 60
    )
    assert len(report["held_out"]["candidates"]["beta"]["fused AP"]["folds"]) == 1
