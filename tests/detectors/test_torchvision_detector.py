"""torchvision adapter: exact parity with the model's own output, label mapping by name, offline weight errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.labels import label_lookup, map_labels
from detectors.safe_loading import UntrustedPickleError
from detectors.torchvision_detector import TorchvisionDetector, hub_checkpoint_dir, load_state_dict_file
from fusion.classes import ClassMap
from fusion.config import ConfigError, load_ensemble_config
from fusion.detections import Detections
from fusion.images import load_images

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
COCO80 = ClassMap.load("coco80")
COCO91 = ClassMap.load("coco91")
# A vocabulary in reversed order: a bug that skips the name translation gives wrong labels, not equal ones.
REVERSED = ClassMap(list(reversed(COCO80.names)))


class _Unsafe:
    """An arbitrary pickled object, which ``weights_only=True`` must refuse to load."""


def _config(**fields: object) -> TorchvisionDetector.Config:
    base = {"name": "tv", "model": MODEL, "weights": None, "score_thr": 0.0, "detections_per_img": 40}
    return TorchvisionDetector.Config(**{**base, **fields})


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("tv_images")
    files = []
    for index, (h, w) in enumerate([(96, 128), (150, 112), (120, 120)]):
        path = folder / f"im{index}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def detector() -> TorchvisionDetector:
    torch.manual_seed(0)
    det = TorchvisionDetector(
        _config(min_size=128, max_size=192, proposals=200), REVERSED, torch.device("cpu")
    )
    # A random backbone's RoI features are ~1e-8, so every box gets the same class and score; scaling the box
    # head's first layer makes them differ, and a bias on three N/A slots makes the model predict ids to drop.
    with torch.no_grad():
        det.model.roi_heads.box_head.fc6.weight.mul_(1e9)
        det.model.roi_heads.box_predictor.cls_score.bias[[12, 26, 83]] += 3
    return det


def _expected_label(coco_id: int) -> int:
    """Hand mapping: COCO id -> name (coco91) -> index in REVERSED; -1 for the unnamed N/A ids."""
    names = dict(zip(COCO91.ids, COCO91.names))
    return REVERSED.names.index(names[coco_id]) if coco_id in names else -1


def test_matches_the_models_own_output_on_mixed_sizes(
    detector: TorchvisionDetector, image_files: list[Path]
) -> None:
    # Reference: the model fed straight from the files, torchvision-style ([0, 1] float CHW).
    reference_inputs = [
        torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) / 255 for p in image_files
    ]
    with torch.inference_mode():
        reference = detector.model(reference_inputs)
    ours = detector.predict(load_images(image_files))
    assert len(ours) == len(image_files)
    total_kept, raw_na = 0, 0
    for out, det, image in zip(reference, ours, reference_inputs):
        expected = torch.tensor([_expected_label(int(i)) for i in out["labels"]], dtype=torch.int64)
        keep = expected >= 0
        raw_na += int((~keep).sum())
        total_kept += int(keep.sum())
        assert det.image_size == tuple(image.shape[1:])
        assert torch.equal(det.boxes, out["boxes"][keep])
        assert torch.equal(det.scores, out["scores"][keep])
        assert torch.equal(det.labels, expected[keep])
    assert total_kept > 0, "the comparison must not be vacuous"
    assert raw_na > 0, "random class biases should produce some N/A ids, which the adapter drops"
    assert len({int(x) for d in ours for x in d.labels}) >= 2


def test_lookup_is_by_name_on_hand_picked_ids() -> None:
    table = label_lookup(COCO91, REVERSED)
    # id 1 person, id 90 toothbrush, id 12 is an N/A slot, id 13 stop sign.
    assert table[1] == REVERSED.names.index("person") == 79
    assert table[90] == 0
    assert table[12] == -1
    assert table[13] == REVERSED.names.index("stop sign")
    det = Detections(
        [[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3], [0, 0, 5, 5]], [0.9, 0.8, 0.7, 0.6], [1, 12, 90, 99]
    )
    mapped = map_labels(det, table)
    assert mapped.labels.tolist() == [79, 0]
    assert mapped.scores.tolist() == pytest.approx([0.9, 0.7])


def test_absent_classes_error_lists_them_and_drop_classes_allows_them() -> None:
    small = ClassMap(["car", "person"])
    with pytest.raises(
        ValueError, match=r"member 'tv': 78 of its classes are not in the ensemble.*'bicycle'"
    ):
        TorchvisionDetector(_config(), small, torch.device("cpu"))
    others = [n for n in COCO91.names if n not in ("car", "person")]
    table = label_lookup(COCO91, small, others, "tv")
    assert table[3] == 0 and table[1] == 1
    assert int((table >= 0).sum()) == 2
    with pytest.raises(
        ValueError, match=r"drop_classes names classes the member does not have: \['unicorn'\]"
    ):
        label_lookup(COCO91, small, [*others, "unicorn"], "tv")


def test_unknown_model_name_is_a_config_error() -> None:
    data = {
        "name": "e",
        "members": [{"name": "a", "type": "torchvision", "model": "fasterrcnn_resnet51_fpn"}],
    }
    with pytest.raises(
        ConfigError, match=r"members\[0\]\.model.*fasterrcnn_resnet50_fpn.*fasterrcnn_resnet51_fpn"
    ):
        load_ensemble_config(data)


def test_missing_named_weight_names_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = hub_checkpoint_dir()
    assert folder == tmp_path / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError) as info:
        TorchvisionDetector(_config(weights="DEFAULT"), COCO80, torch.device("cpu"))
    message = str(info.value)
    assert "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth" in message
    assert str(folder) in message


def test_unknown_weights_name_and_missing_file() -> None:
    with pytest.raises(ValueError, match=r"no weights named 'COCO_V9'; known: COCO_V1, DEFAULT"):
        TorchvisionDetector(_config(weights="COCO_V9"), COCO80, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match=r"weights file /nonexistent/w\.pth does not exist"):
        TorchvisionDetector(_config(weights="/nonexistent/w.pth"), COCO80, torch.device("cpu"))


def test_local_safetensors_file_reproduces_the_model(
    detector: TorchvisionDetector, image_files: list[Path], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in detector.model.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    torch.manual_seed(123)  # a different random init, overwritten by the file
    other = TorchvisionDetector(
        _config(weights=str(path), min_size=128, max_size=192, proposals=200), REVERSED, torch.device("cpu")
    )
    batch = load_images(image_files[:2])
    for a, b in zip(detector.predict(batch), other.predict(batch)):
        assert len(a) > 0 and a == b


def test_pth_file_is_read_with_weights_only_and_unwrapped(tmp_path: Path) -> None:
    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(2)}
    torch.save({"model": state, "epoch": 3}, tmp_path / "w.pth")
    loaded = load_state_dict_file(tmp_path / "w.pth")
    assert sorted(loaded) == ["a.weight", "b.bias"] and torch.equal(loaded["a.weight"], state["a.weight"])
    torch.save({"model": _Unsafe()}, tmp_path / "unsafe.pth")
    with pytest.raises(UntrustedPickleError, match=r"unsafe\.pth: it holds Python objects"):
        load_state_dict_file(tmp_path / "unsafe.pth")


def test_weights_file_that_does_not_fit_is_a_value_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"nope": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match=r"bad\.safetensors does not fit torchvision"):
        TorchvisionDetector(_config(weights=str(path)), COCO80, torch.device("cpu"))


def test_min_size_sets_the_side_of_ssds_fixed_square() -> None:
    from detectors.torchvision_detector import build_model

    config = _config(model="ssdlite320_mobilenet_v3_large", min_size=128, max_size=500)
    model = build_model(config, num_classes=5)
    batch, _ = model.transform([torch.rand(3, 96, 200), torch.rand(3, 300, 150)])
    assert tuple(batch.tensors.shape) == (2, 3, 128, 128)
    assert batch.image_sizes == [(128, 128), (128, 128)]
    own = build_model(_config(model="ssdlite320_mobilenet_v3_large"), num_classes=5)
    assert tuple(own.transform([torch.rand(3, 96, 200)])[0].tensors.shape) == (1, 3, 320, 320)
