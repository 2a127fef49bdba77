"""Score calibration: D-ECE, reliability diagrams, and per-member calibrators applied before fusion.

Entry points for the rest of the engine:

* :func:`apply_calibrators` — calibrate members' raw outputs once, before fusion (``Ensemble.predict``, ``score``,
  ``fuse``, ``tune``);
* :func:`dece_entry` / :func:`detection_ece` with a :class:`CalibrationProtocol` — the ``"D-ECE"`` of a
  ``metrics.json`` entry;
* :func:`fit_calibrator_set` — fit calibrators on a validation set;
* :mod:`fusion.calibration.heldout` — ``fusion calibrate``: fit on some images, measure on others (k-fold, holdout,
  val/test), and ``--method auto``'s choice (:mod:`fusion.calibration.select`).

Plots (matplotlib) live in :mod:`fusion.calibration.plots`, imported on demand.
"""

from fusion.calibration.calibrators import (
    CALIBRATORS,
    BetaCalibrator,
    Calibrator,
    HistogramCalibrator,
    IsotonicCalibrator,
    TemperatureCalibrator,
    fit_calibrator,
    introduced_ties,
)
from fusion.calibration.dece import (
    CalibrationProtocol,
    DECEResult,
    MatchedPairs,
    dece,
    dece_entry,
    detection_ece,
    matched_pairs,
)
from fusion.calibration.fit import fit_calibrator_set, fit_member_calibrator
from fusion.calibration.matching import MatchResult, match_detections, match_image
from fusion.calibration.sets import (
    CalibratorSet,
    apply_calibrators,
    calibrate_detections,
    load_member_calibrator,
)

__all__ = [
    "CALIBRATORS",
    "BetaCalibrator",
    "CalibrationProtocol",
    "Calibrator",
    "CalibratorSet",
    "DECEResult",
    "HistogramCalibrator",
    "IsotonicCalibrator",
    "MatchResult",
    "MatchedPairs",
    "TemperatureCalibrator",
    "apply_calibrators",
    "calibrate_detections",
    "dece",
    "dece_entry",
    "detection_ece",
    "fit_calibrator",
    "fit_calibrator_set",
    "fit_member_calibrator",
    "introduced_ties",
    "load_member_calibrator",
    "match_detections",
    "match_image",
    "matched_pairs",
]
