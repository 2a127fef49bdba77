"""Hungarian matcher vs brute force, set-criterion values by hand, and a real overfitting run."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou

from detectors.detr import build_detr, nested_batch
from detectors.detr.postprocess import box_cxcywh_to_xyxy
from detectors.detr.training import HungarianMatcher, SetCriterion, train_step


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
                box_cxcywh_to_xyxy(boxes[q : q + 1]), box_cxcywh_to_xyxy(target["boxes"][t : t + 1])
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
        box_cxcywh_to_xyxy(pred_boxes[0, [2, 0]]), box_cxcywh_to_xyxy(target_boxes)
    ).diag()
    assert float(losses["loss_giou"]) == pytest.approx(float((1 - giou).sum() / 2), rel=1e-5)
    expected_total = losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    assert float(losses["loss"]) == pytest.approx(float(expected_total), rel=1e-6)
    with pytest.raises(ValueError, match=r"targets\[0\] has label 2"):
        criterion(
            {"pred_logits": logits, "pred_boxes": pred_boxes},
            [{"labels": torch.tensor([2]), "boxes": target_boxes[:1]}],
        )


@pytest.mark.slow
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


def _weighted_case() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Three queries, two targets; the obvious assignment is query 2 <- target 0, query 0 <- target 1."""
    logits = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(5)).requires_grad_()
    target_boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])
    pred_boxes = torch.tensor([[[0.3, 0.3, 0.1, 0.2], [0.9, 0.9, 0.1, 0.1], [0.52, 0.5, 0.2, 0.2]]])
    return {"pred_logits": logits, "pred_boxes": pred_boxes.requires_grad_()}, target_boxes, logits


def test_score_weights_hand_computed() -> None:
    outputs, target_boxes, logits = _weighted_case()
    criterion = SetCriterion(num_classes=2, eos_coef=0.1)
    labels = torch.tensor([1, 0])
    nll = -F.log_softmax(logits[0].detach(), -1)[torch.arange(3), torch.tensor([0, 2, 1])]
    giou_q2 = float(
        generalized_box_iou(
            box_cxcywh_to_xyxy(outputs["pred_boxes"][0, 2:3].detach()), box_cxcywh_to_xyxy(target_boxes[:1])
        )[0, 0]
    )
    # Weights 0.8 (target 0 -> query 2) and 0.6 (target 1 -> query 0, whose box is exact: L1 0, GIoU 1).
    losses = criterion(
        outputs, [{"labels": labels, "boxes": target_boxes, "scores": torch.tensor([0.8, 0.6])}]
    )
    ce = (0.6 * nll[0] + 0.1 * nll[1] + 0.8 * nll[2]) / (0.6 + 0.1 + 0.8)
    assert losses["loss_ce"].item() == pytest.approx(float(ce), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.8 * 0.02 / 1.4, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(0.8 * (1 - giou_q2) / 1.4, rel=1e-5)
    # Weight 0 on target 1: its query adds nothing (no gradient at all); the box count is clamped at 1.
    losses = criterion(
        outputs, [{"labels": labels, "boxes": target_boxes, "scores": torch.tensor([1.0, 0.0])}]
    )
    assert losses["loss_ce"].item() == pytest.approx(float((0.1 * nll[1] + nll[2]) / 1.1), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.02, rel=1e-5)
    losses["loss"].backward()
    assert (
        torch.count_nonzero(logits.grad[0, 0]) == 0
        and torch.count_nonzero(outputs["pred_boxes"].grad[0, 0]) == 0
    )
    assert (
        torch.count_nonzero(logits.grad[0, 2]) > 0
        and torch.count_nonzero(outputs["pred_boxes"].grad[0, 2]) > 0
    )
    # All weights 1 is the official (unweighted) loss.
    ones = criterion(outputs, [{"labels": labels, "boxes": target_boxes, "scores": torch.ones(2)}])
    plain = criterion(outputs, [{"labels": labels, "boxes": target_boxes}])
    for key in plain:
        assert ones[key].item() == pytest.approx(plain[key].item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"targets\[0\]\['scores'\]"):
        criterion(outputs, [{"labels": labels, "boxes": target_boxes, "scores": torch.ones(3)}])


DISTRIBUTED_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from detectors.detr.training import SetCriterion

dist.init_process_group("gloo")
rank = dist.get_rank()
case = json.loads(sys.argv[1])[rank]
outputs = {"pred_logits": torch.tensor(case["logits"]), "pred_boxes": torch.tensor(case["boxes"])}
target = {"labels": torch.tensor(case["labels"]), "boxes": torch.tensor(case["targets"])}
losses = SetCriterion(num_classes=2)(outputs, [target])
with open(sys.argv[2] + f"/rank{rank}.json", "w") as f:
    json.dump({k: float(v) for k, v in losses.items()}, f)
dist.destroy_process_group()
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_box_count_is_averaged_over_ranks(tmp_path) -> None:
    """Rank 0 holds 1 box, rank 1 holds 3: both normalise box losses by the mean count 2, as official DETR."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    g = torch.Generator().manual_seed(2)
    cases = []
    for n in (1, 3):
        cases.append(
            {
                "logits": torch.randn(1, 4, 3, generator=g).tolist(),
                "boxes": _random_boxes(4, g)[None].tolist(),
                "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
                "targets": _random_boxes(n, g).tolist(),
            }
        )
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = str(Path(__file__).resolve().parents[3])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
    ]
    subprocess.run(
        [*command, str(script), json.dumps(cases), str(tmp_path)], env=env, check=True, timeout=120
    )
    for rank, (case, count) in enumerate(zip(cases, (1, 3))):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        alone = SetCriterion(num_classes=2)(
            {"pred_logits": torch.tensor(case["logits"]), "pred_boxes": torch.tensor(case["boxes"])},
            [{"labels": torch.tensor(case["labels"]), "boxes": torch.tensor(case["targets"])}],
        )
        assert got["loss_ce"] == pytest.approx(float(alone["loss_ce"]), rel=1e-6)  # CE: per rank, unchanged
        for key in ("loss_bbox", "loss_giou"):
            assert got[key] == pytest.approx(float(alone[key]) * count / 2, rel=1e-5)
