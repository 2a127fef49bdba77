"""``torchrun`` with 2 gloo processes distilling from an ensemble teacher: the teacher runs once (rank 0), both
ranks read its caches, and the run equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distill_toy import ensemble_config, make_splits
from safetensors.torch import load_file
from test_train_distributed import _free_port

from fusion.training.teacher import TeacherCache

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
import training_toy
training_toy.register()
from fusion.training.distillation import distill
distill(json.loads(sys.argv[1]), root=sys.argv[2], report=False, verbose=False)
"""


def _run(tmp: Path, config: dict, root: Path, ranks: int) -> None:
    script = tmp / "run_distill.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "FUSION_DIST_BACKEND": "gloo"}  # fmt: skip
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


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    data = make_splits(tmp_path / "data", train=5, val=3, unlabeled=3)  # 8 items: 2 global batches of 4
    ensemble_config(data, ("train", "val", "unlabeled"))
    split = {name: {"annotations": str(data / name / "annotations.json"), "images": str(data / name / "images")}
             for name in ("train", "val")}  # fmt: skip
    config = {
        "name": "ddp", "seed": 1, "device": "cpu", "model": {"type": "toy"},
        "teacher": {"ensemble": str(data / "ensemble.yaml"), "labeled": "extra", "teacher_weight": 0.5},
        "unlabeled": str(data / "unlabeled" / "images"),
        "data": {**split, "image_size": 64, "augment": {"scale": [0.7, 1.3], "hflip": 0.5, "crop": 0.5}},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "log_every": 1, "clip_grad": 0.0},
    }  # fmt: skip
    for name, ranks in (("one", 1), ("two", 2)):
        _run(tmp_path, config, tmp_path / name, ranks)
    one, two = tmp_path / "one" / "distill" / "ddp", tmp_path / "two" / "distill" / "ddp"

    for split_name in ("val", "train", "unlabeled"):  # written once, complete, the same detections
        a, b = (
            TeacherCache.load(one / "teacher" / split_name),
            TeacherCache.load(two / "teacher" / split_name),
        )
        assert len(b.predictions) == len(a.predictions) > 0
        assert b.meta["threshold"] == a.meta["threshold"]

    def steps(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == "step"]

    assert [r["step"] for r in steps(two)] == [1, 2, 3, 4]
    for a, b in zip(steps(one), steps(two)):
        assert set(a["losses"]) == set(b["losses"]) >= {"loss_cls", "teacher_loss_cls", "teacher_loss_box"}
        for name in a["losses"]:
            assert b["losses"][name] == pytest.approx(a["losses"][name], abs=1e-6)
    weights_one, weights_two = (
        load_file(one / "weights" / "last.safetensors"),
        load_file(two / "weights" / "last.safetensors"),
    )
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, atol=1e-6, rtol=0)
