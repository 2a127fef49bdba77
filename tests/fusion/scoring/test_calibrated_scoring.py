"""Calibrators inside ``fusion fuse`` / ``score`` / ``tune`` and ``Ensemble.predict``: applied once, before fusion.

Every expected value is computed a second way: members calibrated by hand (``Calibrator.apply`` on the records'
scores, labels translated by class name into the calibrators' coco80 vocabulary), written as ordinary results files
and fused WITHOUT calibrators. A calibrator applied twice, or not at all, or with the wrong class, changes the
fused bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fusion import Ensemble
from fusion.calibration import CalibratorSet, detection_ece, fit_calibrator_set
from fusion.classes import ClassMap
from fusion.cli import main
from fusion.coco.annotations import load_annotations
from fusion.coco.predictions import SCORE_DECIMALS
from fusion.interop import from_coco_records
from fusion.scoring import score
from fusion.scoring.fuse_files import fuse_files
from fusion.synthetic import make_coco_ground_truth, simulate_miscalibrated_member
from fusion.tuning.files import tune_files

TEMPERATURES = {"a": 0.35, "b": 2.5}  # a over-confident, b under-confident


def _in_coco80(gt: dict) -> tuple[ClassMap, torch.Tensor]:
    data_map = ClassMap.from_coco_categories(gt["categories"])
    return data_map, data_map.translation_to(ClassMap.load("coco80"))


def _calibrated_records(
    records: list[dict], calibrators: CalibratorSet, name: str, gt: dict, decimals: int | None = None
) -> list[dict]:
    """The member's records with scores through its calibrator, by hand (labels in coco80 by class name).

    ``decimals=None`` keeps the calibrated scores exactly (JSON floats round-trip float64): the pipeline rounds
    nothing before the fused output.
    """
    data_map, table = _in_coco80(gt)
    ids = torch.tensor([r["category_id"] for r in records])
    labels = table[data_map.labels_from_ids(ids)]
    scores = torch.tensor([r["score"] for r in records], dtype=torch.float64)
    new = calibrators[name].apply(scores, labels).double().numpy()
    if decimals is not None:
        new = np.round(new, decimals)
    return [{**r, "score": float(s)} for r, s in zip(records, new)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("calibrated")
    gt = make_coco_ground_truth(40, seed=11, image_size=(48, 64))
    (root / "val.json").write_text(json.dumps(gt))
    records = {
        n: simulate_miscalibrated_member(gt, t, seed=k + 1) for k, (n, t) in enumerate(TEMPERATURES.items())
    }
    for name, recs in records.items():
        (root / f"{name}.json").write_text(json.dumps(recs))
    # Fit as `fusion calibrate` does: per class, in the ensemble's coco80 vocabulary.
    data_map, table = _in_coco80(gt)
    truth = {i: g.replace(labels=table[g.labels]) for i, g in load_annotations(gt).detections().items()}
    per_member = {
        n: {
            i: d.replace(labels=table[d.labels])
            for i, d in from_coco_records(r, data_map, None, truth).items()
        }
        for n, r in records.items()
    }
    calibrators = fit_calibrator_set(
        per_member, truth, "isotonic", per_class=True, classes=ClassMap.load("coco80").names
    )
    calibrators.save(root / "calibrators.json")
    for folder, decimals in (("manual", None), ("manual_rounded", SCORE_DECIMALS)):
        (root / folder).mkdir()
        for name, recs in records.items():
            hand = _calibrated_records(recs, calibrators, name, gt, decimals)
            (root / folder / f"{name}.json").write_text(json.dumps(hand))
    return {"root": root, "gt": gt, "records": records, "calibrators": calibrators, "truth": truth}


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_fuse_with_calibrators_equals_fusing_hand_calibrated_members(data: dict) -> None:
    root = data["root"]
    common = {"root": root / "runs", "plots": False, "verbose": False}
    files = [root / "a.json", root / "b.json"]
    calibrated = fuse_files(
        files, root / "val.json", name="cal", calibration=root / "calibrators.json", **common
    )
    by_hand = fuse_files(
        [root / "manual/a.json", root / "manual/b.json"], root / "val.json", name="hand", **common
    )
    raw = fuse_files(files, root / "val.json", name="raw", **common)

    assert (calibrated / "fused.json").read_bytes() == (by_hand / "fused.json").read_bytes()
    assert (calibrated / "fused.json").read_bytes() != (raw / "fused.json").read_bytes()
    ours, hand, base = _metrics(calibrated), _metrics(by_hand), _metrics(raw)
    assert {k: v for k, v in ours["fused"].items() if k != "D-ECE uncalibrated"} == hand["fused"]
    for name in TEMPERATURES:
        assert ours["members"][name]["D-ECE"] == hand["members"][name]["D-ECE"]
        assert ours["members"][name]["D-ECE uncalibrated"] == base["members"][name]["D-ECE"]
        assert ours["members"][name]["AP"] == hand["members"][name]["AP"]
    # The baseline beside it is the raw members' fusion, scored the same way.
    assert ours["fused_uncalibrated"]["AP"] == base["fused"]["AP"]
    assert ours["fused_uncalibrated"]["D-ECE"] == base["fused"]["D-ECE"]
    assert ours["fused"]["D-ECE uncalibrated"] == base["fused"]["D-ECE"]
    assert ours["calibrators"] == {"a": str(root / "calibrators.json"), "b": str(root / "calibrators.json")}
    assert ours["calibration_protocol"]["iou_thr"] == 0.5 and "D-ECE uncalibrated" not in base["members"]["a"]


def test_reported_dece_is_detection_ece_of_the_member(data: dict) -> None:
    """metrics.json's D-ECE is the library's detection_ece on the same detections (coco80 labels, crowd ignored)."""
    root, gt, truth = data["root"], data["gt"], data["truth"]
    out = fuse_files(
        [root / "a.json"], root / "val.json", name="one", root=root / "runs", plots=False, verbose=False
    )
    data_map, table = _in_coco80(gt)
    member = {
        i: d.replace(labels=table[d.labels])
        for i, d in from_coco_records(data["records"]["a"], data_map, None, truth).items()
    }
    expected = detection_ece(member, truth).value
    assert _metrics(out)["members"]["a"]["D-ECE"] == pytest.approx(expected, abs=1e-6)
    assert expected > 0.1  # temperature 0.35: clearly over-confident


def test_calibration_lowers_dece_of_miscalibrated_members(data: dict) -> None:
    out = fuse_files(
        [data["root"] / "a.json", data["root"] / "b.json"],
        data["root"] / "val.json",
        name="lower",
        root=data["root"] / "runs",
        calibration=data["root"] / "calibrators.json",
        plots=False,
        verbose=False,
    )
    members = _metrics(out)["members"]
    for name in TEMPERATURES:
        assert members[name]["D-ECE"] < 0.5 * members[name]["D-ECE uncalibrated"], name


def test_cli_fuse_calibrators_and_bad_file(
    data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = data["root"]
    argv = ["fuse", str(root / "a.json"), str(root / "b.json"), "--annotations", str(root / "val.json")]
    argv += ["--project", str(tmp_path), "--no-plots"]
    assert main([*argv, "--calibrators", str(root / "calibrators.json")]) == 0
    hand = fuse_files(
        [root / "manual/a.json", root / "manual/b.json"],
        root / "val.json",
        root=tmp_path,
        name="hand",
        plots=False,
        verbose=False,
    )
    assert (tmp_path / "fuse" / "fuse" / "fused.json").read_bytes() == (hand / "fused.json").read_bytes()
    capsys.readouterr()
    bad = tmp_path / "not_calibrators.json"
    bad.write_text(json.dumps({"members": {}}))
    assert main([*argv, "--calibrators", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a calibrator set" in err


def test_calibrators_for_a_member_not_in_the_run_are_an_error(data: dict) -> None:
    root = data["root"]
    with pytest.raises(ValueError, match=r"member\(s\) \['b'\] that are not in this run"):
        fuse_files(
            [root / "a.json"],
            root / "val.json",
            root=root / "runs",
            calibration=root / "calibrators.json",
            verbose=False,
            plots=False,
        )


def _ensemble_config(root: Path, calibrated: bool) -> dict:
    members = [
        {"name": n, "type": "predictions", "path": str(root / f"{n}.json"), "classes": "coco91"}
        for n in TEMPERATURES
    ]
    if calibrated:
        for member in members:
            member["calibrator"] = str(root / "calibrators.json")
    return {
        "name": "cal",
        "classes": "coco80",
        "device": "cpu",
        "batch_size": 4,
        "members": members,
        "fusion": {"type": "wbf", "iou_thr": 0.55},
    }


def test_ensemble_predict_calibrates_each_member_once(data: dict) -> None:
    root, gt = data["root"], data["gt"]
    images = [torch.zeros(3, im["height"], im["width"], dtype=torch.uint8) for im in gt["images"][:10]]
    ids = [im["id"] for im in gt["images"][:10]]
    ensemble = Ensemble.from_config(_ensemble_config(root, calibrated=True))
    assert set(ensemble.calibrators) == {"a", "b"}
    assert ensemble.calibrator_files == {
        "a": str(root / "calibrators.json"),
        "b": str(root / "calibrators.json"),
    }
    fused = ensemble.predict(images, ids)

    # By hand: members replaying the hand-calibrated files, no calibrators.
    # (Rounded files: `predictions` members read float32, so exact files would still not compare bit for bit.)
    manual = _ensemble_config(root / "manual_rounded", calibrated=False)
    expected = Ensemble.from_config(manual).predict(images, ids)
    for got, want in zip(fused, expected):
        # The hand files hold rounded scores, and WBF weights boxes by score: ~1e-4 relative in a weight moves a
        # fused coordinate by up to ~1e-3 px on these images.
        assert got.equal(want, atol=1e-3)

    raw = ensemble.run_members(ensemble.load(images, ids))
    once = ensemble.calibrate(raw)
    twice = ensemble.calibrate(once)
    for a, b in zip(once, twice):
        for x, y in zip(a, b):
            assert torch.equal(x.scores, y.scores)
    assert not all(torch.equal(x.scores, z.scores) for x, z in zip(once[0], raw[0]))
    raw_members = ensemble.predict_members(images, ids, calibrated=False)
    assert all(torch.equal(x.scores, z.scores) for x, z in zip(raw_members["a"], raw[0]))


def test_ensemble_calibrator_errors_name_the_member(data: dict, tmp_path: Path) -> None:
    config = _ensemble_config(data["root"], calibrated=True)
    config["members"][1]["calibrator"] = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match=r"members\[1\]\.calibrator \('b'\)"):
        Ensemble.from_config(config)
    other = CalibratorSet({"zzz": data["calibrators"]["a"]}, ClassMap.load("coco80").names)
    other.save(tmp_path / "other.json")
    config["members"][1]["calibrator"] = str(tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"members\[1\]\.calibrator \('b'\).*no calibrator for member 'b'"):
        Ensemble.from_config(config)


def test_score_applies_config_calibrators(data: dict) -> None:
    root, gt = data["root"], data["gt"]
    images = root / "images"
    images.mkdir(exist_ok=True)
    for image in gt["images"]:
        Image.new("RGB", (image["width"], image["height"])).save(images / image["file_name"])
    common = {"root": root / "runs", "plots": False, "verbose": False, "num_workers": 0}
    metrics = score(_ensemble_config(root, calibrated=True), root / "val.json", images, name="cal", **common)
    by_files = fuse_files(
        [root / "a.json", root / "b.json"],
        root / "val.json",
        "wbf",
        {"iou_thr": 0.55},
        name="cmp",
        calibration=root / "calibrators.json",
        **{k: v for k, v in common.items() if k != "num_workers"},
    )
    assert metrics["fused"] == _metrics(by_files)["fused"]
    assert metrics["members"] == _metrics(by_files)["members"]
    assert metrics["calibrators"] == {
        "a": str(root / "calibrators.json"),
        "b": str(root / "calibrators.json"),
    }
    # Scoring keeps the raw member outputs: a new calibrator needs no re-run of the models.
    saved = json.loads((root / "runs" / "score" / "cal" / "members" / "a.json").read_text())
    assert sorted(r["score"] for r in saved) == pytest.approx(
        sorted(r["score"] for r in data["records"]["a"]), abs=1e-4
    )


def test_tune_with_calibrators_writes_them_into_best_yaml(data: dict) -> None:
    root = data["root"]
    out = tune_files(
        [root / "a.json", root / "b.json"],
        root / "val.json",
        trials=4,
        root=root / "runs",
        progress=False,
        calibrators=root / "calibrators.json",
    )
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert [m["calibrator"] for m in best["members"]] == [str(root / "calibrators.json")] * 2
    # The best trial's number is reproduced by `fusion fuse` with the same policy, weights and calibrators.
    chosen = yaml.safe_load((out / "config.yaml").read_text())["best"]
    check = fuse_files(
        [root / "a.json", root / "b.json"],
        root / "val.json",
        chosen["policy"],
        name="check",
        root=root / "runs",
        calibration=root / "calibrators.json",
        plots=False,
        verbose=False,
    )
    searched = _metrics(out)["policies"]["wbf"]["final_search_AP_in_sample"]
    assert _metrics(check)["fused"]["AP"] == pytest.approx(searched, abs=1e-9)
    assert len((out / "trials.csv").read_text().splitlines()) == 5


@pytest.fixture(scope="module")
def with_fused(data: dict) -> Path:
    """The member calibrators plus a fused-output calibrator fitted on the calibrated members' WBF (as `fusion
    calibrate` does), saved as one set."""
    from fusion import fuse_batch
    from fusion.calibration import fit_member_calibrator
    from fusion.calibration.sets import apply_calibrators

    gt, truth = data["gt"], data["truth"]
    data_map, table = _in_coco80(gt)
    ids = list(truth)
    sizes = {i: t.image_size for i, t in truth.items()}
    per_member = {}
    for name, records in data["records"].items():
        found = from_coco_records(records, data_map, sizes, ids)
        per_member[name] = [found[i].replace(labels=table[found[i].labels]) for i in ids]
    calibrated = apply_calibrators(per_member, data["calibrators"])
    fused = fuse_batch([list(p) for p in zip(*calibrated.values())], {"type": "wbf", "iou_thr": 0.55})
    found = CalibratorSet.load(data["root"] / "calibrators.json")
    found.fused = fit_member_calibrator(dict(zip(ids, fused)), truth, "isotonic")
    return found.save(data["root"] / "calibrators_fused.json")


def test_fused_calibrator_in_ensemble_predict_and_score(data: dict, with_fused: Path) -> None:
    root, gt = data["root"], data["gt"]
    images = [torch.zeros(3, im["height"], im["width"], dtype=torch.uint8) for im in gt["images"][:10]]
    ids = [im["id"] for im in gt["images"][:10]]
    config = _ensemble_config(root, calibrated=True)
    for member in config["members"]:
        member["calibrator"] = str(with_fused)
    fused_calibrator = CalibratorSet.load(with_fused).fused
    plain = Ensemble.from_config(config)
    config["fused_calibrator"] = str(with_fused)
    ensemble = Ensemble.from_config(config)
    assert ensemble.calibrator_files["fused"] == str(with_fused)
    got = ensemble.predict(images, ids)
    for det, base in zip(got, plain.predict(images, ids)):
        expected = fused_calibrator.apply(base.scores, base.labels)
        order = torch.sort(expected, descending=True, stable=True).indices
        # saved members are read as float64; the calibrator's float32 scores are held in the boxes' dtype
        torch.testing.assert_close(det.scores, expected[order].to(det.scores.dtype))
        torch.testing.assert_close(det.boxes, base.boxes[order])
        assert bool((det.scores[:-1] >= det.scores[1:]).all())
    assert any(not torch.equal(d.scores, b.scores) for d, b in zip(got, plain.predict(images, ids)))

    # score: the fused entry is what `fusion fuse --calibrators` gives with the same set (members + fused).
    image_dir = root / "images"
    image_dir.mkdir(exist_ok=True)
    for image in gt["images"]:
        Image.new("RGB", (image["width"], image["height"])).save(image_dir / image["file_name"])
    common = {"root": root / "runs", "plots": False, "verbose": False}
    metrics = score(config, root / "val.json", image_dir, name="fusedcal", num_workers=0, **common)
    by_files = _metrics(
        fuse_files(
            [root / "a.json", root / "b.json"],
            root / "val.json",
            "wbf",
            {"iou_thr": 0.55},
            name="fusedcmp",
            calibration=with_fused,
            **common,
        )
    )
    assert metrics["fused"] == by_files["fused"]
    assert metrics["fused"]["D-ECE"] < 0.5 * metrics["fused_uncalibrated"]["D-ECE"]
    assert metrics["fused"]["AP"] >= metrics["fused_uncalibrated"]["AP"] - 0.01


def test_fused_calibrator_missing_from_the_set_is_named(data: dict) -> None:
    config = _ensemble_config(data["root"], calibrated=False)
    config["fused_calibrator"] = str(data["root"] / "calibrators.json")
    with pytest.raises(ValueError, match=r"fused_calibrator: .*calibrators\.json: has no fused calibrator"):
        Ensemble.from_config(config)


def test_tune_with_a_fused_calibrator_names_it_in_best_yaml(data: dict, with_fused: Path) -> None:
    root = data["root"]
    files = [root / "a.json", root / "b.json"]
    common = {"root": root / "runs", "progress": False, "trials": 2, "calibrators": with_fused}
    best = yaml.safe_load(
        (tune_files(files, root / "val.json", name="tf", **common) / "best.yaml").read_text()
    )
    assert best["fused_calibrator"] == str(with_fused.resolve())
    plain = tune_files(
        files, root / "val.json", name="tp", **{**common, "calibrators": root / "calibrators.json"}
    )
    assert "fused_calibrator" not in yaml.safe_load((plain / "best.yaml").read_text())
