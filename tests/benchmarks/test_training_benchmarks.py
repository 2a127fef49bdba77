"""The training benchmarks' own logic: ablation overrides that build, images/s from step times, trained members."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
ablation = importlib.import_module("_fast_ablation")
common = importlib.import_module("_common")
# Loaded under its own name: `training` could also name a test folder (a namespace package) on sys.path.
_spec = importlib.util.spec_from_file_location("bench_training", BENCH / "training.py")
training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(training)


@pytest.mark.parametrize("variant", ablation.VARIANTS, ids=lambda v: v.name)
def test_ablation_overrides_make_a_valid_detr(variant: ablation.Variant) -> None:
    """Every variant's overrides validate as a training config and give a DETR architecture that builds."""
    from detectors.detr.model import PRESETS, DetrConfig
    from fusion.training.config import load_train_config

    missing = ablation.missing_options(variant)
    if missing:
        pytest.skip(f"this checkout lacks {missing}")
    data = {s: (Path(f"{s}.json"), Path(s)) for s in ("train", "val")}
    cfg = load_train_config(
        common.ROOT / "configs/train/detr.yaml", [*ablation.base_overrides(data, 4, 10), *variant.overrides]
    )
    assert cfg.train.schedule == "step" and cfg.train.milestones == [] and cfg.train.eval_every == 0
    arch = DetrConfig(**{**PRESETS[cfg.model.model], "num_classes": 8, **cfg.model.arch})
    for override in variant.overrides:
        key, _, value = override.partition("=")
        if key.startswith("model.arch."):
            got = getattr(arch, key.removeprefix("model.arch."))
            assert (list(got) if isinstance(got, tuple) else got) == yaml.safe_load(value), override


def test_missing_options_names_absent_fields() -> None:
    variant = ablation.Variant("x", "x", (), preset="no_such_preset", fields=("no_such_field", "d_model"))
    assert ablation.missing_options(variant) == ["preset no_such_preset", "DetrConfig.no_such_field"]


def test_images_per_second_skips_warmup(tmp_path: Path) -> None:
    records = [{"kind": "step", "step": s, "time": t} for s, t in [(1, 100.0), (2, 105.0), (3, 106.0), (4, 107.0),
                                                                  (5, 108.5)]]  # fmt: skip
    records.insert(2, {"kind": "eval", "step": 2, "time": 105.5})
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "st')  # a torn last line
    rate, steps = training._images_per_second(path, batch=8, skip=2)
    assert steps == 5
    assert rate == pytest.approx((5 - 3) * 8 / (108.5 - 106.0))


def test_trained_member_keeps_inference_settings(tmp_path: Path) -> None:
    """An exported ultralytics member keeps the training config's conf; the export's files win."""
    (tmp_path / "weights").mkdir()
    model = {"name": "yolo", "type": "ultralytics", "model": "yolo11n.yaml", "conf": 0.001, "imgsz": 128}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"name": "yolo", "model": model}))
    exported = {"name": "yolo", "type": "ultralytics", "model": "w/best.yaml", "weights": "w/best.safetensors",
                "imgsz": 160}  # fmt: skip
    (tmp_path / "weights" / "best.member.yaml").write_text(yaml.safe_dump(exported))
    member = common.trained_member(tmp_path, "renamed")
    assert member == {**exported, "conf": 0.001, "name": "renamed"}


def test_ddp_subset_keeps_the_first_images_and_only_their_boxes(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"{i}.png", "height": 8, "width": 8} for i in (7, 3, 5)]
    boxes = [{"id": k, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
             for k, i in enumerate((7, 3, 3, 5), start=1)]  # fmt: skip
    source = tmp_path / "train.json"
    source.write_text(
        json.dumps({"images": images, "annotations": boxes, "categories": [{"id": 1, "name": "a"}]})
    )
    subset = training._first_images(source, 2, tmp_path / "first.json")
    data = json.loads(subset.read_text())
    assert [image["id"] for image in data["images"]] == [7, 3]
    assert [box["id"] for box in data["annotations"]] == [1, 2, 3]
    assert training._first_images(source, 3, tmp_path / "all.json") == source  # nothing to cut
