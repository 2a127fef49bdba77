"""``fusion predict``: run an ensemble on image files and write fused COCO-style JSON under ``runs/predict/<name>``.

Outputs (each written atomically, so an interrupted run never leaves a half-written file):
    * ``predictions.json``: COCO results records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``;
      ``category_id`` is the id of the class in the ensemble vocabulary (``classes`` of the config: ``coco80`` ids
      are ``0..79``, use ``classes: coco91`` for official COCO category ids);
    * ``images.json``: ``{"images": [{"id", "file_name", "height", "width"}], "categories": [{"id", "name"}]}``
      (image ids are ``1..N`` in source order), so the results can be scored, or replayed as a ``predictions``
      member with ``images: .../images.json``;
    * ``config.yaml``: the resolved config, overrides applied;
    * ``images/``: annotated copies of the images, with ``--save-images``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="run an ensemble on images and write fused COCO-style JSON",
        description="Run an ensemble on images and write fused detections as COCO-style JSON under "
        "runs/predict/<name>. Items of the form dotted.path=value override the config.",
    )
    parser.add_argument("--config", required=True, help="ensemble config YAML (or a shipped config name)")
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="image files, folders, glob patterns, or dotted.path=value overrides",
    )
    parser.add_argument("--name", default=None, help="run name (default: the config's name)")
    parser.add_argument("--save-images", action="store_true", help="also write annotated images")
    parser.add_argument(
        "--draw-thr", type=float, default=0.25, help="score threshold of drawn boxes (default 0.25)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: the config's)"
    )
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the config's)")
    parser.add_argument("--project", default="runs", help="root folder of runs (default: runs)")
    parser.add_argument(
        "--exist-ok", action="store_true", help="reuse runs/predict/<name> instead of <name>2, ..."
    )
    parser.set_defaults(run=run)


def split_sources(items: list[str]) -> tuple[list[str], list[str]]:
    """``(sources, overrides)``: an item with ``=`` that is not an existing path is an override."""
    sources, overrides = [], []
    for item in items:
        (overrides if "=" in item and not Path(item).exists() else sources).append(item)
    return sources, overrides


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fusion.config import load_ensemble_config
    from fusion.ensemble import Ensemble
    from fusion.images import expand_sources
    from fusion.interop import to_coco_records
    from fusion.io import atomic_write_json, atomic_write_yaml, run_dir

    sources, overrides = split_sources(args.sources)
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        overrides.append(f"batch_size={args.batch_size}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if not sources:
        raise ValueError("no SOURCE given: name image files, folders or glob patterns")
    config = load_ensemble_config(args.config, overrides)
    files = expand_sources(sources)
    if not files:
        raise FileNotFoundError(f"no image files found in {', '.join(sources)}")
    ensemble = Ensemble(config)
    out_dir = run_dir("predict", args.name or config.name, root=args.project, exist_ok=args.exist_ok)
    atomic_write_yaml(out_dir / "config.yaml", config.model_dump(mode="json"))

    records: list[dict] = []
    images: list[dict] = []
    used_names: set[str] = set()
    batch_size = config.batch_size
    with tqdm(total=len(files), unit="img", desc=f"predict {config.name}") as progress:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            ids = list(range(start + 1, start + 1 + len(chunk)))
            batch = ensemble.load([str(f) for f in chunk], ids)
            fused = ensemble.predict_batch(batch)  # members -> the pipeline, calibrators included
            for path, image_id, det, image in zip(chunk, ids, fused, batch.images):
                det = det.cpu()
                height, width = int(image.shape[1]), int(image.shape[2])
                images.append({"id": image_id, "file_name": str(path), "height": height, "width": width})
                records.extend(to_coco_records(det, image_id, ensemble.class_map))
                if args.save_images:
                    name = (
                        f"{path.stem}.jpg"
                        if f"{path.stem}.jpg" not in used_names
                        else f"{path.stem}_{image_id}.jpg"
                    )
                    used_names.add(name)
                    _save_annotated(
                        out_dir / "images" / name, image, det, ensemble.class_map.names, args.draw_thr
                    )
            progress.update(len(chunk))

    categories = [{"id": i, "name": n} for i, n in zip(ensemble.class_map.ids, ensemble.class_map.names)]
    atomic_write_json(out_dir / "images.json", {"images": images, "categories": categories})
    atomic_write_json(out_dir / "predictions.json", records, indent=None)
    print(f"{len(records)} detections on {len(images)} images -> {out_dir / 'predictions.json'}")
    return 0


def _save_annotated(path: Path, image, detections, names, draw_thr: float) -> None:
    """Draw the boxes scoring at least ``draw_thr`` on ``image`` (float [3, H, W]) and write a JPEG atomically."""
    import io

    import torch
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    from fusion.io import atomic_write_bytes

    keep = detections[detections.scores >= draw_thr]
    canvas = image.detach().mul(255).round().clamp(0, 255).to(torch.uint8).cpu()
    if len(keep):
        labels = [f"{names[int(c)]} {float(s):.2f}" for c, s in zip(keep.labels, keep.scores)]
        canvas = draw_bounding_boxes(canvas, keep.boxes, labels=labels, colors="lime", width=2)
    buffer = io.BytesIO()
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=90)
    atomic_write_bytes(path, buffer.getvalue())
