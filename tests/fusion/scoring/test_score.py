"""``fusion.score``: members run once over a dataset, cached; resume and torchrun give identical results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fusion.scoring import score
from fusion.scoring.fuse_files import fuse_files
from fusion.synthetic import synthetic_annotations, synthetic_predictions


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("score")
    dataset = synthetic_annotations(num_images=8, coco_ids=True, image_size=(64, 96), seed=4)
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    for image in dataset["images"]:
        pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / image["file_name"])
    (folder / "gt.json").write_text(json.dumps(dataset))
    synthetic_predictions(dataset, detections_per_image=12, seed=5).save(folder / "saved_a.json")
    synthetic_predictions(dataset, detections_per_image=12, seed=6).save(folder / "saved_b.jsonl")
    return folder


def _config(folder: Path, with_model: bool) -> dict:
    members = [
        {"name": "a", "type": "predictions", "path": str(folder / "saved_a.json"), "classes": "coco91"},
        {
            "name": "b",
            "type": "predictions",
            "path": str(folder / "saved_b.jsonl"),
            "classes": "coco91",
            "weight": 2,
        },
    ]
    if with_model:
        members.append(
            {
                "name": "frcnn",
                "type": "torchvision",
                "model": "fasterrcnn_mobilenet_v3_large_320_fpn",
                "weights": None,
                "score_thr": 0.0,
                "min_size": 64,
                "max_size": 96,
            }
        )
    return {
        "name": "tiny",
        "classes": "coco80",
        "device": "cpu",
        "batch_size": 2,
        "members": members,
        "fusion": {"type": "wbf", "iou_thr": 0.6},
    }


class KilledError(RuntimeError):
    pass


def test_resume_after_interruption_gives_identical_results(dataset_dir: Path) -> None:
    root = dataset_dir / "runs_resume"
    config = _config(dataset_dir, with_model=True)
    common = {"root": root, "plots": False, "verbose": False, "num_workers": 1}
    full = score(config, dataset_dir / "gt.json", dataset_dir / "images", name="full", **common)

    def kill_after_two_batches(done: int) -> None:
        if done >= 4:
            raise KilledError(f"simulated kill after {done} images")

    with pytest.raises(KilledError):
        score(
            config,
            dataset_dir / "gt.json",
            dataset_dir / "images",
            name="resumed",
            on_batch=kill_after_two_batches,
            **common,
        )
    progress = json.loads((root / "score" / "resumed" / "cache" / "progress.json").read_text())
    assert progress["done"] == 4 and not (root / "score" / "resumed" / "metrics.json").exists()
    # A half-written batch left behind by the kill is cut off on resume.
    with open(root / "score" / "resumed" / "cache" / "a.jsonl", "ab") as handle:
        handle.write(b'{"image_id": 5, "category_id": 1, "bb')
    done_after = []
    resumed = score(
        config,
        dataset_dir / "gt.json",
        dataset_dir / "images",
        name="resumed",
        on_batch=done_after.append,
        **common,
    )
    assert done_after == [6, 8]  # only the remaining images ran
    for key in ("members", "fused", "policy", "backend", "per_class_ap", "num_detections"):
        assert resumed[key] == full[key], key
    assert full["num_detections"]["frcnn"] > 0 and full["fused"]["AP"] > 0
    fused_full = (root / "score" / "full" / "fused.json").read_bytes()
    assert (root / "score" / "resumed" / "fused.json").read_bytes() == fused_full
    written = yaml.safe_load((root / "score" / "full" / "config.yaml").read_text())
    assert written["config"]["members"][2]["min_size"] == 64 and written["config"]["fusion"]["iou_thr"] == 0.6

    # `fusion fuse` on the cached member files gives the same fused output and numbers (weights a=1, b=2, frcnn=1).
    members_dir = root / "score" / "full" / "members"
    out = fuse_files(
        [members_dir / f"{m}.json" for m in ("a", "b", "frcnn")],
        dataset_dir / "gt.json",
        "wbf",
        {"iou_thr": 0.6, "weights": [1.0, 2.0, 1.0]},
        root=root,
        plots=False,
        verbose=False,
    )
    assert (out / "fused.json").read_bytes() == fused_full
    assert json.loads((out / "metrics.json").read_text())["fused"] == full["fused"]


def test_cache_with_another_config_is_not_reused(dataset_dir: Path) -> None:
    root = dataset_dir / "runs_fp"
    config = _config(dataset_dir, with_model=False)
    score(
        config,
        dataset_dir / "gt.json",
        dataset_dir / "images",
        name="x",
        root=root,
        plots=False,
        verbose=False,
        num_workers=0,
    )
    config["members"][0]["score_thr"] = 0.5
    with pytest.raises(ValueError, match="made with another config or dataset"):
        score(
            config,
            dataset_dir / "gt.json",
            dataset_dir / "images",
            name="x",
            root=root,
            plots=False,
            verbose=False,
            num_workers=0,
        )


def test_missing_image_file_is_named(dataset_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"8 image file\(s\) .* are missing .*000001.png"):
        score(
            _config(dataset_dir, False),
            dataset_dir / "gt.json",
            tmp_path / "images",
            root=tmp_path,
            verbose=False,
        )


SCRIPT = """
import json, sys
from fusion.scoring import score
config, gt, images, root = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
metrics = score(config, gt, images, name="dist", root=root, plots=False, verbose=False, num_workers=0)
if metrics is not None:
    print("METRICS" + json.dumps(metrics))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_processes_equal_one(dataset_dir: Path, tmp_path: Path) -> None:
    config = _config(dataset_dir, with_model=False)
    single = score(
        config,
        dataset_dir / "gt.json",
        dataset_dir / "images",
        name="single",
        root=tmp_path / "one",
        plots=False,
        verbose=False,
        num_workers=0,
    )
    script = tmp_path / "run_score.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(script),
            json.dumps(config),
            str(dataset_dir / "gt.json"),
            str(dataset_dir / "images"),
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("METRICS")]
    assert len(lines) == 1  # only rank 0 evaluates
    dist = json.loads(lines[0][len("METRICS") :])
    for key in ("members", "fused", "policy", "per_class_ap", "num_detections"):
        assert dist[key] == single[key], key
    shards = sorted(p.name for p in (tmp_path / "two" / "score" / "dist" / "cache").iterdir())
    assert shards == ["rank0", "rank1"]
    assert (tmp_path / "two" / "score" / "dist" / "fused.json").read_bytes() == (
        tmp_path / "one" / "score" / "single" / "fused.json"
    ).read_bytes()
