"""Measuring one exported view as its program reads it, against the source camera carried through the plan,
and its pixels against the source image re-derived through the read-back camera.

Cameras: mesh vertices projected by the source camera (with distortion) and carried through the image
stage's transform into the exported pixel frame, against their projection through the read-back camera
(max and mean difference in exported pixels). Renders: the mesh drawn through the read-back camera and
through the expected output camera (silhouette IoU, relative z-depth difference); a view without an
overlay whose read-back camera equals the expected one (to 1e-12) is not rendered: the two renders would
be the same image. Overlays: the read-back render blended over the exported image
(`check/mv_result_<view>.jpg`). Pixels (`_pixel_fidelity`): the exported file decoded as the programs decode it
against the source JPEG resampled through the read-back camera (`fsconvert.pixelcheck`; which measurement serves,
`fsconvert.viewpixels`): the shift of textured full-resolution tiles, luma NCC and differences, the worst block,
the colour order and alpha; an exported file with an EXIF orientation fails (OpenCV's imread would turn it).
~430 lines: the thresholds (every limit with what clean and damaged exports measured) and the per-view record
are one contract with the measurements that fill them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from . import conventions as cv
from .errors import InputError
from .imageplan import REDUCTIONS, ViewPlan
from .imagestage import preview_reduction, preview_size, read_image
from .loader import exif_orientation
from .model import Camera
from .pixelcheck import alpha_error
from .protocol import ExportedView
from .render import Render, Renderer, distorted_render
from .viewpixels import Written, view_pixels
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
    JPEG keeps. The pixel limits sit between clean exports and damaged ones, measured on the synthetic sample
    (1086×724 views, and 4344×2896 where said): every format and option set of tests/test_export_digests.py at
    JPEG quality 95, the facescape export at quality 50, and the negative controls of tests/test_pixel_check.py
    (a facescape export's view 0 damaged)."""

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
    re-derived from the source image through the read-back camera (`fsconvert.tileshift`, its precision there).
    Clean: ≤ 0.0089 px (JPEG), ≤ 0.0066 (PNG), 0 (originals placed as they are), ≤ 0.032 at quality 50; ≤ 0.019
    in the 4344-px views, whose synthetic texture is smooth at that size (JPEG's errors read as shift there).
    A file shifted by half a pixel measures 0.505, a crop 2 px right and 1 px down 2.240 (√5: 2.236)."""
    pixel_ncc: float = 0.99
    """Min normalised cross-correlation of the exported luma with the re-derived one where it has source data.
    Clean: ≥ 0.99983 (JPEG at half size, the hardest), ≥ 0.99995 (PNG), ≥ 0.9992 at quality 50. Another view's
    file 0.61, turned 180° 0.14, a 2-px crop offset 0.976, red and blue swapped 0.989; half a pixel still 0.998
    (the shift catches it)."""
    pixel_diff: float = 3.0
    """Max mean absolute luma difference (8-bit levels) from the re-derived image where it has source data.
    Clean: ≤ 0.78 (quality 95), ≤ 1.57 (quality 50). Red and blue swapped 10.2, a 2-px crop 8.3. (Red and blue
    swapped is named as such when exchanging them in the re-derived image explains the luma at least twice as
    well: clean exports' `swapped_diff` is ≥ 6.8 × their `pixel_diff`, a swapped file's 0.07 ×.)"""
    block_diff: float = 8.0
    """Max mean absolute luma difference (8-bit levels) within any block of `pixelcheck.BLOCK_PX` pixels (blocks
    overlapping by half): local damage that the whole image's mean hides. Clean: ≤ 1.52 (quality 95), ≤ 4.2
    (quality 50); a 64-px block painted grey 22.5, half a pixel 6.6."""
    alpha_error: float = 0.0
    """Max fraction of the judged pixels whose alpha contradicts the export's alpha option (0, with RGB 0,
    exactly where a pixel has no source data or, alpha "subject", is outside the mesh's silhouette through
    the read-back camera; 255 elsewhere); pixels within `pixelcheck.EDGE_PX` of the source border or
    _SILHOUETTE_BAND render pixels of the silhouette's outline are not judged. PNG is lossless: clean exports
    measure 0."""


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
    swapped_diff: float | None = None
    """The same with red and blue of the re-derived image exchanged: under half of `pixel_diff` when the file's
    colour order is swapped."""
    block_diff: float | None = None
    """The largest mean absolute luma difference of a block of `pixelcheck.BLOCK_PX` pixels (8-bit levels)."""
    alpha_error: float | None = None
    """Fraction of the judged pixels whose alpha contradicts the export's alpha option; None without alpha."""
    pixel_samples: int = 0
    """Exported pixels compared (every k-th in both directions, `pixelcheck.PIXEL_SAMPLES`; every pixel when
    `pixels_identical`)."""
    pixels_identical: bool = False
    """The file is the source JPEG byte for byte (an original placed unchanged) and is read with the source
    camera: its pixels are the source's, nothing is re-derived (shift 0, NCC 1, differences 0)."""
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
    measured: Mapping[str, Written],
) -> None:
    """Measure one view into `result`; overlay it into `overlay_dir` (None: never) if `sampled` or failing.
    `measured`: the image stage's pixel measurements (`viewpixels.measured_as_written`)."""
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
        _pixel_fidelity(result, plan, view, export_dir / view.name, thresholds, silhouette, measured)

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
            return im.size, exif_orientation(im)
    except (OSError, UnidentifiedImageError, ValueError, TypeError):
        return f"exported image {path.name} is not a readable image"


# ---- pixels: the exported image against the source re-derived through the read-back camera ----------

_SILHOUETTE_BAND = 2
"""Render pixels either side of the read-back silhouette's outline where alpha "subject" is not judged."""
_ALIGNED_NCC = 0.9
"""Luma NCC from which the exported and re-derived images show the same content: only then is a luma that red
and blue exchanged explain better a swapped colour order (not two unrelated images)."""
_SWAPPED_RATIO = 0.5
"""A colour order is swapped when red and blue exchanged leave at most this share of the luma difference."""


def _pixel_fidelity(result: ViewCheck, plan: ViewPlan, view: ExportedView, path: Path, thresholds: Thresholds,
                    silhouette: Callable[[], tuple[np.ndarray, int]], measured: Mapping[str, Written]) -> None:
    """The exported image against the source image re-derived through the read-back camera
    (`fsconvert.viewpixels`, `fsconvert.pixelcheck`): the numbers into `result`, and why it fails."""
    try:
        numbers = view_pixels(plan, view.camera, view.world_to_cam, path, measured)
    except InputError as exc:
        where = "the source image" if exc.file == plan.view.image else f"exported image {view.name}"
        result.problems.append(f"{where} cannot be decoded: {exc.reason}")
        return
    result.pixel_shift_px, result.pixel_tiles, result.pixel_ncc = numbers.shift_px, numbers.tiles, numbers.ncc
    result.pixel_diff, result.swapped_diff, result.block_diff = numbers.diff, numbers.swapped_diff, numbers.block_diff
    result.pixel_samples, result.pixels_identical = numbers.samples, numbers.identical
    mode = plan.options.alpha
    if numbers.alpha is None and mode != "none":
        result.problems.append(f"no alpha channel, but the export's alpha is '{mode}'")
    elif numbers.alpha is not None and mode == "none":
        result.problems.append("an alpha channel, but the export's alpha is 'none'")
    elif numbers.alpha is not None:
        result.alpha_error = alpha_error(mode, numbers.alpha, silhouette, _SILHOUETTE_BAND)
        if result.alpha_error > thresholds.alpha_error:
            where = "no source data" if mode == "coverage" else "no source data or outside the silhouette"
            result.problems.append(f"alpha wrong at {100 * result.alpha_error:.3g} % of pixels (> "
                                   f"{100 * thresholds.alpha_error:g} %; '{mode}': 0 and RGB 0 exactly where {where})")
    result.problems += numbers.unmeasured
    t = thresholds
    if numbers.ncc is not None and numbers.ncc < t.pixel_ncc:
        result.problems.append(f"pixels correlate at NCC {numbers.ncc:.4f} (< {t.pixel_ncc:g})")
    if numbers.diff is not None and numbers.diff > t.pixel_diff:
        result.problems.append(f"pixels differ by {numbers.diff:.3g} levels on average (> {t.pixel_diff:g})")
    if (numbers.diff is not None and numbers.swapped_diff is not None and numbers.ncc is not None
            and numbers.swapped_diff <= _SWAPPED_RATIO * numbers.diff and numbers.ncc >= _ALIGNED_NCC):
        result.problems.append(f"red and blue swapped: the luma differs by {numbers.swapped_diff:.3g} levels with "
                               f"them exchanged, {numbers.diff:.3g} as stored")
    if numbers.block_diff is not None and numbers.block_diff > t.block_diff:
        x, y, side = numbers.block_at
        result.problems.append(f"pixels differ by {numbers.block_diff:.3g} levels in the {side}-px block at "
                               f"({x}, {y}) (> {t.block_diff:g}): damaged or pasted content")
    if numbers.shift_px is not None and numbers.shift_px > t.pixel_shift_px:
        result.problems.append(f"pixels {numbers.shift_px:.3g} px off (> {t.pixel_shift_px:g} px) "
                               "from the source re-derived through the read-back camera")
