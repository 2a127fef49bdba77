"""Cal-DETR pieces against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from detectors.detr import build_detr, modulate_logits, nested_batch, query_uncertainty
from detectors.detr.training import logit_mixing_loss


def test_uncertainty_is_the_variance_over_decoder_layers_by_hand() -> None:
    model = build_detr("detr_tiny", num_classes=3, dropout=0.0, dec_layers=4).eval()
    images, mask = nested_batch([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    with torch.no_grad():
        out = model(images, mask)
    u = query_uncertainty(out)
    layers = [a["pred_logits"] for a in out["aux_outputs"]] + [out["pred_logits"]]
    assert len(layers) == 4
    for b, q, c in [(0, 0, 0), (1, 7, 3), (0, 9, 2)]:
        values = [float(z[b, q, c]) for z in layers]
        mean = sum(values) / 4
        assert float(u[b, q, c]) == pytest.approx(
            sum((v - mean) ** 2 for v in values) / 4, rel=1e-4, abs=1e-7
        )
    assert u.shape == out["pred_logits"].shape


def test_modulation_is_the_papers_formula_and_wired_into_the_model() -> None:
    z, u = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 1.0, 3.0])
    expected = [2.0, -1.0 * (1 - math.tanh(1.0)), 0.5 * (1 - math.tanh(3.0))]
    torch.testing.assert_close(modulate_logits(z, u), torch.tensor(expected))
    # Not the released code's z - tanh(u):
    assert not torch.allclose(modulate_logits(z, u), z - torch.tanh(u))
    plain = build_detr("detr_tiny", num_classes=3, dropout=0.0).eval()
    calibrated = build_detr("detr_tiny", num_classes=3, dropout=0.0, uncertainty_modulation=True).eval()
    calibrated.load_state_dict(plain.state_dict())
    images, mask = nested_batch([torch.rand(3, 64, 64)])
    with torch.no_grad():
        raw, mod = plain(images, mask), calibrated(images, mask)
    torch.testing.assert_close(
        mod["pred_logits"], modulate_logits(raw["pred_logits"], query_uncertainty(raw))
    )
    torch.testing.assert_close(mod["pred_boxes"], raw["pred_boxes"])


def test_logit_mixing_loss_hand_computed() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    lam = 0.9
    proto = [1.0, 0.5, -0.5]
    total = 0.0
    for i, target in enumerate([[0.95, 0.05, 0.0], [0.05, 0.95, 0.0]]):
        mixed = [lam * logits[i, c].item() + (1 - lam) * proto[c] for c in range(3)]
        log_z = math.log(sum(math.exp(m) for m in mixed))
        total += -sum(t * (m - log_z) for t, m in zip(target, mixed))
    assert float(logit_mixing_loss(logits, labels, lam)) == pytest.approx(total / 2, rel=1e-6)
    assert float(logit_mixing_loss(logits[:0], labels[:0])) == 0.0
