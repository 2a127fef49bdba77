"""Parity with an independent implementation: Hugging Face ``transformers``' ``DetrForObjectDetection``.

Our random weights are renamed into their layout by our own mapping (``benchmarks/detr_transformers.py``),
loaded strictly, and both models run the same padded batch of two images of different sizes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from detectors.detr import build_detr, nested_batch

pytest.importorskip("transformers")

_PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "detr_transformers.py"
_spec = importlib.util.spec_from_file_location("detr_transformers", _PATH)
twin_module = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("detr_transformers", twin_module)
_spec.loader.exec_module(twin_module)


def _randomise_frozen_batch_norm(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial frozen BN statistics (random init leaves them 0/1), so a mis-mapped BN buffer shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_var") or name.endswith(".weight"):
                buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5)
            else:
                buffer.copy_(torch.randn(buffer.shape, generator=g) * 0.1)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("detr_tiny", {}),  # basic ResNet blocks
        # bottleneck blocks with the official 8 heads on a small transformer
        pytest.param(
            "detr_resnet50",
            {"d_model": 64, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 64, "num_queries": 7},
            marks=pytest.mark.slow,
        ),
    ],
)
def test_outputs_equal_transformers_detr(name: str, overrides: dict) -> None:
    torch.manual_seed(0)
    ours = build_detr(name, num_classes=4, dropout=0.0, **overrides).eval()
    _randomise_frozen_batch_norm(ours, seed=1)
    theirs = twin_module.transformers_twin(ours)
    images, mask = nested_batch([torch.rand(3, 64, 96), torch.rand(3, 80, 64)])
    assert mask.any(), "the batch must contain padding"
    with torch.no_grad():
        mine = ours(images, mask)
        twin = theirs(pixel_values=images, pixel_mask=(~mask).long())
    torch.testing.assert_close(mine["pred_logits"], twin.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine["pred_boxes"], twin.pred_boxes, rtol=0, atol=1e-6)
    # The padded image's outputs depend on its mask: without it they differ, so the mask path is compared.
    with torch.no_grad():
        unmasked = theirs(pixel_values=images).logits
    assert (unmasked[1] - twin.logits[1]).abs().max() > 1e-3


def test_mapping_covers_every_key_once() -> None:
    ours = build_detr("detr_tiny", num_classes=2)
    mapped = twin_module.transformers_state_dict(ours.state_dict())
    packed = [k for k in ours.state_dict() if ".in_proj_" in k]
    assert len(mapped) == len(ours.state_dict()) + 2 * len(packed)  # each packed q/k/v becomes three
    with pytest.raises(KeyError, match="no transformers name"):
        twin_module.transformers_state_dict({"backbone.0.body.fc.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="DC5"):
        twin_module.transformers_config(
            build_detr("detr_resnet50", dilation=True, enc_layers=0, dec_layers=1).config
        )
