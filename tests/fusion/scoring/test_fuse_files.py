"""``fusion fuse``: saved member files -> per-image fuse_batch -> outputs whose numbers pycocotools confirms."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusion import fuse_batch
from fusion.cli import main
from fusion.coco.annotations import load_annotations
from fusion.coco.evaluate import STAT_KEYS
from fusion.interop import from_coco_records
from fusion.synthetic import synthetic_annotations, synthetic_predictions
from tests.fusion.coco.test_evaluate import BIT_EXACT, reference_stats


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    folder = tmp_path_factory.mktemp("fuse")
    dataset = synthetic_annotations(num_images=60, num_classes=4, crowd_fraction=0.05, seed=21)
    (folder / "gt.json").write_text(json.dumps(dataset))
    paths = []
    for k, suffix in enumerate([".json", ".jsonl", ".json"]):
        path = folder / f"member{k}{suffix}"
        synthetic_predictions(dataset, detections_per_image=15, seed=30 + k).save(path)
        paths.append(path)
    return folder, dataset, paths


def _records(path) -> list[dict]:
    text = path.read_text()
    return (
        [json.loads(line) for line in text.splitlines() if line]
        if path.suffix == ".jsonl"
        else json.loads(text)
    )


@pytest.mark.parametrize(
    ("policy_args", "policy", "params"),
    [
        ([], "wbf", {"iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}),
        (
            ["--policy", "wbf", "iou_thr=0.6", "conf_type=max", "weights=[2,1,1]"],
            "wbf",
            {"iou_thr": 0.6, "conf_type": "max", "weights": [2, 1, 1]},
        ),
    ],
)
def test_fuse_cli_equals_fuse_batch_on_the_same_files(
    saved, policy_args, policy, params, monkeypatch
) -> None:
    folder, dataset, paths = saved
    monkeypatch.chdir(folder)
    name = f"run{len(policy_args)}"
    argv = ["fuse", *map(str, paths), "--annotations", "gt.json", "--name", name, "--no-plots", *policy_args]
    assert main(argv) == 0
    out = folder / "runs" / "fuse" / name
    # Independent path: the core interop reader + fusion.fuse_batch, image by image.
    gt = load_annotations(dataset)
    sizes = gt.image_sizes
    ids = gt.image_ids.tolist()
    members = [from_coco_records(_records(p), gt.class_map, sizes, ids) for p in paths]
    fused = fuse_batch([[m[i] for m in members] for i in ids], policy, **params)
    expected = []
    for image_id, det in zip(ids, fused):
        xyxy = det.boxes.double().numpy()
        for box, score, label in zip(xyxy, det.scores.double().numpy(), det.labels.numpy()):
            expected.append((image_id, gt.class_map.ids[label], *box[:2], *(box[2:] - box[:2]), score))
    got = [
        (r["image_id"], r["category_id"], *r["bbox"], r["score"])
        for r in json.loads((out / "fused.json").read_text())
    ]
    assert len(got) == len(expected) > 100
    got_a, exp_a = np.asarray(got), np.asarray(expected)
    assert (got_a[:, :2] == exp_a[:, :2]).all()
    np.testing.assert_allclose(
        got_a[:, 2:6], exp_a[:, 2:6], atol=6e-4
    )  # saved boxes are rounded to 3 decimals
    np.testing.assert_allclose(got_a[:, 6], exp_a[:, 6], atol=6e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["members"]) == ["member0", "member1", "member2"]
    assert metrics["policy"]["type"] == "wbf" and all(metrics["policy"][k] == v for k, v in params.items())
    # The reported numbers are pycocotools' on the written files.
    for name_, path in [("fused", out / "fused.json"), *[(p.stem, p) for p in paths]]:
        stats = metrics["fused"] if name_ == "fused" else metrics["members"][name_]
        want = reference_stats(dataset, _records(path))
        got_stats = np.asarray([stats[k] for k in STAT_KEYS])
        if metrics["backend"] in BIT_EXACT:
            assert got_stats.tolist() == want.tolist()
        else:
            np.testing.assert_allclose(got_stats, want, rtol=0, atol=1e-12)
    report = (out / "report.md").read_text()
    best = max(metrics["members"], key=lambda n: metrics["members"][n]["AP"])
    gain = metrics["fused"]["AP"] - metrics["members"][best]["AP"]
    assert f"gain over best member ({best}) | {gain:+.4f}" in report
    assert json.loads(json.dumps(metrics)) == metrics


def ensemble_boxes_script(dataset: dict, paths: list, **kwargs) -> list[tuple]:
    """What users write today: per image, normalise, ensemble-boxes WBF, scale back, ``round`` like results files."""
    import warnings

    from ensemble_boxes import weighted_boxes_fusion

    members = [_records(p) for p in paths]
    rows = []
    for image in dataset["images"]:
        h, w = image["height"], image["width"]
        inputs: tuple[list, list, list] = ([], [], [])
        for records in members:
            mine = [r for r in records if r["image_id"] == image["id"]]
            b = np.asarray([r["bbox"] for r in mine], dtype=np.float64).reshape(-1, 4)
            inputs[0].append(np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1) / [w, h, w, h])
            inputs[1].append([r["score"] for r in mine])
            inputs[2].append([r["category_id"] for r in mine])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            boxes, scores, labels = weighted_boxes_fusion(*inputs, **kwargs)
        for (x1, y1, x2, y2), score, label in zip(boxes * [w, h, w, h], scores, labels):
            box = [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
            rows.append((image["id"], int(label), *box, round(float(score), 5)))
    return rows


@pytest.mark.parametrize(
    ("policy_args", "params"),
    [
        ([], {}),
        (
            ["--policy", "wbf", "iou_thr=0.4", "conf_type=box_and_model_avg", "weights=[3,1,2]"],
            {"iou_thr": 0.4, "conf_type": "box_and_model_avg", "weights": [3, 1, 2]},
        ),
    ],
)
def test_fuse_cli_writes_exactly_what_an_ensemble_boxes_script_writes(
    saved, policy_args, params, monkeypatch
) -> None:
    folder, dataset, paths = saved
    monkeypatch.chdir(folder)
    name = f"script{len(policy_args)}"
    assert (
        main(
            ["fuse", *map(str, paths), "--annotations", "gt.json", "--name", name, "--no-plots", *policy_args]
        )
        == 0
    )
    out = folder / "runs" / "fuse" / name
    got = [(r["image_id"], r["category_id"], *r["bbox"], r["score"]) for r in _records(out / "fused.json")]
    want = ensemble_boxes_script(dataset, paths, **params)
    assert len(got) > 100 and sorted(got) == sorted(want)
    # and so the stats are the script's + pycocotools' (bit for bit with an exact backend)
    metrics = json.loads((out / "metrics.json").read_text())
    records = [dict(image_id=r[0], category_id=r[1], bbox=list(r[2:6]), score=r[6]) for r in want]
    stats = np.asarray([metrics["fused"][k] for k in STAT_KEYS])
    if metrics["backend"] in BIT_EXACT:
        assert stats.tolist() == reference_stats(dataset, records).tolist()


def test_fuse_writes_plots_and_config(saved, monkeypatch) -> None:
    folder, _, paths = saved
    monkeypatch.chdir(folder)
    assert main(["fuse", *map(str, paths[:2]), "--annotations", "gt.json", "--name", "plots"]) == 0
    out = folder / "runs" / "fuse" / "plots"
    for png in ("pr_curves.png", "per_class_ap.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["policy"]["iou_thr"] == 0.55 and list(config["members"]) == ["member0", "member1"]


def test_fuse_cli_errors_are_one_clear_line(saved, monkeypatch, capsys) -> None:
    folder, _, paths = saved
    monkeypatch.chdir(folder)
    bad = folder / "alien.json"
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 99, "bbox": [0, 0, 4, 4], "score": 0.5}]))
    assert main(["fuse", str(paths[0]), str(bad), "--annotations", "gt.json", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "alien.json" in err and "category ids not in the annotations' categories [99]" in err
    (folder / "sub").mkdir(exist_ok=True)
    twin = folder / "sub" / "member0.json"
    twin.write_bytes(paths[0].read_bytes())
    assert main(["fuse", str(paths[0]), str(twin), "--annotations", "gt.json", "--no-plots"]) == 2
    assert "are both 'member0'" in capsys.readouterr().err
