"""DETR teacher -> student KD: terms by hand, zero for a copy, falling under training, pairing, weights."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from detectors.detr import build_detr
from detectors.detr.adapter import DetrMemberConfig
from detectors.detr.model import DETR
from detectors.detr.training import HungarianMatcher, SetCriterion, build_student
from detectors.detr.training.distill import (
    DetrDistiller,
    KDSettings,
    box_kd,
    class_kd,
    pair_queries,
)
from detectors.detr.training.trainable import DetrTrainable
from fusion.classes import ClassMap
from fusion.training import Trainable

CLASSES = ClassMap(["circle", "square", "triangle"])
CPU = torch.device("cpu")
ALL_OFF = {"gt": 0.0, "class": 0.0, "bbox": 0.0, "giou": 0.0, "feature": 0.0}
TERMS = {"kd_class": "class", "kd_bbox": "bbox", "kd_giou": "giou", "kd_feature": "feature"}


def _wrap(model: DETR) -> DetrTrainable:
    member = DetrMemberConfig(name="s", model="detr_tiny", min_size=None)
    return DetrTrainable(model, CLASSES, SetCriterion(len(CLASSES)), CPU, member)


def _teacher(seed: int = 0, **arch: object) -> DETR:
    torch.manual_seed(seed)
    base = {"dropout": 0.0, "num_queries": 8, "enc_layers": 2, "dec_layers": 2}
    return build_detr("detr_tiny", num_classes=len(CLASSES), **{**base, **arch})


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(5)
    first, second = torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g)
    first[:, 10:40, 8:30] = 0.9
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[2.0, 4.0, 20.0, 30.0]]), "labels": torch.tensor([2])},
    ]
    return [first, second], targets  # different sizes: the batch is padded, the memory partly invalid


def test_class_kd_by_hand_softmax_and_sigmoid() -> None:
    s, t = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    for temp in (1.0, 2.0):
        p, q = (t / temp).softmax(-1), (s / temp).softmax(-1)
        expected = temp**2 * float((p * (p.log() - q.log())).sum())
        assert float(class_kd(s, t, "softmax", temp)) == pytest.approx(expected, rel=1e-6)
    # Sigmoid: BCE to the teacher's probabilities minus their entropy, summed over classes.
    p, q = torch.sigmoid(t), torch.sigmoid(s)
    bce = float(F.binary_cross_entropy(q, p, reduction="sum"))
    entropy = float(-(p * p.log() + (1 - p) * (1 - p).log()).sum())
    assert float(class_kd(s, t, "sigmoid")) == pytest.approx(bce - entropy, rel=1e-5)
    assert float(class_kd(t, t, "sigmoid")) == 0.0 and float(class_kd(t, t, "softmax", 3.0)) == 0.0
    with pytest.raises(ValueError, match="classification must be 'softmax' or 'sigmoid', got 'focal'"):
        class_kd(s, t, "focal")


def test_box_kd_by_hand() -> None:
    student = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]])
    teacher = torch.tensor([[0.5, 0.5, 0.4, 0.2], [0.3, 0.3, 0.2, 0.2]])
    l1, giou = box_kd(student, teacher, torch.tensor([0.75, 0.25]))
    # Pair 0: L1 0.2; same centre, student inside teacher: IoU 0.5, enclosing = teacher -> 1 - GIoU = 0.5.
    assert float(l1) == pytest.approx(0.75 * 0.2, rel=1e-6)
    assert float(giou) == pytest.approx(0.75 * 0.5, rel=1e-6)


def test_every_term_is_zero_for_a_copy_and_positive_otherwise() -> None:
    teacher = _wrap(_teacher())
    images, targets = _batch()
    weights = {"gt": 0.0, "feature": 1.0}
    for pairing in ("identity", "hungarian"):
        same = _wrap(copy.deepcopy(teacher.model)).distill_loss(
            images, targets, teacher, {**weights, "pairing": pairing}
        )
        assert set(same) == {
            "kd_class",
            "kd_bbox",
            "kd_giou",
            "kd_class_0",
            "kd_bbox_0",
            "kd_giou_0",
            "kd_feature",
        }
        assert all(abs(float(v.detach())) <= 1e-6 for v in same.values()), (pairing, same)
        other = _wrap(_teacher(seed=1)).distill_loss(
            images, targets, teacher, {**weights, "pairing": pairing}
        )
        assert set(other) == set(same) and all(float(v.detach()) > 1e-4 for v in other.values()), other


@pytest.mark.parametrize("classification", ["softmax", "sigmoid"])
def test_hungarian_pairing_undoes_a_permutation_of_the_teachers_queries(classification: str) -> None:
    g = torch.Generator().manual_seed(0)
    reference = {
        "pred_logits": torch.randn(2, 5, 4, generator=g) * 3,
        # Well separated boxes on a diagonal: the student's noisy copy is nearest to its own reference query.
        "pred_boxes": torch.stack([torch.linspace(0.1, 0.9, 5)] * 2 + [torch.full((5,), 0.1)] * 2, -1).expand(
            2, -1, -1
        ),
    }
    student = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in reference.items()}
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = {k: v[:, perm] for k, v in reference.items()}
    matcher = HungarianMatcher()
    for rows, cols in pair_queries(student, permuted, classification, matcher):
        assert torch.equal(rows, torch.arange(5)) and torch.equal(perm[cols], torch.arange(5))
    identity = DetrDistiller(KDSettings(pairing="identity"), classification, matcher, 8, 8)(
        student, reference
    )
    hungarian = DetrDistiller(KDSettings(), classification, matcher, 8, 8)(student, permuted)
    assert set(identity) == set(hungarian) == {"kd_class", "kd_bbox", "kd_giou"}
    for key, value in identity.items():
        assert float(value) > 0 and float(hungarian[key]) == pytest.approx(float(value), rel=1e-6)


def _grads(model: torch.nn.Module, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    return {
        part: sum(float(p.grad.abs().sum()) for p in getattr(model, part).parameters() if p.grad is not None)
        for part in ("class_embed", "bbox_embed", "transformer")
    }


def test_a_zero_weight_removes_its_term_and_its_gradient() -> None:
    teacher = _wrap(_teacher())
    student = _wrap(_teacher(seed=2))
    student.model.backbone.requires_grad_(False)  # only the heads and transformer matter here
    images, targets = _batch()
    only = {
        term: _grads(student.model, student.distill_loss(images, targets, teacher, {**ALL_OFF, key: 1.0}))
        for term, key in TERMS.items()
    }
    assert only["kd_class"]["bbox_embed"] == 0 and only["kd_class"]["class_embed"] > 0
    for box_term in ("kd_bbox", "kd_giou"):
        assert only[box_term]["class_embed"] == 0 and only[box_term]["bbox_embed"] > 0
    assert only["kd_feature"]["class_embed"] == only["kd_feature"]["bbox_embed"] == 0
    assert only["kd_feature"]["transformer"] > 0
    losses = student.distill_loss(images, targets, teacher, {**ALL_OFF, "class": 1.0, "aux": 0.0})
    assert set(losses) == {"kd_class"}  # no aux copies, no ground-truth loss
    gt_only = student.distill_loss(images, targets, teacher, {**ALL_OFF, "gt": 2.0})
    expected = student.loss(images, targets)
    assert set(gt_only) == set(expected)
    for key, value in expected.items():
        assert float(gt_only[key].detach()) == pytest.approx(2 * float(value.detach()), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("term", list(TERMS))
def test_each_term_falls_when_training_the_student_on_it(term: str) -> None:
    torch.set_num_threads(1)
    teacher = _wrap(_teacher())
    if term == "kd_feature":  # a narrower fresh student: the 1x1 adapter trains with it
        student = _wrap(_teacher(seed=3, d_model=32, num_heads=2, dim_feedforward=64, num_queries=6))
    else:  # cut from the teacher (first decoder layer), then perturbed
        student = _wrap(build_student(teacher.model, encoder_layers=1, decoder_layers=1))
        with torch.no_grad():
            for p in student.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    weights = {**ALL_OFF, TERMS[term]: 1.0, "pairing": "identity" if term != "kd_feature" else "hungarian"}
    for p in student.model.backbone.parameters():
        p.requires_grad_(False)
    extra = student.distill_modules(teacher, weights)
    params = [p for p in [*student.model.parameters(), *extra.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    images, targets = _batch()
    history = []
    for _ in range(20):
        loss = student.distill_loss(images, targets, teacher, weights)[term]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert math.isfinite(history[-1]) and history[-1] < 0.7 * history[0], history


def test_settings_and_teachers_are_checked_by_name() -> None:
    teacher = _wrap(_teacher())
    student = _wrap(_teacher(seed=1))
    images, targets = _batch()
    with pytest.raises(ValueError, match=r"member 's': distill: unknown distillation settings \['temp'\]"):
        student.distill_loss(images, targets, teacher, {"temp": 2.0})
    with pytest.raises(ValueError, match=r"distill\.pairing must be one of \['identity', 'hungarian'\]"):
        student.distill_loss(images, targets, teacher, {"pairing": "greedy"})
    with pytest.raises(ValueError, match=r"distill\.temperature must be > 0"):
        KDSettings.from_mapping({"temperature": 0})
    with pytest.raises(ValueError, match="pairing 'identity' needs as many student queries"):
        _wrap(_teacher(num_queries=6)).distill_loss(images, targets, teacher, {"pairing": "identity"})
    narrow = _wrap(_teacher(d_model=32, num_heads=2))
    with pytest.raises(ValueError, match="widths 32 and 64 trains an adapter: call distill_modules"):
        narrow.distill_loss(images, targets, teacher, {"feature": 1.0})
    with pytest.raises(TypeError, match="a DETR student learns from a DETR teacher"):
        student.distill_loss(images, targets, _Plain(), {})

    with pytest.raises(NotImplementedError, match="_Plain has no teacher distillation"):
        _Plain().distill_loss(images, targets, teacher, {})


class _Plain(Trainable):
    model = torch.nn.Linear(1, 1)

    def export(self, out_dir, stem):  # type: ignore[no-untyped-def]
        return {}


def test_example_config_settings_are_valid() -> None:
    config = yaml.safe_load((Path(__file__).parents[3] / "configs/distill/detr_teacher.yaml").read_text())
    settings = KDSettings.from_mapping(config["distill"])
    assert settings.pairing == "identity" and settings.cls == 1.0 and settings.temperature == 2.0
    teacher = _teacher(d_model=128, num_heads=8, dim_feedforward=512)
    student = build_student(teacher, **config["student"]["cut"])
    assert (student.config.enc_layers, student.config.dec_layers, student.config.num_heads) == (1, 1, 4)
