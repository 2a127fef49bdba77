"""``--method auto``: choose a calibration method by held-out numbers.

The rule: among the methods whose held-out AP is not lower than the uncalibrated AP minus a tolerance (a
calibrator must not cost ranking quality), the one with the lowest held-out D-ECE wins; when every method loses AP,
none is applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fusion.holdout import Spread

__all__ = ["AP_TOLERANCE", "MethodResult", "choose_method"]

# Held-out AP a calibrator may lose against no calibration and still be chosen.
AP_TOLERANCE = 0.002


@dataclass(frozen=True)
class MethodResult:
    """Held-out numbers of one calibration method (``ties``: distinct raw scores merged, summed over folds)."""

    dece: Spread
    ap: Spread
    ties: int = 0


def choose_method(
    results: Mapping[str, MethodResult], uncalibrated_ap: float, ap_tolerance: float = AP_TOLERANCE
) -> tuple[str | None, dict[str, str]]:
    """The winning method (``None``: calibrate nothing) and, for every method, why it won or lost.

    Args:
        results: Held-out numbers per method.
        uncalibrated_ap: Held-out AP without calibration (mean over the same folds).
        ap_tolerance: AP a method may lose and still be eligible.
    """
    floor = uncalibrated_ap - ap_tolerance
    verdicts: dict[str, str] = {}
    eligible = []
    for method in sorted(results):
        result = results[method]
        if result.ap.mean < floor:
            verdicts[method] = (
                f"refused: held-out AP {result.ap.mean:.4f} < {uncalibrated_ap:.4f} - {ap_tolerance}"
            )
        else:
            eligible.append((result.dece.mean, method))
    if not eligible:
        return None, verdicts
    eligible.sort()
    best = eligible[0][1]
    for dece, method in eligible:
        verdicts[method] = (
            f"chosen: lowest held-out D-ECE {dece:.4f}" if method == best else f"eligible, D-ECE {dece:.4f}"
        )
    return best, verdicts
