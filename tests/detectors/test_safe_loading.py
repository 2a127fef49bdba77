"""No code runs from a model file: pickles are refused before unpickling; safetensors YOLO members load strictly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from detectors.detr.checkpoint import read_pth_state_dict
from detectors.safe_loading import (
    UntrustedPickleError,
    WeightsFileError,
    pickle_trust,
    read_safetensors,
    read_weights_only,
)
from detectors.torchvision_detector import TorchvisionDetector
from detectors.ultralytics_detector import UltralyticsDetector, import_ultralytics
from fusion.classes import ClassMap
from fusion.cli import main
from fusion.io import sha256_file

COCO80 = ClassMap.load("coco80")


class _Payload:
    """Unpickling this runs ``touch <marker>``: the S1 attack of issue 13."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """``(evil.pt, marker)``: a torch.save pickle that creates ``marker`` when unpickled."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, path)
    return path, marker


def test_s1_predict_refuses_the_pickle_and_runs_nothing(
    evil: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, marker = evil
    config = tmp_path / "s.yaml"
    config.write_text(
        f"name: s\nmembers:\n- {{name: y, type: ultralytics, model: {path}}}\n"  # as issue 13 wrote it
    )
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--config", str(config), str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "member 'y': refusing to load" in err and "it is a pickle" in err and "trust_pickle" in err
    assert "Traceback" not in err
    assert not marker.exists()


def test_the_payload_is_live_when_trusted(evil: tuple[Path, Path]) -> None:
    # The refusal above is what keeps the marker away: with the opt-in, unpickling runs the payload.
    path, marker = evil
    config = UltralyticsDetector.Config(name="y", model=str(path), classes="coco80", trust_pickle=True)
    with pytest.raises(Exception):  # noqa: B017 - ultralytics then fails on a non-model; the point is the marker
        UltralyticsDetector(config, COCO80, torch.device("cpu"))
    assert marker.exists()


def test_a_known_sha256_is_allowed_and_only_that(evil: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = evil
    digest = sha256_file(path)
    assert (
        pickle_trust(path, False, "m", known={digest: "a vouched-for file"})
        == "known pickle (a vouched-for file)"
    )
    with pytest.raises(UntrustedPickleError, match="m: refusing to load"):
        pickle_trust(path, False, "m", known={"0" * 64: "another file"})
    assert pickle_trust(path, True, "m", known={}) == "trusted pickle (trust_pickle: true)"


def test_weights_only_reader_refuses_objects_and_names_non_torch_files(
    evil: tuple[Path, Path], tmp_path: Path
) -> None:
    path, marker = evil
    with pytest.raises(
        UntrustedPickleError, match=r"DETR checkpoint: refusing to load .*evil\.pt: it holds Python"
    ):
        read_pth_state_dict(path)
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(WeightsFileError, match=r"DETR checkpoint: .*passwd is not a torch\.save file"):
        read_pth_state_dict(text)
    with pytest.raises(WeightsFileError, match=r"w: .*passwd is not a valid \.safetensors file"):
        read_safetensors(text, "w")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_weights_only(tmp_path / "none.pth", "w")
    assert not marker.exists()
    state = {"a": torch.arange(3.0)}
    torch.save(state, tmp_path / "plain.pth")
    assert torch.equal(read_weights_only(tmp_path / "plain.pth", "w")["a"], state["a"])  # type: ignore[index]


def test_torchvision_weights_file_with_objects_is_refused(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    config = TorchvisionDetector.Config(name="tv", model="ssdlite320_mobilenet_v3_large", weights=str(path))
    with pytest.raises(UntrustedPickleError, match="refusing to load"):
        TorchvisionDetector(config, COCO80, torch.device("cpu"))
    assert not marker.exists()


NAMES = ["person", "car", "dog"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A 3-class YOLO exported as h-yolo exports trained ones: a model YAML with nc and names + safetensors."""
    import_ultralytics()
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("export")
    spec = {**YOLO("yolo11n.yaml", verbose=False).model.yaml, "nc": 3, "names": NAMES}
    spec.pop("yaml_file", None)
    model_yaml = folder / "yolo11n-3.yaml"
    model_yaml.write_text(yaml.safe_dump(spec))
    torch.manual_seed(3)
    network = YOLO(str(model_yaml), verbose=False).model
    with torch.no_grad():
        for param in network.parameters():
            param.add_(torch.randn_like(param) * 0.01)  # weights that differ from any fresh init
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    weights = folder / "yolo11n-3.safetensors"
    save_file(state, weights)
    return model_yaml, weights, state


def test_safetensors_member_loads_strictly_with_its_names(
    exported: tuple[Path, Path, dict[str, torch.Tensor]],
) -> None:
    model_yaml, weights, state = exported
    config = UltralyticsDetector.Config(name="y", model=str(model_yaml), weights=str(weights), imgsz=64)
    torch.manual_seed(99)  # a different init: only the loaded weights can make the states equal
    det = UltralyticsDetector(config, COCO80, torch.device("cpu"))
    assert det.load_mode == "safetensors"
    loaded = det.model.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert list(det.source_classes.names) == NAMES
    assert det.lookup.tolist() == [COCO80.index("person"), COCO80.index("car"), COCO80.index("dog")]
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    from fusion.images import load_images

    assert len(det.predict(load_images([image]))) == 1


def test_safetensors_that_do_not_fit_are_an_error(
    exported: tuple[Path, Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    model_yaml, _, state = exported
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("model.23.")}, partial)
    config = UltralyticsDetector.Config(name="y", model=str(model_yaml), weights=str(partial))
    with pytest.raises(
        ValueError,
        match=r"member 'y': weights .*partial\.safetensors for .* do not fit: \d+ missing keys \(first: model\.23\.",
    ):
        UltralyticsDetector(config, COCO80, torch.device("cpu"))
    (tmp_path / "x.pt").write_bytes(b"")
    pt_with_weights = UltralyticsDetector.Config(
        name="y", model=str(tmp_path / "x.pt"), weights=str(partial), trust_pickle=True
    )
    with pytest.raises(ValueError, match="weights applies to a model .yaml"):
        UltralyticsDetector(pt_with_weights, COCO80, torch.device("cpu"))


def test_check_reports_each_members_loading_mode(
    exported: tuple[Path, Path, dict[str, torch.Tensor]],
    evil: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_yaml, weights, _ = exported
    path, marker = evil
    members = [
        {"name": "safe", "type": "ultralytics", "model": str(model_yaml), "weights": str(weights)},
        {"name": "fresh", "type": "ultralytics", "model": "yolo11n.yaml", "classes": "coco80"},
        {"name": "evil", "type": "ultralytics", "model": str(path)},
        {"name": "trusted", "type": "ultralytics", "model": str(path), "trust_pickle": True},
        {"name": "tv", "type": "torchvision", "model": "ssd300_vgg16", "weights": str(path)},
        {"name": "tv0", "type": "torchvision", "model": "ssd300_vgg16", "weights": None},
        {
            "name": "gone",
            "type": "ultralytics",
            "model": str(model_yaml),
            "weights": str(tmp_path / "x.safetensors"),
        },
    ]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "c", "members": members}))
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("members of"))
    modes = dict(line.split(None, 1) for line in out[start + 1 :])
    assert modes == {
        "safe": "safetensors",
        "fresh": "random init",
        "evil": "refused: a pickle .pt without trust_pickle (see `weights: <file.safetensors>`)",
        "trusted": "trusted pickle (trust_pickle: true)",
        "tv": "weights_only",
        "tv0": "random init",
        "gone": f"refused: weights file {tmp_path / 'x.safetensors'} does not exist",
    }
    assert not marker.exists()


def test_torchvision_hub_file_needing_unpickling_is_refused_before_torchvision_reads_it(
    evil: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision reads named weights from the hub cache with full unpickling: a planted file must not run
    from torchvision.models import get_model_weights

    path, marker = evil
    url = get_model_weights("ssdlite320_mobilenet_v3_large")["DEFAULT"].url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() follows it
    planted = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    planted.parent.mkdir(parents=True)
    planted.write_bytes(path.read_bytes())
    config = TorchvisionDetector.Config(name="tv", model="ssdlite320_mobilenet_v3_large", weights="DEFAULT")
    assert TorchvisionDetector.loading_mode(config).startswith("weights_only (torchvision DEFAULT")
    with pytest.raises(UntrustedPickleError, match=r"member 'tv': refusing to load .*ssdlite320"):
        TorchvisionDetector(config, COCO80, torch.device("cpu"))
    assert not marker.exists()
