"""An ensemble as a teacher: its fused detections of a dataset's images, computed once, cached and fingerprinted.

Any ensemble config (members, policy, calibrators, TTA) is run once over the images of a COCO split through
:meth:`fusion.ensemble.Ensemble.predict_batch`; the fused detections are cached under the run folder and are what
the student learns from:

* on labelled images, as a second target set beside the ground truth, with score-weighted losses (Teach-DETR:
  one matching per teacher);
* on unlabelled images (``--unlabeled DIR``), as the only targets (pseudo-labels).

Only detections scoring at least the pseudo-label threshold become targets; the threshold is the score cut with
the best F1 at IoU 0.5 on labelled validation data (:mod:`fusion.training.pseudo_labels`); :func:`prepare_teacher`
runs the three splits and records it.

Layout of a cache folder (e.g. ``runs/distill/<name>/teacher/train/``):

* ``fused.jsonl``: COCO results records (dataset category ids), appended per batch, resumable after a kill
  (:class:`~fusion.scoring.cache.MemberCache`: ``progress.json`` checkpoints what is on disk);
* ``teacher.json``: ``fingerprint`` (SHA-256 of what the outputs depend on: the resolved ensemble config, the
  size and SHA-256 of every file it names — weights, saved predictions, calibrators, class lists —, the image
  list and the code version; ``sha256`` of all that, to quote), ``complete``, counts and, once chosen,
  ``threshold``.

A cache is reused only for the same fingerprint; otherwise the run is refused with what changed. One process
writes a cache: under ``torchrun`` run the teacher on rank 0 before training, then every rank reads the complete
cache (a second :func:`run_teacher` call returns it without starting the members).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth, load_annotations
from fusion.coco.predictions import Predictions, read_jsonl
from fusion.io import atomic_write_json, sha256_file
from fusion.training.pseudo_labels import ThresholdChoice, choose_threshold, pseudo_targets
from fusion.training.trainable import TrainTarget

__all__ = [
    "IMAGE_SUFFIXES",
    "EnsembleTeacher",
    "TeacherCache",
    "TeacherChangedError",
    "prepare_teacher",
    "run_teacher",
    "teacher_fingerprint",
    "unlabeled_images",
]

#: Files ``unlabeled_images`` takes as images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_META = "teacher.json"
_MEMBER = "fused"


class TeacherChangedError(ValueError):
    """A cached teacher output was made by another teacher (config, weights, calibrators, images or code)."""


def file_digest(path: str | Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file."""
    return {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}


def _leaves(data: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of every leaf of a JSON-like tree (``members[0].path``)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _leaves(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list | tuple):
        for index, value in enumerate(data):
            yield from _leaves(value, f"{where}[{index}]")
    else:
        yield where, data


def teacher_fingerprint(config: Any, gt: CocoGroundTruth) -> dict[str, Any]:
    """What a teacher's fused outputs on ``gt``'s images depend on (see the module docstring).

    Args:
        config: A validated ensemble config.
        gt: The images (ids, file names, sizes) the teacher runs on.
    """
    from fusion import __version__

    ensemble = json.loads(json.dumps(config.model_dump(mode="json"), sort_keys=True, default=str))
    files = {
        where: {"path": value, **file_digest(value)}
        for where, value in _leaves(ensemble)
        if isinstance(value, str) and value and Path(value).is_file()
    }
    images = hashlib.sha256(
        json.dumps([gt.image_ids.tolist(), gt.file_names, gt.sizes.tolist()]).encode()
    ).hexdigest()
    found = {"ensemble": ensemble, "files": files, "images": images, "code": __version__}
    return {**found, "sha256": hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()}


def fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`teacher_fingerprint` results (empty when equal)."""
    changes = []
    before, after = dict(_leaves(old.get("ensemble", {}))), dict(_leaves(new.get("ensemble", {})))
    for key in sorted(set(before) | set(after)):
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            changes.append(f"{key}: {before.get(key, '<unset>')!r} -> {after.get(key, '<unset>')!r}")
    old_files, new_files = old.get("files", {}), new.get("files", {})
    for key in sorted(set(old_files) | set(new_files)):
        a, b = old_files.get(key), new_files.get(key)
        if a is None or b is None:
            changes.append(f"{key}: file {'added' if a is None else 'no longer found'} ({(a or b)['path']})")
        elif (a["size"], a["sha256"]) != (b["size"], b["sha256"]):
            changes.append(
                f"{key}: file {b['path']} changed (size {a['size']} -> {b['size']}, "
                f"sha256 {a['sha256'][:12]}… -> {b['sha256'][:12]}…)"
            )
    if old.get("images") != new.get("images"):
        changes.append("the image list (ids, file names or sizes)")
    if old.get("code") != new.get("code"):
        changes.append(f"code version {old.get('code')} -> {new.get('code')}")
    return changes


@dataclass
class TeacherCache:
    """A complete teacher cache: its fused detections (dataset category ids) and metadata.

    Attributes:
        folder: The cache folder.
        meta: ``teacher.json`` (fingerprint, counts, threshold once recorded).
        predictions: The fused detections of every image.
    """

    folder: Path
    meta: dict[str, Any]
    predictions: Predictions

    @classmethod
    def load(cls, folder: str | Path) -> TeacherCache:
        folder = Path(folder)
        meta = json.loads((folder / _META).read_text())
        if not meta.get("complete"):
            raise ValueError(f"{folder}: the teacher run is not complete; run it again to finish it")
        records = read_jsonl(folder / f"{_MEMBER}.jsonl")
        return cls(folder, meta, Predictions.from_records(records, source=str(folder / f"{_MEMBER}.jsonl")))

    @property
    def threshold(self) -> float | None:
        """The recorded pseudo-label threshold, if chosen."""
        found = self.meta.get("threshold")
        return None if found is None else float(found["threshold"])

    def record_threshold(self, choice: ThresholdChoice, source: Mapping[str, Any] | None = None) -> None:
        """Write ``choice`` (and what it was chosen on, e.g. the validation cache's fingerprint) into the metadata."""
        self.meta["threshold"] = {**asdict(choice), "source": dict(source or {})}
        atomic_write_json(self.folder / _META, self.meta)


def run_teacher(
    config: Any,
    gt: CocoGroundTruth,
    images_dir: str | Path,
    folder: str | Path,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    verbose: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> TeacherCache:
    """Fused detections of every image of ``gt``: from the cache when it is complete, else computed (or resumed).

    Args:
        config: Ensemble config (YAML path, shipped name, mapping or loaded config).
        gt: The images to run on (their annotations are not used; see :func:`unlabeled_images`).
        images_dir: Folder of the images' ``file_name`` paths.
        folder: The cache folder.
        device / batch_size: Override the config's.
        num_workers: DataLoader processes decoding images.
        verbose: Show a progress bar.
        on_batch: Called with the number of images done after each cached batch.

    Raises:
        TeacherChangedError: the folder holds outputs of another teacher (the message lists what changed).
    """
    from fusion.config import EnsembleConfigBase, load_ensemble_config
    from fusion.scoring.cache import MemberCache

    cfg = config if isinstance(config, EnsembleConfigBase) else load_ensemble_config(config)
    folder = Path(folder)
    fingerprint = teacher_fingerprint(cfg, gt)
    meta_path = folder / _META
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        changes = fingerprint_changes(meta.get("fingerprint", {}), fingerprint)
        if changes:
            raise TeacherChangedError(
                f"{folder}: the cached teacher outputs were made by another teacher; refusing to resume with a "
                f"changed teacher. What changed: {'; '.join(changes[:8])}"
                f"{f' (and {len(changes) - 8} more)' if len(changes) > 8 else ''}. "
                "Start a new run (another name) to distill from this teacher."
            )
        if meta.get("complete"):
            return TeacherCache.load(folder)
    else:
        meta = {"fingerprint": fingerprint, "complete": False}
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(meta_path, meta)
    cache = MemberCache(folder, [_MEMBER], fingerprint)
    done = cache.open(resume=True)
    missing = _fill(cfg, gt, images_dir, cache, done, device, batch_size, num_workers, verbose, on_batch)
    meta.update(
        complete=True, images=len(gt), detections=len(cache.load()[_MEMBER]), classes_left_out=missing
    )
    atomic_write_json(meta_path, meta)
    return TeacherCache.load(folder)


def _fill(
    cfg: Any,
    gt: CocoGroundTruth,
    images_dir: str | Path,
    cache: Any,
    done: int,
    device: str | None,
    batch_size: int | None,
    num_workers: int,
    verbose: bool,
    on_batch: Callable[[int], None] | None,
) -> list[str]:
    """Run the ensemble on images ``done..`` of ``gt``, appending each batch's fused detections to ``cache``.

    Returns:
        The ensemble's classes the dataset lacks: their fused boxes cannot be targets and are left out (a
        warning says so, and the metadata records them).
    """
    import warnings

    from tqdm.auto import tqdm

    from fusion.detections import Detections
    from fusion.ensemble import Ensemble
    from fusion.scoring.dataset import make_loader

    ensemble = Ensemble.from_config(cfg, device=device)
    table = ensemble.class_map.translation_to(gt.class_map, strict=False)
    missing = [name for name, t in zip(ensemble.class_map.names, table.tolist()) if t < 0]
    if missing:
        warnings.warn(
            f"teacher {cfg.name!r}: classes {missing} are not in the dataset {gt.source}; their fused boxes are "
            "left out of the targets",
            stacklevel=3,
        )
    if done >= len(gt):
        return missing
    table = table.to(ensemble.device)
    loader = make_loader(
        gt, images_dir, batch_size or cfg.batch_size, num_workers, indices=range(done, len(gt))
    )
    bar = tqdm(total=len(gt), initial=done, desc=f"teacher {cfg.name}", unit="img", disable=not verbose)
    with torch.inference_mode():
        for images, ids, _ in loader:
            kept = []
            for det in ensemble.predict_batch(ensemble.load(images, ids)):
                labels = table[det.labels]
                keep = labels >= 0
                kept.append(
                    Detections(
                        det.boxes[keep], det.scores[keep], labels[keep], det.image_size, check_values=False
                    )
                )
            done += len(ids)
            cache.append({_MEMBER: Predictions.from_detections(kept, ids, gt.class_map)}, done)
            bar.update(len(ids))
            if on_batch is not None:
                on_batch(done)
    bar.close()
    return missing


def unlabeled_images(
    folder: str | Path, categories: Sequence[Mapping[str, Any]], first_id: int = 1
) -> CocoGroundTruth:
    """The images of ``folder`` (recursively, sorted paths) as an annotation set without annotations.

    Args:
        folder: The image folder (``--unlabeled DIR``).
        categories: COCO categories the teacher's outputs are written in (the labelled dataset's).
        first_id: Id of the first image; the next get consecutive ids.

    Raises:
        FileNotFoundError: no such folder, or no image in it.
    """
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"unlabeled image folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(
            f"unlabeled image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    images = []
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            width, height = image.size
        images.append(
            {
                "id": first_id + index,
                "file_name": path.relative_to(root).as_posix(),
                "height": height,
                "width": width,
            }
        )
    return load_annotations({"images": images, "annotations": [], "categories": list(categories)})


@dataclass
class EnsembleTeacher:
    """An ensemble teacher ready to supervise a student: cached fused detections per split and the threshold.

    Attributes:
        threshold: The pseudo-label threshold chosen on the validation split.
        caches: ``{"val", "train", "unlabeled" (with an unlabelled folder)}`` -> the split's cache.
        images: The same keys -> the split's images (and, but for ``unlabeled``, annotations).
    """

    threshold: ThresholdChoice
    caches: dict[str, TeacherCache]
    images: dict[str, CocoGroundTruth]

    def targets(self, split: str, class_map: ClassMap) -> dict[int, TrainTarget]:
        """``{image_id: TrainTarget}`` of ``split``'s teacher boxes at the threshold, labels in ``class_map``.

        On ``train`` they are a second target set beside the ground truth (Teach-DETR); on ``unlabeled`` the
        only targets.
        """
        if split not in self.caches:
            raise KeyError(f"no teacher outputs for split {split!r}; have {sorted(self.caches)}")
        return pseudo_targets(
            self.caches[split].predictions, self.images[split], class_map, self.threshold.threshold
        )


def prepare_teacher(
    config: Any,
    out_dir: str | Path,
    train: tuple[CocoGroundTruth, str | Path],
    val: tuple[CocoGroundTruth, str | Path],
    unlabeled: str | Path | None = None,
    *,
    iou_thr: float = 0.5,
    threshold: float | None = None,
    **run_options: Any,
) -> EnsembleTeacher:
    """Run (or reuse) the teacher on the validation, training and unlabelled images under ``out_dir/teacher/``,
    choose the pseudo-label threshold on validation and record it in every split's metadata.

    Args:
        config: Ensemble config.
        out_dir: The run folder.
        train / val: ``(annotations, image folder)`` of the labelled splits.
        unlabeled: A folder of unlabelled images (ids continue after the training split's).
        iou_thr: Matching IoU of the F1 threshold choice.
        threshold: A set pseudo-label threshold instead of the best-F1 one (its validation F1 is recorded).
        **run_options: :func:`run_teacher`'s keyword arguments (``device``, ``batch_size``, ...).
    """
    from fusion.config import EnsembleConfigBase, load_ensemble_config

    cfg = config if isinstance(config, EnsembleConfigBase) else load_ensemble_config(config)
    folder = Path(out_dir) / "teacher"
    images = {"val": val[0], "train": train[0]}
    dirs = {"val": val[1], "train": train[1]}
    if unlabeled is not None:
        first_id = int(train[0].image_ids.max()) + 1 if len(train[0]) else 1
        images["unlabeled"] = unlabeled_images(unlabeled, train[0].dataset["categories"], first_id)
        dirs["unlabeled"] = unlabeled
    caches = {
        split: run_teacher(cfg, images[split], dirs[split], folder / split, **run_options) for split in images
    }
    choice = choose_threshold(caches["val"].predictions, images["val"], iou_thr, fixed=threshold)
    source = {"split": "val", "teacher": caches["val"].meta["fingerprint"]["sha256"]}
    for cache in caches.values():
        cache.record_threshold(choice, source)
    return EnsembleTeacher(choice, caches, images)
