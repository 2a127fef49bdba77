"""kill -9 in the middle of an epoch, ``--resume``: the final weights equal an uninterrupted run's, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
args = json.loads(sys.argv[1])
train(args.get("config"), root=args["root"], resume=args.get("resume"), verbose=False)
"""


def _launch(args: dict, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(args)], env=env, cwd=tmp, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", 11, seed=2)  # 11 images, batch 4: the last batch of an epoch holds 3
    # Dropout, crop, flip and colour jitter all draw random numbers: all of them must be restored exactly.
    config = toy_config(tmp_path / "data", epochs=3, checkpoint_every=2, ema={"enabled": True, "decay": 0.9})
    config["model"]["dropout"] = 0.3
    _finish(_launch({"config": config, "root": str(tmp_path / "a")}, tmp_path))

    config["model"]["delay"] = 0.3  # slow steps, so the kill lands in the middle of the run
    process = _launch({"config": config, "root": str(tmp_path / "b")}, tmp_path)
    run = tmp_path / "b" / "train" / "toy"
    deadline = time.time() + 240
    seen = 0
    while time.time() < deadline and process.poll() is None:
        if (run / "checkpoint.pt").is_file():
            seen = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
            if seen >= 4:
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()  # SIGKILL
    process.wait()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert 4 <= state["step"] < 9 and state["epoch_step"] > 0  # stopped inside an epoch, not at its end
    _finish(_launch({"resume": str(run), "root": str(tmp_path / "b")}, tmp_path))

    uninterrupted = tmp_path / "a" / "train" / "toy"
    for stem in ("last", "best"):
        a = load_file(uninterrupted / "weights" / f"{stem}.safetensors")
        b = load_file(run / "weights" / f"{stem}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (stem, key)
    final_a = torch.load(uninterrupted / "checkpoint.pt", weights_only=True)
    final_b = torch.load(run / "checkpoint.pt", weights_only=True)
    assert final_b["step"] == final_a["step"] == 9
    for key in final_a["model"]:
        assert torch.equal(final_a["model"][key], final_b["model"][key]), key
    assert torch.equal(final_a["rng"][0]["torch"], final_b["rng"][0]["torch"])

    # metrics.jsonl holds each step once, with the uninterrupted run's losses.
    def losses(folder: Path) -> list[tuple[int, float]]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["kind"] == "step"]

    assert losses(run) == losses(uninterrupted)
    assert [s for s, _ in losses(run)] == list(range(1, 10))
