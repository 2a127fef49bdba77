"""``results.png`` of a training run: loss curves per step and validation AP per epoch, from ``metrics.jsonl``."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusion.io import atomic_write_bytes

__all__ = ["plot_results"]


def plot_results(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Draw the ``step`` records' losses (total and each term) and the ``eval`` records' AP, AP50, AP75."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("kind") == "step"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [r["step"] for r in steps]
    left.plot(xs, [r["loss"] for r in steps], lw=2, label="total")
    for name in sorted({k for r in steps for k in r.get("losses", {})}):
        left.plot(xs, [r["losses"].get(name, float("nan")) for r in steps], lw=1, label=name)
    left.set(xlabel="step", ylabel="loss", title="training losses")
    if steps and min(r["loss"] for r in steps) > 0:
        left.set_yscale("log")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for key in ("AP", "AP50", "AP75"):
        right.plot([r["epoch"] for r in evals], [r["stats"][key] for r in evals], marker="o", label=key)
    right.set(xlabel="epoch", ylabel="COCO AP", title="validation", ylim=(0, 1))
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
