"""``fusion tune``'s outputs: ``best.yaml``, ``trials.csv``, ``metrics.json``, ``report.md`` and ``trials.png``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusion.holdout import HeldOutProtocol
from fusion.tuning.heldout import PolicyResult
from fusion.tuning.search import trials_csv

__all__ = ["plot_trials", "tune_metrics", "write_tune_report"]


def _spread(value: Any) -> dict[str, Any]:
    return {"mean": value.mean, "std": value.std, "folds": list(value.values)}


def tune_metrics(
    results: Sequence[PolicyResult], best: PolicyResult, protocol: HeldOutProtocol, record: Mapping[str, Any]
) -> dict[str, Any]:
    """``metrics.json``: per policy its best setting, held-out AP and gains (mean, std, per fold), and the winner."""
    return {
        "protocol": protocol.as_dict(),
        "metric": "AP",
        "trials_per_policy": record["trials_per_policy"],
        "seed": record["seed"],
        "winner": best.policy,
        "policies": {
            r.policy: {
                "best": r.best.policy,
                "held_out_AP": _spread(r.held_out),
                "gain_over_default": _spread(r.gain_over_default),
                "gain_over_best_member": _spread(r.gain_over_best_member),
                "final_search_AP_in_sample": r.best.stats["AP"],
                "folds": r.folds,
            }
            for r in results
        },
        "default": "wbf at ensemble-boxes' defaults (iou_thr 0.55, skip_box_thr 0, conf_type avg), equal weights",
    }


def _table(results: Sequence[PolicyResult], best: PolicyResult) -> str:
    lines = [
        "| policy | held-out AP | gain over default | gain over best member | best parameters (final search) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in sorted(results, key=lambda r: -r.held_out.mean):
        name = f"**{r.policy}**" if r is best else r.policy
        params = ", ".join(f"{k}={v}" for k, v in r.best.policy.items() if k != "type")
        lines.append(
            f"| {name} | {r.held_out} | {r.gain_over_default.mean:+.4f} ± {r.gain_over_default.std:.4f} | "
            f"{r.gain_over_best_member.mean:+.4f} ± {r.gain_over_best_member.std:.4f} | {params} |"
        )
    return "\n".join(lines) + "\n"


def plot_trials(path: Path, results: Sequence[PolicyResult]) -> Path:
    """AP of every trial of each policy's final search (dots) and the best so far (line), one colour per policy."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fusion.io import atomic_write_bytes

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for k, r in enumerate(results):
        colour = f"C{k % 10}"
        values = [t.stats["AP"] for t in r.history]
        running = [max(values[: i + 1]) for i in range(len(values))]
        axes.scatter(range(1, len(values) + 1), values, s=12, color=colour, alpha=0.5)
        axes.plot(range(1, len(values) + 1), running, color=colour, lw=2, label=f"{r.policy} (best so far)")
    axes.set_xlabel("trial")
    axes.set_ylabel("fused AP on the search images")
    axes.set_title("Search history per policy (equal budgets)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def write_tune_report(
    out: Path,
    config: Mapping[str, Any],
    record: Mapping[str, Any],
    protocol: HeldOutProtocol,
    results: Sequence[PolicyResult],
    best: PolicyResult,
    *,
    plots: bool = True,
    verbose: bool = True,
) -> None:
    """Write every output of a tuning run into ``out`` and print the summary."""
    from fusion.io import atomic_write_json, atomic_write_text, atomic_write_yaml

    atomic_write_yaml(out / "best.yaml", dict(config))
    atomic_write_text(out / "trials.csv", trials_csv([t for r in results for t in r.history]))
    atomic_write_yaml(out / "config.yaml", {**record, "best": {"policy": best.best.policy}})
    atomic_write_json(out / "metrics.json", tune_metrics(results, best, protocol, record))
    written = [plot_trials(out / "trials.png", results)] if plots else []
    table = _table(results, best)
    lines = [
        "# Tuning report",
        "",
        f"- protocol: {protocol.describe()}",
        f"- budget: {record['trials_per_policy']} trials per policy (seed {record['seed']}); held-out AP = AP on a "
        "fold's held-out images of the setting that fold's search found",
        "- default config: WBF at ensemble-boxes' defaults, equal weights; best member: the member with the best AP "
        "on the same held-out images",
        f"- winner: **{best.policy}** (highest held-out AP); `best.yaml` holds its final search's best setting, "
        f"searched on {len(protocol.final)} images",
        "",
        table,
        *[f"![{Path(p).stem}]({Path(p).name})" for p in written],
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    if verbose:
        print(table, end="")
        print(f"winner: {best.policy}: {best.best.policy}")
        print(f"use it: fusion fuse --config {out / 'best.yaml'} --annotations ANNOTATIONS")
        print(f"results in {out}")
