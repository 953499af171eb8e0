"""Sub-pixel shifts of exported tiles against the same tiles re-derived from the source image.

Both are smoothed alike (Gaussian σ = _BLUR) and compared by one Lucas–Kanade step from zero shift: exported(x)
≈ rederived(x − d) + c ≈ rederived(x) − ∇rederived(x)·d + c, solved for d (and a uniform luma offset c) by least
squares over the tile's pixels with source data, with the re-derived tile's gradients from a 7-tap central
difference (the exported tile's JPEG noise stays out of them). All tiles of an image in one vectorised pass.

Precision against exact (Fourier) sub-pixel shifts: within 0.002 px or 8 % of the shift, whichever is larger,
up to 0.25 px (tests/test_tileshift.py: every tile of a 1086-px source view, sharp, the worst a silhouette edge
at 7 %; the tiles of resampled exports do better, within 0.001 px up to 0.05 px and agreeing with a step
iterated to convergence to 1e-4 px).
(Sobel's 3×3 gradients under-estimate the slope of such texture by ~10 %, which one step passes on: 0.010 px
off at 0.05; without the offset, a smooth 4344-px tile read JPEG's few hundredths of a level as 0.045 px.)
A tile whose step says more than _FAST_SHIFT, or whose residual after it is not mostly noise, is measured again
(`_iterated`): from a phase correlation's estimate in whole pixels, one step for the rest; within 0.02 px beyond
0.25 px (0.5 px of a 272-px view shifted by OpenCV's cubic interpolation measures 0.57: there the number tells how
far off, not the hundredths). Moving the re-derived tile by the fraction instead would bias it: bilinear
re-derivation half a pixel over smooths it (0.52 for 0.5), Keys' cubic too (0.527).

What limits a clean export's number is JPEG: on smooth content its errors read as a few hundredths of a pixel
(tile sizes: TILE_FRACTION).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

TILE_FRACTION = 45
"""Tiles are about 1/TILE_FRACTION of the image's long side (in multiples of 16 pixels, at least MIN_TILE), and a
tile that measures more than _RECHECK_SHIFT is measured again at twice the side: the shift that JPEG alone puts on
a tile falls with its pixel count and with the texture's density, which for one scene falls as the image grows.
The largest of a clean view's tiles, 1086-px views: quality 95, 48-px tiles ≤ 0.009 px (none re-measured);
quality 50, 48-px 0.047, with 96-px re-measures 0.032 (quality 75: 0.019). 4344-px views of the synthetic sample,
smooth at that size: 96-px tiles alone ≤ 0.033, re-measured ≤ 0.019 (64-px tiles alone 0.045)."""
MIN_TILE = 48
_PAD = 4
"""Re-derived pixels around a tile: with _MARGIN, room for the blur and the derivative (3 px each)."""
_MARGIN = 4
"""Tile border left out of the sums (where the blur of the stacked tiles reaches the next tile)."""
_BLUR = 0.7
"""Gaussian σ (pixels) both tiles are smoothed by: the linearisation holds for shifts of half a pixel in
small, aliased images, and JPEG noise weighs less."""
_DERIVATIVE = np.array([[-1.0, 9.0, -45.0, 0.0, 45.0, -9.0, 1.0]], np.float32) / 60
"""Central difference exact for polynomials to degree 6 (cv2.filter2D correlates: f(x+1) − f(x−1) weighted +)."""
_COVERED = 0.375
"""Least share of a tile's measured pixels with source data."""
_MAX_SHIFT_ERROR = 0.01
_ROUNDING_VARIANCE = 1 / 12
"""A tile counts when its texture pins the shift to _MAX_SHIFT_ERROR px (one standard deviation) against noise
of the variance 8-bit rounding leaves (levels², uniform over one level), in its weakest direction: a dark tile
whose only texture is a sliver of the face at its edge (a 543-px alpha PNG) measures 0.23 px by that and read
0.086 px off; measured tiles of clean exports 0.003 px or less."""
_RECHECK_SHIFT = 0.02
"""Tiles measuring more than this (pixels; clean 1086-px views at quality 95 measure ≤ 0.009 on 48-px tiles) are
measured again on tiles of twice the side."""
_FAST_SHIFT = 0.25
"""A single step's estimate beyond this (pixels) is measured again from whole pixels (`_iterated`)."""
_FAST_FIT = 0.01
"""Largest residual energy after the single step, relative to the re-derived tile's variance, for it to stand
(clean exports measure ≤ 1e-4; a tile shifted by 3 px 0.02 or more)."""
_WHOLE_PIXEL_TRIES = 3


@dataclass(frozen=True, eq=False)
class TileSource:
    """What the tiles are cut from: `rederive(corners, n)` gives the re-derived luma (float32) of the n×n exported
    pixels from each whole-pixel (x0, y0) on, stacked (len(corners)·n × n), and where it has source data; the
    exported luma and alpha."""

    rederive: Callable[[Sequence[tuple[float, float]], int], tuple[np.ndarray, np.ndarray]]
    luma: np.ndarray
    alpha: np.ndarray | None


def tile_side(size: tuple[int, int]) -> int:
    """The side (exported pixels) of the tiles whose shift is measured in an image of `size` (TILE_FRACTION)."""
    return max(MIN_TILE, 16 * round(max(size) / (16 * TILE_FRACTION)))


def tile_shifts(source: TileSource, tiles: Sequence[tuple[int, int]], T: int) -> list[float]:
    """The shift (pixels) of each T×T tile (top-left corners) that can be measured: exported(x) ≈ rederived(x − d).
    A tile measuring more than _RECHECK_SHIFT is measured again on the tile of twice its side around it (where the
    image holds one), whose number stands: JPEG's noise on it is about half."""
    shifts = _measured(source, tiles, T)
    H, W = source.luma.shape
    again = [t for t, shift in zip(tiles, shifts) if shift is not None and shift > _RECHECK_SHIFT]
    if again and min(W, H) >= 2 * T:
        around = {t: (min(max(t[0] - T // 2, 0), W - 2 * T), min(max(t[1] - T // 2, 0), H - 2 * T)) for t in again}
        larger = dict(zip(around.values(), _measured(source, list(around.values()), 2 * T)))
        shifts = [shift if t not in around or larger[around[t]] is None else larger[around[t]]
                  for t, shift in zip(tiles, shifts)]
    return [shift for shift in shifts if shift is not None]


def _measured(source: TileSource, tiles: Sequence[tuple[int, int]], T: int) -> list[float | None]:
    """`tile_shifts` on T×T tiles, once: None for a tile that cannot be measured."""
    if not tiles:
        return []
    P, m = _PAD, _MARGIN
    S = T + 2 * P
    n = len(tiles)
    refs, has_data = source.rederive([(x0 - P, y0 - P) for x0, y0 in tiles], S)
    valid = has_data.reshape(n, S, S)[:, P:P + T, P:P + T]
    targets = np.stack([source.luma[y0:y0 + T, x0:x0 + T] for x0, y0 in tiles])
    if source.alpha is not None:
        valid = valid & np.stack([source.alpha[y0:y0 + T, x0:x0 + T] == 255 for x0, y0 in tiles])
    ref_stack = _blur(refs)
    whole = _blur(targets.reshape(n * T, T).astype(np.float32)).reshape(n, T, T)
    target = whole[:, m:T - m, m:T - m]
    # the blur reaches 3 px: pixels that near one without data are left out too
    weight = cv2.erode(valid.reshape(n * T, T).astype(np.uint8), np.ones((7, 7), np.uint8))
    weight = weight.reshape(n, T, T)[:, m:T - m, m:T - m].astype(np.float32)
    d, fit, pinned = _step(target, *_gradients(ref_stack, n, T), weight)
    shifts: list[float | None] = []
    for i, (x0, y0) in enumerate(tiles):
        if not (weight[i].sum() >= _COVERED * weight[i].size and np.all(np.isfinite(d[i]))
                and _ROUNDING_VARIANCE / pinned[i] <= _MAX_SHIFT_ERROR ** 2):
            shifts.append(None)  # too little data, or too little texture at full resolution (a sparse sample
            continue  # grid can see more than there is)
        shift = d[i]
        if np.hypot(*shift) > _FAST_SHIFT or fit[i] > _FAST_FIT:
            shift = _iterated(source, x0, y0, whole[i], weight[i], ref_stack.reshape(n, S, S)[i], T)
        shifts.append(float(np.hypot(*shift)))
    return shifts


def _blur(x: np.ndarray) -> np.ndarray:
    blurred: np.ndarray = cv2.GaussianBlur(x, (0, 0), _BLUR, borderType=cv2.BORDER_REFLECT)
    return blurred


def _gradients(ref_stack: np.ndarray, n: int, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The re-derived T×T tiles' measured part and its x and y derivatives, each n × (T − 2m)²."""
    P, m = _PAD, _MARGIN
    S = T + 2 * P
    inner = (slice(None), slice(P + m, P + T - m), slice(P + m, P + T - m))
    gx = cv2.filter2D(ref_stack, cv2.CV_32F, _DERIVATIVE, borderType=cv2.BORDER_REFLECT)
    gy = cv2.filter2D(ref_stack, cv2.CV_32F, _DERIVATIVE.T, borderType=cv2.BORDER_REFLECT)
    return tuple(a.reshape(n, S, S)[inner] for a in (ref_stack, gx, gy))  # type: ignore[return-value]


def _step(target: np.ndarray, ref: np.ndarray, gx: np.ndarray, gy: np.ndarray, weight: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One weighted Lucas–Kanade step per tile (arrays n × h × w), with a uniform luma offset solved alongside
    (exported ≈ rederived − ∇rederived·d + c: JPEG's and the colour conversion's rounding can leave the luma a few
    hundredths of a level off, which a smooth tile would otherwise read as a shift of that many hundredths of a
    pixel): the shifts d (n × 2; NaN where the texture leaves a direction free), the residual energy after them
    relative to each re-derived tile's variance, and the structure tensor's smaller eigenvalue (Σw∇r∇rᵀ: how
    firmly the texture pins the shift in its weakest direction, levels²/px²)."""

    def total(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Σ x·y per tile (numpy's pairwise sums in float64: the same digits whatever the threads)."""
        summed: np.ndarray = (x if y is None else x * y).sum(axis=(1, 2), dtype=np.float64)
        return summed

    e = target - ref
    w_sum = total(weight)
    wx, wy, we, wr = weight * gx, weight * gy, weight * e, weight * ref
    mx, my, me, mr = (total(a) / w_sum for a in (wx, wy, we, wr))  # weighted means

    def centred(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> np.ndarray:
        """Σw(a − ā)(b − b̄) from Σw·a·b."""
        moment: np.ndarray = total(a, b) - w_sum * ma * mb
        return moment

    axx, axy, ayy = centred(wx, gx, mx, mx), centred(wx, gy, mx, my), centred(wy, gy, my, my)
    bx, by = centred(wx, e, mx, me), centred(wy, e, my, me)
    det = axx * ayy - axy * axy
    trace = axx + ayy
    low = trace / 2 - np.sqrt(np.maximum((trace / 2) ** 2 - det, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        dx, dy = -(ayy * bx - axy * by) / det, -(axx * by - axy * bx) / det
        # Σw(ẽ + ∇̃r·d)², expanded (˜: less the weighted mean, which the offset takes)
        residual = centred(we, e, me, me) + 2 * (dx * bx + dy * by) + dx * dx * axx + 2 * dx * dy * axy \
            + dy * dy * ayy
        fit = residual / centred(wr, ref, mr, mr)
    d = np.column_stack([dx, dy])
    d[low <= 1e-3 * (trace - low)] = np.nan  # no texture across some direction
    return d, np.where(np.isfinite(fit), fit, np.inf), low


def _iterated(source: TileSource, x0: int, y0: int, target: np.ndarray, weight: np.ndarray,
              ref_blurred: np.ndarray, T: int) -> np.ndarray:
    """The shift of one tile whose single step does not stand: a phase correlation's estimate rounded to whole
    pixels n, the tile re-derived n pixels over (the same samples, moved: no interpolation of ours), one step for
    the rest; again from the new whole pixels while the rest exceeds half a pixel. `target` is the exported tile
    blurred, `weight` its measured part; `ref_blurred` the re-derived tile with its pad, blurred."""
    P, m = _PAD, _MARGIN
    window = cv2.createHanningWindow((T, T), cv2.CV_32F)
    # copies: OpenCV's phaseCorrelate applies the window to its inputs in place
    (dx, dy), _ = cv2.phaseCorrelate(ref_blurred[P:P + T, P:P + T].copy(), target.copy(), window)
    d = np.array([dx, dy])
    inner = target[m:T - m, m:T - m]
    for _ in range(_WHOLE_PIXEL_TRIES):
        whole = np.rint(d)
        moved, _ = source.rederive([(x0 - P - whole[0], y0 - P - whole[1])], T + 2 * P)  # rederived(x − n)
        rest, _, _ = _step(inner[None], *_gradients(_blur(moved), 1, T), weight[None])
        if not np.all(np.isfinite(rest)):
            break
        d = whole + rest[0]
        if np.all(np.abs(rest[0]) <= 0.5):
            break
    return d
