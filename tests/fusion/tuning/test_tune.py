"""``fusion tune``: a seeded, reproducible search that never returns worse than the default setting."""

from __future__ import annotations

import csv
import json

import numpy as np
import yaml

from fusion.cli import main
from fusion.coco.annotations import load_annotations
from fusion.coco.evaluate import evaluate
from fusion.pipeline import fuse_predictions
from fusion.synthetic import synthetic_annotations, synthetic_predictions
from fusion.tuning.search import SearchSpace, tune


def test_search_space_decodes_each_policy_fields_only() -> None:
    space = SearchSpace(["wbf", "voting"], num_members=2)
    assert space.categorical["conf_type"][0] == "avg" and "consensus" in space.categorical["quorum"]
    low = space.decode(np.zeros(space.dims))
    high = space.decode(np.ones(space.dims))
    assert low == {
        "type": "wbf",
        "iou_thr": 0.3,
        "skip_box_thr": 0.0,
        "conf_type": "avg",
        "weights": [0.2, 0.2],
    }
    assert high["type"] == "voting" and high["quorum"] == "unanimous" and "conf_type" not in high
    assert high["iou_thr"] == 0.85 and high["weights"] == [3.0, 3.0]


def test_tune_reproducible_and_not_worse_than_default(tmp_path, monkeypatch) -> None:
    dataset = synthetic_annotations(num_images=40, num_classes=3, seed=41)
    gt = load_annotations(dataset)
    members = {
        f"m{k}": synthetic_predictions(dataset, detections_per_image=10, seed=50 + k) for k in range(2)
    }
    best, history = tune(members, gt, policies=["wbf", "voting"], trials=8, seed=3, progress=False)
    again, history2 = tune(members, gt, policies=["wbf", "voting"], trials=8, seed=3, progress=False)
    assert [t.policy for t in history] == [t.policy for t in history2] and best.policy == again.policy
    assert len(history) == 8 and history[0].policy == {
        "type": "wbf",
        "iou_thr": 0.55,
        "skip_box_thr": 0.0,
        "conf_type": "avg",
        "weights": [1.0, 1.0],
    }
    default_ap = evaluate(gt, fuse_predictions(list(members.values()), gt)).stats["AP"]
    assert history[0].stats["AP"] == default_ap
    assert best.stats["AP"] == max(t.stats["AP"] for t in history) >= default_ap
    # The recorded stats are those of re-fusing with the reported setting.
    setting = {k: v for k, v in best.policy.items() if k != "weights"}
    refused = fuse_predictions(list(members.values()), gt, setting, weights=best.policy["weights"])
    assert evaluate(gt, refused).stats == best.stats

    # CLI: best.yaml is a loadable ensemble config; trials.csv has one row per trial.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    for name, preds in members.items():
        preds.save(tmp_path / f"{name}.json")
    assert (
        main(["tune", "m0.json", "m1.json", "--annotations", "gt.json", "--trials", "5", "--name", "t"]) == 0
    )
    out = tmp_path / "runs" / "tune" / "t"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 5 and rows[0]["iou_thr"] == "0.55"  # the final search on all images
    config = yaml.safe_load((out / "best.yaml").read_text())
    from fusion.config import load_ensemble_config

    loaded = load_ensemble_config(config)
    best_row = max(rows, key=lambda r: float(r["AP"]))
    assert loaded.fusion.type == best_row["type"] and [m.name for m in loaded.members] == ["m0", "m1"]
    assert loaded.fusion.iou_thr == float(best_row["iou_thr"])
