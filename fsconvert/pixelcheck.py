"""The pixel check's measurement: an exported image against its source image re-derived through a camera.

Every transform of the image stage keeps the camera centre, so an exported image is a re-projection of its
source image: each exported pixel's ray through the camera it is read with, turned into the source camera and
projected through the source's lens model, samples the source image (bilinear, as the stage samples it).
`measure_pixels` re-derives the image that way (OpenCV's undistort-rectify maps with the relative rotation, or
the lens model's exact inverse; the stage's maps are not used) and compares it with the file as decoded:

- on every k-th pixel in both directions (at most PIXEL_SAMPLES): the luma NCC and mean absolute difference
  in 8-bit levels where the pixel has source data, the worst block of about BLOCK_PX pixels (local damage),
  the colour order (the file's luma against the re-derived luma with red and blue exchanged) and the alpha
  channel;
- at full resolution, in each of PIXEL_REGIONS × PIXEL_REGIONS regions, the shift of its most textured
  tile (`fsconvert.tileshift`: tiles of about 1/45 of the long side, their precision).

A JPEG is compared by its luma: the Y plane as libjpeg-turbo decodes it (islow IDCT, warnings as errors), which
is the luma (BT.601 weights) of the RGB every program decodes to ±1 level; its chroma is not decoded (it would
cost two thirds as much again: 27 instead of 16.6 ms for a 4344-px view) and is checked through the colour order
only. A PNG is decoded whole (BGR, alpha, 16-bit as 8-bit levels). `fsconvert.viewpixels` chooses what is
measured when (the stage's own measurement, the files, or an original placed unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from . import conventions as cv
from .errors import InputError
from .model import UNDISTORT_CRITERIA, Camera, View
from .tileshift import TileSource, tile_shifts, tile_side

PIXEL_REGIONS = 3
"""The image is split into this many × this many regions; the most textured tile of each is measured."""
BLOCK_PX = 64
"""Side (exported pixels) of the blocks whose mean difference finds local damage (at least _BLOCK_SAMPLES
samples: larger in large images)."""
PIXEL_SAMPLES = 12_000
"""NCC, differences and alpha are compared on every k-th exported pixel in both directions (each exactly as
decoded, against the source resampled at exactly that pixel), k the smallest giving at most this many: on clean
exports (quality 95 and 50) NCC, the mean and the worst block's difference move by ≤ 5e-5, 0.03 and 0.44 levels
from 100 000 samples; a block keeps 8 × 8 samples or more in 1086-px views."""
EDGE_PX = 1.0
"""Re-derived positions within this many decoded source pixels of the source image's edge count neither as
with source data nor as without (bilinear interpolation, and the decode reduction, differ there)."""
_TILE_COVERED = 0.75
"""Least share of a tile's samples with source data (a small image's tiles all touch its border)."""
_MIN_TEXTURE = 4.0
"""Mean squared grey step between neighbouring samples (8-bit levels²) below which a tile is too flat to
measure a shift on."""
_MAX_ANISOTROPY = 10.0
"""Largest ratio of the structure tensor's eigenvalues in a measured tile: beyond it one edge dominates (the
silhouette against the background), where JPEG's ringing moves the edge by up to ~0.08 px (measured)."""
_MIN_SAMPLES = 100
_BLOCK_SAMPLES = 4
"""Fewest samples a side of a block whose mean difference is compared (large images are sampled sparsely)."""
_NODE_STEP = 8
"""Through a lens model, positions are exact every this many grid steps and bilinear between."""
_BT601 = np.array([0.114, 0.587, 0.299], np.float32)
"""Luma weights of blue, green and red (OpenCV's BGR2GRAY, JPEG's Y)."""


@dataclass(frozen=True, eq=False)
class Decoded:
    """An exported image as the programs decode it: its luma (8-bit levels) and, for a PNG, BGR and alpha."""

    luma: np.ndarray
    bgr: np.ndarray | None = None
    alpha: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class AlphaSamples:
    """The alpha channel on the sample grid, for the check to hold against the mesh's silhouette."""

    alpha: np.ndarray
    with_data: np.ndarray
    no_data: np.ndarray
    coloured: np.ndarray
    """Where the RGB is not 0."""
    xs: np.ndarray
    ys: np.ndarray
    """The exported pixel columns and rows of the grid."""


@dataclass
class PixelNumbers:
    """What `measure_pixels` measured (None: not measured; `unmeasured` says why)."""

    shift_px: float | None = None
    tiles: int = 0
    ncc: float | None = None
    diff: float | None = None
    swapped_diff: float | None = None
    block_diff: float | None = None
    block_at: tuple[int, int, int] = (0, 0, 0)
    """The top-left exported pixel and the side of the block with `block_diff`."""
    samples: int = 0
    identical: bool = False
    """The file is the source JPEG byte for byte, read with the source camera: its pixels are the source's."""
    alpha: AlphaSamples | None = None
    unmeasured: list[str] = field(default_factory=list)


def identical(size: tuple[int, int]) -> PixelNumbers:
    """The numbers of an original placed unchanged and read with its own camera: every pixel the source's."""
    return PixelNumbers(shift_px=0.0, ncc=1.0, diff=0.0, block_diff=0.0, samples=size[0] * size[1], identical=True)


def decode_exported(data: bytes, path: Path) -> Decoded:
    """The exported file's pixels as the programs decode them (EXIF orientation ignored); InputError if it cannot
    be decoded."""
    if simplejpeg.is_jpeg(data):
        try:
            colorspace = simplejpeg.decode_jpeg_header(data)[2]
            if colorspace in ("YCbCr", "Gray", "RGB"):
                return Decoded(simplejpeg.decode_jpeg(data, "GRAY", strict=True)[..., 0])
        except ValueError as exc:
            raise InputError(f"corrupt JPEG data ({exc})", file=path) from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise InputError("not an image OpenCV decodes", file=path)
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)  # 16-bit PNG read at 8-bit levels
    if img.dtype != np.uint8:
        raise InputError(f"{img.dtype} pixels, expected 8- or 16-bit", file=path)
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in (1, 2):
        grey = np.ascontiguousarray(img if img.ndim == 2 else img[..., 0])
        return Decoded(grey, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), None if channels == 1 else img[..., 1])
    bgr = np.ascontiguousarray(img[..., :3])
    return Decoded(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), bgr, None if channels == 3 else img[..., 3])


def measure_pixels(source: np.ndarray, reduce: int, src: View, camera: Camera, w2c: np.ndarray,
                   decoded: Decoded, *, rgb: bool = False) -> PixelNumbers:
    """Compare `decoded` (an exported image of `camera`'s size) with `source` (the view's source image decoded at
    1/`reduce`, BGR, or with `rgb` RGB) re-derived through `camera` at pose `w2c` (see the module's notes)."""

    def resampled(mx: np.ndarray, my: np.ndarray) -> np.ndarray:
        """`source` at positions (mx, my), BGR."""
        out = cv2.remap(source, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return cv2.cvtColor(out, cv2.COLOR_RGB2BGR) if rgb and out.ndim == 3 else out

    positions = SourceMaps(src.camera, src.world_to_cam, reduce, camera, w2c)

    W, H = camera.size
    k = max(1, math.ceil(math.sqrt(W * H / PIXEL_SAMPLES)))
    o = (k - 1) // 2
    xs, ys = np.arange(o, W, k), np.arange(o, H, k)
    mx, my = positions(o, o, k, (len(xs), len(ys)))
    rederived = resampled(mx, my)
    with_data, no_data = data_masks(mx, my, source.shape[1::-1])
    luma = decoded.luma[o::k, o::k]
    numbers = PixelNumbers()
    used = with_data
    if decoded.alpha is not None:
        alpha = np.ascontiguousarray(decoded.alpha[o::k, o::k])
        assert decoded.bgr is not None  # only a PNG has alpha, and a PNG is decoded whole
        coloured = np.any(decoded.bgr[o::k, o::k], axis=2)
        numbers.alpha = AlphaSamples(alpha, with_data, no_data, np.asarray(coloured), xs, ys)
        used = with_data & (alpha == 255)
    numbers.samples = n = int(np.count_nonzero(used))
    if n < _MIN_SAMPLES:
        numbers.unmeasured.append(f"only {n} exported pixels have source data: the pixels cannot be compared")
        return numbers
    r_luma = grey(rederived)
    at = np.flatnonzero(used)
    e, d, s = (np.take(y, at).astype(np.float32) for y in (luma, r_luma, grey(rederived[..., ::-1])))
    numbers.ncc = ncc(e, d)
    numbers.diff = float(np.abs(e - d).sum(dtype=np.float64)) / n
    numbers.swapped_diff = float(np.abs(e - s).sum(dtype=np.float64)) / n
    numbers.block_diff, numbers.block_at = _worst_block(luma, r_luma, used, k, o)

    def windows(corners: Sequence[tuple[float, float]], size: int) -> tuple[np.ndarray, np.ndarray]:
        """The re-derived luma of size² windows from each exported pixel (x0, y0) on, stacked, and where it has
        data: one remap."""
        maps = [positions(x0, y0, 1, (size, size)) for x0, y0 in corners]
        mx_w, my_w = (np.concatenate([m[i] for m in maps]) for i in (0, 1))
        rederived_w = resampled(mx_w, my_w)
        return grey(rederived_w), data_masks(mx_w, my_w, source.shape[1::-1])[0]

    side = tile_side(camera.size)
    tiles = textured_tiles(r_luma, used, k, o, side, W, H)
    shifts = tile_shifts(TileSource(windows, decoded.luma, decoded.alpha), tiles, side)
    numbers.tiles = len(shifts)
    if not shifts:
        numbers.unmeasured.append("no textured tile with source data: the pixels' shift cannot be measured")
    else:
        numbers.shift_px = max(shifts)
    return numbers


def data_masks(mx: np.ndarray, my: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Where re-derived positions have source data (at least EDGE_PX inside a width×height decoded image) and
    where they have none (more than EDGE_PX outside)."""
    W, H = size
    with_data = (mx >= EDGE_PX) & (mx <= W - 1 - EDGE_PX) & (my >= EDGE_PX) & (my <= H - 1 - EDGE_PX)
    no_data = (mx < -EDGE_PX) | (mx > W - 1 + EDGE_PX) | (my < -EDGE_PX) | (my > H - 1 + EDGE_PX)
    return with_data, no_data


class SourceMaps:
    """Where exported pixels come from in the source image decoded at 1/`reduce`, through the camera `read`:
    each pixel's ray, turned into the source camera (both share the centre), projected through the source camera
    with its lens model. Called with (x0, y0, step, size): float32 maps (size[1]×size[0]) for the exported
    pixels (x0 + step·j, y0 + step·i)."""

    def __init__(self, src: Camera, src_w2c: np.ndarray, reduce: int, read: Camera, read_w2c: np.ndarray) -> None:
        self.R = read_w2c[:3, :3] @ src_w2c[:3, :3].T  # read camera ← source camera
        self.K_src, self.dist_src = cv.resize_K(src.K, 1 / reduce, 1 / reduce), src.dist
        self.read = read
        self.pinhole = not read.has_distortion

    def __call__(self, x0: float, y0: float, step: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        K_grid = cv.crop_K(self.read.K, x0, y0)
        K_grid[:2] /= step  # grid index → exported pixel x0 + step·index: a sampling grid, not a resize
        if self.pinhole:
            mx, my = cv2.initUndistortRectifyMap(self.K_src, self.dist_src, self.R, K_grid, size, cv2.CV_32FC1)
            return mx, my
        # a lens model: its exact inverse at nodes every _NODE_STEP grid steps, bilinear between (float64:
        # cv2.remap would quantise the node coordinates to 1/32 of a step)
        gx, gy = np.meshgrid(*(_NODE_STEP * np.arange(_nodes(n), dtype=np.float64) for n in size))
        pixels = np.column_stack([x0 + step * gx.ravel(), y0 + step * gy.ravel()])
        rays = cv2.undistortPoints(pixels.reshape(-1, 1, 2), self.read.K, self.read.dist, criteria=UNDISTORT_CRITERIA)
        X = np.column_stack([rays.reshape(-1, 2), np.ones(len(pixels))]) @ self.R  # in the source camera: Rᵀ·ray
        uv, _ = cv2.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), self.K_src, self.dist_src)
        uv = uv.reshape(gx.shape + (2,))
        uv[X[:, 2].reshape(gx.shape) <= 0] = -1e6  # behind the source camera: no data
        (ix, tx), (iy, ty) = (_between(n) for n in size)
        along_x = uv[:, ix] * (1 - tx)[None, :, None] + uv[:, ix + 1] * tx[None, :, None]
        fine = along_x[iy] * (1 - ty)[:, None, None] + along_x[iy + 1] * ty[:, None, None]
        return fine[..., 0].astype(np.float32), fine[..., 1].astype(np.float32)


def _nodes(n: int) -> int:
    """Nodes every _NODE_STEP grid steps from 0 past n − 1 (at least two)."""
    return -(-max(n - 1, 1) // _NODE_STEP) + 1


def _between(n: int) -> tuple[np.ndarray, np.ndarray]:
    """For grid indices 0..n−1: the node before each and the fraction of the way to the next."""
    at = np.arange(n) / _NODE_STEP
    before = np.minimum(np.floor(at).astype(int), _nodes(n) - 2)
    return before, at - before


def agreement_px(a: Camera, a_w2c: np.ndarray, b: Camera, b_w2c: np.ndarray, nodes: int = 17) -> float:
    """How far apart (pixels) cameras `a` and `b` put the same ray, at most over nodes × nodes pixels spread over
    the image (its corners included): how much pixels re-derived through one move against the other. Only the
    rotation and the intrinsics count (a pixel's re-derivation is independent of the camera centre); inf when
    the sizes differ or a ray of `b` falls behind `a`."""
    if a.size != b.size:
        return math.inf
    u, v = np.meshgrid(np.linspace(0, b.width - 1, nodes), np.linspace(0, b.height - 1, nodes))
    pixels = np.column_stack([u.ravel(), v.ravel()])
    rays = cv2.undistortPoints(pixels.reshape(-1, 1, 2), b.K, b.dist, criteria=UNDISTORT_CRITERIA).reshape(-1, 2)
    X = np.column_stack([rays, np.ones(len(rays))]) @ (a_w2c[:3, :3] @ b_w2c[:3, :3].T).T  # b's rays in a
    if not np.all(X[:, 2] > 0):
        return math.inf
    moved = np.linalg.norm(a.project(X) - pixels, axis=1)
    return float(moved.max()) if np.all(np.isfinite(moved)) else math.inf


def grey(bgr: np.ndarray) -> np.ndarray:
    """Luma (float32, OpenCV's BGR2GRAY weights, unrounded)."""
    g: np.ndarray = cv2.transform(bgr.astype(np.float32), _BT601.reshape(1, 3))
    return g.reshape(bgr.shape[:2])


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation (numpy's pairwise sums in float64: the same digits whatever the
    threads; BLAS dot products may split them across threads)."""
    a = a - np.float32(a.mean(dtype=np.float64))
    b = b - np.float32(b.mean(dtype=np.float64))
    norm = math.sqrt(float((a * a).sum(dtype=np.float64)) * float((b * b).sum(dtype=np.float64)))
    return float((a * b).sum(dtype=np.float64)) / norm if norm > 0 else 0.0


def _block_sums(planes: Sequence[np.ndarray], b: int) -> list[np.ndarray]:
    """Sums over b×b blocks of each of up to four 2-D arrays of one shape (the last partial row and column of
    blocks included): one area resize (a reshaped numpy sum over such small axes is ~15× slower)."""
    h, w = planes[0].shape
    padded = np.zeros((-(-h // b) * b, -(-w // b) * b, len(planes)), np.float64)
    for i, plane in enumerate(planes):
        padded[:h, :w, i] = plane
    means = cv2.resize(padded, (padded.shape[1] // b, padded.shape[0] // b), interpolation=cv2.INTER_AREA)
    return [means[..., i] * (b * b) for i in range(len(planes))] if len(planes) > 1 else [means * (b * b)]


def _worst_block(luma: np.ndarray, rederived: np.ndarray, used: np.ndarray, k: int, o: int
                 ) -> tuple[float | None, tuple[int, int, int]]:
    """The worst mean absolute luma difference of a block of about BLOCK_PX pixels (at least _BLOCK_SAMPLES
    samples a side), blocks overlapping by half (damage of half that size lies within one), at least half
    compared; and the block's top-left exported pixel and side."""
    half = -(-max(_BLOCK_SAMPLES, round(BLOCK_PX / k)) // 2)
    diff, counts = _block_sums([np.abs(luma - rederived) * used, used], half)
    windows, covered = (x[:-1, :-1] + x[1:, :-1] + x[:-1, 1:] + x[1:, 1:] if min(x.shape) > 1 else x
                        for x in (diff, counts))
    full = covered >= 2 * half * half
    if not full.any():
        return None, (0, 0, 0)
    means = np.where(full, windows / np.maximum(covered, 1), -1.0)
    i, j = np.unravel_index(int(np.argmax(means)), means.shape)
    return float(means[i, j]), (o + k * half * int(j), o + k * half * int(i), 2 * half * k)


def textured_tiles(luma: np.ndarray, used: np.ndarray, k: int, o: int, side: int, W: int, H: int
                   ) -> list[tuple[int, int]]:
    """Top-left corners (exported pixels) of the tiles whose shift is measured: in each of PIXEL_REGIONS ×
    PIXEL_REGIONS regions, the `side`-pixel tile mostly with source data (_TILE_COVERED of its samples)
    whose texture pins a shift best in every direction (the structure tensor's smaller eigenvalue: an edge alone
    leaves the shift along it free), in raster order. Gradients count only where their whole 3×3 stencil has
    source data: the edge of the data (black beyond it, alpha-less) is not texture."""
    b = max(2, round(side / k))
    inside = cv2.erode(used.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                       borderValue=0).astype(np.float32)
    gx, gy = (cv2.Sobel(luma, cv2.CV_32F, dx, 1 - dx, ksize=3, scale=1 / 8) * inside for dx in (1, 0))
    counts, sxx, syy, sxy = _block_sums([inside, gx * gx, gy * gy, gx * gy], b)
    sxx, syy, sxy = (x / np.maximum(counts, 1) for x in (sxx, syy, sxy))
    texture = (sxx + syy) / 2 - np.sqrt(((sxx - syy) / 2) ** 2 + sxy ** 2)
    rows, cols = texture.shape
    by, bx = np.mgrid[0:rows, 0:cols]
    corners_x, corners_y = o + bx * b * k, o + by * b * k
    isotropic = (sxx + syy) - texture <= _MAX_ANISOTROPY * texture  # the larger eigenvalue
    ok = ((counts >= _TILE_COVERED * b * b) & (texture >= _MIN_TEXTURE) & isotropic
          & (corners_x + side <= W) & (corners_y + side <= H))
    region = (by * PIXEL_REGIONS // rows) * PIXEL_REGIONS + bx * PIXEL_REGIONS // cols
    tiles = []
    for r in range(PIXEL_REGIONS * PIXEL_REGIONS):
        candidates = np.flatnonzero((ok & (region == r)).ravel())
        if candidates.size:
            best = int(candidates[np.argmax(texture.ravel()[candidates])])
            tiles.append((int(corners_x.ravel()[best]), int(corners_y.ravel()[best])))
    return sorted(tiles, key=lambda t: (t[1], t[0]))


def alpha_error(mode: str, samples: AlphaSamples, silhouette: Callable[[], tuple[np.ndarray, int]],
                band: int) -> float:
    """The fraction of the judged samples whose alpha contradicts the export's alpha option `mode`: 0 (and RGB
    0) where a pixel has no source data or, "subject", is outside the mesh's silhouette (`silhouette()`: the
    mask through the camera read and its reduction), 255 elsewhere; `band` mask pixels either side of the
    silhouette's outline are not judged."""
    opaque, clear = samples.with_data, samples.no_data
    if mode == "subject":
        mask, r = silhouette()
        kernel = np.ones((2 * band + 1,) * 2, np.uint8)
        inside = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        outside = ~cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
        # each sample's nearest pixel of the mask (a render at 1/r)
        uv = cv.resize_points(np.stack(np.meshgrid(samples.xs, samples.ys), axis=-1), 1 / r, 1 / r)
        cols, rows = (np.clip(np.rint(uv[..., i]).astype(int), 0, mask.shape[1 - i] - 1) for i in (0, 1))
        opaque = opaque & inside[rows, cols]
        clear = clear | (samples.with_data & outside[rows, cols])
    a = samples.alpha
    judged = opaque | clear | (a == 0)
    wrong = (opaque & (a != 255)) | (clear & (a != 0)) | ((a == 0) & samples.coloured)
    return int(np.count_nonzero(wrong)) / max(1, int(np.count_nonzero(judged)))
