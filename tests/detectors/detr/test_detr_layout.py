"""Our DETR's state-dict layout equals the official facebookresearch/detr checkpoints', both ways."""

from __future__ import annotations

import json
import math

import pytest
import torch
from official_layout import DATA, all_layouts

from detectors.detr import build_detr, load_official

SPEC = json.loads(DATA.read_text())


def test_layout_data_matches_its_generator_and_published_sizes() -> None:
    assert all_layouts() == SPEC
    r50 = SPEC["detr_resnet50"]
    assert len(r50) == 458  # ANCHORS: 458 tensors
    frozen_bn = ("running_mean", "running_var")
    params = sum(
        math.prod(shape)
        for key, shape in r50.items()
        # FrozenBatchNorm2d weight/bias are buffers, not parameters.
        if not key.endswith(frozen_bn) and not (".bn" in key or "downsample.1" in key)
    )
    assert round(params / 1e6, 1) == 41.5  # ANCHORS: 41.5M parameters


@pytest.fixture(scope="module")
def r50() -> torch.nn.Module:
    return build_detr("detr_resnet50", num_classes=91).eval()


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_r50_state_dict_equals_official_layout(r50: torch.nn.Module) -> None:
    ours = _shapes(r50)
    assert sorted(set(ours) - set(SPEC["detr_resnet50"])) == []
    assert sorted(set(SPEC["detr_resnet50"]) - set(ours)) == []
    assert ours == SPEC["detr_resnet50"]
    assert list(ours) == list(SPEC["detr_resnet50"])  # even the order of the official __init__


def test_official_state_dict_loads_strictly_and_runs(r50: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    official = {
        k: torch.randn(shape, generator=generator) * 0.02 for k, shape in SPEC["detr_resnet50"].items()
    }
    for key in official:  # positive BN variances, as in a real checkpoint
        if key.endswith("running_var"):
            official[key] = official[key].abs() + 1.0
    result = r50.load_state_dict(official, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    state = r50.state_dict()
    for key in (
        "transformer.decoder.norm.weight",
        "backbone.0.body.layer4.2.bn3.running_var",
        "query_embed.weight",
    ):
        torch.testing.assert_close(state[key], official[key], rtol=0, atol=0)
    # Some official dumps carry num_batches_tracked (plain BN at save time); frozen BN ignores it.
    with_counts = {**official, "backbone.0.body.bn1.num_batches_tracked": torch.tensor(0)}
    r50.load_state_dict(with_counts, strict=True)
    with torch.no_grad():
        out = r50(torch.randn(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, 100, 92) and out["pred_boxes"].shape == (1, 100, 4)
    assert len(out["aux_outputs"]) == 5
    assert torch.all((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1))


def test_missing_or_extra_official_key_is_refused(r50: torch.nn.Module) -> None:
    state = {k: torch.zeros(s) for k, s in SPEC["detr_resnet50"].items()}
    del state["transformer.decoder.norm.weight"]
    with pytest.raises(RuntimeError, match=r"transformer\.decoder\.norm\.weight"):
        r50.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", ["detr_resnet101", "detr_resnet50_dc5", "detr_resnet101_dc5"])
def test_other_official_layouts(name: str) -> None:
    model = build_detr(name)
    assert _shapes(model) == SPEC[name]
    if name.endswith("dc5"):  # dilated C5: stride 16 instead of 32
        with torch.no_grad():
            features, _, _ = model.backbone(
                torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
            )
        assert features.shape[-2:] == (4, 4)


def test_official_pth_round_trip_with_weights_only(tmp_path) -> None:
    tiny = build_detr("detr_tiny", num_classes=91)
    path = tmp_path / "detr-tiny.pth"
    torch.save({"model": tiny.state_dict(), "args": {"lr": 1e-4}}, path)
    loaded = load_official(path, "detr_tiny", num_classes=91)
    for key, value in tiny.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
