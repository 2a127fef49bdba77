"""Rounding results to a fixed number of decimals exactly as Python's ``round(float, ndigits)`` does, vectorised.

Users write results files with ``round(x, 3)``; ``np.round`` scales by ``10**ndigits`` first, and that product's own
rounding error tips values lying within an ulp of a half-way point the other way (``np.round(2.675, 2) == 2.68``
while ``round(2.675, 2) == 2.67``, since the double ``2.675`` is ``2.67499999...``). Here the few values near a
half-way point are decided exactly instead: whether ``x`` lies below, on or above the decimal midpoint
``(k + 1/2) / 10**ndigits`` is the sign of ``2·10**ndigits·x − (2k + 1)``, computed without rounding error by
splitting ``x`` into two 26-bit halves (Veltkamp), each of whose products with ``2·10**ndigits`` is exact.
"""

from __future__ import annotations

import numpy as np

__all__ = ["round_decimals"]

_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's splitter for float64
_MAX_DECIMALS = 7  # 2·10**7 < 2**25, so a 26-bit half times it is exact (51 bits)


def round_decimals(values: np.ndarray, decimals: int) -> np.ndarray:
    """``values`` (float64, any shape) rounded to ``decimals`` places, each exactly as ``round(float(v), decimals)``.

    Args:
        values: Finite numbers.
        decimals: Places to keep, ``0 <= decimals <= 7``.
    """
    if not 0 <= decimals <= _MAX_DECIMALS:
        raise ValueError(f"decimals must be in 0..{_MAX_DECIMALS}, got {decimals}")
    values = np.asarray(values, dtype=np.float64)
    scale = 10.0**decimals
    out = np.round(values, decimals)
    magnitude = np.abs(values)
    scaled = magnitude * scale
    lower = np.floor(scaled)
    near = np.flatnonzero(np.abs(scaled - lower - 0.5) < 1e-6)
    if near.size == 0:
        return out
    x, k = magnitude.reshape(-1)[near], lower.reshape(-1)[near]
    twice = 2.0 * scale
    t = x * _SPLIT
    hi = t - (t - x)
    lo = x - hi
    # exact: hi·twice and lo·twice (26 + 25 bits); hi·twice − (2k+1) by Sterbenz (both within a factor 2)
    side = np.sign((hi * twice - (2.0 * k + 1.0)) + lo * twice)
    up = (side > 0) | ((side == 0) & (k % 2 == 1))  # exactly half-way: to even, as round() does
    rounded = (k + up) / scale
    out.reshape(-1)[near] = np.copysign(rounded, values.reshape(-1)[near])
    return out
