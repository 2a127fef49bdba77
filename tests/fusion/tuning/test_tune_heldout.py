"""`fusion tune` measured on held-out images: every policy searched with the same budget, reported, and usable."""

import csv
import json

import numpy as np
import pytest
import yaml

from fusion.cli import main
from fusion.coco.annotations import load_annotations
from fusion.coco.evaluate import evaluate
from fusion.holdout import kfold_splits
from fusion.pipeline import fuse_predictions
from fusion.synthetic import synthetic_annotations, synthetic_predictions
from fusion.tuning.search import tune


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    dataset = synthetic_annotations(num_images=30, num_classes=3, seed=41)
    (root / "gt.json").write_text(json.dumps(dataset))
    for k in range(2):
        synthetic_predictions(dataset, detections_per_image=10, seed=50 + k).save(root / f"m{k}.json")
    return root


@pytest.mark.slow
def test_tune_reports_every_policy_held_out_and_best_yaml_replays(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    argv = ["tune", "m0.json", "m1.json", "--annotations", "gt.json", "--trials", "4", "--folds", "3"]
    assert main([*argv, "--policies", "wbf,voting,nms", "--name", "t", "--seed", "2"]) == 0
    out = files / "runs" / "tune" / "t"
    metrics = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    # Every policy tried is in the report and metrics, each with the same budget in trials.csv.
    assert set(metrics["policies"]) == {"wbf", "voting", "nms"}
    assert all(f"| {p} |" in report or f"| **{p}** |" in report for p in ("wbf", "voting", "nms"))
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert sorted(r["type"] for r in rows) == sorted(["wbf"] * 4 + ["voting"] * 4 + ["nms"] * 4)
    assert (out / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A policy's held-out AP of fold k = that fold's search (on its fit images) scored on its held-out images.
    gt = load_annotations(files / "gt.json")
    from fusion.coco.predictions import load_predictions

    members = {f"m{k}": load_predictions(files / f"m{k}.json", gt) for k in range(2)}
    fold = kfold_splits(gt.image_ids.tolist(), 3, 2)[1]
    sub = gt.subset(np.asarray(fold.fit))
    fit = {n: p.select(np.isin(p.image_ids, fold.fit)) for n, p in members.items()}
    found, _ = tune(fit, sub, policies=["voting"], trials=4, seed=2, progress=False)
    held = gt.subset(np.asarray(fold.held_out))
    parts = [p.select(np.isin(p.image_ids, fold.held_out)) for p in members.values()]
    setting = {k: v for k, v in found.policy.items() if k != "weights"}
    ap = evaluate(held, fuse_predictions(parts, held, setting, weights=found.policy["weights"])).stats["AP"]
    voting = metrics["policies"]["voting"]
    assert voting["folds"][1]["setting"] == found.policy
    assert voting["held_out_AP"]["folds"][1] == pytest.approx(ap, abs=1e-12)
    default = evaluate(held, fuse_predictions(parts, held)).stats["AP"]
    assert voting["gain_over_default"]["folds"][1] == pytest.approx(ap - default, abs=1e-12)
    member = max(evaluate(held, p).stats["AP"] for p in parts)
    assert voting["gain_over_best_member"]["folds"][1] == pytest.approx(ap - member, abs=1e-12)
    winner = max(metrics["policies"], key=lambda p: metrics["policies"][p]["held_out_AP"]["mean"])
    assert metrics["winner"] == winner

    # best.yaml replays through `fusion fuse --config` and `fusion score --config` (no --images) to the same AP
    # as the winner's final search found on all images.
    capsys.readouterr()
    assert main(["fuse", "--config", str(out / "best.yaml"), "--annotations", "gt.json", "--name", "b"]) == 0
    fused = json.loads((files / "runs" / "fuse" / "b" / "metrics.json").read_text())["fused"]["AP"]
    assert fused == pytest.approx(metrics["policies"][winner]["final_search_AP_in_sample"], abs=1e-12)
    assert main(["score", "--config", str(out / "best.yaml"), "--annotations", "gt.json", "--no-plots"]) == 0
    scored = json.loads((files / "runs" / "score" / "t" / "metrics.json").read_text())["fused"]["AP"]
    assert scored == fused
    assert yaml.safe_load((out / "best.yaml").read_text())["fusion"]["type"] == winner


def test_tune_and_fuse_config_errors_name_the_problem(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    base = ["tune", "m0.json", "m1.json", "--annotations", "gt.json"]
    assert main([*base, "--policies", ","]) == 2
    assert "--policies names no policy (got ',')" in capsys.readouterr().err
    assert main([*base, "--policies", "wbf,nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    config = {
        "name": "x",
        "classes": "coco80",
        "members": [{"name": "m0", "type": "predictions", "path": "m0.json"}],
    }
    (files / "x.yaml").write_text(yaml.safe_dump(config))
    assert main(["fuse", "--config", "x.yaml", "m0.json", "--annotations", "gt.json"]) == 2
    assert "drop files" in capsys.readouterr().err
