"""A contact sheet of rendered images with their ground-truth boxes, for a first look at a rendered dataset.

No text is drawn (fonts differ between machines): a legend row shows each class's shape in its box colour, in
category-id order.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from fusion.synthetic.render_draw import CLASS_SHAPES, coverage, sample_shape

__all__ = ["BOX_COLOURS", "write_preview"]

# Box colour of category id k + 1 (one per class of CLASS_SHAPES).
BOX_COLOURS = (
    (255, 40, 40), (40, 255, 40), (60, 120, 255), (255, 255, 0),
    (255, 0, 255), (0, 255, 255), (255, 150, 0), (255, 255, 255),
)  # fmt: skip


def _legend(cell: int) -> np.ndarray:
    """One row: each class's canonical shape (unrotated) in its box colour on a dark cell."""
    row = np.full((cell, cell * len(CLASS_SHAPES), 3), 30, dtype=np.uint8)
    rng = np.random.default_rng(0)
    for k, kind in enumerate(CLASS_SHAPES):
        shape = sample_shape(rng, kind, 0.4 * cell)
        shape = type(shape)(shape.kind, shape.radius, 1.0, 0.0, shape.params)
        cov = coverage(shape, 0.5 * cell, 0.5 * cell, 0, 0, cell, cell).astype(np.float64)[..., None] * 0.25
        tile = row[:, k * cell : (k + 1) * cell].astype(np.float64)
        row[:, k * cell : (k + 1) * cell] = np.rint(tile + (np.array(BOX_COLOURS[k]) - tile) * cov).astype(
            np.uint8
        )
    return row


def write_preview(
    path: str | Path,
    annotations: str | Path,
    images_dir: str | Path,
    count: int = 16,
    columns: int = 4,
    scale: int = 2,
) -> Path:
    """Write a grid of the first ``count`` images of a split with their boxes, enlarged ``scale`` times.

    Args:
        path: Output PNG.
        annotations: The split's COCO annotations (boxes coloured by :data:`BOX_COLOURS` of their category).
        images_dir: Folder of the split's images.
        count: Number of images shown.
        columns: Images per row.
        scale: Integer enlargement (nearest neighbour), so small objects stay visible.
    """
    from PIL import Image, ImageDraw

    from fusion.io import atomic_write_bytes

    coco = json.loads(Path(annotations).read_text())
    images = coco["images"][:count]
    if not images:
        raise ValueError(f"{annotations}: no images to preview")
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    tiles = []
    for info in images:
        with Image.open(Path(images_dir) / info["file_name"]) as opened:
            tile = opened.convert("RGB")
        tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
        draw = ImageDraw.Draw(tile)
        for ann in by_image.get(info["id"], []):
            x, y, w, h = (v * scale for v in ann["bbox"])
            draw.rectangle((x - 1, y - 1, x + w, y + h), outline=(0, 0, 0), width=1)
            draw.rectangle(
                (x, y, x + w - 1, y + h - 1), outline=BOX_COLOURS[(ann["category_id"] - 1) % 8], width=1
            )
        tiles.append(np.asarray(tile))
    height, width = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (height + 2), columns * (width + 2), 3), 0, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[
            r * (height + 2) : r * (height + 2) + tile.shape[0],
            c * (width + 2) : c * (width + 2) + tile.shape[1],
        ] = tile
    legend = _legend(min(48, sheet.shape[1] // len(CLASS_SHAPES)))
    band = np.zeros((legend.shape[0], sheet.shape[1], 3), dtype=np.uint8)
    band[:, : legend.shape[1]] = legend
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate([band, sheet], axis=0)).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
