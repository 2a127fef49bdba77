"""Scoring plots (matplotlib, Agg canvas per figure, imported on demand): PR curves and per-class gains.

Both are written atomically as PNG. The per-class plot shows the classes where fusion gains most and loses most
against the best member on that class (at most ``2 * top`` bars), not one bar per class per entry.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fusion.coco.evaluate import EvalResult
from fusion.io import atomic_write_bytes

__all__ = ["class_gains", "plot_per_class_ap", "plot_pr_curves"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_pr_curves(
    path: Path,
    members: Mapping[str, EvalResult],
    fused: EvalResult | None,
    fused_uncalibrated: EvalResult | None = None,
) -> Path:
    """Precision-recall at IoU .50 and .75 (mean over categories), one line per member, the fused set, and (when
    calibrated) the uncalibrated fused set dashed beside it."""
    from fusion.coco.evaluate import RECALL_THRESHOLDS

    fused_name = "fused (calibrated)" if fused_uncalibrated is not None else "fused"
    entries = {**members, **({fused_name: fused} if fused else {})}
    if fused_uncalibrated is not None:
        entries["fused, uncalibrated"] = fused_uncalibrated
    figure = _figure(11, 4.5)
    for k, (iou, label) in enumerate(((0, "IoU=.50"), (5, "IoU=.75"))):
        ax = figure.add_subplot(1, 2, k + 1)
        key = "AP50" if iou == 0 else "AP75"
        for name, result in entries.items():
            is_fused = name.startswith("fused")
            ax.plot(
                RECALL_THRESHOLDS,
                np.nan_to_num(result.pr_curve(iou), nan=0.0),
                lw=2.5 if is_fused else 1.2,
                linestyle="--" if name == "fused, uncalibrated" else "-",
                label=f"{name} ({key}={result.stats[key]:.3f})",
            )
        ax.set(
            xlabel="recall",
            ylabel="precision",
            title=f"PR curve, {label}, mean over classes",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(figure, path)


def class_gains(
    members: Mapping[str, EvalResult], fused: EvalResult
) -> list[tuple[str, float, str, float, float]]:
    """Per class with GT: ``(class, fused AP - best member AP, best member, its AP, fused AP)``, losses first.

    The best member is the one with the highest AP on that class.
    """
    rows = []
    for name, value in fused.per_class_ap.items():
        if math.isnan(value):
            continue
        scored = {m: r.per_class_ap.get(name, math.nan) for m, r in members.items()}
        scored = {m: v for m, v in scored.items() if not math.isnan(v)}
        if not scored:
            continue
        best = max(scored, key=lambda m: scored[m])
        rows.append((name, value - scored[best], best, scored[best], value))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def plot_per_class_ap(
    path: Path, members: Mapping[str, EvalResult], fused: EvalResult | None, top: int = 12
) -> Path:
    """Fused AP@[.50:.95] minus the best member's on each class: the ``top`` largest losses and gains, as
    horizontal bars labelled with both APs (all classes when there are at most ``2 * top``)."""
    rows = class_gains(members, fused) if fused is not None and members else []
    shown = rows if len(rows) <= 2 * top else rows[:top] + rows[-top:]
    figure = _figure(8, max(2.5, 0.32 * len(shown) + 1.2))
    ax = figure.add_subplot(1, 1, 1)
    if not shown:
        ax.text(0.5, 0.5, "no class with ground truth in every entry", ha="center", va="center")
        ax.set_axis_off()
        return _save(figure, path)
    y = np.arange(len(shown))[::-1]
    gains = [r[1] for r in shown]
    ax.barh(y, gains, color=["#c0392b" if g < 0 else "#27ae60" for g in gains])
    ax.set_yticks(y, [f"{r[0]}  ({r[2]} {r[3]:.2f} → fused {r[4]:.2f})" for r in shown], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    if len(shown) < len(rows):
        ax.axhline(y[top - 1] - 0.5, color="grey", lw=0.8, linestyle=":")
    ax.set_xlabel("fused AP − best member's AP on the class (AP@[.50:.95])")
    what = (
        f"{top} lowest and {top} highest of {len(rows)} classes" if len(shown) < len(rows) else "every class"
    )
    ax.set_title(f"Fused AP − best member's, per class ({what})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)
