"""Speed of WBF: ensemble-boxes (one call per image) against ours on CPU, and on CUDA when present.

Cases (synthetic, seeded; every image has ~30 objects of 80 classes, members' boxes are jittered copies):
  a: 1 image, 3 members x 100 boxes       b: 1 image, 5 members x 300 boxes
  c: 1000 images of (a) through fuse_batch d: 5000 images of (b) through fuse_batch

Usage:
  python benchmarks/fusion_speed.py                 # all cases
  python benchmarks/fusion_speed.py --cases a b c   # a subset
  python benchmarks/fusion_speed.py --quick         # fewer images in c/d (100 / 100) and fewer repeats

The ensemble-boxes column of a large case is timed on at most ``--ref-images`` images and scaled to the case's
image count (marked with ``*``); its per-image cost does not depend on the other images.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
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


if __name__ == "__main__":
    main()
