"""Pixel maths of the rendered dataset: shapes as anti-aliased coverage masks, and textured backgrounds.

Everything here is platform-independent by construction: only IEEE basic operations (``+ - * /``, ``sqrt``,
comparisons, ``floor``, ``rint``) on float64, never a transcendental ufunc (numpy's SIMD ``sin``/``exp`` may
differ in the last bit between CPUs), never BLAS (which may fuse multiply-adds). Rotations use
:func:`cos_sin`, a Taylor series written out in those operations.

Shapes are tested at 2 x 2 sample points per pixel, so a mask holds a coverage in ``0..4`` quarters: edges are
anti-aliased and the blend is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CLASS_SHAPES", "DISTRACTOR_SHAPES", "Shape", "background", "cos_sin", "coverage", "sample_shape"]

# The classes (category ids 1..8 in this order) and the clutter drawn alongside them (never annotated).
CLASS_SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon")
DISTRACTOR_SHAPES = ("bar", "line", "blob", "half_disc", "arc")


def cos_sin(angle: float) -> tuple[float, float]:
    """``(cos(angle), sin(angle))`` from a Taylor series in basic float operations: the same bits everywhere."""
    x = math.fmod(angle, 2.0 * math.pi)
    if x > math.pi:
        x -= 2.0 * math.pi
    elif x < -math.pi:
        x += 2.0 * math.pi
    x2 = x * x
    cos_term, sin_term, cos, sin = 1.0, x, 1.0, x
    for k in range(1, 16):  # |x| <= pi: the 16th terms are below 1e-17
        cos_term *= -x2 / ((2 * k - 1) * (2 * k))
        sin_term *= -x2 / ((2 * k) * (2 * k + 1))
        cos += cos_term
        sin += sin_term
    return cos, sin


@dataclass(frozen=True)
class Shape:
    """One shape in its own frame: ``kind``, circumradius ``radius`` (px), rotation as ``(cos, sin)``, and
    ``params``: inner radius ratio (ring, star, arc), arm or bar half-width ratio (cross, bar, line), minor axis
    ratio (ellipse), arc cut, or the blob's polygon vertices (unit frame, ``x0, y0, x1, y1, ...``)."""

    kind: str
    radius: float
    cos: float
    sin: float
    params: tuple[float, ...] = ()


def _regular_polygon(sides: int, inner: float | None = None) -> tuple[float, ...]:
    """Vertices on the unit circle, the first pointing up; with ``inner``, a star alternating radii 1 and inner."""
    points = 2 * sides if inner is not None else sides
    out: list[float] = []
    for k in range(points):
        c, s = cos_sin(2.0 * math.pi * k / points - math.pi / 2.0)
        r = inner if inner is not None and k % 2 else 1.0
        out += [r * c, r * s]
    return tuple(out)


def sample_shape(rng: np.random.Generator, kind: str, radius: float) -> Shape:
    """Draw the free parameters of a ``kind`` shape of circumradius ``radius`` (px) from ``rng``."""
    c, s = cos_sin(2.0 * math.pi * float(rng.random()))
    u = float(rng.random())
    if kind == "circle":  # rotation-free, but the draws above are made for every kind alike
        return Shape(kind, radius, 1.0, 0.0)
    params: tuple[float, ...] = ()
    if kind == "ring":
        params = (0.45 + 0.25 * u,)
    elif kind == "star":
        params = _regular_polygon(5, 0.38 + 0.12 * u)
    elif kind == "cross":
        params = (0.22 + 0.14 * u,)
    elif kind == "ellipse":
        params = (0.4 + 0.2 * u,)
    elif kind == "triangle":
        params = _regular_polygon(3)
    elif kind == "hexagon":
        params = _regular_polygon(6)
    elif kind == "bar":
        params = (0.1 + 0.1 * u,)
    elif kind == "line":
        params = (max(0.6 / radius, 0.03),)
    elif kind == "arc":
        params = (0.55 + 0.2 * u, 0.1 + 0.5 * float(rng.random()))
    elif kind == "blob":
        # An irregular 4-7-gon: uneven radii and angles and a dent, so it never reads as a regular class shape.
        sides = int(rng.integers(4, 8))
        steps = 0.5 + rng.random(sides)
        angles = np.cumsum(steps) / steps.sum() * (2.0 * math.pi)
        radii = 0.3 + 0.7 * rng.random(sides)
        radii[int(rng.integers(0, sides))] = 0.3  # one dent at least: never close to a regular polygon
        verts: list[float] = []
        for angle, r in zip(angles.tolist(), radii.tolist(), strict=True):
            vc, vs = cos_sin(angle)
            verts += [r * vc, r * vs]
        params = tuple(verts)
    elif kind not in ("square", "half_disc"):
        raise ValueError(f"unknown shape kind {kind!r}; known: {CLASS_SHAPES + DISTRACTOR_SHAPES}")
    return Shape(kind, radius, c, s, params)


def _in_polygon(u: np.ndarray, v: np.ndarray, verts: tuple[float, ...]) -> np.ndarray:
    """Even-odd rule: is each point ``(u, v)`` inside the closed polygon ``verts`` (``x0, y0, x1, y1, ...``)."""
    xs, ys = verts[0::2], verts[1::2]
    inside = np.zeros(u.shape, dtype=bool)
    for k in range(len(xs)):
        x1, y1, x2, y2 = xs[k], ys[k], xs[k - 1], ys[k - 1]
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = x1 + (v - y1) * ((x2 - x1) / (y2 - y1))
        inside ^= crosses & (u < x_at)
    return inside


def _inside(shape: Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points ``(u, v)`` given in the shape's unit frame (circumradius 1)."""
    kind, p = shape.kind, shape.params
    d2 = u * u + v * v
    if kind == "circle":
        return d2 <= 1.0
    if kind == "ring":
        return (d2 <= 1.0) & (d2 >= p[0] * p[0])
    if kind == "ellipse":
        return u * u + (v * v) / (p[0] * p[0]) <= 1.0
    if kind == "square":
        half = 0.72  # about 1/sqrt(2): the corners touch the unit circle
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.9) & (av <= p[0])) | ((au <= p[0]) & (av <= 0.9))
    if kind in ("bar", "line"):
        return (np.abs(u) <= 1.0) & (np.abs(v) <= p[0])
    if kind == "half_disc":
        return (d2 <= 1.0) & (v >= 0.0)
    if kind == "arc":
        return (d2 <= 1.0) & (d2 >= p[0] * p[0]) & (v >= p[1])
    return _in_polygon(u, v, p)  # triangle, hexagon, star, blob


def coverage(shape: Shape, cx: float, cy: float, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Coverage of ``shape`` centred at ``(cx, cy)`` over the pixel window at ``(x0, y0)``.

    Returns:
        ``(height, width)`` uint8 array, the number of the pixel's 2 x 2 sample points inside the shape (0..4).
    """
    sx = (np.arange(2 * width, dtype=np.float64) * 0.5 + (x0 + 0.25 - cx)) / shape.radius
    sy = (np.arange(2 * height, dtype=np.float64) * 0.5 + (y0 + 0.25 - cy)) / shape.radius
    dx, dy = sx[None, :], sy[:, None]
    # Rotate the samples into the shape's frame (inverse rotation).
    u = dx * shape.cos + dy * shape.sin
    v = dy * shape.cos - dx * shape.sin
    inside = _inside(shape, u, v).view(np.uint8)
    # Strided adds: much faster than a sum over the non-contiguous axes of a (h, 2, w, 2) view.
    return inside[0::2, 0::2] + inside[0::2, 1::2] + inside[1::2, 0::2] + inside[1::2, 1::2]


def _bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """Upsample ``(k, k, C)`` to ``(size, size, C)`` by bilinear interpolation at pixel centres."""
    k = grid.shape[0]
    pos = (np.arange(size, dtype=np.float64) + 0.5) * ((k - 1) / size)
    i = np.minimum(np.floor(pos).astype(np.int64), k - 2)
    t = pos - i
    rows = grid[i] * (1.0 - t)[:, None, None] + grid[i + 1] * t[:, None, None]
    return rows[:, i] * (1.0 - t)[None, :, None] + rows[:, i + 1] * t[None, :, None]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: a two-colour gradient, then at random stripes, soft blobs, checks and value noise.

    Returns:
        ``(size, size, 3)`` float64 in roughly ``0..255`` (clipped when the image is quantised).
    """
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    x, y = coords[None, :, None], coords[:, None, None]
    c0, c1 = rng.integers(0, 256, (2, 3)).astype(np.float64)
    a, b = rng.random(2) * 2.0 - 1.0
    t = np.clip(x * a + y * b + (0.5 - 0.5 * (a + b)), 0.0, 1.0)
    img = c0 + (c1 - c0) * t
    draws = rng.random(4)
    if draws[0] < 0.35:  # stripes: a triangle wave along a random direction
        fx, fy = (rng.random(2) * 2.0 - 1.0) * (2.0 + 10.0 * float(rng.random()))
        phase = x * fx + y * fy
        wave = np.abs(2.0 * (phase - np.floor(phase)) - 1.0)
        colour = rng.integers(0, 256, 3).astype(np.float64)
        img = img + (colour - img) * (wave * (0.2 + 0.5 * float(rng.random())))
    if draws[1] < 0.5:  # soft blobs with a polynomial fall-off
        for _ in range(int(rng.integers(1, 6))):
            bx, by, radius, alpha = rng.random(4)
            radius = 0.1 + 0.35 * radius
            d2 = ((x - bx) * (x - bx) + (y - by) * (y - by)) / (radius * radius)
            weight = np.clip(1.0 - d2, 0.0, 1.0)
            colour = rng.integers(0, 256, 3).astype(np.float64)
            img = img + (colour - img) * (weight * weight * (0.3 + 0.6 * alpha))
    if draws[2] < 0.15:  # checks or tiles: clutter with straight edges and corners
        n = float(rng.integers(3, 12))
        checks = (np.floor(x * n) + np.floor(y * n)) % 2.0
        img = img + checks * (rng.random(3) * 80.0 - 40.0)
    if draws[3] < 0.6:  # low-frequency value noise
        k = int(rng.integers(3, 10))
        grid = rng.random((k, k, 3)) * 2.0 - 1.0
        img = img + _bilinear(grid, size) * (10.0 + 50.0 * float(rng.random()))
    return img
