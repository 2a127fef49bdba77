"""The member YAML a training run writes: the inference settings of the training config carry over."""

from __future__ import annotations

import yaml

from fusion.training.external import write_member


def test_member_yaml_keeps_inference_settings_and_the_plugins_files_win(tmp_path) -> None:
    (tmp_path / "best.safetensors").write_bytes(b"x")
    settings = {"type": "ultralytics", "model": "yolo11n.yaml", "conf": 0.001, "imgsz": 128, "arch": {"x": 1}}
    fields = {"type": "ultralytics", "model": "best.yaml", "weights": "best.safetensors"}
    write_member(tmp_path, tmp_path / "m.yaml", "y", fields, settings)
    member = yaml.safe_load((tmp_path / "m.yaml").read_text())
    assert member == {
        "name": "y",
        "type": "ultralytics",
        "model": "best.yaml",  # not a file under tmp_path: kept as the plugin wrote it
        "conf": 0.001,  # scored at the training config's threshold, not the adapter's default 0.25
        "imgsz": 128,
        "weights": str(tmp_path / "best.safetensors"),
    }
