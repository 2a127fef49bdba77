"""Scoring outputs: ``metrics.json``, ``fused.json``, ``report.md`` and PNG plots, all written atomically.

``metrics.json``::

    {"members": {NAME: {"AP": ..., ..., "ARl": ...}}, "fused": {same keys}, "backend": "hotcoco",
     "policy": {"type": "wbf", ...}, "per_class_ap": {"members": {NAME: {class: AP}}, "fused": {class: AP}},
     "num_images": I, "num_detections": {NAME: n, "fused": n}}

Extra per-entry metrics (e.g. calibration's ``"D-ECE"``) are added by putting them in ``EvalResult.extra`` (or the
``extra`` argument of :func:`build_metrics`); they are merged into that entry next to the 12 COCO stats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion.io import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_write_yaml
from fusion.scoring.annotations import CocoGroundTruth
from fusion.scoring.evaluate import STAT_KEYS, EvalResult
from fusion.scoring.predictions import Predictions

__all__ = ["build_metrics", "format_table", "plot_per_class_ap", "plot_pr_curves", "write_outputs"]

_TABLE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _entry(result: EvalResult, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**{k: result.stats[k] for k in STAT_KEYS}, **result.extra, **(extra or {})}


def build_metrics(
    members: Mapping[str, EvalResult],
    fused: EvalResult | None,
    policy: Mapping[str, Any] | None,
    num_images: int,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` dict; ``extra[name]`` (a member name or ``"fused"``) adds metrics to that entry."""
    extra = extra or {}
    backends = {r.backend for r in [*members.values(), *([fused] if fused else [])]}
    metrics: dict[str, Any] = {
        "members": {name: _entry(r, extra.get(name)) for name, r in members.items()},
        "fused": _entry(fused, extra.get("fused")) if fused else None,
        "backend": backends.pop() if len(backends) == 1 else sorted(backends),
        "policy": dict(policy) if policy else None,
        "per_class_ap": {
            "members": {n: {c: _clean(v) for c, v in r.per_class_ap.items()} for n, r in members.items()},
            "fused": {c: _clean(v) for c, v in fused.per_class_ap.items()} if fused else None,
        },
        "num_images": num_images,
        "num_detections": {
            **{n: r.num_detections for n, r in members.items()},
            **({"fused": fused.num_detections} if fused else {}),
        },
    }
    return metrics


def format_table(members: Mapping[str, EvalResult], fused: EvalResult | None) -> str:
    """A markdown table: one row per member, the fused row, and the fused gain over the best member (by AP)."""
    header = "| | " + " | ".join(_TABLE_KEYS) + " |\n|---|" + "---:|" * len(_TABLE_KEYS) + "\n"
    rows = [
        f"| {name} | " + " | ".join(f"{r.stats[k]:.4f}" for k in _TABLE_KEYS) + " |"
        for name, r in members.items()
    ]
    if fused is not None:
        rows.append("| **fused** | " + " | ".join(f"**{fused.stats[k]:.4f}**" for k in _TABLE_KEYS) + " |")
        if members:
            best_name, best = max(members.items(), key=lambda item: item[1].stats["AP"])
            gains = " | ".join(f"{fused.stats[k] - best.stats[k]:+.4f}" for k in _TABLE_KEYS)
            rows.append(f"| gain over best member ({best_name}) | {gains} |")
    return header + "\n".join(rows) + "\n"


def _report_markdown(
    gt: CocoGroundTruth,
    members: Mapping[str, EvalResult],
    fused: EvalResult | None,
    policy: Mapping[str, Any] | None,
    plots: list[str],
) -> str:
    backend = next(iter(members.values())).backend if members else (fused.backend if fused else "?")
    lines = [
        "# Ensemble scoring report",
        "",
        f"- annotations: `{gt.source}` ({len(gt)} images, {len(gt.dataset['annotations'])} GT boxes, "
        f"{len(gt.class_map)} categories)",
        f"- evaluation backend: {backend} (COCO bbox, 12 stats as pycocotools)",
        f"- fusion policy: `{dict(policy) if policy else None}`",
        "",
        format_table(members, fused),
    ]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_pr_curves(path: Path, members: Mapping[str, EvalResult], fused: EvalResult | None) -> Path:
    """Precision-recall at IoU .50 and .75 (mean over categories), one line per member and the fused set."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import io

    import matplotlib.pyplot as plt
    import numpy as np

    from fusion.scoring.evaluate import RECALL_THRESHOLDS

    entries = {**members, **({"fused": fused} if fused else {})}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (iou, label) in zip(axes, ((0, "IoU=.50"), (5, "IoU=.75"))):
        for name, result in entries.items():
            curve = result.pr_curve(iou)
            ax.plot(
                RECALL_THRESHOLDS,
                np.nan_to_num(curve, nan=0.0),
                lw=2.5 if name == "fused" else 1.2,
                label=f"{name} (AP{50 if iou == 0 else 75}={result.stats['AP50' if iou == 0 else 'AP75']:.3f})",
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
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_per_class_ap(path: Path, members: Mapping[str, EvalResult], fused: EvalResult | None) -> Path:
    """Grouped bars of per-class AP@[.50:.95]: members and fused side by side (classes without GT omitted)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import io

    import matplotlib.pyplot as plt
    import numpy as np

    entries = {**members, **({"fused": fused} if fused else {})}
    first = next(iter(entries.values()))
    classes = [c for c, v in first.per_class_ap.items() if not math.isnan(v)]
    width = 0.8 / max(len(entries), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(classes) * max(len(entries), 1) / 2), 4.5))
    x = np.arange(len(classes))
    for k, (name, result) in enumerate(entries.items()):
        ax.bar(x + k * width, [result.per_class_ap[c] for c in classes], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, classes, rotation=90, fontsize=7)
    ax.set(ylabel="AP@[.50:.95]", title="Per-class AP, members vs fused")
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_outputs(
    out: Path,
    gt: CocoGroundTruth,
    members: Mapping[str, EvalResult],
    fused: EvalResult | None,
    fused_predictions: Predictions | None,
    policy: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    *,
    plots: bool = True,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write every output of a scoring run into ``out``; returns the metrics dict."""
    out = Path(out)
    metrics = build_metrics(members, fused, policy, len(gt), extra)
    atomic_write_yaml(out / "config.yaml", dict(config))
    if fused_predictions is not None:
        fused_predictions.save(out / "fused.json")
    written = []
    if plots:
        written.append(str(plot_pr_curves(out / "pr_curves.png", members, fused)))
        written.append(str(plot_per_class_ap(out / "per_class_ap.png", members, fused)))
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", _report_markdown(gt, members, fused, policy, written))
    return metrics
