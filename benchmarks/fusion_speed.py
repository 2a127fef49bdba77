"""Speed of WBF: ensemble-boxes (one call per image) against ours on CPU, and on CUDA when present; memory of
every policy on one crowded image.

Cases (synthetic, seeded; every image has ~30 objects of 80 classes, members' boxes are jittered copies):
  a: 1 image, 3 members x 100 boxes       b: 1 image, 5 members x 300 boxes
  c: 1000 images of (a) through fuse_batch d: 5000 images of (b) through fuse_batch
  mem: 1 image of 4000 x 4000, 2 members x 10k boxes of 80 classes (issue 13's reproducer), fused by nms, nmw,
       soft_nms and wbf, each in a fresh process: time and peak memory (CPU: peak RSS, Linux VmHWM, above the
       RSS before the call; CUDA: torch.cuda.max_memory_allocated)

Usage:
  python benchmarks/fusion_speed.py                 # all cases
  python benchmarks/fusion_speed.py --cases a b c   # a subset
  python benchmarks/fusion_speed.py --cases mem     # the memory rows only
  python benchmarks/fusion_speed.py --quick         # fewer images in c/d (100 / 100) and fewer repeats

The ensemble-boxes column of a large case is timed on at most ``--ref-images`` images and scaled to the case's
image count (marked with ``*``); its per-image cost does not depend on the other images.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import warnings

import numpy as np
import torch

from fusion.detections import Detections

CASES = {
    "a": dict(images=1, members=3, boxes=100),
    "b": dict(images=1, members=5, boxes=300),
    "c": dict(images=1000, members=3, boxes=100),
    "d": dict(images=5000, members=5, boxes=300),
}
SIZE = (480, 640)


def make_image(rng: np.random.Generator, members: int, boxes: int, objects: int = 30, classes: int = 80):
    """One image's members as numpy (boxes pixels xyxy, scores, labels) tuples."""
    height, width = SIZE
    centre = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height], size=(objects, 2))
    extent = rng.uniform([0.03 * width, 0.03 * height], [0.3 * width, 0.3 * height], size=(objects, 2))
    obj_label = rng.integers(0, classes, objects)
    out = []
    for _ in range(members):
        obj = rng.integers(0, objects, boxes)
        c = centre[obj] + rng.normal(0, 0.08, (boxes, 2)) * extent[obj]
        e = extent[obj] * np.exp(rng.normal(0, 0.1, (boxes, 2)))
        b = np.clip(np.concatenate([c - e / 2, c + e / 2], axis=1), 0, [width, height, width, height])
        labels = np.where(rng.random(boxes) < 0.1, rng.integers(0, classes, boxes), obj_label[obj])
        out.append((b, rng.uniform(0.01, 1.0, boxes), labels))
    return out


def best_of(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def crowded_image(n: int, device: str) -> list[Detections]:
    """Issue 13's D4 input: two members of ``n`` random boxes (10..200 px) on a 4000 x 4000 image, 80 classes."""
    gen = torch.Generator().manual_seed(0)
    members = []
    for _ in range(2):
        xy = torch.rand(n, 2, generator=gen) * 3800
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 190 + 10], 1)
        scores, labels = torch.rand(n, generator=gen), torch.randint(0, 80, (n,), generator=gen)
        members.append(Detections(boxes, scores, labels, image_size=(4000, 4000)).to(device))
    return members


def _rss(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from ``/proc/self/status``, bytes."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _memory_row(policy: str, n: int, device: str, threads: int, queue: multiprocessing.Queue) -> None:
    """In a fresh process: fuse the crowded image once; put (seconds, peak MB above the warmed-up process)."""
    torch.set_num_threads(threads)
    from fusion import fuse

    fuse(crowded_image(50, device), policy)  # imports and first-call costs out of the measurement
    members = crowded_image(n, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss("VmRSS")
        with open(
            "/proc/self/clear_refs", "w"
        ) as handle:  # Linux: resets the peak (VmHWM) to the current RSS
            handle.write("5")
    start = time.perf_counter()
    fuse(members, policy)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss("VmHWM")
    queue.put((time.perf_counter() - start, (peak - base) / 2**20))


def memory_rows(threads: int, n: int = 10_000) -> None:
    """Print one row per policy and device: time and peak memory of fusing 2 x ``n`` boxes on one image."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    context = multiprocessing.get_context("spawn")
    print(f"\n1 image 4000x4000, 2 members x {n} boxes, 80 classes (peak memory above that before the call)")
    print(f"{'policy':<10}{'device':<8}{'time':>10}{'peak memory':>14}")
    for device in devices:
        for policy in ("nms", "nmw", "soft_nms", "wbf"):
            queue = context.Queue()
            process = context.Process(target=_memory_row, args=(policy, n, device, threads, queue))
            process.start()
            seconds, megabytes = queue.get()
            process.join()
            print(f"{policy:<10}{device:<8}{seconds:>9.2f}s{megabytes:>11.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", nargs="+", choices=[*sorted(CASES), "mem"], default=[*sorted(CASES), "mem"]
    )
    parser.add_argument("--quick", action="store_true", help="100 images in c and d, fewer repeats")
    parser.add_argument("--images", type=int, help="override the image count of c and d")
    parser.add_argument("--ref-images", type=int, default=200, help="images the reference is timed on in c/d")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, like numpy)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ensemble_boxes import weighted_boxes_fusion

    from fusion import fuse_batch

    warnings.simplefilter("ignore")
    cuda = torch.cuda.is_available()
    height, width = SIZE
    scale = np.array([width, height, width, height])
    header = f"{'case':<5}{'images':>7}{'M x boxes':>11}{'ensemble-boxes':>16}{'ours CPU':>11}{'x':>7}"
    header += f"{'ours CUDA':>11}{'x':>8}" if cuda else ""
    print(f"WBF (iou_thr 0.55, conf avg), torch {torch.__version__}, {args.threads} CPU thread(s)")
    print(header)
    for name in args.cases:
        if name == "mem":
            continue
        case = CASES[name]
        images = case["images"]
        if images > 1 and (args.quick or args.images):
            images = args.images or 100
        rng = np.random.default_rng(0)
        data = [make_image(rng, case["members"], case["boxes"]) for _ in range(images)]
        per_image = [[Detections(b, s, l, image_size=SIZE) for b, s, l in img] for img in data]
        normed = [
            ([b / scale for b, _, _ in img], [s for _, s, _ in img], [l for _, _, l in img]) for img in data
        ]
        n_ref = min(images, args.ref_images)
        repeats = 1 if images > 1 else (5 if args.quick else 20)

        def reference(n_ref=n_ref, normed=normed):
            for b, s, l in normed[:n_ref]:
                weighted_boxes_fusion(b, s, l, iou_thr=0.55)

        ref = best_of(reference, repeats) * images / n_ref
        fuse_batch(per_image[:1], "wbf")  # warm-up
        ours = best_of(lambda per_image=per_image: fuse_batch(per_image, "wbf"), repeats)
        star = "*" if n_ref < images else " "
        row = f"{name:<5}{images:>7}{case['members']:>5} x {case['boxes']:<3}{ref * 1e3:>14.1f}{star}ms"
        row += f"{ours * 1e3:>9.1f}ms{ref / ours:>6.1f}x"
        if cuda:
            on_gpu = [[d.to("cuda") for d in img] for img in per_image]
            fuse_batch(on_gpu[:2], "wbf")
            torch.cuda.synchronize()

            def gpu(on_gpu=on_gpu):
                fuse_batch(on_gpu, "wbf")
                torch.cuda.synchronize()

            t = best_of(gpu, repeats)
            row += f"{t * 1e3:>9.1f}ms{ref / t:>7.0f}x"
        print(row, flush=True)
    if "mem" in args.cases:
        memory_rows(args.threads)


if __name__ == "__main__":
    main()
