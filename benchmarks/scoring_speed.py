"""Scoring speed: ``fusion fuse`` end to end vs the hand-written loop users run today.

Generated COCO-scale set (default 5000 images, ~36k GT boxes, 80 categories, 3 members x 100 detections per image).

* baseline: per image ``ensemble_boxes.weighted_boxes_fusion`` (boxes normalised, defaults), then pycocotools
  (COCO + loadRes + evaluate + accumulate + summarize) on each member and on the fused set;
* ours: ``fusion fuse`` end to end (load the 3 files and the annotations, fuse with fuse_batch, evaluate 4 sets,
  write metrics/fused.json/report, no plots), run in-process;
* one ``fusion tune`` trial (fuse + evaluate, files already loaded).

Prints a table with times, the ratio, and whether the fused stats are identical to the baseline's.

Usage: ``python benchmarks/scoring_speed.py [--images 5000] [--backend auto]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def baseline(gt_path: Path, member_paths: list[Path]) -> tuple[float, float, float, np.ndarray, list[dict]]:
    """Returns (WBF seconds, eval seconds, total seconds, fused stats, fused records)."""
    from ensemble_boxes import weighted_boxes_fusion
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    start = time.perf_counter()
    gt_data = json.loads(gt_path.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt_data["images"]}
    members = [json.loads(p.read_text()) for p in member_paths]
    per_image: list[dict[int, list[dict]]] = []
    for records in members:
        grouped: dict[int, list[dict]] = {}
        for r in records:
            grouped.setdefault(r["image_id"], []).append(r)
        per_image.append(grouped)
    fused = []
    t_fuse = time.perf_counter()
    for image_id, (h, w) in sizes.items():
        boxes, scores, labels = [], [], []
        for grouped in per_image:
            recs = grouped.get(image_id, [])
            b = np.asarray([r["bbox"] for r in recs], dtype=np.float64).reshape(-1, 4)
            b = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1) / np.array([w, h, w, h])
            boxes.append(b.tolist())
            scores.append([r["score"] for r in recs])
            labels.append([r["category_id"] for r in recs])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fb, fs, fl = weighted_boxes_fusion(boxes, scores, labels)
        for box, score, label in zip(fb, fs, fl):
            x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
            fused.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(score), 5),
                }
            )
    t_fuse = time.perf_counter() - t_fuse
    t_eval = time.perf_counter()
    stats = None
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
        for records in [*members, fused]:
            evaluator = COCOeval(coco, coco.loadRes(records), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats = np.asarray(evaluator.stats)
    t_eval = time.perf_counter() - t_eval
    return t_fuse, t_eval, time.perf_counter() - start, stats, fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    from fusion.coco.annotations import load_annotations
    from fusion.coco.evaluate import STAT_KEYS, evaluate, resolve_backend
    from fusion.pipeline import fuse_predictions
    from fusion.scoring.fuse_files import fuse_files, load_member_files
    from fusion.synthetic import synthetic_annotations, synthetic_predictions

    folder = Path(tempfile.mkdtemp(prefix="scoring_speed_"))
    dataset = synthetic_annotations(
        args.images, coco_ids=True, boxes_per_image=7.2, image_size=(320, 640), seed=0
    )
    gt_path = folder / "gt.json"
    gt_path.write_text(json.dumps(dataset))
    paths = []
    for k in range(3):
        path = folder / f"member{k}.json"
        synthetic_predictions(dataset, detections_per_image=100, seed=10 + k, skip_image_fraction=0.0).save(
            path
        )
        paths.append(path)
    n_gt = len(dataset["annotations"])
    print(
        f"{args.images} images, {n_gt} GT boxes, 80 categories, 3 members x 100 detections/image; "
        f"backend {resolve_backend(args.backend)}"
    )

    start = time.perf_counter()
    out = fuse_files(paths, gt_path, root=folder / "runs", backend=args.backend, plots=False, verbose=False)
    ours = time.perf_counter() - start
    fused_stats = json.loads((out / "metrics.json").read_text())["fused"]
    ours_stats = np.asarray([fused_stats[k] for k in STAT_KEYS])

    gt = load_annotations(gt_path)
    members = load_member_files(paths, gt)
    start = time.perf_counter()
    fused = fuse_predictions(list(members.values()), gt)
    t_fuse_ours = time.perf_counter() - start
    evaluate(gt, fused, args.backend)
    start = time.perf_counter()
    fused = fuse_predictions(list(members.values()), gt, {"type": "wbf", "iou_thr": 0.6}, weights=[2, 1, 1])
    evaluate(gt, fused, args.backend)
    trial = time.perf_counter() - start

    rows = [
        ("ours: fusion fuse end to end (load, fuse, evaluate 4 sets, write)", ours),
        ("ours: fuse step alone (fuse_batch, 3 members)", t_fuse_ours),
        ("ours: one fusion tune trial (fuse + evaluate)", trial),
    ]
    if not args.skip_baseline:
        t_wbf, t_eval, total, base_stats, base_fused = baseline(gt_path, paths)
        rows = [
            ("baseline: ensemble-boxes WBF loop", t_wbf),
            ("baseline: pycocotools on 4 sets", t_eval),
            ("baseline: total (load, fuse, evaluate 4 sets)", total),
            *rows,
        ]
    print(f"\n| {'step':<72} | {'seconds':>8} |\n|{'-' * 74}|{'-' * 10}:|")
    for label, seconds in rows:
        print(f"| {label:<72} | {seconds:8.2f} |")
    if not args.skip_baseline:
        print(
            f"\nspeed-up end to end: {total / ours:.1f}x (target >= 20x); fuse step {t_wbf / t_fuse_ours:.1f}x"
        )
        from fusion.coco.predictions import Predictions

        # The evaluator alone: our evaluation of the BASELINE's fused records must equal pycocotools' to the bit.
        theirs = evaluate(gt, Predictions.from_records(base_fused), args.backend).stats
        same_eval = [theirs[k] for k in STAT_KEYS] == base_stats.tolist()
        print(f"our evaluation of the baseline's fused set identical to pycocotools': {same_eval}")
        # And the other way round: pycocotools on the fused.json we wrote gives the numbers we reported.
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(gt_path))
            evaluator = COCOeval(coco, coco.loadRes(str(out / "fused.json")), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        same_ours = np.asarray(evaluator.stats).tolist() == ours_stats.tolist()
        print(f"pycocotools on our fused.json identical to our reported fused stats: {same_ours}")
        # The whole pipeline: saved results are fused as float64 with ensemble-boxes' own arithmetic and rounded as
        # Python's round() does, so fused.json and the stats equal the hand-written loop's to the bit.
        same = ours_stats.tolist() == base_stats.tolist()
        print(
            f"fused stats identical to the baseline's: {same}; max |diff| {np.abs(ours_stats - base_stats).max():.2e}"
        )
        print("fused AP ours / baseline:", f"{ours_stats[0]:.6f} / {base_stats[0]:.6f}")


if __name__ == "__main__":
    main()
