"""One rendered image: a textured background, class shapes and clutter painted in random order, sensor noise.

Occlusion rule (what the boxes mean): shapes are painted one over the other; a pixel belongs to the last shape
that covers at least half of it. An object's box is the tight box of the pixels it still owns at the end (its
VISIBLE part, also where the image border truncates it). No object is left with less than ``min_visible`` of its
own pixels: a shape whose placement would hide more of an earlier object (or would itself be cut by the border
below that fraction) is drawn again (new size, rotation and place), up to a few tries, and otherwise left out. Clutter shapes are never
annotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fusion.synthetic.render_draw import CLASS_SHAPES, DISTRACTOR_SHAPES, background, coverage, sample_shape

__all__ = ["PALETTE", "RenderConfig", "RenderedImage", "render_image"]

# Every class and every clutter shape draws its colour from the same palette: colour never tells the class.
PALETTE = np.array(
    [
        [220, 40, 40], [40, 170, 60], [40, 80, 220], [240, 200, 40], [230, 120, 30], [150, 60, 200],
        [40, 200, 210], [230, 90, 170], [250, 250, 250], [20, 20, 20], [130, 130, 130], [120, 80, 40],
    ],
    dtype=np.float64,
)  # fmt: skip
_TRIES = 6


@dataclass(frozen=True)
class RenderConfig:
    """What a rendered image looks like.

    Args:
        image_size: Side of the square images (px).
        min_size: Smallest object extent (circumscribed diameter, px).
        max_size: Largest extent; ``None`` = ``image_size`` (see :meth:`size_cdf` for the distribution).
        max_objects: Objects per image are uniform in ``1..max_objects``.
        empty_fraction: Fraction of images with no object at all (clutter only).
        max_distractors: Clutter shapes per image are uniform in ``0..max_distractors``.
        min_visible: Smallest visible fraction of an object's pixels (see the module's occlusion rule); above a half,
            so that a partly hidden circle or ring never looks like a half-disc or arc of the clutter.
        noise: Largest amplitude of the per-pixel sensor noise (grey levels).
        blur_fraction: Fraction of images slightly blurred (a [1, 2, 1] / 4 kernel in x and y).
        min_contrast: Wanted L1 distance (sum over RGB) between an object's colour and what it covers.
    """

    image_size: int = 128
    min_size: int = 10
    max_size: int | None = None
    max_objects: int = 6
    empty_fraction: float = 0.03
    max_distractors: int = 2
    min_visible: float = 0.7
    noise: int = 8
    blur_fraction: float = 0.2
    min_contrast: float = 90.0

    def __post_init__(self) -> None:
        checks = [
            ("image_size", self.image_size >= 16, "at least 16"),
            ("min_size", 3 <= self.min_size <= self.image_size, "in 3..image_size"),
            ("max_size", self.max_size is None or self.min_size <= self.max_size <= self.image_size,
             "in min_size..image_size"),
            ("max_objects", self.max_objects >= 1, "at least 1"),
            ("empty_fraction", 0.0 <= self.empty_fraction <= 1.0, "in [0, 1]"),
            ("max_distractors", self.max_distractors >= 0, "at least 0"),
            ("min_visible", 0.0 < self.min_visible <= 1.0, "in (0, 1]"),
            ("noise", self.noise >= 0, "at least 0"),
            ("blur_fraction", 0.0 <= self.blur_fraction <= 1.0, "in [0, 1]"),
        ]  # fmt: skip
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"RenderConfig.{name}: must be {want}, got {getattr(self, name)!r}")

    @property
    def largest(self) -> int:
        return self.max_size if self.max_size is not None else self.image_size

    def size_cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sizes, cdf)``: extents ``min_size..largest`` and their cumulative weights 1 / sqrt(size), unnormalised
        (a sequential cumulative sum has the same bits everywhere, a normalising sum may not).

        1 / sqrt(size) sits between log-uniform (1 / size: too many objects below 10 px to learn at stride 8) and
        uniform. Large shapes are more often redrawn (see the occlusion rule), so at 128 px the boxes come out
        about 50 % COCO-small, 47 % medium and 3 % large."""
        sizes = np.arange(self.min_size, self.largest + 1, dtype=np.float64)
        return sizes, np.cumsum(1.0 / np.sqrt(sizes))


@dataclass
class RenderedImage:
    """``pixels`` (H, W, 3) uint8; per object ``boxes`` (N, 4) int xyxy of the visible pixels (exclusive right and
    bottom edges), ``labels`` (N,) class index into ``CLASS_SHAPES``, ``visible`` (N,) visible fraction; ``owner``
    (H, W) int: object index owning each pixel, -1 background, -2 clutter."""

    pixels: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    visible: np.ndarray
    owner: np.ndarray


def _pick_colour(rng: np.random.Generator, covered: np.ndarray, min_contrast: float) -> np.ndarray:
    """A jittered palette colour, redrawn a few times until it stands out from the mean of what it covers."""
    target = covered.mean(axis=0) if len(covered) else np.full(3, 128.0)
    best, best_gap = None, -1.0
    for _ in range(_TRIES):
        colour = PALETTE[int(rng.integers(0, len(PALETTE)))] + rng.integers(-25, 26, 3)
        gap = float(np.abs(colour - target).sum())
        if gap > best_gap:
            best, best_gap = colour, gap
        if gap >= min_contrast:
            break
    return best


def _fill(
    rng: np.random.Generator,
    colour: np.ndarray,
    cx: float,
    cy: float,
    r: float,
    x0: int,
    y0: int,
    w: int,
    h: int,
) -> np.ndarray:
    """The shape's paint over its window: its colour, shaded by a linear ramp, and now and then striped."""
    dx = (np.arange(w, dtype=np.float64) + (x0 + 0.5 - cx))[None, :, None] / r
    dy = (np.arange(h, dtype=np.float64) + (y0 + 0.5 - cy))[:, None, None] / r
    sx, sy = rng.integers(-35, 36, 2)
    paint = colour + dx * float(sx) + dy * float(sy)
    if rng.random() < 0.15:
        fx, fy = (rng.random(2) * 2.0 - 1.0) * 2.5
        stripes = np.floor(dx * fx + dy * fy) % 2.0
        paint = paint + stripes * (PALETTE[int(rng.integers(0, len(PALETTE)))] - paint)
    return paint


@dataclass
class _Canvas:
    """The image being painted: ``img`` (H, W, 3) float64, ``owner`` (H, W) (see :class:`RenderedImage`), and per
    object so far its pixel count ``full`` (border-cut part included), ``visible`` pixel count and ``labels``."""

    img: np.ndarray
    owner: np.ndarray
    full: list[int]
    visible: np.ndarray
    labels: list[int]
    sizes: tuple[np.ndarray, np.ndarray]


def _place(rng: np.random.Generator, cfg: RenderConfig, kind: str, state: _Canvas) -> bool:
    """Try to paint one shape of ``kind``; returns whether it was placed (see the occlusion rule)."""
    img, owner, full, visible = state.img, state.owner, state.full, state.visible
    size = cfg.image_size
    sizes, cdf = state.sizes
    is_object = kind in CLASS_SHAPES
    for _ in range(_TRIES):
        # A new size on every try: otherwise large solid shapes (which hide more) would be left out more often
        # than others and the classes would be unbalanced.
        pick = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        radius = 0.5 * float(sizes[min(pick, len(sizes) - 1)])
        if kind == "line":
            radius = max(radius, 0.25 * size * float(rng.random()) + 4.0)
        shape = sample_shape(rng, kind, radius)
        margin = min(0.5 * radius, 0.5 * size)
        cx, cy = margin + rng.random(2) * (size - 2.0 * margin)
        x0, y0 = math.floor(cx - radius) - 1, math.floor(cy - radius) - 1
        w = h = math.ceil(2.0 * radius) + 3
        cov = coverage(shape, float(cx), float(cy), x0, y0, w, h)
        total = int((cov >= 2).sum())
        # The part of the window inside the image.
        ax, ay, bx, by = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
        cov = cov[ay - y0 : by - y0, ax - x0 : bx - x0]
        owns = cov >= 2
        if total == 0 or (is_object and owns.sum() < cfg.min_visible * total):
            continue
        win_owner = owner[ay:by, ax:bx]
        hidden = win_owner[owns]
        lost = np.bincount(hidden[hidden >= 0], minlength=len(full))
        if len(full) and np.any(visible - lost < cfg.min_visible * np.asarray(full)):
            continue
        visible -= lost
        colour = _pick_colour(rng, img[ay:by, ax:bx][owns], cfg.min_contrast)
        paint = _fill(rng, colour, float(cx), float(cy), radius, ax, ay, bx - ax, by - ay)
        alpha = cov.astype(np.float64)[..., None] * 0.25
        img[ay:by, ax:bx] += (paint - img[ay:by, ax:bx]) * alpha
        win_owner[owns] = len(full) if is_object else -2
        if is_object:
            full.append(total)
            state.visible = np.append(visible, int(owns.sum()))
            state.labels.append(CLASS_SHAPES.index(kind))
        return True
    return False


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur, edges replicated."""
    pad = np.concatenate([img[:, :1], img, img[:, -1:]], axis=1)
    img = (pad[:, :-2] + 2.0 * pad[:, 1:-1] + pad[:, 2:]) * 0.25
    pad = np.concatenate([img[:1], img, img[-1:]], axis=0)
    return (pad[:-2] + 2.0 * pad[1:-1] + pad[2:]) * 0.25


def render_image(rng: np.random.Generator, cfg: RenderConfig | None = None) -> RenderedImage:
    """Render one image, drawing every random choice from ``rng`` in a fixed order (the same bits everywhere)."""
    cfg = cfg or RenderConfig()
    size = cfg.image_size
    img = background(rng, size)
    n_objects = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(1, cfg.max_objects + 1))
    n_clutter = int(rng.integers(0, cfg.max_distractors + 1))
    kinds = [CLASS_SHAPES[int(k)] for k in rng.integers(0, len(CLASS_SHAPES), n_objects)]
    kinds += [DISTRACTOR_SHAPES[int(k)] for k in rng.integers(0, len(DISTRACTOR_SHAPES), n_clutter)]
    order = rng.permutation(len(kinds))
    state = _Canvas(
        img, np.full((size, size), -1, dtype=np.int64), [], np.zeros(0, dtype=np.int64), [], cfg.size_cdf()
    )
    for k in order.tolist():
        _place(rng, cfg, kinds[k], state)
    img = state.img
    if rng.random() < cfg.blur_fraction:
        img = _blur(img)
    amplitude = int(rng.integers(0, cfg.noise + 1))
    if amplitude:
        shape = (size, size, 3) if rng.random() < 0.7 else (size, size, 1)
        img = (
            img
            + (
                rng.integers(-amplitude, amplitude + 1, shape)
                + rng.integers(-amplitude, amplitude + 1, shape)
            )
            * 0.5
        )
    pixels = np.ascontiguousarray(np.clip(np.rint(img), 0, 255), dtype=np.uint8)
    owner = state.owner
    boxes = np.zeros((len(state.full), 4), dtype=np.int64)
    for j in range(len(boxes)):
        ys, xs = np.nonzero(owner == j)
        boxes[j] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    visible = state.visible / np.maximum(np.asarray(state.full, dtype=np.float64), 1.0)
    return RenderedImage(pixels, boxes, np.asarray(state.labels, dtype=np.int64), visible, owner)
