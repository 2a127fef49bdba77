"""The distillation report: teacher(s), fused ensemble and student side by side on the validation split.

Every row is scored the way ``fusion score`` scores a member: the detector is built from its member config
(the student from the run's ``weights/best.member.yaml``, exactly what an ensemble loads), run on every
validation image on the CPU, and its detections are evaluated with the project's COCO evaluator.

Throughput method (stated in the report): CPU, ``torch.get_num_threads()`` threads, batch size 1, images
decoded beforehand (decoding not timed); wall time of the detector's ``predict`` (its preprocessing, model and
postprocessing) over the first ``speed_images`` validation images after one untimed warm-up image; the fused
ensemble's time is its members' plus fusion (``Ensemble.predict_batch``). Parameters: the unique tensors of
the ``nn.Module`` objects the detector holds (saved-prediction members have none).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml

from fusion.io import atomic_write_json, atomic_write_text

__all__ = ["count_parameters", "write_report"]


def count_parameters(detector: Any) -> int:
    """Parameters of the ``nn.Module`` objects among ``detector``'s attributes (each tensor counted once)."""
    seen: dict[int, int] = {}
    for value in vars(detector).values():
        if isinstance(value, torch.nn.Module):
            seen |= {id(p): p.numel() for p in value.parameters()}
    return sum(seen.values())


def _ensemble_config(name: str, members: list[dict[str, Any]], classes: str, fusion: Any = None) -> Any:
    from fusion.config import load_ensemble_config

    data = {"name": name, "classes": classes, "device": "cpu", "batch_size": 1, "members": members}
    if fusion is not None:
        data["fusion"] = fusion
    return load_ensemble_config(data)


def _score_rows(ensemble: Any, gt: Any, images: str, speed_images: int, fused: bool) -> list[dict[str, Any]]:
    """One row per member (and the fused output with ``fused``): AP, AP50, parameters, images/s."""
    from fusion.coco.evaluate import evaluate
    from fusion.coco.predictions import Predictions
    from fusion.detections import Detections
    from fusion.scoring.dataset import make_loader

    table = ensemble.class_map.translation_to(gt.class_map, strict=False)
    names = [m.name for m in ensemble.members] + (["fused ensemble"] if fused else [])
    outputs: dict[str, list[Any]] = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    loader = make_loader(gt, images, batch_size=1, num_workers=0)
    with torch.inference_mode():
        for index, (batch_images, ids, _) in enumerate(loader):
            batch = ensemble.load(batch_images, ids)
            timed = 1 <= index <= speed_images  # image 0 warms up
            for member in ensemble.members:
                start = time.perf_counter()
                dets = member.predict(batch)
                seconds[member.name] += (time.perf_counter() - start) * timed
                outputs[member.name].append((dets, ids))
            if fused:
                start = time.perf_counter()
                dets = ensemble.predict_batch(batch)
                seconds["fused ensemble"] += (time.perf_counter() - start) * timed
                outputs["fused ensemble"].append((dets, ids))
    timed_images = max(min(speed_images, len(gt) - 1), 0)
    rows = []
    for name in names:
        parts = []
        for dets, ids in outputs[name]:
            kept = []
            for det in dets:
                det = det.cpu()
                labels = table[det.labels]
                keep = labels >= 0
                kept.append(
                    Detections(
                        det.boxes[keep], det.scores[keep], labels[keep], det.image_size, check_values=False
                    )
                )
            parts.append(Predictions.from_detections(kept, ids, gt.class_map))
        predictions = Predictions.concat(parts)
        stats = evaluate(gt, predictions, source=f"{name} on the validation split").stats
        params = (
            sum(count_parameters(m) for m in ensemble.members)
            if name == "fused ensemble"
            else count_parameters(next(m for m in ensemble.members if m.name == name))
        )
        speed = timed_images / seconds[name] if timed_images and seconds[name] > 0 else None
        row = {
            "name": name,
            "AP": stats["AP"],
            "AP50": stats["AP50"],
            "params": params,
            "images_per_s": speed,
        }
        rows.append({**row, "detections": len(predictions)})
    return rows


def write_report(cfg: Any, out: Path, speed_images: int = 16, verbose: bool = True) -> dict[str, Any]:
    """Score teacher(s), fused ensemble and student on ``cfg.data.val``; write ``report.md`` and ``report.json``.

    Returns:
        The ``report.json`` content: ``rows`` (``role``, ``name``, ``AP``, ``AP50``, ``params``,
        ``images_per_s``, ``detections``), the pseudo-label threshold (ensemble teacher) and the throughput method.
    """
    from fusion.coco.annotations import load_annotations
    from fusion.config import load_ensemble_config

    gt = load_annotations(cfg.data.val.annotations)
    images = cfg.data.val.images
    classes = str(out / "classes.yaml")
    rows: list[dict[str, Any]] = []
    if cfg.ensemble_teacher:
        teacher_cfg = load_ensemble_config(cfg.teacher.ensemble)
        from fusion.ensemble import Ensemble

        teacher_cfg = teacher_cfg.model_copy(update={"device": "cpu", "batch_size": 1})
        found = _score_rows(Ensemble(teacher_cfg), gt, images, speed_images, fused=True)
        rows += [
            {"role": "fused ensemble" if r["name"] == "fused ensemble" else "teacher", **r} for r in found
        ]
    else:
        member = cfg.teacher.model_dump(mode="json")
        rows += [{"role": "teacher", **r} for r in _rows_of([member], classes, gt, images, speed_images)]
    student = yaml.safe_load((out / "weights" / "best.member.yaml").read_text())
    rows += [{"role": "student", **r} for r in _rows_of([student], classes, gt, images, speed_images)]
    timed = max(min(speed_images, len(gt) - 1), 0)
    method = (
        f"CPU, {torch.get_num_threads()} threads, batch 1, decoded images; predict() wall time over validation "
        f"images 2..{timed + 1} after 1 warm-up image (fused: members + fusion)"
    )
    report: dict[str, Any] = {"name": cfg.name, "val": str(cfg.data.val.annotations), "images": len(gt)}
    report |= {"rows": rows, "throughput_method": method}
    threshold = out / "teacher" / "val" / "teacher.json"
    if threshold.is_file():
        import json

        report["pseudo_label_threshold"] = json.loads(threshold.read_text()).get("threshold")
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    if verbose:
        print(_markdown(report))
    return report


def _rows_of(
    members: list[dict[str, Any]], classes: str, gt: Any, images: str, speed_images: int
) -> list[dict]:
    from fusion.ensemble import Ensemble

    return _score_rows(
        Ensemble(_ensemble_config("report", members, classes)), gt, images, speed_images, False
    )


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Distillation report: {report['name']}",
        "",
        f"Validation split: {report['val']} ({report['images']} images).",
        "",
        "| role | name | AP | AP50 | params | images/s (CPU) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        speed = f"{row['images_per_s']:.1f}" if row["images_per_s"] else "-"
        params = f"{row['params'] / 1e6:.2f}M" if row["params"] else "-"
        lines.append(
            f"| {row['role']} | {row['name']} | {row['AP']:.4f} | {row['AP50']:.4f} | {params} | {speed} |"
        )
    lines += ["", f"Throughput: {report['throughput_method']}."]
    found = report.get("pseudo_label_threshold")
    if found:
        lines.append(
            f"Pseudo-label threshold: {found['threshold']:.4f} (val F1 {found['f1']:.3f}, precision "
            f"{found['precision']:.3f}, recall {found['recall']:.3f} at IoU {found['iou_thr']})."
        )
    return "\n".join(lines) + "\n"
