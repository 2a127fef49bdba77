"""``fusion demo``: the shipped, trained members on a freshly rendered test split, fused and scored.

Steps (each timed and printed): check the shipped files against their manifest, render the test split of ``--seed``
(:func:`fusion.synthetic.render_dataset`: any seed is a fresh test set the members never saw), run every member
through :class:`~fusion.ensemble.Ensemble` (real adapters, batches of images), fuse with the ensemble's pipeline
(WBF unless ``--policy``), evaluate members and fused output (:func:`fusion.scoring.run.fuse_and_evaluate`), write
the scoring report (members vs fused table, per-class AP, PR curves, reliability) and ``picture.png``.

Run folder ``<project>/demo/<name>/``: ``data/test/`` (images + annotations), ``ensemble.yaml`` (the resolved
config: absolute paths, usable with ``fusion score``/``predict``), ``members/<member>.json`` (raw results, for
``fusion fuse`` / ``tune`` / ``calibrate``), and the scoring outputs (``metrics.json``, ``fused.json``,
``report.md``, ``*.png``, ``config.yaml``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion.demo.assets import ASSETS_DIR, DEMO_CONFIG, demo_config, verify_assets

__all__ = ["run_real_demo"]


class _Clock:
    """Wall time of each step, printed as it ends when ``verbose``."""

    def __init__(self, verbose: bool) -> None:
        self.verbose, self.start, self.times = verbose, time.perf_counter(), {}

    def lap(self, step: str, note: str = "") -> None:
        now = time.perf_counter()
        self.times[step] = round(now - self.start, 3)
        self.start = now
        if self.verbose:
            print(f"[{self.times[step]:6.1f} s] {step}{': ' + note if note else ''}")


def _run_members(ensemble: Any, gt: Any, images_dir: Path, batch_size: int) -> dict[str, Any]:
    """``{member name: Predictions}`` of every (virtual) member over the dataset, in dataset category ids."""
    import torch

    from fusion.coco.predictions import Predictions
    from fusion.scoring.dataset import make_loader

    parts: dict[str, list[Any]] = {name: [] for name in ensemble.member_names}
    loader = make_loader(gt, images_dir, batch_size, num_workers=0)  # small PNGs: decoding is not the cost
    with torch.inference_mode():
        for batch_images, ids, _ in loader:
            outputs = ensemble.run_members(ensemble.load(batch_images, ids))
            for name, dets in zip(ensemble.member_names, outputs):
                preds = Predictions.from_detections([d.cpu() for d in dets], ids, ensemble.class_map)
                parts[name].append(preds.translate(ensemble.class_map, gt.class_map))
    return {name: Predictions.concat(chunks) for name, chunks in parts.items()}


def _picture(
    out: Path, gt: Any, images_dir: Path, members: Mapping[str, Any], fused: Any, count: int
) -> Path:
    import numpy as np
    from PIL import Image

    from fusion.demo.picture import write_picture
    from fusion.scoring.run import ground_truth_detections

    count = min(count, len(gt))
    files = [gt.dataset["images"][i]["file_name"] for i in range(count)]
    pictures = []
    for file in files:
        with Image.open(images_dir / file) as opened:
            pictures.append(np.asarray(opened.convert("RGB")))
    entries = {name: preds.split_by_image(gt)[:count] for name, preds in members.items()}
    entries["fused"] = fused.split_by_image(gt)[:count]
    return write_picture(
        out / "picture.png", pictures, ground_truth_detections(gt)[:count], entries, gt.class_map.names
    )


def run_real_demo(
    images: int = 100,
    seed: int = 0,
    *,
    name: str = "demo",
    project: str | Path = "runs",
    policy: Any = None,
    params: Mapping[str, Any] | None = None,
    backend: str = "auto",
    plots: bool = True,
    verbose: bool = True,
    assets_dir: str | Path = ASSETS_DIR,
    config: str | Path | Mapping[str, Any] = DEMO_CONFIG,
    device: str | None = None,
    batch_size: int | None = None,
    picture_images: int = 4,
) -> Path:
    """Render the test split of ``seed``, run the shipped members, fuse, score, draw; returns the run folder.

    Args:
        images: Test images rendered.
        seed: Render seed (the same seed gives the same images; any seed is a test set no member trained on).
        name: Run name (an existing folder is never overwritten: ``name2``, ...).
        project: Root folder of runs.
        policy: Fusion policy replacing the config's (``None``: the config's, WBF).
        params: Its parameters.
        backend: COCO evaluation backend.
        plots: Write the scoring plots (the picture is always drawn).
        verbose: Print the steps' times, the table, where the results are and what to try next.
        assets_dir: Folder of the member files and ``MANIFEST.json`` (default: the installed package's).
        config: The demo ensemble config (its ``fusion/assets/models/`` paths point into ``assets_dir``).
        device: Overrides the config's device.
        batch_size: Images per batch (default: the config's).
        picture_images: Test images in ``picture.png``.

    Raises:
        FileNotFoundError: a shipped file is missing (the message says how to produce it, and ``--simulated``).
        ValueError: a shipped file does not match its manifest, or a bad argument.
    """
    from fusion.coco.annotations import load_annotations
    from fusion.coco.evaluate import resolve_backend
    from fusion.config import load_ensemble_config
    from fusion.ensemble import Ensemble
    from fusion.io import atomic_write_yaml, run_dir
    from fusion.scoring.report import format_run, write_run
    from fusion.scoring.run import fuse_and_evaluate
    from fusion.synthetic import render_dataset

    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    clock = _Clock(verbose)
    data, named = demo_config(assets_dir, config)
    manifest = verify_assets(assets_dir, named)
    if policy is not None or params:
        data["fusion"] = {"type": policy or "wbf", **dict(params or {})}
    cfg = load_ensemble_config(data)
    backend = resolve_backend(backend)
    clock.lap("checked the shipped files", f"{len(manifest['files'])} files, SHA-256 as in the manifest")

    out = run_dir("demo", name, project)
    image_size = int(manifest.get("recorded", {}).get("image_size", 128))
    split = render_dataset(out / "data", seed=seed, splits={"test": images}, image_size=image_size)
    annotations, images_dir = split["test"]
    gt = load_annotations(annotations)
    clock.lap("rendered the test split", f"{images} images of {image_size} px, seed {seed}")

    ensemble = Ensemble.from_config(cfg, device=device)
    atomic_write_yaml(out / "ensemble.yaml", cfg.model_dump(mode="json"))
    clock.lap("built the members", ", ".join(ensemble.member_names) + f" on {ensemble.device}")

    members = _run_members(ensemble, gt, Path(images_dir), batch_size or cfg.batch_size)
    for member, preds in members.items():
        preds.save(out / "members" / f"{member}.json")
    clock.lap("ran the members", f"{sum(len(p) for p in members.values())} detections")

    pipeline = ensemble.pipeline.in_vocabulary(gt.class_map)
    run = fuse_and_evaluate(members, gt, pipeline, backend=backend)
    record = {"command": "demo", "seed": seed, "images": images, "assets": str(Path(assets_dir).resolve())}
    record |= {"config": cfg.model_dump(mode="json"), "backend": backend, "annotations": str(annotations)}
    write_run(out, gt, run, pipeline.describe(), record, plots=plots)
    picture = _picture(out, gt, Path(images_dir), members, run.fused_predictions, picture_images)
    clock.lap("fused and scored", f"{pipeline.policy.params.type} over {len(members)} members")
    if verbose:
        print(format_run(run))
        _print_next(out, annotations, picture)
    return out


def _print_next(out: Path, annotations: Path, picture: Path) -> None:
    import shlex

    q = shlex.quote
    files = " ".join(q(str(p)) for p in sorted((out / "members").glob("*.json")))
    print(f"results in {out}: report.md, metrics.json, pr_curves.png, per_class_ap.png, reliability.png")
    print(f"look at {picture} (each member's boxes and the fused boxes side by side)")
    print("next, on the same member outputs (no networks run again):")
    print(f"  fusion fuse {files} --annotations {q(str(annotations))} --policy soft_nms")
    print(f"  fusion tune {files} --annotations {q(str(annotations))}")
    print(
        f"  fusion score --config {q(str(out / 'ensemble.yaml'))} --annotations {q(str(annotations))} "
        f"--images {q(str(Path(annotations).parent / 'images'))}"
    )
    print(
        "  fusion distill --config configs/distill/demo-detr-student.yaml   (a student from the fused ensemble)"
    )
