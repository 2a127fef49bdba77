"""``fusion.score`` / ``fusion score``: run every member once over a COCO dataset, cache, fuse, evaluate.

Per batch the images are decoded once (in DataLoader workers) and every (virtual) member runs on them; each member's
detections are translated into the dataset's vocabulary by class NAME and appended to its cache. Fusion and
evaluation then read the cached results, so a resumed run, an uninterrupted run, a ``torchrun`` run and
``fusion fuse`` on the cached files all give the same numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.coco.annotations import CocoGroundTruth, load_annotations
from fusion.coco.predictions import Predictions
from fusion.detections import Detections
from fusion.scoring.cache import MemberCache

__all__ = ["score"]


def _to_predictions(
    detections: Sequence[Detections], image_ids: Sequence[int], table: torch.Tensor, gt: CocoGroundTruth
) -> tuple[Predictions, int]:
    """Member detections (ensemble labels) -> dataset results; also returns how many boxes had no dataset class."""
    kept, dropped = [], 0
    for det in detections:
        det = det.cpu()
        labels = table[det.labels]
        keep = labels >= 0
        dropped += int((~keep).sum())
        kept.append(
            Detections(det.boxes[keep], det.scores[keep], labels[keep], det.image_size, check_values=False)
        )
    return Predictions.from_detections(kept, image_ids, gt.class_map), dropped


def _fingerprint(config: Any, gt: CocoGroundTruth, shard: np.ndarray, world: int) -> dict[str, Any]:
    digest = hashlib.sha256(gt.image_ids.tobytes() + shard.tobytes())
    return {
        "members": [m.model_dump(mode="json") for m in config.members],
        "classes": config.classes,
        "tta": config.tta.model_dump(mode="json"),
        "autocast": config.autocast,
        "images": digest.hexdigest(),
        "world_size": world,
    }


def score(
    config: str | Path | Mapping[str, Any] | Any,
    annotations: str | Path | Mapping[str, Any],
    images: str | Path,
    *,
    name: str | None = None,
    root: str | Path = "runs",
    overrides: Sequence[str] = (),
    backend: str = "auto",
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int = 2,
    resume: bool = True,
    plots: bool = True,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    verbose: bool = True,
) -> dict[str, Any] | None:
    """Score an ensemble and each of its members on a COCO dataset.

    Args:
        config: Ensemble config (YAML path, shipped name, mapping or loaded config).
        annotations: COCO annotation file (or dict) of the dataset.
        images: Folder holding the images' ``file_name`` paths.
        name: Run name (default: the config's name); outputs in ``<root>/score/<name>/``.
        root: Root of run folders.
        overrides: ``dotted.path=value`` config overrides.
        backend: COCO evaluation backend (``auto`` = fastest installed).
        device: Overrides the config's device.
        batch_size: Images per batch (default: the config's ``batch_size``).
        num_workers: DataLoader worker processes decoding images.
        resume: Continue from the run folder's cache when it exists (same config and dataset), else start afresh
            in a new folder (``name2``, ...).
        plots: Write the PNG plots.
        seed: Seeds torch before the members are built, so randomly initialised members are reproducible.
        on_batch: Called with the number of images done (of this process's shard) after each cached batch.
        verbose: Print the backend, a progress bar and the table.

    Returns:
        The ``metrics.json`` dict (on rank 0; ``None`` on other ranks under ``torchrun``).
    """
    from fusion.coco.evaluate import resolve_backend
    from fusion.distributed import init_distributed
    from fusion.ensemble import Ensemble
    from fusion.io import run_dir

    _check_arguments(batch_size, num_workers, device)
    cfg = _resolve_config(config, overrides)
    backend = resolve_backend(backend)
    gt = load_annotations(annotations)
    dist = init_distributed()
    try:
        talk = verbose and dist.is_main
        if talk:
            print(f"evaluation backend: {backend}")
        out = Path(
            dist.broadcast(
                str(run_dir("score", name or cfg.name, root, exist_ok=resume)) if dist.is_main else None
            )
        )
        if device is None and dist.world_size > 1 and torch.cuda.is_available():
            device = f"cuda:{dist.local_rank}"
        torch.manual_seed(seed)
        ensemble = Ensemble.from_config(cfg, device=device)
        shard = np.arange(len(gt))[dist.rank :: dist.world_size]  # this process's images
        cache = MemberCache(
            out / "cache" / (f"rank{dist.rank}" if dist.world_size > 1 else ""),
            ensemble.member_names,
            _fingerprint(cfg, gt, shard, dist.world_size),
        )
        loader = _Loader(gt, images, cfg.batch_size if batch_size is None else batch_size, num_workers)
        cache.open(resume)
        _run_members(ensemble, cache, shard, loader, on_batch, talk, verbose)
        gathered = dist.gather(cache.load())
        if not dist.is_main or gathered is None:
            return None
        members = {
            name: _in_dataset_order(Predictions.concat([part[name] for part in gathered]), gt)
            for name in ensemble.member_names
        }
        record = {
            "command": "score",
            "config": cfg.model_dump(mode="json"),
            "annotations": str(annotations) if not isinstance(annotations, Mapping) else "<dict>",
            **{"images": str(images), "backend": backend, "seed": seed, "world_size": dist.world_size},
        }
        return _evaluate_and_write(ensemble, members, gt, out, record, backend, plots, talk)
    finally:
        dist.barrier()
        dist.close()


def _check_arguments(batch_size: int | None, num_workers: int, device: str | None) -> None:
    """Bad arguments are said before any file is read or written."""
    from fusion.ensemble import resolve_device

    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size (--batch-size) must be at least 1, got {batch_size!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers (--workers) must be 0 or more, got {num_workers}")
    if device is not None:
        resolve_device(device, "device (--device)")


def _resolve_config(config: Any, overrides: Sequence[str]) -> Any:
    from fusion.config import EnsembleConfigBase, load_ensemble_config

    if isinstance(config, EnsembleConfigBase):
        return config if not overrides else load_ensemble_config(config.model_dump(mode="json"), overrides)
    return load_ensemble_config(config, overrides)


@dataclass
class _Loader:
    """How the members' images are read: the dataset, its image folder, batch size and decoding workers."""

    gt: CocoGroundTruth
    images: str | Path
    batch_size: int
    num_workers: int


def _run_members(
    ensemble: Any,
    cache: MemberCache,
    shard: np.ndarray,
    loader: _Loader,
    on_batch: Callable[[int], None] | None,
    talk: bool,
    verbose: bool,
) -> None:
    """Run the members on the images of ``shard`` their cache does not hold yet, appending each batch's results
    (dataset category ids); detections of classes the dataset lacks are counted, not scored.

    Members usually stand at the same image; one whose cache file was damaged starts again from the first image, so
    the images are run in spans: the members furthest behind catch up with the next ones, then run together.
    """
    gt = loader.gt
    table = ensemble.class_map.translation_to(gt.class_map, strict=False)
    dropped = 0
    while (start := cache.done) < len(shard):
        behind = [name for name in ensemble.member_names if cache.done_by[name] == start]
        stop = min((d for d in cache.done_by.values() if d > start), default=len(shard))
        dropped += _run_span(ensemble, cache, behind, shard[start:stop], start, loader, table, on_batch, talk)
    if dropped and verbose:
        missing = [n for n, j in zip(ensemble.class_map.names, table.tolist()) if j < 0]
        print(
            f"warning: {dropped} member detection(s) of classes the dataset lacks were not scored: {missing[:10]}"
        )


def _run_span(
    ensemble: Any,
    cache: MemberCache,
    members: list[str],
    rows: np.ndarray,
    done: int,
    loader: _Loader,
    table: torch.Tensor,
    on_batch: Callable[[int], None] | None,
    talk: bool,
) -> int:
    """Run ``members`` on the dataset ``rows`` (shard positions ``done`` on), appending to their caches; returns
    how many detections had no dataset class."""
    from tqdm.auto import tqdm

    from fusion.scoring.dataset import iterate_batches, make_loader

    gt, dropped = loader.gt, 0
    batches = make_loader(gt, loader.images, loader.batch_size, loader.num_workers, indices=rows.tolist())
    every = len(members) == len(ensemble.member_names)
    desc = f"score {ensemble.config.name}" + ("" if every else f" ({', '.join(members)})")
    bar = tqdm(total=done + len(rows), initial=done, desc=desc, unit="img", disable=not talk)
    with bar, torch.inference_mode():  # the bar's line is ended also on an error, which then prints alone
        for batch_images, ids, _ in iterate_batches(batches):
            outputs = ensemble.run_members(ensemble.load(batch_images, ids), None if every else members)
            converted = {}
            for member, dets in zip(members, outputs):
                converted[member], lost = _to_predictions(dets, ids, table, gt)
                dropped += lost
            done += len(ids)
            cache.append(converted, done)
            bar.update(len(ids))
            if on_batch is not None:
                on_batch(done)
    return dropped


def _evaluate_and_write(
    ensemble: Any,
    members: dict[str, Predictions],
    gt: CocoGroundTruth,
    out: Path,
    resolved: dict[str, Any],
    backend: str,
    plots: bool,
    talk: bool,
) -> dict[str, Any]:
    """Fuse and evaluate with the ensemble's own pipeline; write the members' raw results and every output."""
    from fusion.scoring.report import format_run, write_run
    from fusion.scoring.run import fuse_and_evaluate

    # The ensemble's pipeline, on labels of the dataset's vocabulary (per-class weights re-indexed).
    pipeline = ensemble.pipeline.in_vocabulary(gt.class_map)
    run = fuse_and_evaluate(members, gt, pipeline, backend=backend)
    for member, preds in members.items():  # raw results: a new calibrator needs no re-run
        preds.save(out / "members" / f"{member}.json")
    metrics = write_run(out, gt, run, pipeline.describe(), resolved, plots=plots)
    if talk:
        print(format_run(run))
        print(f"results in {out}")
    metrics["run_dir"] = str(out)
    return metrics


def _in_dataset_order(preds: Predictions, gt: CocoGroundTruth) -> Predictions:
    # Shards interleave images; a stable sort by dataset position restores single-process order (within an image
    # the member's own order is kept, since one rank produced all of it).
    order = np.argsort(gt.positions(preds.image_ids), kind="stable")
    return Predictions(
        preds.image_ids[order], preds.category_ids[order], preds.boxes[order], preds.scores[order]
    )
