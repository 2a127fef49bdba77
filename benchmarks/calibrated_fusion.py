"""Uncalibrated vs calibrated WBF on generated members miscalibrated in different directions.

Three members see the same generated objects: ``over`` (over-confident, temperature 0.4), ``under``
(under-confident, 2.5) and ``fair`` (calibrated by construction, 1.0); see
:mod:`fusion.synthetic`. Isotonic calibrators are fitted per member on a validation split and applied
to the members' scores on a separate test split before WBF. Reported on the test split: D-ECE of each member and of
the fused output (protocol printed), and COCO AP / AP50 (faster-coco-eval, pycocotools' numbers) of the fused output.

Run: ``python benchmarks/calibrated_fusion.py [--images 500] [--method isotonic]``
"""

from __future__ import annotations

import argparse
import time

from fusion import fuse_batch
from fusion.calibration import (
    CalibrationProtocol,
    apply_calibrators,
    calibrate_detections,
    detection_ece,
    fit_calibrator_set,
    fit_member_calibrator,
)
from fusion.classes import ClassMap
from fusion.coco.annotations import load_annotations
from fusion.interop import from_coco_records, to_coco_records
from fusion.synthetic import make_coco_ground_truth, simulate_miscalibrated_member

MEMBERS = {"over": 0.4, "under": 2.5, "fair": 1.0}


def split(num_images: int, seed: int) -> tuple[dict, ClassMap, dict, dict]:
    gt = make_coco_ground_truth(num_images, seed=seed, crowd_fraction=0.02)
    class_map = ClassMap.from_coco_categories(gt["categories"])
    truth = load_annotations(gt).detections()
    sizes = {i: d.image_size for i, d in truth.items()}
    members = {
        name: from_coco_records(
            simulate_miscalibrated_member(gt, temperature, seed=100 * seed + k),
            class_map,
            sizes,
            truth.keys(),
        )
        for k, (name, temperature) in enumerate(MEMBERS.items())
    }
    return gt, class_map, truth, members


def coco_ap(gt: dict, fused: dict, class_map: ClassMap) -> tuple[float, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    records = [r for image_id, det in fused.items() for r in to_coco_records(det, image_id, class_map)]
    coco_gt = COCO(gt, print_function=lambda *a, **k: None)
    coco_dt = coco_gt.loadRes(records)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


def fuse_all(members: dict[str, dict], image_ids: list) -> dict:
    per_image = [[members[name][i] for name in MEMBERS] for i in image_ids]
    return dict(zip(image_ids, fuse_batch(per_image, "wbf", iou_thr=0.55, skip_box_thr=0.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images per split")
    parser.add_argument("--method", default="isotonic", choices=["isotonic", "temperature", "histogram"])
    parser.add_argument("--per-class", action="store_true")
    args = parser.parse_args()
    protocol = CalibrationProtocol()

    _, class_map, val_truth, val_members = split(args.images, seed=11)
    test_gt, _, test_truth, test_members = split(args.images, seed=12)
    start = time.perf_counter()
    calibrators = fit_calibrator_set(
        val_members, val_truth, args.method, args.per_class, classes=class_map.names
    )
    fit_s = time.perf_counter() - start
    image_ids = list(test_truth)
    start = time.perf_counter()
    calibrated = apply_calibrators(
        {n: [m[i] for i in image_ids] for n, m in test_members.items()}, calibrators
    )
    apply_s = time.perf_counter() - start
    calibrated = {n: dict(zip(image_ids, dets)) for n, dets in calibrated.items()}

    rows = []
    for name in MEMBERS:
        before = detection_ece(test_members[name], test_truth, protocol).value
        after = detection_ece(calibrated[name], test_truth, protocol).value
        rows.append((f"member {name} (T={MEMBERS[name]})", before, after, None, None))
    fused_raw = fuse_all(test_members, image_ids)
    fused_cal = fuse_all(calibrated, image_ids)
    # Post-fusion calibrator: fitted on the validation split's fusion of calibrated members.
    val_ids = list(val_truth)
    val_cal = apply_calibrators({n: [m[i] for i in val_ids] for n, m in val_members.items()}, calibrators)
    fused_val = fuse_all({n: dict(zip(val_ids, d)) for n, d in val_cal.items()}, val_ids)
    calibrators.fused = fit_member_calibrator(fused_val, val_truth, args.method)
    fused_both = dict(
        zip(image_ids, calibrate_detections([fused_cal[i] for i in image_ids], calibrators.fused))
    )
    d_both = detection_ece(fused_both, test_truth, protocol).value
    ap_both, ap50_both = coco_ap(test_gt, fused_both, class_map)
    d_raw = detection_ece(fused_raw, test_truth, protocol).value
    d_cal = detection_ece(fused_cal, test_truth, protocol).value
    ap_raw, ap50_raw = coco_ap(test_gt, fused_raw, class_map)
    ap_cal, ap50_cal = coco_ap(test_gt, fused_cal, class_map)

    print(
        f"calibrated_fusion: {args.images} val + {args.images} test images, {len(MEMBERS)} members, "
        f"method={args.method}{' per class' if args.per_class else ''}, WBF iou_thr=0.55 conf_type=avg"
    )
    print(f"D-ECE protocol: {protocol.describe()}")
    print(
        "columns: uncalibrated | members calibrated | members + fused output calibrated (ratios to uncalibrated)"
    )
    print(f"{'':<28}{'uncal':>9}{'members':>9}{'ratio':>7}{'+fused':>9}{'ratio':>7}")
    for label, before, after, _, _ in rows:
        print(f"{label + ' D-ECE':<28}{before:>9.4f}{after:>9.4f}{after / before:>7.2f}{'':>9}{'':>7}")
    for label, raw, cal, both in (
        ("fused WBF D-ECE", d_raw, d_cal, d_both),
        ("fused WBF AP", ap_raw, ap_cal, ap_both),
        ("fused WBF AP50", ap50_raw, ap50_cal, ap50_both),
    ):
        print(f"{label:<28}{raw:>9.4f}{cal:>9.4f}{cal / raw:>7.3f}{both:>9.4f}{both / raw:>7.3f}")
    print(
        f"fit {fit_s:.2f} s, apply {apply_s * 1000:.1f} ms ({sum(len(d) for m in calibrated.values() for d in m.values())} boxes)"
    )
    for label, d, ap in (
        ("members calibrated", d_cal, ap_cal),
        ("members + fused calibrated", d_both, ap_both),
    ):
        ok = d <= 0.5 * d_raw and ap >= ap_raw
        print(f"targets (fused D-ECE <= 0.5x, AP not lower), {label}: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
