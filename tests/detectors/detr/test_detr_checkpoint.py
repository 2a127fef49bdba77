"""Our checkpoint format (safetensors + YAML) and safe loading of .pth files."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml

from detectors.detr import build_detr, load_checkpoint, load_official, nested_batch, save_checkpoint
from detectors.detr.checkpoint import read_pth_state_dict
from detectors.detr.training import build_student


def test_round_trip_keeps_architecture_weights_and_outputs(tmp_path) -> None:
    teacher = build_detr("detr_tiny", num_classes=3, dropout=0.0, num_heads=8, enc_layers=2, dec_layers=2)
    student = build_student(
        teacher, encoder_layers=1, decoder_layers=1, num_heads=6, dim_feedforward=64
    ).eval()
    path = save_checkpoint(student, tmp_path / "out" / "student.safetensors", classes=["cat", "dog", "car"])
    meta = yaml.safe_load((tmp_path / "out" / "student.yaml").read_text())
    assert (
        meta["arch"]["num_heads"] == 6
        and meta["arch"]["head_dim"] == 8
        and meta["classes"] == ["cat", "dog", "car"]
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "student.safetensors",
        "student.yaml",
    ]  # no temp left
    loaded, classes = load_checkpoint(path)
    assert classes == ["cat", "dog", "car"] and loaded.config == student.config
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images, mask = nested_batch([torch.rand(3, 64, 64)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, mask)["pred_logits"], student(images, mask)["pred_logits"])


def test_missing_files_are_named(tmp_path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"nothere\.pth.*download https://dl\.fbaipublicfiles\.com/detr/detr-r50"
    ):
        load_official(tmp_path / "nothere.pth")
    model = build_detr("detr_tiny", num_classes=2)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    path.with_suffix(".yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"m\.yaml"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_checkpoint(model, tmp_path / "m.pt")


def test_yaml_with_unknown_key_or_wrong_arch_is_refused(tmp_path) -> None:
    path = save_checkpoint(build_detr("detr_tiny", num_classes=2), tmp_path / "m.safetensors")
    meta = yaml.safe_load(path.with_suffix(".yaml").read_text())
    meta["arch"]["heads"] = 4
    path.with_suffix(".yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(ValueError, match=r"m\.yaml.*unknown DETR architecture keys \['heads'\]"):
        load_checkpoint(path)
    del meta["arch"]["heads"]
    meta["arch"]["num_classes"] = 5
    path.with_suffix(".yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pth_is_read_with_weights_only(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        read_pth_state_dict(path)
    tiny = build_detr("detr_tiny", num_classes=91)
    with pytest.raises(ValueError, match=r"does not fit architecture 'detr_tiny' \(num_classes=80\)"):
        torch.save({"model": tiny.state_dict()}, tmp_path / "ok.pth")
        load_official(tmp_path / "ok.pth", "detr_tiny", num_classes=80)
