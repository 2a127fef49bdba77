"""Scoring outputs: ``metrics.json``, ``fused.json``, ``report.md`` and PNG plots, all written atomically.

``metrics.json``::

    {"members": {NAME: {"AP": ..., ..., "ARl": ...}}, "fused": {same keys}, "backend": "hotcoco",
     "policy": {"type": "wbf", ...}, "per_class_ap": {"members": {NAME: {class: AP}}, "fused": {class: AP}},
     "num_images": I, "num_detections": {NAME: n, "fused": n}}

Extra per-entry metrics (calibration's ``"D-ECE"``) come through the ``extra`` argument of :func:`build_metrics` and
are merged into that entry next to the 12 COCO stats; top-level additions (``"calibration_protocol"``, and with
calibrators ``"calibrators"`` and ``"fused_uncalibrated"``) through ``summary``. :func:`write_run` writes a
:class:`~fusion.scoring.run.ScoredRun` with both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion.coco.annotations import CocoGroundTruth
from fusion.coco.evaluate import STAT_KEYS, EvalResult
from fusion.coco.predictions import Predictions
from fusion.io import atomic_write_json, atomic_write_text, atomic_write_yaml
from fusion.scoring.plots import class_gains, plot_per_class_ap, plot_pr_curves
from fusion.scoring.run import ScoredRun

__all__ = [
    "build_metrics",
    "format_class_table",
    "format_run",
    "format_table",
    "plot_per_class_ap",
    "plot_pr_curves",
    "write_outputs",
    "write_run",
]

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
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` dict; ``extra[name]`` (a member name or ``"fused"``) adds metrics to that entry, and
    ``summary`` adds top-level keys."""
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
        **(summary or {}),
    }
    return metrics


def _number(value: float | None) -> str:
    """``0.1234``; COCO's -1 (no ground truth in that range), NaN and missing values as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == -1:
        return "–"
    return f"{value:.4f}"


def _gain(fused: float, member: float) -> str:
    return "–" if -1 in (fused, member) else f"{fused - member:+.4f}"


def _cells(
    stats: Mapping[str, float], extra: Mapping[str, Any] | None, columns: list[str], bold: bool
) -> str:
    values = [_number(stats[k]) for k in _TABLE_KEYS]
    for column in columns[len(_TABLE_KEYS) :]:
        values.append(_number((extra or {}).get(column)))
    return " | ".join(f"**{v}**" if bold else v for v in values)


def format_table(
    members: Mapping[str, EvalResult],
    fused: EvalResult | None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    fused_uncalibrated: Mapping[str, Any] | None = None,
) -> str:
    """A markdown table: one row per member, the fused row, and the fused gain over the best member (by AP).

    With ``extra`` (per-entry ``"D-ECE"`` / ``"D-ECE uncalibrated"``) those columns are added; with
    ``fused_uncalibrated`` (stats of the raw members' fusion) a row for it, so calibration's effect shows.
    """
    extra = extra or {}
    columns = list(_TABLE_KEYS)
    for key in ("D-ECE", "D-ECE uncalibrated"):
        if any(key in e for e in extra.values()):
            columns.append(key)
    header = "| | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns) + "\n"
    calibrated = fused_uncalibrated is not None
    rows = [
        f"| {name}{' (calibrated)' if 'D-ECE uncalibrated' in extra.get(name, {}) else ''} | "
        f"{_cells(r.stats, extra.get(name), columns, False)} |"
        for name, r in members.items()
    ]
    if calibrated:
        rows.append(
            f"| fused, uncalibrated | {_cells(fused_uncalibrated, fused_uncalibrated, columns, False)} |"
        )
    if fused is not None:
        label = "**fused (calibrated)**" if calibrated else "**fused**"
        rows.append(f"| {label} | {_cells(fused.stats, extra.get('fused'), columns, True)} |")
        if members:
            best_name, best = max(members.items(), key=lambda item: item[1].stats["AP"])
            gains = " | ".join(_gain(fused.stats[k], best.stats[k]) for k in _TABLE_KEYS)
            rows.append(
                f"| gain over best member ({best_name}) | {gains} |"
                + " |" * (len(columns) - len(_TABLE_KEYS))
            )
    return header + "\n".join(rows) + "\n"


def format_class_table(
    members: Mapping[str, EvalResult], fused: EvalResult, fused_uncalibrated: EvalResult | None = None
) -> str:
    """Markdown: per class with ground truth, the best member on it, fused AP and the gain, losses first."""
    calibrated = fused_uncalibrated is not None
    head = "| class | best member | its AP | fused AP" + (
        " (calibrated) | fused AP, uncalibrated" if calibrated else ""
    )
    lines = [head + " | gain |", "|---|---|---:|---:|" + ("---:|" if calibrated else "") + "---:|"]
    for name, gain, member, member_ap, fused_ap in class_gains(members, fused):
        raw = f" {_number(fused_uncalibrated.per_class_ap.get(name))} |" if calibrated else ""
        lines.append(f"| {name} | {member} | {member_ap:.4f} | {fused_ap:.4f} |{raw} {gain:+.4f} |")
    missing = [c for c, v in fused.per_class_ap.items() if math.isnan(v)]
    if missing:
        lines.append(
            f"\n{len(missing)} class(es) without ground truth (AP –): {', '.join(missing[:20])}"
            + (" ..." if len(missing) > 20 else "")
        )
    return "\n".join(lines) + "\n"


def format_run(run: ScoredRun) -> str:
    """:func:`format_table` of a scored run, followed by the D-ECE protocol."""
    summary = run.summary()
    table = format_table(run.members, run.fused, run.entry_extras(), summary.get("fused_uncalibrated"))
    return table + f"D-ECE protocol: {run.protocol.describe()}\n"


def _report_markdown(
    gt: CocoGroundTruth,
    members: Mapping[str, EvalResult],
    fused: EvalResult | None,
    policy: Mapping[str, Any] | None,
    plots: list[str],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    summary: Mapping[str, Any] | None = None,
    fused_uncalibrated: EvalResult | None = None,
) -> str:
    backend = next(iter(members.values())).backend if members else (fused.backend if fused else "?")
    lines = [
        "# Ensemble scoring report",
        "",
        f"- annotations: `{gt.source}` ({len(gt)} images, {len(gt.dataset['annotations'])} GT boxes, "
        f"{len(gt.class_map)} categories)",
        f"- evaluation backend: {backend} (COCO bbox, 12 stats as pycocotools)",
        f"- fusion policy: `{dict(policy) if policy else None}`",
    ]
    summary = summary or {}
    if "calibration_protocol" in summary:
        from fusion.calibration.dece import CalibrationProtocol

        protocol = CalibrationProtocol(**summary["calibration_protocol"])
        lines.append(f"- D-ECE protocol: {protocol.describe()}")
    if summary.get("calibrators"):
        files = sorted(set(summary["calibrators"].values()))
        lines.append(f"- calibrated: {', '.join(summary['calibrators'])} (from {', '.join(files)})")
    lines += ["", format_table(members, fused, extra, summary.get("fused_uncalibrated"))]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    if fused is not None and members:
        lines += [
            "",
            "## Per class: fused AP@[.50:.95] against the best member on the class (where fusion loses first)",
            "",
            format_class_table(members, fused, fused_uncalibrated),
        ]
    return "\n".join(lines) + "\n"


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
    summary: Mapping[str, Any] | None = None,
    reliability: Mapping[str, Any] | None = None,
    fused_uncalibrated: EvalResult | None = None,
) -> dict[str, Any]:
    """Write every output of a scoring run into ``out``; returns the metrics dict.

    ``reliability`` (``{label: DECEResult}``) adds a reliability diagram, ``reliability.png``, to the plots;
    ``fused_uncalibrated`` (the raw members' fusion, when calibrated) is drawn beside the fused PR curve and listed
    in the per-class table.
    """
    out = Path(out)
    metrics = build_metrics(members, fused, policy, len(gt), extra, summary)
    atomic_write_yaml(out / "config.yaml", dict(config))
    if fused_predictions is not None:
        fused_predictions.save(out / "fused.json")
    written = []
    if plots:
        written.append(str(plot_pr_curves(out / "pr_curves.png", members, fused, fused_uncalibrated)))
        written.append(str(plot_per_class_ap(out / "per_class_ap.png", members, fused)))
        if reliability:
            from fusion.calibration.plots import reliability_diagram

            drawable = {k: r for k, r in reliability.items() if r.count > 0}
            if drawable:
                written.append(str(reliability_diagram(drawable, out / "reliability.png", "Reliability")))
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(
        out / "report.md",
        _report_markdown(gt, members, fused, policy, written, extra, summary, fused_uncalibrated),
    )
    return metrics


def write_run(
    out: Path,
    gt: CocoGroundTruth,
    run: ScoredRun,
    policy: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    *,
    plots: bool = True,
) -> dict[str, Any]:
    """:func:`write_outputs` of a :class:`~fusion.scoring.run.ScoredRun`: D-ECE in every entry, the
    protocol (and calibration baseline) at the top level, and a reliability diagram of members and fused."""
    reliability = dict(run.dece)
    if "fused" in run.uncalibrated_dece:
        reliability["fused, uncalibrated"] = run.uncalibrated_dece["fused"]
    return write_outputs(
        out,
        gt,
        run.members,
        run.fused,
        run.fused_predictions,
        policy,
        config,
        plots=plots,
        extra=run.entry_extras(),
        summary=run.summary(),
        reliability=reliability,
        fused_uncalibrated=run.fused_uncalibrated,
    )
