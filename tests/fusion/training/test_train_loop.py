"""The core loop end to end on a tiny real module: outputs, best/last, EMA, a non-finite loss, bf16 on CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from training_toy import ToyTrainable, make_dataset, register, toy_config

from fusion.training.loop import train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loop")
    make_dataset(folder, 6, seed=4)
    return folder


@pytest.fixture(autouse=True)
def _toy() -> None:
    register()


@pytest.mark.slow
def test_outputs_of_a_run(data: Path, tmp_path: Path) -> None:
    config = toy_config(data, epochs=3, batch_size=4, eval_every=2, ema={"enabled": True, "decay": 0.5})
    summary = train(config, root=tmp_path, verbose=False)
    run = tmp_path / "train" / "toy"
    assert summary is not None and Path(summary["out"]) == run and summary["steps"] == 6  # 2 steps x 3 epochs
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in steps] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    assert all(r["loss"] == pytest.approx(sum(r["losses"].values())) for r in steps)
    assert [r["lr"] for r in steps[:2]] == pytest.approx([0.005, 0.01])  # warmup over 2 steps, then cosine
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [2, 3]  # every 2 epochs, and the last
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3
    assert yaml.safe_load((run / "classes.yaml").read_text()) == {"names": ["square", "disc"]}
    assert (run / "results.png").read_bytes()[:4] == b"\x89PNG"
    member = yaml.safe_load((run / "weights" / "last.member.yaml").read_text())
    assert member == {"name": "toy", "type": "toy", "weights": str(run / "weights" / "last.safetensors"),
                      "dropout": 0.0}  # fmt: skip
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["epoch_step"], state["step"]) == (3, 0, 6)
    assert state["best_epoch"] in (2, 3) and state["best"] == summary["best"]
    # The exported weights are the EMA's, the checkpoint keeps the raw ones too.
    last = load_file(run / "weights" / "last.safetensors")
    ema = {k[len("module.") :]: v for k, v in state["ema"].items() if k.startswith("module.")}
    for key, value in last.items():
        assert torch.equal(value, ema[key])
    assert not torch.equal(last["head.weight"], state["model"]["head.weight"])


def test_a_non_finite_loss_stops_the_run_and_says_where(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ToyTrainable.loss

    def exploding(self: ToyTrainable, images: list, targets: list) -> dict:
        losses = original(self, images, targets)
        return {**losses, "loss_box": losses["loss_box"] * float("nan")}

    monkeypatch.setattr(ToyTrainable, "loss", exploding)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 1 \(epoch 1\).*'loss_box': nan"):
        train(toy_config(data), root=tmp_path, verbose=False)


@pytest.mark.cuda
def test_bf16_autocast_on_cuda(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    original = ToyTrainable.loss

    def recording(self: ToyTrainable, images: list, targets: list) -> dict:
        seen.append(
            (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), images[0].device.type)
        )
        return original(self, images, targets)

    monkeypatch.setattr(ToyTrainable, "loss", recording)
    config = toy_config(data, epochs=1)
    config["device"] = "cuda"
    summary = train(config, root=tmp_path, verbose=False)
    assert summary is not None and seen and all(s == (True, torch.bfloat16, "cuda") for s in seen)
