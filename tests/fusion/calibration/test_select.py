"""--method auto: lowest held-out D-ECE among the methods that keep held-out AP."""

from fusion.calibration.select import MethodResult, choose_method
from fusion.holdout import spread


def _result(dece: float, ap: float) -> MethodResult:
    return MethodResult(spread([dece]), spread([ap]))


def test_auto_refuses_a_calibrator_that_loses_held_out_ap():
    results = {
        "isotonic": _result(0.010, 0.600),  # best D-ECE but loses 0.005 AP
        "beta": _result(0.030, 0.6045),  # loses 0.0005: within the tolerance
        "temperature": _result(0.020, 0.6030),  # loses 0.002 exactly: eligible (not lower than the floor)
    }
    chosen, why = choose_method(results, uncalibrated_ap=0.605)
    assert chosen == "temperature"
    assert why["isotonic"].startswith("refused")
    assert why["beta"].startswith("eligible")


def test_auto_applies_nothing_when_every_method_loses_ap():
    chosen, why = choose_method({"isotonic": _result(0.01, 0.5)}, uncalibrated_ap=0.6)
    assert chosen is None and why["isotonic"].startswith("refused")
