"""``fusion calibrate``'s report: held-out numbers of every candidate, which one won and why, the final fit.

Writes ``report.json`` (machine-readable) and ``report.md``, and prints the same table.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion.calibration.heldout import CrossValidation
from fusion.calibration.select import AP_TOLERANCE, MethodResult, choose_method

__all__ = ["choose", "format_table", "results_json", "write_report"]


def choose(cv: CrossValidation, method: str) -> tuple[str | None, dict[str, str]]:
    """The candidate kept and a verdict per candidate: ``auto`` by :func:`choose_method`, else the one asked for
    (its verdict says when it loses held-out AP)."""
    base = cv.uncalibrated.ap.mean
    if method == "auto":
        return choose_method(cv.results, base)
    (name, result), *_ = cv.results.items()
    verdict = f"requested (--method {method})"
    if result.ap.mean < base - AP_TOLERANCE:
        verdict += (
            f"; WARNING: held-out fused AP {result.ap.mean:.4f} < uncalibrated {base:.4f} - {AP_TOLERANCE} "
            "(--method auto would refuse it)"
        )
    return name, {name: verdict}


def _row(name: str, result: MethodResult, verdict: str, ties: str) -> str:
    return f"| {name} | {result.ap} | {result.dece} | {ties} | {verdict} |"


def format_table(cv: CrossValidation, verdicts: Mapping[str, str]) -> str:
    """Markdown: one row per candidate and the uncalibrated baseline (held-out fused AP and D-ECE, mean ± std)."""
    lines = [
        "| calibration | held-out fused AP | held-out fused D-ECE | introduced ties | verdict |",
        "|---|---:|---:|---:|---|",
        _row("uncalibrated", cv.uncalibrated, "baseline", "–"),
    ]
    order = sorted(cv.results, key=lambda n: cv.results[n].dece.mean)
    lines += [_row(n, cv.results[n], verdicts.get(n, ""), str(cv.results[n].ties)) for n in order]
    return "\n".join(lines) + "\n"


def _members_table(cv: CrossValidation, chosen: str | None) -> str:
    names = list(cv.uncalibrated_members)
    kept = cv.members.get(chosen, cv.uncalibrated_members) if chosen else cv.uncalibrated_members
    lines = ["| member | held-out D-ECE, uncalibrated | held-out D-ECE, calibrated |", "|---|---:|---:|"]
    lines += [f"| {n} | {cv.uncalibrated_members[n]} | {kept[n]} |" for n in names]
    return "\n".join(lines) + "\n"


def _spread(value: Any) -> dict[str, Any]:
    return {"mean": value.mean, "std": value.std, "folds": list(value.values)}


def results_json(cv: CrossValidation, verdicts: Mapping[str, str], chosen: str | None) -> dict[str, Any]:
    """``report.json``'s ``held_out`` section: every candidate's and the baseline's numbers, per fold too."""
    out: dict[str, Any] = {
        "uncalibrated": {
            "fused AP": _spread(cv.uncalibrated.ap),
            "fused D-ECE": _spread(cv.uncalibrated.dece),
            "members D-ECE": {n: _spread(s) for n, s in cv.uncalibrated_members.items()},
        },
        "candidates": {},
        "chosen": chosen,
    }
    for name, result in cv.results.items():
        out["candidates"][name] = {
            "fused AP": _spread(result.ap),
            "fused D-ECE": _spread(result.dece),
            "members D-ECE": {n: _spread(s) for n, s in cv.members[name].items()},
            "introduced ties": result.ties,
            "verdict": verdicts.get(name, ""),
        }
    return out


def write_report(
    out: Path,
    args: argparse.Namespace,
    protocol: Any,
    cv: CrossValidation,
    verdicts: Mapping[str, str],
    chosen: str | None,
    dece_protocol: Any,
) -> None:
    """Print the held-out table and write ``report.json`` and ``report.md`` into ``out``."""
    from fusion.io import atomic_write_json, atomic_write_text

    kept = f"kept: {chosen}" if chosen else "kept: none (every method lost held-out fused AP)"
    final = (
        f"final calibrators fitted on {len(protocol.final)} images "
        f"({'the --val set' if protocol.kind == 'val/test' else 'all the images given'})"
        if chosen
        else "no calibrator written"
    )
    table = format_table(cv, verdicts)
    members = _members_table(cv, chosen)
    print(f"held-out numbers (never the images fitted on); D-ECE: {dece_protocol.describe()}")
    print(table + members + f"{kept}; {final}")
    report = {
        "protocol": protocol.as_dict(),
        "dece_protocol": dece_protocol.model_dump(),
        "method": args.method,
        "per_class": args.per_class,
        "shrinkage": args.shrinkage if args.per_class else None,
        "ap_tolerance": AP_TOLERANCE,
        "held_out": results_json(cv, verdicts, chosen),
        "final_fit": {"images": len(protocol.final), "candidate": chosen},
    }
    atomic_write_json(out / "report.json", report)
    markdown = [
        "# Calibration report",
        "",
        f"- protocol: {protocol.describe()}",
        f"- D-ECE: {dece_protocol.describe()}",
        f"- method: {args.method}{' per class, shrinkage ' + format(args.shrinkage, 'g') if args.per_class else ''}"
        f"; selection rule: lowest held-out fused D-ECE among candidates whose held-out fused AP >= "
        f"uncalibrated - {AP_TOLERANCE}",
        f"- {kept}; {final}",
        "",
        "## Held-out fused output (mean ± std over folds)",
        "",
        table,
        "## Held-out members",
        "",
        members,
    ]
    atomic_write_text(out / "report.md", "\n".join(markdown))
