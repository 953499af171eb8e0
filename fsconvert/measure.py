"""Measuring one exported view as its program reads it, against the source camera carried through the plan,
and its pixels against the source image re-derived through the read-back camera.

Cameras: mesh vertices projected by the source camera (with distortion) and carried through the image
stage's transform into the exported pixel frame, against their projection through the read-back camera
(max and mean difference in exported pixels). Renders: the mesh drawn through the read-back camera and
through the expected output camera (silhouette IoU, relative z-depth difference); a view without an
overlay whose read-back camera equals the expected one (to 1e-12) is not rendered: the two renders would
be the same image. Overlays: the read-back render blended over the exported image
(`check/mv_result_<view>.jpg`). Pixels (`_pixel_fidelity`): the exported file decoded as the programs decode it
against the source JPEG resampled through the read-back camera (every transform of the stage keeps the camera
centre, so the one is a re-projection of the other; the stage's maps are not used): the shift of textured
full-resolution tiles, luma NCC and differences, the worst block, the colour order and alpha on every k-th
pixel; an exported file with an EXIF orientation fails (OpenCV's imread would turn it).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from . import conventions as cv
from .errors import InputError
from .imageplan import REDUCTIONS, ViewPlan
from .imagestage import preview_reduction, preview_size, read_image
from .loader import EXIF_ORIENTATION
from .model import UNDISTORT_CRITERIA, Camera
from .protocol import ExportedView
from .render import Render, Renderer, distorted_render
from .writers import write_encoded

OVERLAY_ALPHA = 0.5
"""Weight of the rendered mesh in the overlays."""
OUTLINE_BGR = (0, 255, 0)
"""Colour of the rendered silhouette's outline in the overlays."""
_DIFFERENCE_TOL = 1e-6
"""Camera parameters closer than this (pixels; relative for focal lengths) are reported as the same."""
_SAME_CAMERA_TOL = 1e-12
"""Read-back and expected cameras this close render identically (float32 GL): one render serves both."""

@dataclass(frozen=True)
class Thresholds:
    """Pass limits; the defaults are strict: a correct export is exact to float precision, its pixels to what
    JPEG keeps. The pixel limits sit between clean exports and damaged ones, measured on the synthetic
    sample (1086×724 and 4344×2896 views): every format and option set of tests/test_export_digests.py at
    JPEG quality 95 (and 50 where said), and the negative controls of tests/test_pixel_check.py."""

    camera_px: float = 0.01
    """Max re-projection difference, exported pixels."""
    silhouette_iou: float = 0.99
    """Min IoU of the silhouettes rendered from the read-back and the expected camera."""
    depth_rel: float = 1e-3
    """Max mean relative z-depth difference where both renders see the mesh."""
    depth_range_slack: float = 10.0
    """Max ratio of a read depth range's extent to the visible mesh's: wider, the program's depth samples
    (MVSNet's hypotheses) fall mostly off the surface."""
    pixel_shift_px: float = 0.05
    """Max shift (exported pixels) of any measured tile of the exported image against the same tile
    re-derived from the source image through the read-back camera. Clean: ≤ 0.0070 px (JPEG, 1086 px),
    ≤ 0.0003 (PNG), 0 (originals placed as they are), ≤ 0.025 (4344-px views, whose synthetic texture is
    smooth at full size), ≤ 0.038 at JPEG quality 50. A file shifted by half a pixel measures 0.506, a crop
    2 px right and 1 px down 2.24."""
    pixel_ncc: float = 0.99
    """Min normalised cross-correlation of the exported luma with the re-derived one where it has source data.
    Clean: ≥ 0.99983 (JPEG at half size, the hardest), 1.0 (PNG), ≥ 0.998 at quality 50. Another view's file
    0.61, turned 180° 0.14, a 2-px crop offset 0.975, red and blue swapped 0.989; half a pixel still 0.998
    (the shift catches it)."""
    pixel_diff: float = 3.0
    """Max mean absolute luma difference (8-bit levels) from the re-derived image where it has source data.
    Clean: ≤ 0.76 (quality 95), ≤ 2.5 (quality 50). Red and blue swapped 10.2, a 2-px crop 8.3."""
    block_diff: float = 8.0
    """Max mean absolute luma difference (8-bit levels) within any PIXEL_TILE-pixel block (blocks overlapping
    by half): local damage that the whole image's mean hides. Clean: ≤ 1.5 (quality 95), ≤ 5.2 (quality 50);
    a 64-px block painted grey 15–20 (as it falls on the blocks)."""
    alpha_error: float = 0.0
    """Max fraction of the judged pixels whose alpha contradicts the export's alpha option (0, with RGB 0,
    exactly where a pixel has no source data or, alpha "subject", is outside the mesh's silhouette through
    the read-back camera; 255 elsewhere); pixels within _EDGE_PX of the source border or _SILHOUETTE_BAND
    render pixels of the silhouette's outline are not judged. PNG is lossless: clean exports measure 0."""


@dataclass
class ViewCheck:
    """The numbers of one exported view; `problems` says why it fails (empty: it passes)."""

    id: int
    name: str
    points: int = 0
    """Mesh vertices compared (in front of the source camera, inside source and exported images)."""
    camera_max_px: float | None = None
    camera_mean_px: float | None = None
    iou: float | None = None
    depth_rel: float | None = None
    render_size: tuple[int, int] | None = None
    depth_range: tuple[float, float] | None = None
    """The depth range the program reads (MVSNet, LLFF), if any."""
    visible_depth: tuple[float, float] | None = None
    """The z-depths of the mesh the view sees, when a depth range is read."""
    pixel_shift_px: float | None = None
    """The largest shift (exported pixels) of a measured tile against the source re-derived through the
    read-back camera."""
    pixel_tiles: int = 0
    """Textured tiles the shift was measured on (one per region of the image at most)."""
    pixel_ncc: float | None = None
    """Normalised cross-correlation of the exported luma with the re-derived one."""
    pixel_diff: float | None = None
    """Mean absolute luma difference, 8-bit levels, over the compared pixels."""
    block_diff: float | None = None
    """The largest mean absolute luma difference of a PIXEL_TILE-pixel block (8-bit levels)."""
    colour_ncc: float | None = None
    """NCC of the exported red and blue channels with the re-derived ones (the lower of the two)."""
    colour_ncc_swapped: float | None = None
    """The same with red and blue exchanged: higher than `colour_ncc` when the file's colour order is swapped."""
    alpha_error: float | None = None
    """Fraction of the judged pixels whose alpha contradicts the export's alpha option; None without alpha."""
    pixel_samples: int = 0
    """Exported pixels compared (every k-th in both directions, PIXEL_SAMPLES)."""
    overlay: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems



def measure_view(
    result: ViewCheck,
    plan: ViewPlan,
    view: ExportedView,
    points: np.ndarray,
    renderer: Renderer,
    export_dir: Path,
    thresholds: Thresholds,
    render_max_side: int,
    overlay_dir: Path | None,
    sampled: bool,
    reader: str,
    previews: Mapping[Path, np.ndarray],
) -> None:
    """Measure one view into `result`; overlay it into `overlay_dir` (None: never) if `sampled` or failing."""
    expected_size = plan.camera.size
    if view.camera.size != expected_size:
        result.problems.append(f"camera is {_size(view.camera.size)}, expected {_size(expected_size)}")
    header = _image_header(export_dir / view.name)
    if isinstance(header, str):
        result.problems.append(header)
    else:
        image_size, orientation = header
        if image_size != view.camera.size:
            result.problems.append(f"image is {_size(image_size)} but its camera says {_size(view.camera.size)}")
        if orientation != 1:
            result.problems.append(f"the file carries EXIF Orientation {orientation}: OpenCV's imread turns its "
                                   "pixels, PIL and most loaders do not")

    _camera_fidelity(result, plan, view, points, thresholds, reader)

    r = preview_reduction(expected_size, render_max_side)
    w, h = preview_size(expected_size, render_max_side)  # the size of a JPEG decoded at 1/r
    readback_cam = Camera(w, h, cv.resize_K(view.camera.K, 1 / r, 1 / r), view.camera.dist)

    def silhouette() -> tuple[np.ndarray, int]:
        """The mesh's silhouette through the read-back camera at 1/r."""
        return distorted_render(renderer, readback_cam, view.world_to_cam, depth_only=True).mask, r

    if not isinstance(header, str) and header[0] == view.camera.size:
        _pixel_fidelity(result, plan, view, export_dir / view.name, thresholds, silhouette)

    expected_cam = Camera(w, h, cv.resize_K(plan.camera.K, 1 / r, 1 / r), plan.camera.dist)
    if view.depth_range is not None:
        seen = distorted_render(renderer, expected_cam, plan.world_to_cam, depth_only=True).depth
        _depth_range_fit(result, view.depth_range, seen, thresholds, reader)
    same = _same(expected_cam, plan.world_to_cam, readback_cam, view.world_to_cam)
    want_color = overlay_dir is not None and (sampled or not result.passed)
    if same and not want_color:
        return  # identical cameras render identically: without an overlay, a render would show nothing new
    result.render_size = (w, h)
    try:
        readback = distorted_render(renderer, readback_cam, view.world_to_cam, depth_only=not want_color)
    except (RuntimeError, ValueError) as exc:  # e.g. a lens model that cannot be inverted
        result.problems.append(f"cannot render through the read-back camera: {exc}")
        return
    if same:
        expected = readback
    else:
        expected = distorted_render(renderer, expected_cam, plan.world_to_cam, depth_only=True)
    _render_fidelity(result, expected, readback, thresholds)
    if overlay_dir is not None and not want_color and not result.passed:  # failed on the renders: show it
        readback, want_color = distorted_render(renderer, readback_cam, view.world_to_cam), True

    if want_color and overlay_dir is not None and not isinstance(header, str):
        path = overlay_dir / f"mv_result_{result.id}.jpg"
        try:
            _write_overlay(path, export_dir / view.name, readback, (w, h), previews.get(export_dir / view.name))
        except InputError:
            result.problems.append(f"exported image {view.name} cannot be decoded")
        else:
            result.overlay = str(path.relative_to(export_dir))


def _depth_range_fit(result: ViewCheck, depth_range: tuple[float, float], depth: np.ndarray, thresholds: Thresholds,
                     reader: str) -> None:
    """The depth range a program reads must hold the mesh the view sees (z-depth rendered through the
    expected camera), and not be so wide that its samples miss it."""
    z = depth[depth > 0]
    result.depth_range = (float(depth_range[0]), float(depth_range[1]))
    if not z.size:
        return
    lo, hi = float(z.min()), float(z.max())
    result.visible_depth = (lo, hi)
    near, far = result.depth_range
    where = f"{reader} reads the depth range {near:.6g}…{far:.6g}, the mesh it sees spans {lo:.6g}…{hi:.6g}"
    if not (near <= lo and far >= hi):
        result.problems.append(f"{where}: it does not hold it")
    elif far - near > thresholds.depth_range_slack * (hi - lo):
        result.problems.append(f"{where}: {(far - near) / (hi - lo):.3g}× wider (> {thresholds.depth_range_slack:g}×), "
                               "its depth samples fall off the surface")


def _camera_fidelity(
    result: ViewCheck, plan: ViewPlan, view: ExportedView, points: np.ndarray, thresholds: Thresholds, reader: str
) -> None:
    src = plan.view
    X_src = src.to_camera(points)
    front = X_src[:, 2] > 0
    uv_src = src.camera.project(X_src[front])
    # Inside the source image both with and without distortion: far outside it, the lens polynomial
    # may fold back and its inverse (used by the image stage) is not defined.
    uv_pin = src.camera.pinhole().project(X_src[front])
    inside = _inside(uv_src, src.camera.size) & _inside(uv_pin, src.camera.size)
    X = points[front][inside]
    expected = plan.src_to_out(uv_src[inside])
    keep = _inside(expected, plan.camera.size)
    X, expected = X[keep], expected[keep]
    result.points = len(X)
    if not len(X):
        result.problems.append("no mesh vertex projects into this view: nothing to compare")
        return
    X_cam = X @ view.world_to_cam[:3, :3].T + view.world_to_cam[:3, 3]
    behind = X_cam[:, 2] <= 0
    if behind.any():
        result.problems.append(f"{behind.sum()} of {len(X)} mesh vertices are behind the read-back camera")
    if behind.all():
        return
    err = np.linalg.norm(view.camera.project(X_cam[~behind]) - expected[~behind], axis=1)
    finite = np.isfinite(err)
    if not finite.all():
        result.problems.append(f"{np.count_nonzero(~finite)} projections through the read-back camera are not finite")
        if not finite.any():
            return
        err = err[finite]
    result.camera_max_px, result.camera_mean_px = float(err.max()), float(err.mean())
    if result.camera_max_px > thresholds.camera_px:
        why = "; ".join(camera_differences(plan.camera, plan.world_to_cam, view.camera, view.world_to_cam))
        result.problems.append(f"{reader} reads this view {result.camera_max_px:.4g} px off "
                               f"(> {thresholds.camera_px:g} px){f': {why}' if why else ''}")


def camera_differences(expected: Camera, expected_w2c: np.ndarray, read: Camera, read_w2c: np.ndarray) -> list[str]:
    """What a reader read differently from the exported camera, in words (internal convention)."""
    out = []
    e_pp, r_pp = expected.K[:2, 2], read.K[:2, 2]
    if np.abs(e_pp - r_pp).max() > _DIFFERENCE_TOL:
        centre = cv.image_centre(*read.size)
        how = "ignored: read at the image centre" if np.abs(r_pp - centre).max() < _DIFFERENCE_TOL else "read at"
        out.append(f"principal point {how} {_pair(r_pp)}, exported at {_pair(e_pp)}")
    e_f, r_f = np.diag(expected.K)[:2], np.diag(read.K)[:2]
    if np.abs(e_f - r_f).max() > _DIFFERENCE_TOL * e_f.max():
        out.append(f"focal read {_pair(r_f)}, exported {_pair(e_f)}")
    if np.abs(expected.dist - read.dist).max() > _DIFFERENCE_TOL:
        names = ("k1", "k2", "p1", "p2", "k3")
        lost = [f"{n} = {e:.4g}" for n, e, r in zip(names, expected.dist, read.dist) if e != 0 and r == 0]
        changed = [n for n, e, r in zip(names, expected.dist, read.dist) if r != 0 and abs(e - r) > _DIFFERENCE_TOL]
        out += [f"{', '.join(lost)} dropped"] if lost else []
        out += [f"{', '.join(changed)} read differently"] if changed else []
    dR = read_w2c[:3, :3] @ expected_w2c[:3, :3].T
    # atan2(sin, cos) of the relative rotation: arccos alone loses ~1e-2° near 0 (float32 poses read back)
    sin, cos = np.linalg.norm(dR - dR.T) / (2 * np.sqrt(2)), (np.trace(dR) - 1) / 2
    angle = float(np.degrees(np.arctan2(sin, cos)))
    shift = float(np.linalg.norm(cv.camera_centre(read_w2c) - cv.camera_centre(expected_w2c)))
    if angle > 1e-6 or shift > _DIFFERENCE_TOL * max(1.0, float(np.linalg.norm(cv.camera_centre(expected_w2c)))):
        out.append(f"pose off by {angle:.3g}° and {shift:.3g} world units")
    return out


def _pair(values: np.ndarray) -> str:
    return f"({values[0]:.1f}, {values[1]:.1f})"


def _render_fidelity(result: ViewCheck, expected: Render, readback: Render, thresholds: Thresholds) -> None:
    a, b = readback.mask, expected.mask
    union = int(np.count_nonzero(a | b))
    if union == 0:
        result.problems.append("the mesh is not visible in the rendered view")
        return
    both = a & b
    result.iou = float(np.count_nonzero(both) / union)
    if result.iou < thresholds.silhouette_iou:
        result.problems.append(f"silhouette IoU {result.iou:.4f} < {thresholds.silhouette_iou:g}")
    if both.any():
        d_exp = expected.depth[both].astype(np.float64)
        result.depth_rel = float(np.mean(np.abs(readback.depth[both] - d_exp) / d_exp))
        if result.depth_rel > thresholds.depth_rel:
            result.problems.append(f"depth differs by {result.depth_rel:.2e} (relative) > {thresholds.depth_rel:g}")


def _write_overlay(path: Path, image_path: Path, render: Render, size: tuple[int, int],
                   preview: np.ndarray | None) -> None:
    """The exported image at render size (its stage `preview`, or decoded), the read-back render blended over
    it and outlined."""
    if preview is not None and preview.shape[1::-1] == size:
        img = preview
    else:
        with Image.open(image_path) as im:
            full = im.size
        reduce = next((r for r in REDUCTIONS if -(-full[0] // r) >= size[0] and -(-full[1] // r) >= size[1]), 1)
        img = read_image(image_path, reduce)
        if img.shape[1::-1] != size:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    assert render.color is not None  # an overlay is drawn from a colour render
    mask = render.mask.astype(np.uint8)
    out = img.copy()
    blend = cv2.addWeighted(img, 1 - OVERLAY_ALPHA, cv2.cvtColor(render.color, cv2.COLOR_RGB2BGR), OVERLAY_ALPHA, 0)
    cv2.copyTo(blend, mask, out)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, OUTLINE_BGR, 1)
    write_encoded(path, out, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90])



def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def _inside(uv: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels inside a width×height image (OpenCV convention: pixel centres at integers)."""
    inside: np.ndarray = np.all((uv >= -0.5) & (uv <= np.array(size) - 0.5), axis=1)
    return inside


def _same(cam_a: Camera, w2c_a: np.ndarray, cam_b: Camera, w2c_b: np.ndarray) -> bool:
    def close(a: np.ndarray, b: np.ndarray) -> bool:
        return np.allclose(a, b, rtol=_SAME_CAMERA_TOL, atol=_SAME_CAMERA_TOL)

    same_camera = cam_a.size == cam_b.size and close(cam_a.K, cam_b.K) and close(cam_a.dist, cam_b.dist)
    return same_camera and close(w2c_a, w2c_b)


def _image_header(path: Path) -> tuple[tuple[int, int], int] | str:
    """(width, height) of the stored pixel grid and the EXIF orientation (1 without one) from the image
    header, or why it cannot be read."""
    if not path.is_file():
        return f"exported image {path.name} is missing"
    try:
        with Image.open(path) as im:
            return im.size, int(im.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, UnidentifiedImageError, ValueError, TypeError):
        return f"exported image {path.name} is not a readable image"



# ---- pixels: the exported image against the source re-derived through the read-back camera ----------

PIXEL_TILE = 64
"""Side (exported pixels, full resolution) of the tiles whose shift is measured and of the blocks whose mean
difference finds local damage."""
PIXEL_REGIONS = 4
"""The image is split into this many × this many regions; the most textured tile of each is measured."""
PIXEL_SAMPLES = 100_000
"""NCC, differences and alpha are compared on every k-th exported pixel in both directions (each exactly as
decoded, against the source resampled at exactly that pixel), k the smallest giving at most this many."""
_TILE_PAD = 16
"""Re-derived pixels around a tile: room for the refinement's warps."""
_TILE_MARGIN = 4
"""Tile border left out of the refinement's sums (its gradients)."""
_TILE_COVERED = 0.75
"""Least share of a tile's samples with source data (a small image's tiles all touch its border, where the
outermost pixels count as without); the refinement weighs only its pixels with source data."""
_TILE_BLUR = 0.7
"""Gaussian σ (pixels) both tiles are smoothed by alike: the refinement's linearisation then holds for shifts
of half a pixel in small, aliased images (a 0.5-px shift measured 0.26–0.50 px in 272-px images, 0.500–0.502
smoothed; clean shifts unchanged)."""
_REFINE_STEPS = 10
_REFINE_TOL = 1e-4
"""The refinement stops when a step moves the shift by less than this (pixels)."""
_EDGE_PX = 1.0
"""Re-derived positions within this many decoded source pixels of the source image's edge count neither as
with source data nor as without (bilinear interpolation, and the decode reduction, differ there)."""
_MIN_TEXTURE = 4.0
"""Mean squared grey step between neighbouring samples (8-bit levels²) below which a tile is too flat to
measure a shift on."""
_MAX_ANISOTROPY = 10.0
"""Largest ratio of the structure tensor's eigenvalues in a measured tile: beyond it one edge dominates (the
silhouette against the background), where JPEG's ringing moves the edge by up to ~0.08 px (measured)."""
_SILHOUETTE_BAND = 2
"""Render pixels either side of the read-back silhouette's outline where alpha "subject" is not judged."""
_MIN_SAMPLES = 100
_ALIGNED_NCC = 0.9
"""Luma NCC from which the exported and re-derived images show the same content: only then is red and blue
correlating better exchanged a swapped colour order (not two unrelated images)."""
_NODE_STEP = 8
"""Through a read-back lens model, positions are exact every this many grid steps and bicubic between."""


@dataclass(frozen=True, eq=False)
class _Exported:
    """The exported image as the program decodes it: BGR and the alpha channel, if any."""

    bgr: np.ndarray
    alpha: np.ndarray | None


def _pixel_fidelity(result: ViewCheck, plan: ViewPlan, view: ExportedView, path: Path, thresholds: Thresholds,
                    silhouette: Callable[[], tuple[np.ndarray, int]]) -> None:
    """Compare the exported image with the source image re-derived through the read-back camera.

    Every transform of the image stage keeps the camera centre, so the exported image is a re-projection of
    the source: each exported pixel's ray (read-back camera) turned into the source camera and projected
    through it, lens model included, samples the source (bilinear, as the stage does). The stage's own maps
    are not used. `silhouette()`: the mesh's silhouette through the read-back camera and its reduction.
    """
    try:
        exported = _decode_exported(path)
    except InputError as exc:
        result.problems.append(f"exported image {view.name} cannot be decoded: {exc.reason}")
        return
    if exported.bgr.shape[1::-1] != view.camera.size:
        return  # the size check has said so: the read-back camera does not describe these pixels
    src = plan.view
    reduce = _source_reduction(src.camera, view.camera)
    try:
        source = _decode_source(plan, reduce)
        if source.shape[1::-1] != cv.reduced_size(src.camera.size, reduce):  # a decoder without DCT scaling
            source, reduce = _decode_source(plan, 1), 1
    except InputError as exc:
        result.problems.append(f"the source image cannot be decoded: {exc}")
        return

    def positions(x0: int, y0: int, step: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        return _source_maps(src.camera, src.world_to_cam, reduce, view.camera, view.world_to_cam, x0, y0, step,
                            size)

    W, H = view.camera.size
    k = max(1, math.ceil(math.sqrt(W * H / PIXEL_SAMPLES)))
    o = (k - 1) // 2
    xs, ys = np.arange(o, W, k), np.arange(o, H, k)
    mx, my = positions(o, o, k, (len(xs), len(ys)))
    rederived = cv2.remap(source, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    Wd, Hd = source.shape[1], source.shape[0]
    with_data = (mx >= _EDGE_PX) & (mx <= Wd - 1 - _EDGE_PX) & (my >= _EDGE_PX) & (my <= Hd - 1 - _EDGE_PX)
    no_data = (mx < -_EDGE_PX) | (mx > Wd - 1 + _EDGE_PX) | (my < -_EDGE_PX) | (my > Hd - 1 + _EDGE_PX)
    sampled = np.ascontiguousarray(exported.bgr[o::k, o::k])
    alpha = None if exported.alpha is None else np.ascontiguousarray(exported.alpha[o::k, o::k])
    used = with_data if alpha is None else with_data & (alpha == 255)
    _alpha_fidelity(result, plan.options.alpha, alpha, sampled, with_data, no_data, xs, ys, silhouette, thresholds)

    result.pixel_samples = n = int(np.count_nonzero(used))
    if n < _MIN_SAMPLES:
        result.problems.append(f"only {n} exported pixels have source data: the pixels cannot be compared")
        return
    luma, rederived_luma = _grey(sampled), _grey(rederived)
    _colour_fidelity(result, sampled, rederived, luma, rederived_luma, used, thresholds)
    _block_fidelity(result, luma, rederived_luma, used, k, o, thresholds)

    tiles = _textured_tiles(rederived_luma, used, k, W, H)
    shifts = []
    P, T = _TILE_PAD, PIXEL_TILE
    for x0, y0 in tiles:
        mx_t, my_t = positions(x0 - P, y0 - P, 1, (T + 2 * P,) * 2)
        reference = _grey(cv2.remap(source, mx_t, my_t, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT))
        tile = _grey(exported.bgr[y0:y0 + T, x0:x0 + T])
        mx_c, my_c = mx_t[P:P + T, P:P + T], my_t[P:P + T, P:P + T]
        valid = (mx_c >= _EDGE_PX) & (mx_c <= Wd - 1 - _EDGE_PX) & (my_c >= _EDGE_PX) & (my_c <= Hd - 1 - _EDGE_PX)
        if exported.alpha is not None:
            valid &= exported.alpha[y0:y0 + T, x0:x0 + T] == 255
        shift = _tile_shift(tile, reference, valid)
        if shift is not None:
            shifts.append(float(np.hypot(*shift)))
    result.pixel_tiles = len(shifts)
    if not shifts:
        result.problems.append("no textured tile with source data: the pixels' shift cannot be measured")
        return
    result.pixel_shift_px = max(shifts)
    if result.pixel_shift_px > thresholds.pixel_shift_px:
        result.problems.append(f"pixels {result.pixel_shift_px:.3g} px off (> {thresholds.pixel_shift_px:g} px) "
                               "from the source re-derived through the read-back camera")


def _decode_source(plan: ViewPlan, reduce: int) -> np.ndarray:
    """The source JPEG at 1/`reduce` as the stage decodes it (an allowed corrupt one silently: the export
    warned already)."""
    with contextlib.redirect_stderr(io.StringIO()):
        return read_image(plan.view.image, reduce, plan.view.id, allow_corrupt=plan.options.allow_corrupt_images)


def _decode_exported(path: Path) -> _Exported:
    """The exported image as OpenCV's imread(IMREAD_UNCHANGED) and PIL decode it, EXIF orientation ignored:
    BGR uint8 and the alpha channel of a PNG that has one. JPEGs through libjpeg-turbo, its warnings errors
    (the same pixels as OpenCV's, `imagestage.read_image`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path) from None
    if simplejpeg.is_jpeg(data):
        return _Exported(read_image(path), None)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise InputError("not an image OpenCV decodes", file=path)
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)  # 16-bit PNG read at 8-bit levels
    if img.dtype != np.uint8:
        raise InputError(f"{img.dtype} pixels, expected 8- or 16-bit", file=path)
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in (1, 2):
        grey = img if img.ndim == 2 else img[..., 0]
        return _Exported(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), None if channels == 1 else img[..., 1])
    return _Exported(np.ascontiguousarray(img[..., :3]), None if channels == 3 else np.ascontiguousarray(img[..., 3]))


def _source_reduction(src: Camera, read: Camera) -> int:
    """The largest JPEG decode reduction of the source that still samples at least as densely as the read-back
    camera's focal length (what the stage decodes at for that output)."""
    dense = min(src.fx, src.fy) * (1 + 1e-6)
    return next((r for r in REDUCTIONS if r * min(read.fx, read.fy) <= dense), 1)


def _source_maps(src: Camera, src_w2c: np.ndarray, reduce: int, read: Camera, read_w2c: np.ndarray, x0: int,
                 y0: int, step: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """float32 maps (size[1]×size[0]): where the exported pixels (x0 + step·j, y0 + step·i) come from in the
    source image decoded at 1/`reduce`, by the read-back camera: the pixel's ray, turned into the source
    camera (both share the centre), projected through the source camera with its lens model."""
    R = read_w2c[:3, :3] @ src_w2c[:3, :3].T  # read-back camera ← source camera
    K_src = cv.resize_K(src.K, 1 / reduce, 1 / reduce)
    K_grid = cv.crop_K(read.K, x0, y0)
    K_grid[:2] /= step  # grid index → exported pixel x0 + step·index: a sampling grid, not a resize
    if not read.has_distortion:
        mx, my = cv2.initUndistortRectifyMap(K_src, src.dist, R, K_grid, size, cv2.CV_32FC1)
        return mx, my
    # a lens model read back: its exact inverse at nodes every _NODE_STEP grid steps, bilinear between (float64:
    # cv2.remap would quantise the node coordinates to 1/32 of a step)
    gx, gy = np.meshgrid(*(_NODE_STEP * np.arange(_nodes(n), dtype=np.float64) for n in size))
    pixels = np.column_stack([x0 + step * gx.ravel(), y0 + step * gy.ravel()])
    rays = cv2.undistortPoints(pixels.reshape(-1, 1, 2), read.K, read.dist, criteria=UNDISTORT_CRITERIA)
    X = np.column_stack([rays.reshape(-1, 2), np.ones(len(pixels))]) @ R  # in the source camera: Rᵀ·ray
    uv, _ = cv2.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K_src, src.dist)
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


def _alpha_fidelity(result: ViewCheck, mode: str, alpha: np.ndarray | None, sampled: np.ndarray,
                    with_data: np.ndarray, no_data: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                    silhouette: Callable[[], tuple[np.ndarray, int]], thresholds: Thresholds) -> None:
    """Alpha as the export's alpha option says: 0 (and RGB 0) where a pixel has no source data or, "subject",
    is outside the mesh's silhouette through the read-back camera; 255 elsewhere."""
    if alpha is None:
        if mode != "none":
            result.problems.append(f"no alpha channel, but the export's alpha is '{mode}'")
        return
    if mode == "none":
        result.problems.append("an alpha channel, but the export's alpha is 'none'")
        return
    opaque, clear = with_data, no_data
    if mode == "subject":
        mask, r = silhouette()
        band = np.ones((2 * _SILHOUETTE_BAND + 1,) * 2, np.uint8)
        inside = cv2.erode(mask.astype(np.uint8), band).astype(bool)
        outside = ~cv2.dilate(mask.astype(np.uint8), band).astype(bool)
        # exported pixel u lies at (u + 0.5)/r − 0.5 of the render (decoded at 1/r)
        cols = np.clip(np.rint((xs + 0.5) / r - 0.5).astype(int), 0, mask.shape[1] - 1)
        rows = np.clip(np.rint((ys + 0.5) / r - 0.5).astype(int), 0, mask.shape[0] - 1)
        opaque, clear = with_data & inside[np.ix_(rows, cols)], no_data | (with_data & outside[np.ix_(rows, cols)])
    judged = opaque | clear | (alpha == 0)
    wrong = (opaque & (alpha != 255)) | (clear & (alpha != 0)) | ((alpha == 0) & sampled.any(axis=2))
    result.alpha_error = int(np.count_nonzero(wrong)) / max(1, int(np.count_nonzero(judged)))
    if result.alpha_error > thresholds.alpha_error:
        where = "no source data" if mode == "coverage" else "no source data or outside the silhouette"
        result.problems.append(f"alpha wrong at {100 * result.alpha_error:.3g} % of pixels (> "
                               f"{100 * thresholds.alpha_error:g} %; '{mode}': 0 and RGB 0 exactly where {where})")


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation (numpy's pairwise sums: the same digits whatever the threads;
    BLAS dot products may split them across threads)."""
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / norm) if norm > 0 else 0.0


def _ncc_levels(a: np.ndarray, b: np.ndarray) -> float:
    """`_ncc` of two arrays of 8-bit levels, from exact integer sums."""
    n, sa, sb = a.size, int(a.sum()), int(b.sum())
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    cov = n * int(np.sum(a64 * b64)) - sa * sb
    var = (n * int(np.sum(a64 * a64)) - sa * sa) * (n * int(np.sum(b64 * b64)) - sb * sb)
    return cov / math.sqrt(var) if var > 0 else 0.0


def _colour_fidelity(result: ViewCheck, sampled: np.ndarray, rederived: np.ndarray, luma: np.ndarray,
                     rederived_luma: np.ndarray, used: np.ndarray, thresholds: Thresholds) -> None:
    """Luma (OpenCV's BGR2GRAY weights): NCC and mean absolute difference, which JPEG keeps at full resolution
    (its chroma is subsampled); and the colour order: red and blue as stored against exchanged."""
    at = np.flatnonzero(used)
    e, d = (np.take(y, at).astype(np.float64) for y in (luma, rederived_luma))
    result.pixel_ncc = _ncc(e, d)
    result.pixel_diff = float(np.abs(e - d).mean())
    blue, red = np.take(sampled.reshape(-1, 3), at, axis=0)[:, ::2].T
    blue_d, red_d = np.take(rederived.reshape(-1, 3), at, axis=0)[:, ::2].T
    result.colour_ncc = min(_ncc_levels(blue, blue_d), _ncc_levels(red, red_d))
    result.colour_ncc_swapped = min(_ncc_levels(blue, red_d), _ncc_levels(red, blue_d))
    if result.pixel_ncc < thresholds.pixel_ncc:
        result.problems.append(f"pixels correlate at NCC {result.pixel_ncc:.4f} (< {thresholds.pixel_ncc:g})")
    if result.pixel_diff > thresholds.pixel_diff:
        result.problems.append(f"pixels differ by {result.pixel_diff:.3g} levels on average (> "
                               f"{thresholds.pixel_diff:g})")
    if result.colour_ncc_swapped > result.colour_ncc and result.pixel_ncc >= _ALIGNED_NCC:
        result.problems.append(f"red and blue swapped: they correlate at NCC {result.colour_ncc_swapped:.4f} "
                               f"exchanged, {result.colour_ncc:.4f} as stored")


def _block_sums(values: np.ndarray, b: int) -> np.ndarray:
    """Sums over b×b blocks of a 2-D array (the last partial row and column of blocks included)."""
    h, w = values.shape
    padded = np.zeros((-(-h // b) * b, -(-w // b) * b), np.float64)
    padded[:h, :w] = values
    summed: np.ndarray = padded.reshape(padded.shape[0] // b, b, padded.shape[1] // b, b).sum(axis=(1, 3))
    return summed


def _block_fidelity(result: ViewCheck, luma: np.ndarray, rederived_luma: np.ndarray, used: np.ndarray, k: int,
                    o: int, thresholds: Thresholds) -> None:
    """The worst mean absolute luma difference of a PIXEL_TILE-pixel block, blocks overlapping by half (damage
    of that size lies within one), at least half compared."""
    b = max(1, round(PIXEL_TILE / k))
    diff = np.abs(luma.astype(np.float64) - rederived_luma) * used
    (starts_y, starts_x), counts = _window_sums(used.astype(np.float64), b)
    full = counts >= b * b / 2
    if not full.any():
        return
    means = np.where(full, _window_sums(diff, b)[1] / np.maximum(counts, 1), -1.0)
    i, j = np.unravel_index(int(np.argmax(means)), means.shape)
    result.block_diff = float(means[i, j])
    if result.block_diff > thresholds.block_diff:
        x, y = o + k * int(starts_x[j]), o + k * int(starts_y[i])
        result.problems.append(f"pixels differ by {result.block_diff:.3g} levels in the {k * b}-px block at "
                               f"({x}, {y}) (> {thresholds.block_diff:g}): damaged or pasted content")


def _window_sums(values: np.ndarray, b: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Sums of a 2-D array over b×b windows every ⌈b/2⌉ rows and columns, the last ones flush with the far
    edges: ((first rows, first columns), sums)."""
    total = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    total[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    starts = []
    for n in values.shape:
        side = min(b, n)
        first = np.arange(0, n - side + 1, -(-side // 2))
        starts.append(np.union1d(first, [n - side]))
    ys, xs = starts
    y0, x0 = ys[:, None], xs[None, :]
    y1, x1 = y0 + min(b, values.shape[0]), x0 + min(b, values.shape[1])
    return (ys, xs), total[y1, x1] - total[y0, x1] - total[y1, x0] + total[y0, x0]


def _grey(bgr: np.ndarray) -> np.ndarray:
    grey: np.ndarray = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY)
    return grey


def _textured_tiles(grey: np.ndarray, used: np.ndarray, k: int, W: int, H: int) -> list[tuple[int, int]]:
    """Top-left corners (exported pixels) of the tiles whose shift is measured: in each of PIXEL_REGIONS ×
    PIXEL_REGIONS regions, the PIXEL_TILE-pixel tile mostly with source data (_TILE_COVERED of its samples)
    whose texture pins a shift best in every direction (the structure tensor's smaller eigenvalue: an edge alone
    leaves the shift along it free), in raster order."""
    b = max(1, round(PIXEL_TILE / k))
    gx, gy = (cv2.Sobel(grey, cv2.CV_64F, dx, 1 - dx, ksize=3, scale=1 / 8) * used for dx in (1, 0))
    counts = _block_sums(used.astype(np.float64), b)
    sxx, syy, sxy = (_block_sums(p, b) / np.maximum(counts, 1) for p in (gx * gx, gy * gy, gx * gy))
    texture = (sxx + syy) / 2 - np.sqrt(((sxx - syy) / 2) ** 2 + sxy ** 2)
    rows, cols = texture.shape
    by, bx = np.mgrid[0:rows, 0:cols]
    corners_x, corners_y = bx * b * k, by * b * k
    isotropic = (sxx + syy) - texture <= _MAX_ANISOTROPY * texture  # the larger eigenvalue
    ok = ((counts >= _TILE_COVERED * b * b) & (texture >= _MIN_TEXTURE) & isotropic
          & (corners_x + PIXEL_TILE <= W) & (corners_y + PIXEL_TILE <= H))
    region = (by * PIXEL_REGIONS // rows) * PIXEL_REGIONS + bx * PIXEL_REGIONS // cols
    tiles = []
    for r in range(PIXEL_REGIONS * PIXEL_REGIONS):
        candidates = np.flatnonzero((ok & (region == r)).ravel())
        if candidates.size:
            best = int(candidates[np.argmax(texture.ravel()[candidates])])
            tiles.append((int(corners_x.ravel()[best]), int(corners_y.ravel()[best])))
    return sorted(tiles, key=lambda t: (t[1], t[0]))


def _tile_shift(tile: np.ndarray, reference: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """(dx, dy) with tile(x) ≈ reference(x − d) where `valid` (the tile's pixels with source data), or None
    when too few: `reference` is the re-derived tile with _TILE_PAD pixels around; both are smoothed alike
    (_TILE_BLUR). Phase correlation (Hann window) finds the shift to ~0.1 px; Gauss–Newton steps on the
    reference moved by the estimate (`_moved`: exact bicubic weights) and its gradients (the exported tile's
    JPEG noise stays out of them) refine it to ~0.005 px."""
    P, T, m = _TILE_PAD, PIXEL_TILE, _TILE_MARGIN
    inner = (slice(m, T - m),) * 2
    # the blur reaches ~2σ: pixels that near a pixel without data are left out too
    weight = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8))[inner].astype(np.float64)
    if weight.sum() < _TILE_COVERED * weight.size / 2:
        return None
    tile, reference = (cv2.GaussianBlur(x, (0, 0), _TILE_BLUR, borderType=cv2.BORDER_REFLECT)
                       for x in (tile, reference))
    window = cv2.createHanningWindow((T, T), cv2.CV_32F)
    # copies: OpenCV's phaseCorrelate applies the window to its inputs in place
    (dx, dy), _ = cv2.phaseCorrelate(reference[P:P + T, P:P + T].copy(), tile.copy(), window)
    d = np.array([dx, dy])
    target = tile[inner].astype(np.float64)
    for _ in range(_REFINE_STEPS):
        if not np.all(np.abs(d) < P - m):
            break  # shifted beyond the re-derived margin: the phase correlation's estimate stands
        moved = _moved(reference, d)
        gx = cv2.Sobel(moved, cv2.CV_64F, 1, 0, ksize=3, scale=1 / 8)[inner] * weight
        gy = cv2.Sobel(moved, cv2.CV_64F, 0, 1, ksize=3, scale=1 / 8)[inner] * weight
        residual = target - moved[inner]
        A = np.array([[np.sum(gx * gx), np.sum(gx * gy)], [np.sum(gx * gy), np.sum(gy * gy)]])
        low, high = np.linalg.eigvalsh(A)
        if low <= 1e-3 * high:
            break  # no texture across some direction
        # residual ≈ −∇moved·(d_true − d): moved(x) = reference(x − d)
        step = -np.linalg.solve(A, np.array([np.sum(gx * residual), np.sum(gy * residual)]))
        d = d + step
        if np.abs(step).max() < _REFINE_TOL:
            break
    return d


def _keys(z: float) -> float:
    """Keys' cubic convolution kernel (a = −0.5): interpolating, its weights sum to 1."""
    z = abs(z)
    return 1.5 * z ** 3 - 2.5 * z ** 2 + 1 if z <= 1 else -0.5 * z ** 3 + 2.5 * z ** 2 - 4 * z + 2 if z < 2 else 0.0


def _moved(reference: np.ndarray, d: np.ndarray) -> np.ndarray:
    """reference(x − d) on the PIXEL_TILE² centre of a padded tile, bicubic with float64 weights (cv2.warpAffine
    would quantise d to 1/32 px): each axis shifted by ⌊d⌋ and the rest, four taps."""
    P, T = _TILE_PAD, PIXEL_TILE
    out = reference.astype(np.float64)
    for axis, shift in ((1, float(d[0])), (0, float(d[1]))):
        n = math.floor(shift)
        f = shift - n
        # out(x) = in(y − f), y = x − n: taps y − 2 … y + 1 at distances 2 − f, 1 − f, f, 1 + f
        taps = [_keys(k + f) * np.take(out, range(P - n + k, P - n + k + T), axis=axis) for k in (-2, -1, 0, 1)]
        out = taps[0] + taps[1] + taps[2] + taps[3]
    return out
