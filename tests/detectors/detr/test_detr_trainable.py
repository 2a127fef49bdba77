"""``DetrDetector.trainable``: losses by hand, overfitting, export -> ensemble member, fine-tuning starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from detectors.detr import build_detr, nested_batch, save_checkpoint
from detectors.detr.adapter import DetrMemberConfig
from detectors.detr.training import SetCriterion
from detectors.detr.training.trainable import DetrTrainable
from fusion.classes import ClassMap
from fusion.detector import ImageBatch
from fusion.registry import DETECTORS
from fusion.training import Trainable

CLASSES = ClassMap(["circle", "square", "triangle"])
CPU = torch.device("cpu")


def _member(**fields: object) -> DetrMemberConfig:
    base = {"name": "d", "model": "detr_tiny", "arch": {"dropout": 0.0, "num_queries": 8}, "min_size": None}
    return DetrMemberConfig(**{**base, **fields})


def _trainable(**fields: object) -> DetrTrainable:
    trainable = DETECTORS.get("detr").trainable(_member(**fields), CLASSES, CPU)
    assert isinstance(trainable, Trainable) and isinstance(trainable, DetrTrainable)
    return trainable


def _two_images() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(3)
    first, second = torch.rand(3, 64, 80, generator=g) * 0.2, torch.rand(3, 96, 64, generator=g) * 0.2
    first[:, 16:48, 8:40] = 0.9
    second[:, 40:90, 30:60] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    targets = [
        {"boxes": torch.tensor([[8.0, 16.0, 40.0, 48.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[30.0, 40.0, 60.0, 90.0], [2.0, 2.0, 20.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
        },
    ]
    return [first, second], targets


def test_loss_is_the_weighted_criterion_on_normalised_boxes() -> None:
    torch.manual_seed(0)
    trainable = _trainable(loss={"weight_bbox": 3.0})
    images, targets = _two_images()
    torch.manual_seed(1)
    losses = trainable.loss(images, targets)
    # By hand: pixel xyxy -> cxcywh / (w, h, w, h) of each unpadded image; weights ce 1, bbox 3, giou 2.
    by_hand = [
        {"boxes": torch.tensor([[24 / 80, 32 / 64, 32 / 80, 32 / 64]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor(
                [[45 / 64, 65 / 96, 30 / 64, 50 / 96], [11 / 64, 16 / 96, 18 / 64, 28 / 96]]
            ),
            "labels": torch.tensor([0, 2]),
        },
    ]
    with torch.no_grad():
        outputs = trainable.model(*nested_batch(images))
    expected = SetCriterion(3)(outputs, by_hand)
    assert set(losses) == set(expected) - {"loss"}
    assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= set(losses)  # aux losses of the first decoder layer
    weights = {"loss_ce": 1.0, "loss_bbox": 3.0, "loss_giou": 2.0}
    for key, value in losses.items():
        assert float(value.detach()) == pytest.approx(
            float(expected[key]) * weights[key.removesuffix("_0")], rel=1e-5
        )
    assert trainable.model.training
    with pytest.raises(ValueError, match=r"member 'd': unknown loss settings \['weight_boxes'\]"):
        _trainable(loss={"weight_boxes": 1.0})
    with pytest.raises(ValueError, match="member 'd': arch: .*unknown DETR architecture keys"):
        _trainable(arch={"queries": 3})
    assert _trainable(loss={"cost_giou": 0.5}).criterion.matcher.cost_giou == 0.5


@pytest.fixture
def one_thread():
    """One torch thread: many small ops, where extra threads on a shared CPU only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_loss_falls_when_overfitting_two_images(one_thread: None) -> None:
    torch.manual_seed(0)
    # A frozen (random) backbone keeps the run ~4x shorter; the transformer and heads still learn.
    trainable = _trainable(arch={"dropout": 0.0, "num_queries": 8, "train_backbone": False})
    images, targets = _two_images()
    params = [p for p in trainable.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    history = []
    for _ in range(30):
        total = sum(trainable.loss(images, targets).values())
        optimizer.zero_grad()
        total.backward()
        nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()
        history.append(float(total.detach()))
    assert history[-1] < 0.6 * history[0]  # measured: 12.66 -> 5.32


def test_export_loads_back_as_the_same_member(tmp_path) -> None:
    torch.manual_seed(0)
    trainable = _trainable(score_thr=0.0, top_k=5)
    images, targets = _two_images()
    sum(trainable.loss(images, targets).values()).backward()  # train mode once: export must not depend on it
    fields = trainable.export(tmp_path, "best")
    assert fields["checkpoint"] == "best.safetensors" and (tmp_path / "best.yaml").exists()
    member_config = DetrMemberConfig(
        name="back", **{**fields, "checkpoint": str(tmp_path / fields["checkpoint"])}
    )
    vocabulary = ClassMap(["dog", "triangle", "circle", "square"])  # the ensemble's: translated by name
    member = DETECTORS.get(fields["type"])(member_config, vocabulary, CPU)
    got = member.predict(ImageBatch(images))
    expected = trainable.predict(images)
    to_ensemble = torch.tensor([vocabulary.index(name) for name in CLASSES.names])
    for g, e in zip(got, expected):
        assert len(g) == len(e) == 5 and g.image_size == e.image_size
        assert torch.equal(g.boxes, e.boxes) and torch.equal(g.scores, e.scores)
        assert torch.equal(g.labels, to_ensemble[e.labels])


def test_fine_tuning_starts_from_checkpoints(tmp_path) -> None:
    source = build_detr("detr_tiny", num_classes=3, dropout=0.0)
    ours = save_checkpoint(source, tmp_path / "ours.safetensors", classes=list(CLASSES.names))
    trainable = _trainable(checkpoint=str(ours))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in trainable.model.state_dict().items())
    other = save_checkpoint(source, tmp_path / "other.safetensors", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="same vocabulary"):
        _trainable(checkpoint=str(other))
    official = build_detr("detr_tiny", num_classes=91)
    torch.save({"model": official.state_dict()}, tmp_path / "official.pth")
    tuned = _trainable(checkpoint=str(tmp_path / "official.pth"), num_classes=91, arch={})
    assert tuned.model.class_embed.out_features == 4 and tuned.model.config.num_classes == 3
    assert torch.equal(tuned.model.query_embed.weight, official.query_embed.weight)
    with pytest.raises(ValueError, match="required to predict"):
        DETECTORS.get("detr")(_member(), CLASSES, CPU)


@pytest.mark.slow  # a fresh interpreter importing torch
def test_inference_does_not_import_the_training_room(tmp_path) -> None:
    import subprocess
    import sys

    path = save_checkpoint(
        build_detr("detr_tiny", num_classes=3), tmp_path / "m.safetensors", classes=["a", "b", "c"]
    )
    code = (
        "import sys, torch\n"
        "from detectors.detr.adapter import DetrDetector, DetrMemberConfig\n"
        "from fusion.classes import ClassMap\n"
        f"DetrDetector(DetrMemberConfig(name='d', checkpoint={str(path)!r}), ClassMap(['a', 'b', 'c']), torch.device('cpu'))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('detectors.detr.training'))\n"
        "assert not loaded, loaded\n"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}
    )
