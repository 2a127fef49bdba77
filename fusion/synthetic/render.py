"""Rendered COCO-format image datasets of coloured shapes: training data that small detectors learn on a CPU.

Eight classes of shapes (:data:`CLASSES`: circle, square, triangle, star, ring, cross, ellipse, hexagon) in colours
shared by every class, so the shape decides; 6 px to the image side (circumscribed diameter), weighted 1 / sqrt(size)
(COCO's small, medium and large all occur); gradients, stripes, blobs, checks and value noise behind; clutter
shapes that are no class (bars, lines, irregular polygons, half discs, arcs); occlusion with the visible-box rule of
:mod:`fusion.synthetic.render_scene`; blur and sensor noise.

Layout of ``render_dataset(out_dir, ...)``::

    out_dir/manifest.json               written last: its presence means the whole render is complete
    out_dir/<split>/annotations.json    COCO: images, annotations (bbox xywh, area = w * h), categories (ids from 1)
    out_dir/<split>/images/000000.png   file_name is relative to the split's images/ folder

The ``unlabeled`` split (for distillation) has an annotations file with its images and categories and no
annotations. A split folder appears in one atomic rename once complete, so a killed render is resumed by calling
again: complete splits are kept, the rest is rendered anew.

Determinism: image ``i`` of split ``s`` is drawn from its own PCG64 stream seeded by ``(seed, s, i)`` (``s`` from
a SHA-256 of the split's name), through platform-independent arithmetic (see
:mod:`fusion.synthetic.render_draw`). Images are written as PNG by our own encoder: with ``compress_level=0``
(the default; noisy images barely compress) the bytes are the same on every platform; levels 1-9 use zlib,
whose output may differ between zlib builds. ``manifest.json`` records a SHA-256 of each split's pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fusion.synthetic.render_draw import CLASS_SHAPES
from fusion.synthetic.render_scene import RenderConfig, RenderedImage, render_image

__all__ = [
    "CLASSES",
    "DEFAULT_SPLITS",
    "UNLABELED",
    "encode_png",
    "image_rng",
    "render_dataset",
    "render_split_image",
]

CLASSES = CLASS_SHAPES
UNLABELED = "unlabeled"
DEFAULT_SPLITS = {"train": 4000, "val": 500, "test": 500, UNLABELED: 0}
FORMAT_VERSION = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _deflate_stored(raw: bytes) -> bytes:
    """A zlib stream of stored (uncompressed) deflate blocks: a fixed function of ``raw``, unlike zlib's output."""
    blocks = [b"\x78\x01"]
    for start in range(0, max(len(raw), 1), 65535):
        part = raw[start : start + 65535]
        final = 1 if start + 65535 >= len(raw) else 0
        blocks.append(struct.pack("<BHH", final, len(part), len(part) ^ 0xFFFF) + part)
    blocks.append(struct.pack(">I", zlib.adler32(raw)))
    return b"".join(blocks)


def encode_png(pixels: np.ndarray, compress_level: int = 0) -> bytes:
    """PNG bytes of an RGB image.

    Args:
        pixels: ``(H, W, 3)`` uint8.
        compress_level: 0 = stored deflate blocks (same bytes everywhere); 1-9 = zlib at that level.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"encode_png: expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level: must be in 0..9, got {compress_level}")
    height, width, _ = pixels.shape
    rows = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None on every row
    rows[:, 1:] = pixels.reshape(height, 3 * width)
    raw = rows.tobytes()
    data = _deflate_stored(raw) if compress_level == 0 else zlib.compress(raw, compress_level)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split``: independent of the split's size and of other images."""
    split_key = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:4], "big")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split_key, index])))


def render_split_image(
    seed: int, split: str, index: int, config: RenderConfig | None = None
) -> RenderedImage:
    """Image ``index`` of ``split`` exactly as :func:`render_dataset` renders it (pixels, boxes, owner map)."""
    return render_image(image_rng(seed, split, index), config)


def _render_one(
    job: tuple[int, str, int, RenderConfig, int, str],
) -> tuple[list[list[int]], list[int], list[float], bytes]:
    """Render and write one image; returns boxes (xyxy), labels, visible fractions and the pixels' SHA-256."""
    seed, split, index, config, compress_level, folder = job
    out = render_split_image(seed, split, index, config)
    (Path(folder) / f"{index:06d}.png").write_bytes(encode_png(out.pixels, compress_level))
    return out.boxes.tolist(), out.labels.tolist(), out.visible.tolist(), hashlib.sha256(out.pixels).digest()


def _results(jobs: list[tuple], workers: int) -> Iterator[tuple]:
    if workers <= 1:
        yield from map(_render_one, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_render_one, jobs, chunksize=32)


def _coco(split: str, info: dict[str, Any], records: list[tuple], size: int) -> dict[str, Any]:
    images, annotations = [], []
    for index, (boxes, labels, visible, _) in enumerate(records):
        images.append({"id": index + 1, "file_name": f"{index:06d}.png", "width": size, "height": size})
        if split == UNLABELED:
            continue
        for (x0, y0, x1, y1), label, seen in zip(boxes, labels, visible, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "visible": round(float(seen), 3),
                }
            )
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASSES)]
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _split_info(
    seed: int, split: str, count: int, config: RenderConfig, compress_level: int
) -> dict[str, Any]:
    return {
        "description": f"fusion.synthetic.render: rendered shapes, split {split}",
        "format": FORMAT_VERSION,
        "seed": seed,
        "split": split,
        "count": count,
        "config": dataclasses.asdict(config),
        "compress_level": compress_level,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _render_split(out_dir: Path, split: str, info: dict[str, Any], workers: int, bar: Any) -> dict[str, Any]:
    """Render one split into ``.<split>.partial/`` and rename it into place; a complete one is kept as it is."""
    final = out_dir / split
    done = _read_json(final / "annotations.json")
    done_info = done.get("info") if isinstance(done, dict) else None
    if isinstance(done_info, dict) and {k: v for k, v in done_info.items() if k != "pixels_sha256"} == info:
        bar.update(info["count"])
        return done
    partial = out_dir / f".{split}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    cfg = RenderConfig(**info["config"])
    jobs = [
        (info["seed"], split, i, cfg, info["compress_level"], str(partial / "images"))
        for i in range(info["count"])
    ]
    records = []
    for record in _results(jobs, workers):
        records.append(record)
        bar.update(1)
    pixels = hashlib.sha256(b"".join(r[3] for r in records)).hexdigest()
    coco = _coco(split, {**info, "pixels_sha256": pixels}, records, cfg.image_size)
    (partial / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    shutil.rmtree(final, ignore_errors=True)  # an older split of other parameters: no manifest vouches for it
    partial.rename(final)
    return coco


def render_dataset(
    out_dir: str | Path,
    seed: int = 0,
    splits: Mapping[str, int] | None = None,
    image_size: int = 128,
    *,
    config: RenderConfig | None = None,
    compress_level: int = 0,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, tuple[Path, Path]]:
    """Render a COCO-format dataset of shapes into ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: Output folder. A complete render of the same parameters there is reused as it is; an incomplete
            one (no ``manifest.json``) is resumed.
        seed: Non-negative seed; the same seed and parameters give the same files.
        splits: Images per split (``unlabeled``: images without annotations); 0 skips a split. Default
            :data:`DEFAULT_SPLITS`.
        image_size: Side of the square images (px); ignored when ``config`` is given.
        config: Everything else about the images (:class:`~fusion.synthetic.render_scene.RenderConfig`).
        compress_level: PNG compression, 0 (same bytes everywhere) to 9.
        workers: Processes rendering in parallel (0 or 1: this one). The files do not depend on it.
        overwrite: Replace a complete render of OTHER parameters in ``out_dir`` (otherwise a ``ValueError``).
        progress: Show a progress bar.

    Returns:
        ``{split: (annotations_path, images_dir)}`` for every split with images.
    """
    from tqdm.auto import tqdm

    from fusion.io import atomic_write_json

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level: must be in 0..9, got {compress_level}")
    config = config or RenderConfig(image_size=image_size)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    for name, count in splits.items():
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ValueError(f"splits: split name {name!r} must be letters, digits, '_' or '-'")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"splits[{name!r}]: must be a non-negative integer, got {count!r}")
    out_dir = Path(out_dir)
    infos = {s: _split_info(seed, s, n, config, compress_level) for s, n in splits.items() if n > 0}
    if not infos:
        raise ValueError(f"splits: no split has images ({splits})")
    wanted = {"format": FORMAT_VERSION, "splits": infos}
    result = {s: (out_dir / s / "annotations.json", out_dir / s / "images") for s in infos}
    manifest_path = out_dir / "manifest.json"
    manifest = _read_json(manifest_path)
    if isinstance(manifest, dict) and {k: manifest.get(k) for k in wanted} == wanted:
        return result
    if isinstance(manifest, dict) and not overwrite:
        raise ValueError(
            f"{out_dir}: holds a complete render of other parameters (see {manifest_path}); "
            "render into another folder or pass overwrite=True (fusion render: another --name, or no --exist-ok)"
        )
    manifest_path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    with tqdm(total=sum(splits.values()), unit="img", desc="render", disable=not progress) as bar:
        for split, info in infos.items():
            coco = _render_split(out_dir, split, info, workers, bar)
            summary[split] = {
                "images": len(coco["images"]),
                "objects": len(coco["annotations"]),
                "pixels_sha256": coco["info"]["pixels_sha256"],
                "annotations": f"{split}/annotations.json",
                "images_dir": f"{split}/images",
            }
    atomic_write_json(manifest_path, {**wanted, "summary": summary})
    return result
