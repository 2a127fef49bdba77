"""COCO annotations (and optional pseudo-labels) -> a YOLO-format dataset folder, for ultralytics' trainer.

Layout written under ``root``::

    data.yaml                    absolute paths, names in the job's class order
    images/<split>/<id><suffix>  one link (or copy) per COCO image, named by its COCO image id
    labels/<split>/<id>.txt      one "cls cx cy w h" line per box, normalised to [0, 1], 6 decimals
    manifest.json                what the folder was made from (a matching manifest means reuse)

Images are named by COCO image id so that nested or clashing ``file_name`` paths cannot collide, a folder named
``images`` inside a ``file_name`` cannot confuse ultralytics' image -> label path rule (it replaces the LAST
``/images/``), and a prediction on a file maps back to its COCO image by the file stem.

What is not turned into a label is counted in :class:`SplitSummary`, never dropped silently: crowd annotations
(YOLO has no ignore regions), pseudo-labels under the score threshold, boxes left with no area after clipping to
the image, and exact duplicate lines (ultralytics would remove those with a warning). The label lines are made
in :mod:`fusion.training.yolo_labels`.

The folder is built in a temporary sibling and renamed into place, so a reader sees the old folder or the whole
new one; the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml

from fusion.classes import ClassMap
from fusion.coco.annotations import CocoGroundTruth, load_annotations
from fusion.coco.predictions import Predictions
from fusion.io import atomic_write_json, atomic_write_text
from fusion.training.yolo_labels import label_rows, label_texts, load_pseudo_labels

__all__ = [
    "IMAGE_SUFFIXES",
    "SplitSummary",
    "YoloDataset",
    "YoloSplit",
    "write_yolo_dataset",
]

# ultralytics reads only these suffixes (ultralytics.data.utils.IMG_FORMATS, 8.4); any other file is skipped
# without an error, so an image it would skip is refused here instead.
IMAGE_SUFFIXES = frozenset(
    {
        ".avif",
        ".bmp",
        ".dng",
        ".heic",
        ".heif",
        ".jp2",
        ".jpeg",
        ".jpg",
        ".mpo",
        ".png",
        ".tif",
        ".tiff",
        ".webp",
    }
)
_FORMAT_VERSION = 1
LinkMode = Literal["hardlink", "symlink", "copy"]


@dataclass(frozen=True)
class YoloSplit:
    """One split of the dataset to write.

    Attributes:
        annotations: A COCO annotation file (or parsed dict): its images, and its boxes unless ``ground_truth``
            is False (an unlabelled split needs only ``images`` and ``categories``).
        images: Folder the images' ``file_name`` paths are relative to.
        pseudo_labels: Optional COCO results (a ``.json``/``.jsonl`` file, :class:`Predictions` or a list of
            records; category ids of ``annotations``) added as labels where ``score >= score_threshold``.
        score_threshold: Pseudo-labels scoring below it are not used.
        ground_truth: Write the annotation file's boxes (False: pseudo-labels only).
    """

    annotations: str | Path | Mapping[str, Any]
    images: str | Path
    pseudo_labels: str | Path | Predictions | Sequence[Mapping[str, Any]] | None = None
    score_threshold: float = 0.0
    ground_truth: bool = True


@dataclass(frozen=True)
class SplitSummary:
    """Counts of one written split.

    Attributes:
        images: Images written (each has a label file, empty when it has no boxes).
        empty_images: Images whose label file is empty.
        boxes: Label lines written (ground truth + pseudo-labels).
        pseudo_boxes: Of ``boxes``, lines from pseudo-labels.
        crowd_skipped: Crowd annotations not written (YOLO has no ignore regions).
        below_threshold: Pseudo-labels under ``score_threshold``.
        clipped: Boxes that reached outside their image and were clipped to it.
        no_area: Boxes with no area inside their image (not written).
        duplicates: Exact duplicate lines within an image (written once).
    """

    images: int
    empty_images: int
    boxes: int
    pseudo_boxes: int
    crowd_skipped: int
    below_threshold: int
    clipped: int
    no_area: int
    duplicates: int


@dataclass(frozen=True)
class YoloDataset:
    """A written YOLO-format folder.

    Attributes:
        root: The folder.
        data_yaml: Its ``data.yaml`` (what ultralytics' ``data=`` takes).
        summaries: Counts per split.
        reused: True when an identical folder (same manifest) was already there and was kept.
    """

    root: Path
    data_yaml: Path
    summaries: dict[str, SplitSummary]
    reused: bool


def _digest(data: Any) -> str:
    return hashlib.sha256(
        orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    ).hexdigest()


def _check_images(gt: CocoGroundTruth, images: Path, name: str) -> list[Path]:
    """The source file of every image, checked: present, a suffix ultralytics reads, the annotated size."""
    from PIL import Image

    if not images.is_dir():
        raise FileNotFoundError(f"split {name!r}: image folder {images} does not exist")
    files = []
    for index, (image_id, file_name, (h, w)) in enumerate(
        zip(gt.image_ids, gt.file_names, gt.sizes.tolist())
    ):
        where = f"split {name!r}: {gt.source} images[{index}] (id {int(image_id)})"
        if not file_name:
            raise ValueError(f"{where} has no 'file_name'")
        path = images / file_name
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"{where}: {file_name!r} is not an image type ultralytics reads {sorted(IMAGE_SUFFIXES)}"
            )
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image file {path} does not exist")
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
        if (height, width) != (h, w):
            raise ValueError(
                f"{where}: {path} is {width}x{height} pixels but the annotations say {w}x{h} (width x height)"
            )
        files.append(path.resolve())
    return files


def _place(source: Path, target: Path, link: LinkMode) -> None:
    if link == "symlink":
        target.symlink_to(source)
        return
    if link == "hardlink":
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: a copy serves the same
            pass
    shutil.copyfile(source, target)


def _write_split(
    tmp: Path,
    name: str,
    split: YoloSplit,
    gt: CocoGroundTruth,
    target: ClassMap,
    files: list[Path],
    link: LinkMode,
) -> SplitSummary:
    pseudo = load_pseudo_labels(split.pseudo_labels, gt, name)
    positions, classes, boxes, is_pseudo, counts = label_rows(
        gt, pseudo, target, name, ground_truth=split.ground_truth, score_threshold=split.score_threshold
    )
    texts, more = label_texts(positions, classes, boxes, is_pseudo, gt)
    image_dir, label_dir = tmp / "images" / name, tmp / "labels" / name
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for image_id, source, text in zip(gt.image_ids.tolist(), files, texts):
        _place(source, image_dir / f"{image_id}{source.suffix.lower()}", link)
        (label_dir / f"{image_id}.txt").write_text(text, encoding="utf-8")
    return SplitSummary(images=len(gt), **counts, **more)


def _manifest(class_names: Sequence[str], splits: Mapping[str, YoloSplit], link: LinkMode) -> dict[str, Any]:
    """What the folder depends on: the annotations' content, the pseudo-labels, the settings."""
    entries = {}
    for name, split in splits.items():
        ann = split.annotations
        ann_digest = (
            hashlib.sha256(Path(ann).read_bytes()).hexdigest()
            if isinstance(ann, str | Path)
            else _digest(ann)
        )
        pseudo = split.pseudo_labels
        if pseudo is None:
            pseudo_digest = None
        elif isinstance(pseudo, Predictions):
            pseudo_digest = _digest([pseudo.image_ids, pseudo.category_ids, pseudo.boxes, pseudo.scores])
        elif isinstance(pseudo, str | Path):
            pseudo_digest = hashlib.sha256(Path(pseudo).read_bytes()).hexdigest()
        else:
            pseudo_digest = _digest(list(pseudo))
        entries[name] = {
            "annotations": ann_digest,
            "images": str(Path(split.images).resolve()),
            "pseudo_labels": pseudo_digest,
            "score_threshold": float(split.score_threshold),
            "ground_truth": bool(split.ground_truth),
        }
    return {"version": _FORMAT_VERSION, "names": list(class_names), "link": link, "splits": entries}


def write_yolo_dataset(
    root: str | Path,
    class_names: Sequence[str],
    splits: Mapping[str, YoloSplit],
    link: LinkMode = "hardlink",
) -> YoloDataset:
    """Write (or reuse) a YOLO-format dataset folder at ``root``.

    Args:
        root: The folder to create. An existing folder written by this function from the same inputs is kept
            as it is (``reused``); one from other inputs is replaced; any other existing folder is refused.
        class_names: The job's vocabulary: YOLO class ``k`` is ``class_names[k]``; categories are matched by name.
        splits: ``{"train": ..., "val": ..., ...}``; ultralytics needs ``train`` and ``val``.
        link: How images are placed: ``hardlink`` (a copy where linking fails), ``symlink`` or ``copy``.

    Raises:
        ValueError: no ``train``/``val`` split, an unknown ``link``, a category the job's classes lack, an image
            of a type ultralytics skips or whose size differs from its annotation, bad annotations/results.
        FileNotFoundError: a missing image folder or file.
        FileExistsError: ``root`` exists and was not written by this function.
    """
    root = Path(root).resolve()
    if not {"train", "val"} <= set(splits):
        raise ValueError(f"a YOLO dataset needs 'train' and 'val' splits, got {sorted(splits)}")
    if link not in ("hardlink", "symlink", "copy"):
        raise ValueError(f"link must be 'hardlink', 'symlink' or 'copy', got {link!r}")
    target = ClassMap(list(class_names))
    manifest = _manifest(target.names, splits, link)
    manifest_path = root / "manifest.json"
    if root.exists():
        if not manifest_path.is_file():
            raise FileExistsError(
                f"{root} exists and is not a YOLO dataset written by fusion; remove it or pick another"
            )
        previous = orjson.loads(manifest_path.read_bytes())
        if previous.get("inputs") == manifest:
            summaries = {k: SplitSummary(**v) for k, v in previous["summaries"].items()}
            return YoloDataset(root, root / "data.yaml", summaries, reused=True)

    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        summaries = {}
        for name, split in splits.items():
            gt = load_annotations(split.annotations)
            files = _check_images(gt, Path(split.images), name)
            summaries[name] = _write_split(tmp, name, split, gt, target, files, link)
        data = {"path": str(root), **{name: str(root / "images" / name) for name in splits}}
        data |= {"nc": len(target), "names": dict(enumerate(target.names))}
        atomic_write_text(tmp / "data.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        record = {"inputs": manifest, "summaries": {k: asdict(v) for k, v in summaries.items()}}
        atomic_write_json(tmp / "manifest.json", record)
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return YoloDataset(root, root / "data.yaml", summaries, reused=False)


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``; an older ``root`` is moved aside first and deleted after."""
    if not root.exists():
        os.replace(tmp, root)
        return
    old = root.with_name(f".{root.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(root, old)
    os.replace(tmp, root)
    shutil.rmtree(old, ignore_errors=True)
