"""Hungarian matcher vs brute force, set-criterion values by hand, and a real overfitting run."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou

from detectors.detr import HungarianMatcher, SetCriterion, build_detr, nested_batch, train_step
from fusion.boxes import box_convert


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


@pytest.mark.parametrize("seed", range(12))
def test_matcher_equals_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    queries, classes = 5, 4
    outputs = {
        "pred_logits": torch.randn(2, queries, classes + 1, generator=g),
        "pred_boxes": _random_boxes(10, g).view(2, 5, 4),
    }
    sizes = [3, int(torch.randint(0, 6, (1,), generator=g))]
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=g), "boxes": _random_boxes(n, g)} for n in sizes
    ]
    matcher = HungarianMatcher()
    for image, ((rows, cols), target) in enumerate(zip(matcher(outputs, targets), targets)):
        n = len(target["labels"])
        prob = outputs["pred_logits"][image].softmax(-1)
        boxes = outputs["pred_boxes"][image]

        def cost(q: int, t: int, prob=prob, boxes=boxes, target=target) -> float:
            giou = generalized_box_iou(
                box_convert(boxes[q : q + 1], "cxcywh", "xyxy"),
                box_convert(target["boxes"][t : t + 1], "cxcywh", "xyxy"),
            )
            l1 = (boxes[q] - target["boxes"][t]).abs().sum()
            return float(-prob[q, target["labels"][t]] + 5 * l1 - 2 * giou[0, 0])

        best = min(
            sum(cost(q, t) for t, q in enumerate(perm)) for perm in itertools.permutations(range(queries), n)
        )
        assert len(rows) == len(cols) == n
        assert sorted(cols.tolist()) == list(range(n))
        assert sum(cost(q, t) for q, t in zip(rows.tolist(), cols.tolist())) == pytest.approx(best, abs=1e-5)


def test_criterion_hand_computed() -> None:
    logits = torch.randn(1, 3, 3)  # 2 classes + no-object
    target_boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])
    pred_boxes = torch.tensor([[[0.3, 0.3, 0.1, 0.2], [0.9, 0.9, 0.1, 0.1], [0.52, 0.5, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([1, 0]), "boxes": target_boxes}]
    criterion = SetCriterion(num_classes=2, eos_coef=0.1)
    losses = criterion({"pred_logits": logits, "pred_boxes": pred_boxes}, targets)
    # The obvious assignment: query 2 <- target 0, query 0 <- target 1, query 1 <- no-object.
    classes = torch.tensor([0, 2, 1])
    weights = torch.tensor([1.0, 1.0, 0.1])
    nll = -F.log_softmax(logits[0], -1)[torch.arange(3), classes]
    assert float(losses["loss_ce"]) == pytest.approx(
        float((weights[classes] * nll).sum() / weights[classes].sum()), rel=1e-5
    )
    assert float(losses["loss_bbox"]) == pytest.approx(0.02 / 2, rel=1e-5)
    giou = generalized_box_iou(
        box_convert(pred_boxes[0, [2, 0]], "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
    ).diag()
    assert float(losses["loss_giou"]) == pytest.approx(float((1 - giou).sum() / 2), rel=1e-5)
    expected_total = losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    assert float(losses["loss"]) == pytest.approx(float(expected_total), rel=1e-6)
    with pytest.raises(ValueError, match=r"targets\[0\] has label 2"):
        criterion(
            {"pred_logits": logits, "pred_boxes": pred_boxes},
            [{"labels": torch.tensor([2]), "boxes": target_boxes[:1]}],
        )


def test_loss_falls_when_overfitting_one_image() -> None:
    torch.manual_seed(0)
    model = build_detr("detr_tiny", num_classes=3, dropout=0.0, num_queries=8)
    criterion = SetCriterion(num_classes=3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    image = torch.rand(3, 64, 64)
    image[:, 10:40, 8:30] = 1.0
    images, mask = nested_batch([image])
    targets = [
        {
            "labels": torch.tensor([1, 2]),
            "boxes": torch.tensor([[0.3, 0.4, 0.35, 0.45], [0.7, 0.7, 0.2, 0.3]]),
        }
    ]
    history = [
        train_step(model, criterion, optimizer, images, mask, targets, max_norm=0.1) for _ in range(30)
    ]
    first, last = history[0], history[-1]
    assert set(first) >= {"loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0"}
    assert last["loss"] < 0.5 * first["loss"]
    assert last["loss_bbox"] < first["loss_bbox"] and last["loss_ce"] < first["loss_ce"]
