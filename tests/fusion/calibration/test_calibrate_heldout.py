"""`fusion calibrate --method auto` end to end: held-out numbers, refusals, and the issue's demo seed 0 -> seed 1 case."""

import json

import numpy as np
import pytest
import yaml

from fusion.cli import main
from fusion.cli.demo import run_demo
from fusion.coco.annotations import load_annotations
from fusion.coco.evaluate import evaluate
from fusion.coco.predictions import load_predictions
from fusion.holdout import kfold_splits
from fusion.pipeline import fuse_predictions

MEMBERS = ("sharp", "careful", "noisy")


@pytest.mark.slow
def test_auto_refuses_ap_losers_and_holds_on_an_unseen_demo_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The case: the simulated demo's members, fitted on seed 0, applied to seed 1.
    data = [
        run_demo(200, seed, name=f"d{seed}", project="runs", plots=False, verbose=False) / "data"
        for seed in (0, 1)
    ]
    config = {
        "name": "demo",
        "classes": "coco91",
        "members": [{"name": m, "type": "predictions", "path": str(data[0] / f"{m}.json")} for m in MEMBERS],
    }
    (tmp_path / "ens.yaml").write_text(yaml.safe_dump(config))
    argv = [
        "calibrate",
        "--config",
        "ens.yaml",
        "--annotations",
        str(data[0] / "annotations.json"),
        "--name",
        "c",
    ]
    assert (
        main([*argv, *[x for m in MEMBERS for x in ("--predictions", f"{m}={data[0] / f'{m}.json'}")]]) == 0
    )
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "runs" / "calibrate" / "c" / "report.json").read_text())
    held = report["held_out"]
    base = held["uncalibrated"]["fused AP"]["mean"]

    # The uncalibrated baseline is measured on each held-out fold only: the same number by hand.
    gt = load_annotations(data[0] / "annotations.json")
    members = [load_predictions(data[0] / f"{m}.json", gt) for m in MEMBERS]
    for fold, value in zip(
        kfold_splits(gt.image_ids.tolist(), 5, 0), held["uncalibrated"]["fused AP"]["folds"]
    ):
        ids = np.asarray(fold.held_out)
        sub = gt.subset(ids)
        fused = fuse_predictions([p.select(np.isin(p.image_ids, ids)) for p in members], sub)
        assert evaluate(sub, fused).stats["AP"] == pytest.approx(value, abs=1e-12)

    # Every candidate losing more than 0.002 held-out AP is refused, and some are (member calibration costs AP
    # here); the one kept keeps AP and at least halves the held-out fused D-ECE.
    candidates = held["candidates"]
    losers = [n for n, c in candidates.items() if c["fused AP"]["mean"] < base - 0.002]
    assert losers and all(candidates[n]["verdict"].startswith("refused") for n in losers)
    chosen = held["chosen"]
    assert chosen not in losers and candidates[chosen]["verdict"].startswith("chosen")
    assert candidates[chosen]["fused D-ECE"]["mean"] <= 0.5 * held["uncalibrated"]["fused D-ECE"]["mean"]
    assert f"kept: {chosen}" in out and "refused: held-out AP" in out

    # The calibrators written, applied to the unseen seed-1 set: fused AP within 0.002 of uncalibrated.
    fuse = [
        "fuse",
        *[str(data[1] / f"{m}.json") for m in MEMBERS],
        "--annotations",
        str(data[1] / "annotations.json"),
    ]
    calibrators = tmp_path / "runs" / "calibrate" / "c" / "calibrators.json"
    assert main([*fuse, "--name", "f1", "--no-plots", "--calibrators", str(calibrators)]) == 0
    metrics = json.loads((tmp_path / "runs" / "fuse" / "f1" / "metrics.json").read_text())
    assert metrics["fused"]["AP"] >= metrics["fused_uncalibrated"]["AP"] - 0.002
    assert metrics["fused"]["D-ECE"] <= 0.5 * metrics["fused_uncalibrated"]["D-ECE"]

    # Without a fused calibrator every candidate calibrates the members, which costs fused AP on these members:
    # auto refuses them all and writes an empty set (applying it changes nothing).
    capsys.readouterr()
    files = [x for m in MEMBERS for x in ("--predictions", f"{m}={data[0] / f'{m}.json'}")]
    assert main([*argv[:-1], "none", *files, "--no-fused"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "runs" / "calibrate" / "none" / "report.json").read_text())
    assert report["held_out"]["chosen"] is None and "no calibrator kept" in out
    assert all(c["verdict"].startswith("refused") for c in report["held_out"]["candidates"].values())
    written = json.loads((tmp_path / "runs" / "calibrate" / "none" / "calibrators.json").read_text())
    assert written["members"] == {} and written["fused"] is None
