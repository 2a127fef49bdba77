"""Focal matching and set loss, encoder and group supervision, against brute force and hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from detectors.detr import DetrConfig, build_detr, postprocess
from detectors.detr.training import SetCriterion
from detectors.detr.training.fast_losses import (
    FocalHungarianMatcher,
    FocalSetCriterion,
    GroupSetLoss,
    criterion_for,
    denoising_indices,
    group_set_loss,
)


def _random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat((centre, size), 1)


def _focal_cost(p: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    return alpha * (1 - p) ** gamma * -math.log(p + 1e-8) - (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)


@pytest.mark.parametrize("seed", range(8))
def test_focal_matcher_equals_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    queries, classes = 5, 3
    outputs = {
        "pred_logits": torch.randn(2, queries, classes, generator=g) * 2,
        "pred_boxes": _random_boxes(10, g).view(2, queries, 4),
    }
    sizes = [3, int(torch.randint(0, 5, (1,), generator=g))]
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=g), "boxes": _random_boxes(n, g)} for n in sizes
    ]
    for image, ((rows, cols), target) in enumerate(zip(FocalHungarianMatcher()(outputs, targets), targets)):
        prob = outputs["pred_logits"][image].sigmoid()
        boxes = outputs["pred_boxes"][image]

        def cost(q: int, t: int, prob=prob, boxes=boxes, target=target) -> float:
            giou = generalized_box_iou(
                box_convert(boxes[q : q + 1], "cxcywh", "xyxy"),
                box_convert(target["boxes"][t : t + 1], "cxcywh", "xyxy"),
            )
            l1 = float((boxes[q] - target["boxes"][t]).abs().sum())
            return 2 * _focal_cost(float(prob[q, target["labels"][t]])) + 5 * l1 - 2 * float(giou[0, 0])

        n = len(target["labels"])
        best = min(
            sum(cost(q, t) for t, q in enumerate(perm)) for perm in itertools.permutations(range(queries), n)
        )
        assert len(rows) == n and sorted(cols.tolist()) == list(range(n))
        assert sum(cost(q, t) for q, t in zip(rows.tolist(), cols.tolist())) == pytest.approx(best, abs=1e-4)


def test_focal_criterion_hand_computed() -> None:
    # Query 0 sits exactly on target 0 (class 1) and query 2 on target 1 (class 0); query 1 is far from both.
    logits = torch.tensor([[[-1.0, 2.0], [0.5, -0.5], [1.0, -2.0]]])
    target_boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]])
    pred_boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.1, 0.9, 0.05, 0.05], [0.72, 0.6, 0.2, 0.3]]])
    targets = [{"labels": torch.tensor([1, 0]), "boxes": target_boxes}]
    losses = FocalSetCriterion(num_classes=2)({"pred_logits": logits, "pred_boxes": pred_boxes}, targets)
    positives = {(0, 1), (2, 0)}
    focal = 0.0
    for q in range(3):
        for c in range(2):
            p = 1 / (1 + math.exp(-float(logits[0, q, c])))
            if (q, c) in positives:
                focal += 0.25 * (1 - p) ** 2 * -math.log(p)
            else:
                focal += 0.75 * p**2 * -math.log(1 - p)
    assert float(losses["loss_focal"]) == pytest.approx(focal / 2, rel=1e-5)
    assert float(losses["loss_bbox"]) == pytest.approx(0.02 / 2, abs=1e-6)
    # Query 2 is target 1 shifted by 0.02 in x: IoU = (0.18·0.3)/(2·0.06 − 0.054), GIoU = IoU (union = hull).
    iou = 0.18 * 0.3 / (2 * 0.06 - 0.18 * 0.3)
    assert float(losses["loss_giou"]) == pytest.approx((1 - iou) / 2, abs=1e-5)
    total = 2 * losses["loss_focal"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    assert float(losses["loss"]) == pytest.approx(float(total), rel=1e-6)


def _layer(g: torch.Generator, queries: int = 4, classes: int = 3) -> dict[str, torch.Tensor]:
    return {
        "pred_logits": torch.randn(1, queries, classes, generator=g),
        "pred_boxes": _random_boxes(queries, g)[None],
    }


def test_every_layer_encoder_and_group_is_supervised_and_summed() -> None:
    g = torch.Generator().manual_seed(0)
    targets = [{"labels": torch.tensor([0, 2]), "boxes": _random_boxes(2, g)}]
    group = {**_layer(g), "aux_outputs": [_layer(g)]}
    outputs = {**_layer(g), "aux_outputs": [_layer(g)], "enc_outputs": _layer(g), "group_outputs": [group]}
    criterion = FocalSetCriterion(num_classes=3)
    losses = criterion(outputs, targets)
    layers = {"": outputs, "_0": outputs["aux_outputs"][0], "_enc": outputs["enc_outputs"], "_g1": group}
    layers["_g1_0"] = group["aux_outputs"][0]
    expected = 0.0
    for suffix, layer in layers.items():
        alone = criterion.layer_losses(layer, targets, 2.0)
        for key, value in alone.items():
            torch.testing.assert_close(losses[key + suffix], value)
            expected += criterion.weights[key] * float(value)
    assert len(losses) == 3 * len(layers) + 1
    assert float(losses["loss"]) == pytest.approx(expected, rel=1e-6)


def test_group_set_loss_sums_any_criterion_over_groups() -> None:
    g = torch.Generator().manual_seed(1)
    targets = [{"labels": torch.tensor([1]), "boxes": _random_boxes(1, g)}]
    groups = [_layer(g, classes=3) for _ in range(3)]  # softmax: 2 classes + no-object
    outputs = {**groups[0], "group_outputs": groups[1:]}
    criterion = SetCriterion(num_classes=2)
    losses = group_set_loss(criterion, outputs, targets)
    expected = sum(float(criterion(group, targets)["loss"]) for group in groups)
    assert float(losses["loss"]) == pytest.approx(expected, rel=1e-6)
    assert "loss_ce_g2" in losses and "loss_ce_g3" not in losses
    wrapped = criterion_for(DetrConfig(num_classes=2, num_query_groups=3))
    assert isinstance(wrapped, GroupSetLoss)
    torch.testing.assert_close(wrapped(outputs, targets)["loss"], losses["loss"])
    assert isinstance(criterion_for(DetrConfig(num_classes=2)), SetCriterion)
    assert isinstance(criterion_for(DetrConfig(classification="sigmoid")), FocalSetCriterion)


def test_focal_criterion_refuses_softmax_logits_and_bad_labels() -> None:
    g = torch.Generator().manual_seed(2)
    targets = [{"labels": torch.tensor([1]), "boxes": _random_boxes(1, g)}]
    with pytest.raises(ValueError, match="classification='sigmoid'"):
        FocalSetCriterion(num_classes=2)(_layer(g, classes=3), targets)
    with pytest.raises(ValueError, match=r"targets\[0\] has label 1 >= 1"):
        FocalSetCriterion(num_classes=1)(_layer(g, classes=1), targets)


def test_sigmoid_postprocess_scores_are_per_class_sigmoids() -> None:
    logits = torch.tensor([[[0.0, 2.0], [-3.0, -1.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]])
    dets = postprocess({"pred_logits": logits, "pred_boxes": boxes}, [(10, 20)], classification="sigmoid")[0]
    torch.testing.assert_close(dets.scores, torch.tensor([2.0, -1.0]).sigmoid())
    assert dets.labels.tolist() == [1, 1]
    torch.testing.assert_close(dets.boxes[0], torch.tensor([8.0, 3.0, 12.0, 7.0]))
    with pytest.raises(ValueError, match="classification"):
        postprocess({"pred_logits": logits, "pred_boxes": boxes}, [(10, 20)], classification="softmax2")


@pytest.mark.slow
def test_fast_detr_overfits_one_image() -> None:
    torch.manual_seed(0)
    model = build_detr(
        "detr_fast_r18", num_classes=3, num_queries=20, d_model=64, dim_feedforward=128
    ).train()
    criterion = FocalSetCriterion(num_classes=3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    image = torch.randn(1, 3, 64, 64) * 0.1
    image[:, :, 8:30, 10:40] = 2.0
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[25 / 64, 19 / 64, 30 / 64, 22 / 64]])}]
    history = []
    for _ in range(30):
        losses = criterion(model(image), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["loss_giou"] < history[0]["loss_giou"]
    assert history[-1]["loss_focal_enc"] < history[0]["loss_focal_enc"]


def test_denoising_losses_use_the_fixed_assignment() -> None:
    g = torch.Generator().manual_seed(3)
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": _random_boxes(2, g)},
        {"labels": torch.tensor([1]), "boxes": _random_boxes(1, g)},
    ]
    indices = denoising_indices(targets, num_groups=2, pad_size=2)
    assert [(q.tolist(), t.tolist()) for q, t in indices] == [([0, 1, 2, 3], [0, 1, 0, 1]), ([0, 2], [0, 0])]
    dn = {
        "pred_logits": torch.randn(2, 4, 3, generator=g),
        "pred_boxes": _random_boxes(8, g).view(2, 4, 4),
    }
    dn["aux_outputs"] = [{k: v + 0.01 for k, v in dn.items()}]
    main = {
        "pred_logits": torch.randn(2, 5, 3, generator=g),
        "pred_boxes": _random_boxes(10, g).view(2, 5, 4),
    }
    criterion = FocalSetCriterion(num_classes=3)
    losses = criterion({**main, "dn_outputs": dn, "dn_meta": {"num_groups": 2, "pad_size": 2}}, targets)
    plain = criterion(main, targets)
    for suffix, layer in (("_dn", dn), ("_dn_0", dn["aux_outputs"][0])):
        expected = criterion.layer_losses(layer, targets, 3.0 * 2, indices)  # 3 boxes x 2 groups
        for key, value in expected.items():
            torch.testing.assert_close(losses[key + suffix], value)
    extra = sum(criterion.weights[k.rsplit("_dn", 1)[0]] * float(v) for k, v in losses.items() if "_dn" in k)
    assert float(losses["loss"]) == pytest.approx(float(plain["loss"]) + extra, rel=1e-6)


def test_box_weights_scale_their_terms_and_the_count() -> None:
    logits = torch.tensor([[[-1.0, 2.0], [0.5, -0.5], [1.0, -2.0]]])
    pred_boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.1, 0.9, 0.05, 0.05], [0.72, 0.6, 0.2, 0.3]]])
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]])
    outputs = {"pred_logits": logits, "pred_boxes": pred_boxes}
    criterion = FocalSetCriterion(num_classes=2)
    plain = criterion(outputs, [{"labels": torch.tensor([1, 0]), "boxes": boxes}])
    ones = criterion(outputs, [{"labels": torch.tensor([1, 0]), "boxes": boxes, "scores": torch.ones(2)}])
    torch.testing.assert_close(ones["loss"], plain["loss"])
    only_second = criterion(
        outputs, [{"labels": torch.tensor([1, 0]), "boxes": boxes, "scores": torch.tensor([0.0, 1.0])}]
    )
    assert float(only_second["loss_bbox"]) == pytest.approx(0.02, abs=1e-6)  # its L1 over a count of 1
    # Query 0 (matched to the weight-0 box) adds nothing to the focal loss: the rest, over a count of 1.
    rest = sum(
        0.25 * (1 - p) ** 2 * -math.log(p) if (q, c) == (2, 0) else 0.75 * p**2 * -math.log(1 - p)
        for q in (1, 2)
        for c in range(2)
        for p in [1 / (1 + math.exp(-float(logits[0, q, c])))]
    )
    assert float(only_second["loss_focal"]) == pytest.approx(rest, rel=1e-5)


def test_group_wrapper_weighs_group_copies_like_their_base_loss() -> None:
    wrapped = GroupSetLoss(SetCriterion(num_classes=2, weight_bbox=5.0, weight_giou=2.0))
    losses = {
        "loss_bbox_g2": torch.tensor(1.0),
        "loss_giou_0_g1": torch.tensor(1.0),
        "loss": torch.tensor(9.0),
    }
    weighted = wrapped.weighted(losses)
    assert {k: float(v) for k, v in weighted.items()} == {"loss_bbox_g2": 5.0, "loss_giou_0_g1": 2.0}
    assert wrapped.matcher is wrapped.criterion.matcher


@pytest.mark.parametrize("matches", [1, 2, 3])
def test_encoder_matches_supervise_k_proposals_per_target(matches: int) -> None:
    # One target; proposals 0 and 1 sit exactly on it, proposal 2 is off by 0.1 in cx, proposal 3 is far away
    # (its L1 to the target is 0.8). One-to-one matching takes one exact proposal; k = 2 both exact ones (box
    # losses 0); k = 3 adds proposal 2: L1 0.1 over a count of 3.
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    proposals = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2]]]
    )
    logits = torch.zeros(1, 4, 2)
    decoder = {"pred_logits": logits, "pred_boxes": proposals}
    outputs = {**decoder, "enc_outputs": dict(decoder)}
    criterion = FocalSetCriterion(num_classes=2, encoder_matches=matches)
    losses = criterion(outputs, [{"labels": torch.tensor([1]), "boxes": target}])
    assert float(losses["loss_bbox"]) == pytest.approx(0.0)  # the decoder layer stays one-to-one
    assert float(losses["loss_bbox_enc"]) == pytest.approx({1: 0.0, 2: 0.0, 3: 0.1 / 3}[matches], abs=1e-6)
    # Every logit is 0 (p = 1/2): each positive costs 0.25·¼·log 2, each negative 0.75·¼·log 2.
    positive, negative = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    expected_focal = (matches * positive + (8 - matches) * negative) / matches
    assert float(losses["loss_focal_enc"]) == pytest.approx(expected_focal, rel=1e-5)
    assert float(losses["loss_focal"]) == pytest.approx(positive + 7 * negative, rel=1e-5)


@pytest.mark.parametrize("bad", [0, 1.5, -2])
def test_encoder_matches_must_be_a_positive_whole_number(bad: float) -> None:
    with pytest.raises(ValueError, match="encoder_matches"):
        FocalSetCriterion(num_classes=2, encoder_matches=bad)
