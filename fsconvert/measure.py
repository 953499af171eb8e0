"""Measuring one exported view as its program reads it, against the source camera carried through the plan.

Cameras: mesh vertices projected by the source camera (with distortion) and carried through the image
stage's transform into the exported pixel frame, against their projection through the read-back camera
(max and mean difference in exported pixels). Renders: the mesh drawn through the read-back camera and
through the expected output camera (silhouette IoU, relative z-depth difference); a view without an
overlay whose read-back camera equals the expected one (to 1e-12) is not rendered: the two renders would
be the same image. Overlays: the read-back render blended over the exported image
(`check/mv_result_<view>.jpg`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from . import conventions as cv
from .errors import InputError
from .imageplan import REDUCTIONS, ViewPlan
from .imagestage import preview_reduction, preview_size, read_image
from .model import Camera
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
    """Pass limits; the defaults are strict (a correct export is exact to float precision)."""

    camera_px: float = 0.01
    """Max re-projection difference, exported pixels."""
    silhouette_iou: float = 0.99
    """Min IoU of the silhouettes rendered from the read-back and the expected camera."""
    depth_rel: float = 1e-3
    """Max mean relative z-depth difference where both renders see the mesh."""
    depth_range_slack: float = 10.0
    """Max ratio of a read depth range's extent to the visible mesh's: wider, the program's depth samples
    (MVSNet's hypotheses) fall mostly off the surface."""
    """Max mean relative z-depth difference where both renders see the mesh."""


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
    image_size = _image_size(export_dir / view.name)
    if isinstance(image_size, str):
        result.problems.append(image_size)
    elif image_size != view.camera.size:
        result.problems.append(f"image is {_size(image_size)} but its camera says {_size(view.camera.size)}")

    _camera_fidelity(result, plan, view, points, thresholds, reader)

    r = preview_reduction(expected_size, render_max_side)
    w, h = preview_size(expected_size, render_max_side)  # the size of a JPEG decoded at 1/r
    expected_cam = Camera(w, h, cv.resize_K(plan.camera.K, 1 / r, 1 / r), plan.camera.dist)
    if view.depth_range is not None:
        seen = distorted_render(renderer, expected_cam, plan.world_to_cam, depth_only=True).depth
        _depth_range_fit(result, view.depth_range, seen, thresholds, reader)
    readback_cam = Camera(w, h, cv.resize_K(view.camera.K, 1 / r, 1 / r), view.camera.dist)
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

    if want_color and overlay_dir is not None and not isinstance(image_size, str):
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


def _image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) from the image header, or why it cannot be read."""
    if not path.is_file():
        return f"exported image {path.name} is missing"
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError):
        return f"exported image {path.name} is not a readable image"

