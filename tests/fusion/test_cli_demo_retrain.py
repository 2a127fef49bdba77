"""``fusion demo --retrain``: steps run once and resume by fingerprint; packaging names, fp16 and the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from fusion.demo.assets import ASSET_PREFIX, MANIFEST, verify_assets
from fusion.demo.retrain import StepFailedError, _package, _Steps


def _action(out: Path, calls: list[str], text: str):
    def act(fingerprint: str) -> list[Path]:
        calls.append(fingerprint)
        out.write_text(text)
        return [out]

    return act


def test_a_done_step_is_skipped_and_reruns_when_inputs_or_outputs_change(tmp_path: Path) -> None:
    out, calls = tmp_path / "out.txt", []
    steps = _Steps(tmp_path / "work", dry_run=False)
    first = steps.run("s", {"config": "a"}, _action(out, calls, "x"))
    again = steps.run("s", {"config": "a"}, _action(out, calls, "x"))
    assert len(calls) == 1 and first == again  # skipped: same inputs, intact outputs
    record = json.loads((tmp_path / "work" / "steps" / "s.json").read_text())
    assert record["outputs"] == {str(out): hashlib.sha256(b"x").hexdigest()}
    assert record["wall_s"] >= 0
    steps.run("s", {"config": "b"}, _action(out, calls, "x"))  # other inputs -> runs again
    assert len(calls) == 2 and calls[0] != calls[1]
    out.write_text("tampered")
    steps.run("s", {"config": "b"}, _action(out, calls, "y"))  # outputs changed -> runs again
    assert len(calls) == 3
    changed = steps.run("s", {"config": "b"}, _action(out, calls, "y"))
    assert len(calls) == 3 and changed != first  # the downstream digest follows the outputs
    assert [status for _, _, status in steps.table] == ["ran", "skipped", "ran", "ran", "skipped"]


def test_only_runs_the_selected_steps_and_waits_for_upstream(tmp_path: Path) -> None:
    up, down, calls = tmp_path / "up.txt", tmp_path / "down.txt", []
    left = _Steps(tmp_path / "work", dry_run=False, only=["down"])
    assert left.run("up", {}, _action(up, calls, "u")) is None and calls == []  # not selected, not done
    assert left.run("side", {}, _action(down, calls, "d"), {"up": None}) is None  # waits, not selected
    with pytest.raises(StepFailedError, match=r"step down needs its upstream steps \(up\) done first"):
        left.run("down", {}, _action(down, calls, "d"), {"up": None})
    digest = _Steps(tmp_path / "work", dry_run=False, only=["up"]).run("up", {}, _action(up, calls, "u"))
    assert len(calls) == 1
    reused = _Steps(tmp_path / "work", dry_run=False, only=["down"]).run("up", {}, _action(up, calls, "u"))
    assert reused == digest and len(calls) == 1  # a done step feeds its downstream though not selected
    _Steps(tmp_path / "work", dry_run=False, only=["down"]).run(
        "down", {}, _action(down, calls, "d"), {"up": digest}
    )
    assert len(calls) == 2 and down.read_text() == "d"


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    out, calls = tmp_path / "out.txt", []
    steps = _Steps(tmp_path / "work", dry_run=True)
    steps.run("s", {}, _action(out, calls, "x"))
    assert calls == [] and not out.exists() and steps.table[0][2] == "to do"


def _run(folder: Path, fields: dict, files: dict[str, bytes | dict]) -> Path:
    weights = folder / "weights"
    weights.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, dict):
            save_file(content, str(weights / name))
        else:
            (weights / name).write_bytes(content)
    member = {k: str(weights / v) if v in files else v for k, v in fields.items()}
    (weights / "best.member.yaml").write_text(yaml.safe_dump(member))
    return folder


def test_package_copies_exports_under_the_configs_names_in_fp16(tmp_path: Path) -> None:
    w = torch.linspace(-1, 1, 12).reshape(3, 4)
    sources = {
        "tv": _run(
            tmp_path / "tv",
            {"type": "torchvision", "weights": "best.safetensors", "classes": "best.classes.yaml"},
            {
                "best.safetensors": {"w": w, "n": torch.tensor([7])},
                "best.classes.yaml": b"names: {1: circle}\n",
            },
        ),
        "detr": _run(
            tmp_path / "detr",
            {"type": "detr", "checkpoint": "best.safetensors", "score_thr": 0.01},
            {"best.safetensors": {"w": w}, "best.yaml": b"arch: {d_model: 8}\n"},
        ),
    }
    config = tmp_path / "demo.yaml"
    members = [
        {"name": "tv", "type": "torchvision", "weights": ASSET_PREFIX + "tv.safetensors",
         "classes": ASSET_PREFIX + "tv.classes.yaml"},
        {"name": "detr", "type": "detr", "checkpoint": ASSET_PREFIX + "detr.safetensors"},
    ]  # fmt: skip
    config.write_text(yaml.safe_dump({"name": "d", "members": members}))
    assets = tmp_path / "assets"
    packaged = _package(assets, sources, config)
    names = {p.name for p in packaged}
    assert names == {"tv.safetensors", "tv.classes.yaml", "detr.safetensors", "detr.yaml"}
    state = load_file(str(assets / "tv.safetensors"))
    assert state["w"].dtype == torch.float16 and state["n"].tolist() == [7]
    torch.testing.assert_close(state["w"].float(), w, atol=1e-3, rtol=0)
    # the DETR architecture file travels along with its weights
    assert (assets / "detr.yaml").read_text() == "arch: {d_model: 8}\n"
    assert set(verify_assets(assets, ["tv.safetensors", "detr.safetensors"])["files"]) == names
    assert (assets / MANIFEST).is_file()
    members.append({"name": "x", "type": "detr", "checkpoint": ASSET_PREFIX + "x.safetensors"})
    config.write_text(yaml.safe_dump({"name": "d", "members": members}))
    with pytest.raises(StepFailedError, match=r"names \['x.safetensors'\], which no export produced"):
        _package(assets, sources, config)


def test_smoke_never_writes_into_the_shipped_folder(tmp_path: Path) -> None:
    from fusion.demo.retrain import retrain

    with pytest.raises(ValueError, match="--smoke writes toy members"):
        retrain(tmp_path, smoke=True)


def test_the_teacher_fuses_the_trained_members_as_its_template_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion.demo import retrain

    fused = retrain._teacher_fusion()
    assert set(fused["weights"]) == set(retrain.TRAINED) and fused["fusion"]["type"] == "wbf"
    template = yaml.safe_load(retrain.TEACHER_TEMPLATE.read_text())
    template["members"] = template["members"][::-1]
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(template))
    monkeypatch.setattr(retrain, "TEACHER_TEMPLATE", path)
    with pytest.raises(StepFailedError, match=r"members must be \['yolo11n', 'yolov8n', 'ssdlite', 'detr'\]"):
        retrain._teacher_fusion()
