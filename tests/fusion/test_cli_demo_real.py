"""``fusion demo`` on real networks: tiny random-init members exported by the real export functions, run through
the real adapters and the Ensemble, fused, scored and drawn; the manifest check; the demo's render is deterministic."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from fusion.cli import main
from fusion.demo.assets import (
    ASSET_PREFIX,
    MANIFEST,
    AssetMismatchError,
    AssetMissingError,
    demo_config,
    verify_assets,
)
from tests.fusion.demo_members import ultralytics_takes_weights, write_tiny_members

IMAGES, SEED = 3, 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    assets = tmp_path_factory.mktemp("assets")
    return assets, write_tiny_members(assets)


@pytest.fixture(scope="module")
def demo_run(tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from fusion.demo.real import run_real_demo

    assets, config = tiny
    project = tmp_path_factory.mktemp("runs")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        out = run_real_demo(IMAGES, SEED, project=project, assets_dir=assets, config=config, picture_images=2)
    return out, printed.getvalue()


@pytest.mark.slow
def test_demo_runs_real_members_fuses_scores_and_draws(tiny, demo_run) -> None:
    from PIL import Image

    from fusion.coco.annotations import load_annotations
    from fusion.coco.predictions import load_predictions
    from fusion.pipeline import Pipeline

    _, config = tiny
    out, printed = demo_run
    names = [m["name"] for m in config["members"]]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["members"]) == names and metrics["num_images"] == IMAGES
    assert metrics["policy"]["type"] == "wbf"
    # The fused file is exactly the pipeline's fusion of the members' saved outputs (what `fusion fuse` reruns).
    gt = load_annotations(out / "data" / "test" / "annotations.json")
    members = {n: load_predictions(out / "members" / f"{n}.json", gt) for n in names}
    assert all(len(p) > 0 for p in members.values())
    fused = Pipeline.build(metrics["policy"], vocabulary=gt.class_map).fuse_columns(members, gt)
    saved = load_predictions(out / "fused.json", gt)
    np.testing.assert_array_equal(saved.boxes, fused.boxes)
    np.testing.assert_array_equal(saved.scores, fused.scores)
    assert metrics["num_detections"]["fused"] == len(fused)
    # Every member detection lies inside its 128-px image and is of a shape class (dataset ids 1..8).
    for preds in members.values():
        assert (
            preds.boxes[:, 0].min() >= -1e-3 and (preds.boxes[:, 0] + preds.boxes[:, 2]).max() <= 128 + 1e-3
        )
        assert set(preds.category_ids.tolist()) <= set(range(1, 9))
    # The picture: one row per drawn image, one column for the ground truth, each member and the fused output.
    with Image.open(out / "picture.png") as picture:
        width, height = picture.size
    assert width == pytest.approx(190 * (len(names) + 2), rel=0.02)
    assert height == pytest.approx(190 * 2 + 60, rel=0.02)
    for plot in ("pr_curves.png", "per_class_ap.png", "report.md"):
        assert (out / plot).is_file(), plot
    resolved = (out / "ensemble.yaml").read_text()
    assert "fusion/assets/models/" not in resolved and str(tiny[0].resolve()) in resolved
    assert "**fused**" in printed and "fusion fuse" in printed and "picture.png" in printed


@pytest.mark.slow
def test_demo_members_are_the_real_adapters_outputs(tiny, demo_run) -> None:
    """The DETR member's saved results are its adapter's outputs on the image file (only rounded and relabelled)."""
    import torch
    from PIL import Image

    from detectors.detr.checkpoint import load_checkpoint
    from fusion.coco.annotations import load_annotations
    from fusion.coco.predictions import load_predictions
    from fusion.config import load_ensemble_config
    from fusion.ensemble import Ensemble

    assets, config = tiny
    out, _ = demo_run
    gt = load_annotations(out / "data" / "test" / "annotations.json")
    saved = load_predictions(out / "members" / "detr.json", gt).split_by_image(gt)
    data, _ = demo_config(assets, config)
    ensemble = Ensemble.from_config(load_ensemble_config(data))
    model, classes = load_checkpoint(assets / "detr.safetensors")
    assert classes == list(gt.class_map.names)
    file = out / "data" / "test" / "images" / gt.dataset["images"][0]["file_name"]
    with Image.open(file) as opened:
        direct = ensemble.members[[m.name for m in ensemble.members].index("detr")].predict(
            ensemble.load([opened])
        )
    kept = direct[0]
    torch.testing.assert_close(saved[0].boxes.float(), kept.boxes.float(), atol=6e-3, rtol=0)
    torch.testing.assert_close(saved[0].scores.float(), kept.scores.float(), atol=6e-5, rtol=0)
    assert saved[0].labels.tolist() == kept.labels.tolist()
    assert model.config.num_classes == 8


def test_missing_files_fail_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "assets"
    empty.mkdir()
    assert main(["demo", "--assets", str(empty), "--project", str(tmp_path), "--images", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fusion demo: error:")
    assert MANIFEST in err and "fusion demo --retrain" in err and "--simulated" in err
    assert not (tmp_path / "demo").exists()  # refused before anything is rendered


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, list[str]]:
    """An assets folder of two small files and their manifest; the config names the weights."""
    import torch
    from safetensors.torch import save_file

    from fusion.demo.assets import write_manifest

    assets = tmp_path / "assets"
    assets.mkdir()
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(assets / "net.safetensors"))
    (assets / "net.yaml").write_text("arch: {d_model: 8}\n")
    write_manifest(assets, {"image_size": 128})
    config = {
        "name": "t",
        "members": [{"name": "net", "type": "detr", "checkpoint": ASSET_PREFIX + "net.safetensors"}],
    }
    return assets, demo_config(assets, config)[1]


def test_demo_config_points_into_the_assets_folder(small) -> None:
    assets, named = small
    config = {"name": "t", "classes": "shapes", "members": [{"name": "n", "type": "detr", "model": "detr_tiny",
              "checkpoint": ASSET_PREFIX + "net.safetensors"}]}  # fmt: skip
    data, named = demo_config(assets, config)
    assert named == ["net.safetensors"]
    assert data["members"][0]["checkpoint"] == str(assets.resolve() / "net.safetensors")
    assert data["members"][0]["model"] == "detr_tiny" and data["classes"] == "shapes"  # not asset paths


def test_manifest_refuses_a_missing_file_by_name(small) -> None:
    assets, named = small
    assert verify_assets(assets, named)["files"]  # intact folder passes
    (assets / "net.yaml").unlink()  # a companion file the config does not name is checked too
    with pytest.raises(AssetMissingError, match=r"net\.yaml is missing.*fusion demo --retrain.*--simulated"):
        verify_assets(assets, named)


def test_manifest_refuses_a_changed_file(small) -> None:
    assets, named = small
    weights = assets / "net.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, one bit flipped in a weight
    weights.write_bytes(bytes(data))
    with pytest.raises(AssetMismatchError, match=r"net\.safetensors does not match MANIFEST\.json"):
        verify_assets(assets, named)


def test_manifest_refuses_a_file_it_does_not_list(small) -> None:
    assets, named = small
    with pytest.raises(AssetMismatchError, match=r"names fusion/assets/models/other\.safetensors"):
        verify_assets(assets, [*named, "other.safetensors"])


def test_manifest_records_sha256_and_budget(small) -> None:
    from fusion.demo.assets import write_manifest

    assets, _ = small
    manifest = json.loads((assets / MANIFEST).read_text())
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((assets / name).read_bytes()).hexdigest()
        assert entry["bytes"] == (assets / name).stat().st_size
    assert set(manifest["files"]) == {"net.safetensors", "net.yaml"}
    assert manifest["recorded"] == {"image_size": 128}
    with pytest.raises(ValueError, match="over the 0 MiB budget"):
        write_manifest(assets, max_bytes=16)


def test_fp16_packaging_halves_floats_and_keeps_other_tensors(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from fusion.demo.assets import half_safetensors

    path = tmp_path / "w.safetensors"
    big = torch.tensor([1.0e6, -1.0e6, 0.1])
    save_file({"w": big, "n": torch.tensor([3], dtype=torch.int64)}, str(path))
    half_safetensors(path)
    state = load_file(str(path))
    assert state["w"].dtype == torch.float16 and state["n"].dtype == torch.int64 and state["n"].item() == 3
    assert state["w"].tolist() == [65504.0, -65504.0, pytest.approx(0.1, abs=1e-4)]


def test_demo_test_split_is_deterministic(tmp_path: Path) -> None:
    """Same seed -> same bytes; image i does not depend on the split size; another seed -> other images."""
    from fusion.synthetic import render_dataset

    def files(folder: Path, seed: int, count: int) -> dict[str, bytes]:
        render_dataset(folder, seed=seed, splits={"test": count})
        root = folder / "test"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))} | {
            "annotations": (root / "annotations.json").read_bytes()
        }

    first, again = files(tmp_path / "a", 11, 3), files(tmp_path / "b", 11, 3)
    assert first == again
    shorter = files(tmp_path / "c", 11, 2)
    assert all(first[name] == data for name, data in shorter.items() if name != "annotations")
    other = files(tmp_path / "d", 12, 3)
    assert all(other[name] != data for name, data in first.items() if name != "annotations")


def test_ultralytics_members_need_the_safe_weights_field() -> None:
    if not ultralytics_takes_weights():
        pytest.skip(
            "the ultralytics member has no `weights:` field on this branch (h-safety adds model YAML + "
            "safetensors loading); the demo's YOLO members need it"
        )
    from fusion.config import load_ensemble_config
    from fusion.demo.assets import ASSETS_DIR

    data, named = demo_config(ASSETS_DIR)
    config = load_ensemble_config(data)  # the shipped demo config validates with every adapter
    assert {m.name for m in config.members} >= {"yolo11n", "yolov8n", "ssdlite", "detr"}
    assert all(name.endswith((".safetensors", ".yaml")) for name in named)


def test_simulated_and_retrain_exclude_each_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--simulated", "--retrain", "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fusion demo: error: --simulated and --retrain exclude each other"
    assert not (tmp_path / "w").exists()
