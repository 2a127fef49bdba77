"""The fast DETR through ``DetrDetector.trainable``: focal criterion, denoising targets, sigmoid predictions."""

from __future__ import annotations

import pytest
import torch

from detectors.detr import nested_batch, postprocess
from detectors.detr.adapter import DetrMemberConfig
from detectors.detr.training.fast_losses import FocalSetCriterion, GroupSetLoss
from fusion.classes import ClassMap
from fusion.registry import DETECTORS

CLASSES = ClassMap(["circle", "square", "triangle"])
SMALL = {"num_queries": 20, "d_model": 64, "dim_feedforward": 128, "dec_layers": 2}


def _trainable(
    arch: dict[str, object],
    loss: dict[str, float] | None = None,
    model: str = "detr_fast_r18",
    score_thr: float = 0.0,
):
    member = DetrMemberConfig(
        name="fast", model=model, arch=arch, loss=loss or {}, min_size=None, score_thr=score_thr
    )
    return DETECTORS.get("detr").trainable(member, CLASSES, torch.device("cpu"))


def _data() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 96, 64, generator=g)]
    targets = [
        {"boxes": torch.tensor([[8.0, 16.0, 40.0, 48.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[30.0, 40.0, 60.0, 90.0], [2.0, 2.0, 20.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
        },
    ]
    return images, targets


def test_fast_trainable_loss_is_the_weighted_focal_criterion_with_denoising() -> None:
    torch.manual_seed(0)
    trainable = _trainable({**SMALL, "denoising_groups": 2}, {"weight_focal": 3.0, "cost_class": 1.0})
    criterion = trainable.criterion
    assert isinstance(criterion, FocalSetCriterion) and criterion.weights["loss_focal"] == 3.0
    assert criterion.matcher.focal_cost_class == 1.0
    images, targets = _data()
    torch.manual_seed(1)
    losses = trainable.loss(images, targets)
    assert {"loss_focal_dn", "loss_giou_enc", "loss_bbox_0"} <= set(losses)  # denoising got the targets
    batch, mask = nested_batch(images)
    normalised = trainable._normalised_targets(images, targets)
    torch.manual_seed(1)  # the same denoising noise
    expected = criterion.weighted(criterion(trainable.model(batch, mask, targets=normalised), normalised))
    assert set(losses) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value)


def test_fast_trainable_predicts_sigmoid_scores() -> None:
    torch.manual_seed(0)
    trainable = _trainable(SMALL)
    images, _ = _data()
    dets = trainable.predict(images)
    batch, mask = nested_batch(images)
    with torch.no_grad():
        outputs = trainable.model.eval()(batch, mask)
    member = trainable.member
    sizes = [(64, 80), (96, 64)]
    expected = postprocess(outputs, sizes, member.score_thr, member.top_k, classification="sigmoid")
    for got, want in zip(dets, expected):
        torch.testing.assert_close(got.scores, want.scores)
    # Sigmoid scores start near the focal prior 0.01: softmax postprocessing would give other scores.
    scores = outputs["pred_logits"][0].sigmoid().max(-1).values
    assert 0.002 < float(scores.max()) < 0.05
    assert len(dets[0]) == int((scores >= member.score_thr).sum())


def test_loss_settings_are_checked_against_the_classification() -> None:
    with pytest.raises(ValueError, match=r"unknown loss settings \['eos_coef'\].*weight_focal"):
        _trainable(SMALL, {"eos_coef": 0.1})
    grouped = _trainable({"dropout": 0.0, "num_queries": 8, "num_query_groups": 2}, model="detr_tiny")
    assert isinstance(grouped.criterion, GroupSetLoss)
    images, targets = _data()
    losses = grouped.loss(images, targets)
    assert "loss_ce_g1" in losses and float(sum(losses.values()).detach()) > 0
