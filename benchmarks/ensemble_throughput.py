"""Throughput of ``Ensemble.predict`` on the tiny random-weight config, split into its steps.

For each device (CPU, and CUDA when present) the same images go through the ensemble step by step, timed with a
device synchronisation around each step:

* ``load+H2D``: image conversion and the copy to the device (``Ensemble.load``);
* ``members``: member inference (``Ensemble.run_members``), also per member;
* ``fusion``: the fusion policy (``Ensemble.fuse``), next to ensemble-boxes' WBF on the same member outputs
  (the reference, CPU numpy, normalised boxes) with the ratio;
* ``D2H``: fused detections back to the host.

Target: fusion under 5% of the total. Usage::

    python benchmarks/ensemble_throughput.py [--images 32] [--batch-size 8] [--repeats 2] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(480, 640), (640, 480), (375, 500), (427, 640)]  # COCO-like shapes
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(count)]


def _reference_wbf(per_member: list[list], params: object) -> float:
    """Seconds ensemble-boxes takes to fuse the same member outputs (host numpy; includes the D2H copies)."""
    from ensemble_boxes import weighted_boxes_fusion

    start = time.perf_counter()
    for image_index in range(len(per_member[0])):
        dets = [member[image_index] for member in per_member]
        h, w = dets[0].image_size
        scale = np.array([w, h, w, h], dtype=np.float64)
        arrays = [d.numpy() for d in dets]
        weighted_boxes_fusion(
            [a["boxes"] / scale for a in arrays],
            [a["scores"] for a in arrays],
            [a["labels"] for a in arrays],
            iou_thr=params.iou_thr,
            skip_box_thr=params.skip_box_thr,
            conf_type=params.conf_type,
        )
    return time.perf_counter() - start


def bench(device_name: str, images: list[np.ndarray], batch_size: int, repeats: int) -> dict[str, float]:
    from fusion.ensemble import Ensemble

    torch.manual_seed(0)
    ens = Ensemble.from_config("tiny", [f"batch_size={batch_size}"], device=device_name)
    device = ens.device
    ens.fuse(ens.run_members(ens.load(images[:batch_size])))  # warm-up (model setup, first-call costs)
    times: dict[str, float] = defaultdict(float)
    for _ in range(repeats):
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            _sync(device)
            t0 = time.perf_counter()
            batch = ens.load(chunk)
            _sync(device)
            t1 = time.perf_counter()
            per_member = []
            for index, member in enumerate(ens.members):
                m0 = time.perf_counter()
                per_member.append(member.predict(batch))
                _sync(device)
                times[f"member:{ens.member_names[index]}"] += time.perf_counter() - m0
            t2 = time.perf_counter()
            fused = ens.fuse(per_member)
            _sync(device)
            t3 = time.perf_counter()
            _ = [d.cpu() for d in fused]
            t4 = time.perf_counter()
            times["load+H2D"] += t1 - t0
            times["members"] += t2 - t1
            times["fusion"] += t3 - t2
            times["D2H"] += t4 - t3
            times["reference WBF"] += _reference_wbf(per_member, ens.config.fusion)
            times["boxes per member-image"] += sum(len(d) for m in per_member for d in m) / (
                len(per_member) * len(chunk)
            )
    n = len(images) * repeats
    times["total"] = times["load+H2D"] + times["members"] + times["fusion"] + times["D2H"]
    times["images"] = n
    times["batches"] = repeats * -(-len(images) // batch_size)
    return dict(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--devices", nargs="+", default=["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    )
    args = parser.parse_args()
    images = _images(args.images)
    print(
        f"tiny ensemble (fasterrcnn_mobilenet_v3_large_320_fpn + yolo11n, random weights, WBF); {args.images} images "
        f"of 375-640 px x {args.repeats} repeats, batch {args.batch_size}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    for device_name in args.devices:
        t = bench(device_name, images, args.batch_size, args.repeats)
        n = t["images"]
        print(
            f"\n== {device_name}: {n / t['total']:.2f} images/s (ens.predict steps; fusion share {100 * t['fusion'] / t['total']:.2f}%)"
        )
        print(f"{'step':<28}{'ms/image':>10}{'share':>9}")
        for key in [
            "load+H2D",
            "members",
            *sorted(k for k in t if k.startswith("member:")),
            "fusion",
            "D2H",
            "total",
        ]:
            share = f"{100 * t[key] / t['total']:8.2f}%" if not key.startswith("member:") else ""
            print(f"{key:<28}{1000 * t[key] / n:>10.2f}{share:>9}")
        ratio = t["reference WBF"] / t["fusion"] if t["fusion"] else float("nan")
        print(
            f"fusion: ours {1000 * t['fusion'] / n:.2f} ms/image vs ensemble-boxes WBF {1000 * t['reference WBF'] / n:.2f} "
            f"ms/image on the same member outputs -> {ratio:.2f}x "
            f"({t['boxes per member-image'] / t['batches']:.0f} boxes per member per image)"
        )


if __name__ == "__main__":
    main()
