"""The demo's picture: a few test images, one row each, with the ground truth, each member's boxes and the fused boxes
side by side (one column each), so what fusion keeps, merges and drops can be seen.

Drawn with matplotlib (its bundled font, so the text looks the same everywhere); boxes are coloured by class with
the colours of :data:`fusion.synthetic.render_preview.BOX_COLOURS` and drawn only above a score threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fusion.detections import Detections

__all__ = ["write_picture"]


def _draw(
    ax, image: np.ndarray, det: Detections, score_thr: float, colours: Sequence[tuple[int, int, int]]
) -> int:
    """Show ``image`` with the boxes of ``det`` scoring at least ``score_thr``; returns how many were drawn."""
    from matplotlib.patches import Rectangle

    ax.imshow(image, interpolation="nearest")
    keep = det.scores >= score_thr
    boxes = det.boxes[keep].cpu().double().numpy()
    labels = det.labels[keep].cpu().numpy()
    for (x0, y0, x1, y1), label in zip(boxes, labels):
        colour = np.asarray(colours[int(label) % len(colours)]) / 255.0
        # A black rim under the coloured line keeps white and yellow boxes visible on bright backgrounds.
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.4, edgecolor="black"))
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2, edgecolor=colour))
    ax.set_xticks([])
    ax.set_yticks([])
    return len(boxes)


def write_picture(
    path: str | Path,
    images: Sequence[np.ndarray],
    truth: Sequence[Detections],
    entries: Mapping[str, Sequence[Detections]],
    class_names: Sequence[str],
    score_thr: float = 0.3,
) -> Path:
    """Write the side-by-side PNG.

    Args:
        path: Output PNG.
        images: ``[H, W, 3]`` uint8 RGB images, one per row.
        truth: Ground-truth boxes of each image (labels index ``class_names``; scores ignored).
        entries: ``{column title: Detections per image}``: the members then ``"fused"``, in column order.
        class_names: Names of the labels, for the legend.
        score_thr: Boxes scoring below it are not drawn (the evaluation used all of them).

    Returns:
        ``path``.
    """
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from fusion.io import atomic_write_bytes
    from fusion.synthetic.render_preview import BOX_COLOURS

    if not images:
        raise ValueError("write_picture: no images to draw")
    columns = {"ground truth": truth, **entries}
    for title, dets in columns.items():
        if len(dets) != len(images):
            raise ValueError(
                f"write_picture: {title!r} has {len(dets)} images' detections for {len(images)} images"
            )
    rows, cols = len(images), len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.6), squeeze=False)
    for r, image in enumerate(images):
        for c, (title, dets) in enumerate(columns.items()):
            thr = 0.0 if c == 0 else score_thr
            drawn = _draw(axes[r][c], image, dets[r], thr, BOX_COLOURS)
            axes[r][c].set_xlabel(f"{drawn} boxes", fontsize=7, labelpad=1)
            if r == 0:
                axes[r][c].set_title(title, fontsize=9, fontweight="bold" if title == "fused" else "normal")
    handles = [
        Patch(facecolor=np.asarray(BOX_COLOURS[k % len(BOX_COLOURS)]) / 255.0, edgecolor="black", label=name)
        for k, name in enumerate(class_names)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    fig.suptitle(f"boxes scoring >= {score_thr:g} (all boxes count in the evaluation)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
