"""``torchrun`` with 2 gloo processes: the same losses, gradients and weights as 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_toy import make_dataset, toy_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
import training_toy
training_toy.register()
from fusion.training.loop import train
train(json.loads(sys.argv[1]), root=sys.argv[2], verbose=False)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(tmp: Path, config: dict, root: Path, ranks: int) -> None:
    script = tmp / "run_train.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "FUSION_DIST_BACKEND": "gloo",
    }
    launcher = [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(ranks),
        "--master_port",
        str(_free_port()),
    ]
    command = [sys.executable, *(launcher if ranks > 1 else []), str(script), json.dumps(config), str(root)]
    result = subprocess.run(
        command, env=env, cwd=tmp, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", 12, seed=5)  # 3 global batches of 4 per epoch, 2 images per rank
    config = toy_config(tmp_path / "data", epochs=2, clip_grad=0.0)  # unclipped: the norm is compared raw
    for name, ranks in (("one", 1), ("two", 2)):
        (tmp_path / f"grads_{name}").mkdir()
        config["model"]["grad_dump"] = str(tmp_path / f"grads_{name}")
        _run(tmp_path, config, tmp_path / name, ranks=ranks)
    one, two = tmp_path / "one" / "train" / "toy", tmp_path / "two" / "train" / "toy"

    steps_one, steps_two = _records(one, "step"), _records(two, "step")
    assert [r["step"] for r in steps_two] == list(range(1, 7))  # only rank 0 writes: each step once
    for a, b in zip(steps_one, steps_two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        for name in a["losses"]:
            assert b["losses"][name] == pytest.approx(a["losses"][name], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-6)
    # The gradients each step applied (steps 1-5; step 6's are never read back): averaged over ranks, equal to
    # one process's, and the same on both ranks.
    for step in range(1, 6):
        one_grads = torch.load(tmp_path / "grads_one" / f"rank0_step{step}.pt", weights_only=True)
        for rank in (0, 1):
            two_grads = torch.load(tmp_path / "grads_two" / f"rank{rank}_step{step}.pt", weights_only=True)
            assert one_grads.keys() == two_grads.keys()
            for key, grad in one_grads.items():
                torch.testing.assert_close(two_grads[key], grad, atol=1e-6, rtol=0)
    weights_one = load_file(one / "weights" / "last.safetensors")
    weights_two = load_file(two / "weights" / "last.safetensors")
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, atol=1e-6, rtol=0)
    # Evaluation: each rank predicts half of the validation images, rank 0 scores them all.
    evals_one, evals_two = _records(one, "eval"), _records(two, "eval")
    assert len(evals_two) == len(evals_one) == 2
    for a, b in zip(evals_one, evals_two):
        for key, value in a["stats"].items():
            assert b["stats"][key] == pytest.approx(value, abs=1e-6), key
