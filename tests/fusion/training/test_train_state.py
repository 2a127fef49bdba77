"""Optimiser groups, LR schedule, EMA and checkpoints (weights_only, RNG states restored exactly)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fusion.training.config import LoopConfig
from fusion.training.state import (
    build_ema,
    build_optimizer,
    get_rng_state,
    load_checkpoint,
    lr_schedule,
    save_checkpoint,
    set_rng_state,
    swapped_weights,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 3)
        self.head = nn.Linear(3, 1)
        self.frozen = nn.Linear(1, 1).requires_grad_(False)


def test_backbone_parameters_get_their_own_learning_rate() -> None:
    net = Net()
    optimizer = build_optimizer(net, LoopConfig(lr=1e-3, backbone_lr=1e-5, weight_decay=0.05))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == 1e-5 and groups["rest"]["lr"] == 1e-3
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in net.backbone.parameters()}
    assert {id(p) for p in groups["rest"]["params"]} == {
        id(p) for p in net.head.parameters()
    }  # frozen left out
    assert groups["rest"]["weight_decay"] == 0.05
    same = build_optimizer(net, LoopConfig(lr=1e-3, backbone_lr=None))
    assert all(g["lr"] == 1e-3 for g in same.param_groups)


def test_warmup_then_cosine_and_step_schedules() -> None:
    cosine = lr_schedule(LoopConfig(epochs=2, warmup_steps=4, min_lr_ratio=0.1), steps_per_epoch=7)
    assert [cosine(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # After warmup: 0.1 + 0.9 * (1 + cos(pi * (s - 4) / 10)) / 2 over the remaining 10 steps.
    for step in (4, 9, 13, 14, 20):
        progress = min((step - 4) / 10, 1.0)
        assert cosine(step) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
    step = lr_schedule(LoopConfig(epochs=5, schedule="step", milestones=[2, 4], gamma=0.5), steps_per_epoch=3)
    assert [step(s) for s in (0, 5, 6, 11, 12, 14)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_ema_is_the_exponential_average_and_swaps_in_and_out() -> None:
    net = nn.Linear(1, 1, bias=False)
    ema = build_ema(net, decay=0.9)
    values = [2.0, 4.0, 8.0]
    for value in values:
        net.weight.data.fill_(value)
        ema.update_parameters(net)
    expected = 2.0  # the first update copies; then 0.9 * ema + 0.1 * w
    for value in values[1:]:
        expected = 0.9 * expected + 0.1 * value
    assert float(ema.module.weight.detach()) == pytest.approx(expected)
    with swapped_weights(net, ema.module.state_dict()):
        assert float(net.weight.detach()) == pytest.approx(expected)
    assert float(net.weight.detach()) == 8.0


def test_checkpoint_loads_with_weights_only_and_restores_every_generator(tmp_path: Path) -> None:
    net = Net()
    optimizer = build_optimizer(net, LoopConfig())
    net.head(net.backbone(torch.ones(1, 2))).sum().backward()
    optimizer.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # numpy keeps a cached Gaussian: it must survive too
    rng = get_rng_state()
    path = save_checkpoint(
        tmp_path / "checkpoint.pt",
        {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": [rng]},
    )
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state = torch.load(path, weights_only=True)
    assert state["version"] == 1 and torch.equal(state["model"]["head.weight"], net.head.weight.detach())
    set_rng_state(load_checkpoint(path)["rng"][0])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint of fusion train"):
        load_checkpoint(tmp_path / "other.pt")
