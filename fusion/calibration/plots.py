"""Reliability diagrams (matplotlib, Agg backend, imported only when a plot is drawn)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fusion.calibration.dece import DECEResult

__all__ = ["reliability_diagram"]


def reliability_diagram(
    results: Mapping[str, DECEResult], path: str | Path, title: str = "Reliability"
) -> Path:
    """Draw precision vs confidence per bin for each labelled result (e.g. ``{"before": r0, "after": r1}``).

    The file is written atomically as PNG; the protocol and each D-ECE appear in the legend and title.
    """
    import io

    # The Agg canvas is attached to this figure only: no pyplot, no change to the process-wide backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fusion.io import atomic_write_bytes

    if not results:
        raise ValueError("reliability_diagram needs at least one result")
    figure = Figure(figsize=(5, 7.2), dpi=100)
    FigureCanvasAgg(figure)
    # Top: precision per bin; bottom: how many detections each bin holds (log scale), so that a diagram whose
    # detections mostly sit in the last bins still shows where the mass is and which points carry it.
    axes, counts = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    protocol = next(iter(results.values())).protocol
    markers = "osD^vP*X"
    width = 1.0 / max(len(results), 1)
    for k, (label, result) in enumerate(results.items()):
        centres = (result.bin_edges[:-1] + result.bin_edges[1:]) / 2
        filled = result.bin_counts > 0
        share = result.bin_counts[filled] / max(result.bin_counts.sum(), 1)
        axes.plot(
            np.where(filled, result.bin_confidence, centres)[filled],
            result.bin_precision[filled],
            marker=markers[k % len(markers)],
            markersize=4,
            alpha=0.85,
            label=f"{label}: D-ECE {result.value:.3f} (n={result.count})",
        )
        axes.scatter(
            np.where(filled, result.bin_confidence, centres)[filled],
            result.bin_precision[filled],
            s=20 + 400 * share,
            alpha=0.25,
        )
        step = result.bin_edges[1] - result.bin_edges[0]
        counts.bar(
            result.bin_edges[:-1] + step * width * (k + 0.5),
            result.bin_counts,
            width=step * width,
            label=label,
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.03, 1.06)
    axes.set_ylabel("precision")
    axes.grid(alpha=0.3)
    axes.set_title(f"{title}\n{protocol.describe()}", fontsize=9)
    # Below the axes: inside, it would hide the points that sit at precision 1.0.
    figure.legend(*axes.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=1, frameon=False)
    counts.set_yscale("log")
    counts.set_xlabel("mean confidence (bins)")
    counts.set_ylabel("detections")
    counts.grid(alpha=0.3, axis="y")
    figure.tight_layout(rect=(0, 0.01 + 0.021 * (len(results) + 1), 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
