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
    figure = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    protocol = next(iter(results.values())).protocol
    for label, result in results.items():
        centres = (result.bin_edges[:-1] + result.bin_edges[1:]) / 2
        filled = result.bin_counts > 0
        axes.plot(
            np.where(filled, result.bin_confidence, centres)[filled],
            result.bin_precision[filled],
            marker="o",
            label=f"{label}: D-ECE {result.value:.3f} (n={result.count})",
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("mean confidence")
    axes.set_ylabel("precision")
    axes.set_title(f"{title}\n{protocol.describe()}", fontsize=9)
    axes.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
