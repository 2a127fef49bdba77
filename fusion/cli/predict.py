"""``fusion predict``: run an ensemble on image files and write fused COCO-style JSON under ``runs/predict/<name>``.

Outputs (each written atomically, so an interrupted run never leaves a half-written file):
    * ``predictions.json``: COCO results records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``;
      ``category_id`` is the id of the class in the ensemble vocabulary (``classes`` of the config: ``coco80`` ids
      are ``0..79``, use ``classes: coco91`` for official COCO category ids);
    * ``images.json``: ``{"images": [{"id", "file_name", "height", "width"}], "categories": [{"id", "name"}]}``
      (image ids are ``1..N`` in source order), so the results can be scored, or replayed as a ``predictions``
      member with ``images: .../images.json``;
    * ``config.yaml``: the resolved config, overrides applied;
    * ``images/``: annotated copies of the images, with ``--save-images``;
    * ``errors.json``: with ``--skip-bad-images``, each unreadable file and why (``[{"file", "error"}, ...]``).

Results are appended per batch to a checkpointed cache (``cache/``, see :mod:`fusion.scoring.cache`) that is removed
when the run finishes: after a kill the same command finds the unfinished run (same name, config and images) and
continues it, and the final files are byte-identical to an uninterrupted run's. ``--no-resume`` starts afresh.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from fusion.detector import ImageBatch
    from fusion.ensemble import Ensemble
    from fusion.scoring.cache import JsonlCache

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
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for randomly initialised members (a resumed run rebuilds them identically; default 0)",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh even when an interrupted run of the same name, config and images can be resumed",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip images that cannot be read (listed with the reason in errors.json) instead of stopping",
    )
    parser.set_defaults(run=run)


def split_sources(items: list[str]) -> tuple[list[str], list[str]]:
    """``(sources, overrides)``: an item with ``=`` that is not an existing path is an override."""
    sources, overrides = [], []
    for item in items:
        (overrides if "=" in item and not _exists(item) else sources).append(item)
    return sources, overrides


def _exists(item: str) -> bool:
    try:
        return Path(item).exists()
    except OSError:  # e.g. a name too long for the file system: an override, not a file
        return False


def run(args: argparse.Namespace) -> int:
    import torch

    from fusion.config import load_ensemble_config
    from fusion.ensemble import Ensemble, resolve_device
    from fusion.images import expand_sources
    from fusion.io import atomic_write_json, atomic_write_yaml, check_run_name
    from fusion.scoring.cache import JsonlCache

    sources, overrides = split_sources(args.sources)
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        overrides.append(f"batch_size={args.batch_size}")
    if args.device is not None:
        resolve_device(args.device, "--device")
        overrides.append(f"device={args.device}")
    if not sources:
        raise ValueError("no SOURCE given: name image files, folders or glob patterns")
    config = load_ensemble_config(args.config, overrides)
    resolve_device(config.device)  # an unusable device is said before anything is built or written
    files = expand_sources(sources)
    if not files:
        raise FileNotFoundError(f"no image files found in {', '.join(sources)}")
    name = check_run_name(args.name or config.name, "--name" if args.name else "the config's name")
    fingerprint = {
        "config": config.model_dump(mode="json"),
        "files": [str(f) for f in files],
        "save_images": bool(args.save_images),
        "draw_thr": args.draw_thr if args.save_images else None,
        "skip_bad_images": bool(args.skip_bad_images),
        "seed": args.seed,
    }
    torch.manual_seed(args.seed)
    ensemble = Ensemble(config)
    out_dir, resume = _open_run_dir(name, args, fingerprint)
    atomic_write_yaml(out_dir / "config.yaml", config.model_dump(mode="json"))
    cache = JsonlCache(out_dir / "cache", list(_STREAMS), fingerprint)
    _predict_into(cache, cache.open(resume), ensemble, files, args, out_dir)

    records = [json.loads(line) for line in cache.read_lines("predictions")]
    images = [json.loads(line) for line in cache.read_lines("images")]
    skipped = cache.read_lines("skipped")
    categories = [{"id": i, "name": n} for i, n in zip(ensemble.class_map.ids, ensemble.class_map.names)]
    atomic_write_json(out_dir / "images.json", {"images": images, "categories": categories})
    atomic_write_json(out_dir / "predictions.json", records, indent=None)
    if skipped:
        errors = [dict(zip(("file", "error"), line.split("\t", 1))) for line in skipped]
        atomic_write_json(out_dir / "errors.json", errors)
    shutil.rmtree(cache.folder)  # finished: the outputs hold everything the cache did
    print(f"{len(records)} detections on {len(images)} images -> {out_dir / 'predictions.json'}")
    if skipped:
        print(
            f"warning: {len(skipped)} unreadable image(s) skipped, listed in {out_dir / 'errors.json'}",
            file=sys.stderr,
        )
    return 0


# The cache streams of a predict run: COCO results records, image entries, and "<file>\t<why>" of skipped files.
_STREAMS = ("predictions", "images", "skipped")


def _open_run_dir(name: str, args: argparse.Namespace, fingerprint: dict) -> tuple[Path, bool]:
    """The run folder and whether to resume in it: the first ``<name>``, ``<name>2``, ... holding an unfinished run
    with the same fingerprint is resumed (unless ``--no-resume``); otherwise a new folder as ``run_dir`` picks."""
    from fusion.io import run_dir
    from fusion.scoring.cache import canonical, read_progress

    if not args.no_resume:
        base, suffix = Path(args.project) / "predict", 2
        candidate = name
        while (base / candidate).is_dir():
            progress_path = base / candidate / "cache" / "progress.json"
            if progress_path.is_file():
                progress = read_progress(progress_path)
                if progress.get("fingerprint") == canonical(fingerprint):
                    return run_dir("predict", candidate, root=args.project, exist_ok=True), True
            candidate, suffix = f"{name}{suffix}", suffix + 1
    return run_dir("predict", name, root=args.project, exist_ok=args.exist_ok), False


def _load_chunk(
    chunk: list[Path], ids: list[int], device: torch.device, skip_bad: bool
) -> tuple[ImageBatch, list[str]]:
    """The chunk's readable images as an ImageBatch, and ``"<file>\t<why>"`` of those skipped."""
    from fusion.detector import ImageBatch
    from fusion.images import to_image_tensor

    tensors, kept_ids, paths, skipped = [], [], [], []
    for path, image_id in zip(chunk, ids):
        try:
            tensors.append(to_image_tensor(path, device, where=str(path)))
        except (ValueError, OSError) as exc:
            if not skip_bad:
                hint = " (--skip-bad-images skips such files and lists them in errors.json)"
                raise ValueError(f"{exc}{hint}") from None
            skipped.append(f"{path}\t{' '.join(str(exc).split())}")  # one line per file
            continue
        kept_ids.append(image_id)
        paths.append(str(path))
    return ImageBatch(tensors, kept_ids, paths), skipped


def _predict_into(
    cache: JsonlCache,
    done: int,
    ensemble: Ensemble,
    files: list[Path],
    args: argparse.Namespace,
    out_dir: Path,
) -> None:
    """Run the ensemble on ``files[done:]`` one batch at a time, appending each batch to ``cache``."""
    from tqdm import tqdm

    from fusion.interop import to_coco_records

    batch_size = ensemble.config.batch_size
    drawn = _drawn_names(files) if args.save_images else []
    with tqdm(total=len(files), initial=done, unit="img", desc=f"predict {ensemble.config.name}") as progress:
        for start in range(done, len(files), batch_size):
            chunk = files[start : start + batch_size]
            ids = list(range(start + 1, start + 1 + len(chunk)))
            batch, skipped = _load_chunk(chunk, ids, ensemble.device, args.skip_bad_images)
            fused = ensemble.predict_batch(batch) if len(batch) else []
            records, images = [], []
            for path, image_id, det, image in zip(batch.paths, batch.image_ids, fused, batch.images):
                det = det.cpu()
                height, width = int(image.shape[1]), int(image.shape[2])
                images.append({"id": image_id, "file_name": path, "height": height, "width": width})
                records.extend(to_coco_records(det, image_id, ensemble.class_map))
                if args.save_images:
                    _save_annotated(
                        out_dir / "images" / drawn[image_id - 1],
                        image,
                        det,
                        ensemble.class_map.names,
                        args.draw_thr,
                    )
            cache.append_bytes(
                {
                    "predictions": _json_lines(records),
                    "images": _json_lines(images),
                    "skipped": "".join(f"{line}\n" for line in skipped).encode(),
                },
                start + len(chunk),
            )
            progress.update(len(chunk))


def _json_lines(items: list[dict]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode()


def _drawn_names(files: list[Path]) -> list[str]:
    """The annotated copy's name of every file: ``<stem>.jpg``, or ``<stem>_<id>.jpg`` when the stem was taken."""
    names, used = [], set()
    for image_id, path in enumerate(files, start=1):
        name = f"{path.stem}.jpg" if f"{path.stem}.jpg" not in used else f"{path.stem}_{image_id}.jpg"
        used.add(name)
        names.append(name)
    return names


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
