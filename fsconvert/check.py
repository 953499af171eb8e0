"""The projection check: an export read back through its target's reader, measured against the source.

For every view of the manifest: mesh vertices projected by the source camera (with distortion) and
carried through the image stage's transform into the exported pixel frame, against their projection
through the read-back camera (max and mean difference in exported pixels); then the mesh rendered
from the read-back camera and from the expected output camera (silhouette IoU, relative z-depth
difference), and the read-back render blended over the exported image (`check/mv_result_<view>.jpg`).
Which views get an overlay is the overlay policy (every failing view does, unless overlays are off);
a view without one whose read-back camera equals the expected one (to 1e-12) is not rendered: the two
renders would be the same image. The numbers go to `check/check.json`, a page for people to
`check/index.html` (`fsconvert.report`) with the camera rig in `check/rig.png` (`fsconvert.rig`).
The renders draw the mesh's render proxy (a dense scan's ~100 000-face clustered copy: both cameras see the
same geometry, so camera errors show alike).
Views missing from the read-back, extra ones and unreadable exports are failures, never skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from . import conventions as cv
from . import readers
from .errors import FsconvertError, InputError, OutputError
from .imagestage import PREVIEW_MAX_SIDE, REDUCTIONS, ViewPlan, plan_views, preview_reduction, preview_size, read_image
from .loader import load_capture
from .mesh import capture_mesh, subsample
from .model import Camera
from .options import from_dict
from .protocol import ExportedView, read_manifest
from .render import Render, Renderer, distorted_render

CHECK_DIR = Path("check")
REPORT = CHECK_DIR / "check.json"
RIG = CHECK_DIR / "rig.png"
OVERLAY_ALPHA = 0.5
"""Weight of the rendered mesh in the overlays."""
OUTLINE_BGR = (0, 255, 0)
"""Colour of the rendered silhouette's outline in the overlays."""
_DIFFERENCE_TOL = 1e-6
"""Camera parameters closer than this (pixels; relative for focal lengths) are reported as the same."""
_SAME_CAMERA_TOL = 1e-12
"""Read-back and expected cameras this close render identically (float32 GL): one render serves both."""

Overlays = Union[bool, str, int]
"""The overlay policy: "all" (True), "none" (False), "failed" (failing views only) or N (failing views
plus N views evenly spaced in view order); as given on the command line, `--overlays all|none|failed|N`."""


def overlay_policy(value: Overlays) -> str | int:
    """The canonical policy: "all", "none", or the number of views sampled besides failing ones ("failed": 0)."""
    if value is True or value == "all":
        return "all"
    if value is False or value == "none":
        return "none"
    if value == "failed":
        return 0
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"expected all, none, failed or a number of views, got {value!r}")


def overlay_sample(policy: str | int, n_views: int) -> set[int]:
    """Positions (in view order) of the views that get an overlay whether they pass or fail."""
    if policy == "all":
        return set(range(n_views))
    if policy == "none" or policy == 0 or n_views == 0:
        return set()
    return set(np.linspace(0, n_views - 1, min(policy, n_views)).round().astype(int).tolist())


@dataclass(frozen=True)
class Thresholds:
    """Pass limits; the defaults are strict (a correct export is exact to float precision)."""

    camera_px: float = 0.01
    """Max re-projection difference, exported pixels."""
    silhouette_iou: float = 0.99
    """Min IoU of the silhouettes rendered from the read-back and the expected camera."""
    depth_rel: float = 1e-3
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
    overlay: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class CheckReport:
    """The whole check: per-view numbers, export-level problems, and the thresholds they were held to."""

    export_dir: Path
    format: str
    source: str
    thresholds: Thresholds
    views: list[ViewCheck]
    problems: list[str]
    """Export-level failures: read-back errors, extra or unknown views."""
    reader: str = ""
    """The program whose loading rules read the export back (fsconvert.readers), or the format's own reader."""
    warnings: list[str] = field(default_factory=list)
    """The export's warnings (its manifest's): what a target program will do to it."""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems and bool(self.views) and all(v.passed for v in self.views)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "format": self.format,
            "reader": self.reader,
            "source": self.source,
            "warnings": self.warnings,
            "thresholds": asdict(self.thresholds),
            "problems": self.problems,
            "views": [{**asdict(v), "passed": v.passed} for v in self.views],
        }  # no run time: a rerun on the same inputs writes the same bytes


def check_export(
    export_dir: str | Path,
    thresholds: Thresholds = Thresholds(),
    *,
    overlays: Overlays = "all",
    max_points: int = 5000,
    render_max_side: int = PREVIEW_MAX_SIDE,
    exporter: ModuleType | None = None,
    reader: str | None = None,
    previews: Mapping[Path, np.ndarray] | None = None,
) -> CheckReport:
    """Check every view of the export at `export_dir`; write `check/check.json`, `check/index.html`,
    `check/rig.png` and the overlays the policy `overlays` asks for (`Overlays`).

    The export is read back by `reader`'s rules (a name of `fsconvert.readers.READERS`), by default
    the reader its format is meant for (the exporter's `default_reader(options)`, else its own `read`).
    `max_points` mesh vertices (evenly spaced) are compared per view; renders and overlays are made at
    1/r of the exported size, r the smallest of 1, 2, 4, 8 giving a long side ≤ `render_max_side` (the
    sizes a JPEG decodes to directly: the overlay needs no resampling). `exporter`: the format module
    (default: the installed one named by the manifest). `previews`: exported images at that size by path
    (`imagestage.keep_previews`), drawn on instead of decoding the files.
    """
    from exporters import get

    from .report import write_check_page

    start = time.perf_counter()
    policy = overlay_policy(overlays)
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    module = get(manifest["format"]) if exporter is None else exporter
    options = from_dict(module.Options, manifest["options"])
    src = manifest["source"]
    aligned = manifest.get("alignment")
    capture = load_capture(src["tuple"], mesh=src["mesh"], include_invalid=src["include_invalid"],
                           **({"align": aligned["rt_scale_dict"], "units": aligned["units"]} if aligned else {}))
    plans = {p.view.id: p for p in plan_views(capture.views, options.image)}
    if reader is None:
        reader = getattr(module, "default_reader", lambda _options: None)(options)
    report = CheckReport(export_dir, manifest["format"], capture.name, thresholds, [], [],
                         reader or manifest["format"], list(manifest.get("warnings", [])))
    if aligned and not np.allclose(capture.world, aligned["similarity"], rtol=1e-12, atol=0):
        report.problems.append(f"the alignment in {aligned['rt_scale_dict']} is not the one the export recorded "
                               "(the file changed since): checked against the file's")

    read_failed, unread = False, {}
    try:
        if reader is None:
            readback = module.read(export_dir)
        else:
            reading = readers.read(reader, export_dir)
            readback, unread = reading.views, reading.unread
    except Exception as exc:  # any reader failure is a finding of the check, not a crash
        reason = str(exc) if isinstance(exc, FsconvertError) else f"{type(exc).__name__}: {exc}"
        report.problems.append(f"read-back failed: {reason}")
        readback, read_failed = [], True
    by_name: dict[str, ExportedView] = {}
    for view in readback:
        if view.name in by_name:
            report.problems.append(f"read-back holds '{view.name}' twice")
        by_name[view.name] = view
    names = {entry["name"] for entry in manifest["views"]}
    extra = sorted(set(by_name) - names)
    if extra:
        report.problems.append(f"read-back has {len(extra)} view(s) not in the manifest: {', '.join(extra)}")
    dropped = sorted(set(plans) - {entry["id"] for entry in manifest["views"]})
    if dropped:
        report.problems.append(f"source view(s) {dropped} are not in the export manifest")

    points = subsample(np.asarray(capture_mesh(capture, "the check").vertices, dtype=np.float64), max_points)
    out_dir = export_dir / CHECK_DIR
    _clear(out_dir)
    sampled = overlay_sample(policy, len(manifest["views"]))
    # the renders compare two cameras through one geometry: a dense scan's light proxy serves as well
    with Renderer(capture_mesh(capture, "the check", proxy=True)) as renderer:
        for i, entry in enumerate(manifest["views"]):
            result = ViewCheck(int(entry["id"]), entry["name"])
            report.views.append(result)
            plan, view = plans.get(result.id), by_name.get(result.name)
            if plan is None:
                result.problems.append(f"view {result.id} is not in the source tuple")
            elif view is None:
                if result.name in unread:
                    result.problems.append(f"{report.reader} does not read this view: {unread[result.name]}")
                else:
                    result.problems.append("not read back: the reader failed" if read_failed
                                           else "missing from the read-back (dropped view)")
            else:
                _check_view(result, plan, view, points, renderer, export_dir, thresholds, render_max_side,
                            None if policy == "none" else out_dir, i in sampled, report.reader, previews or {})
    _write_json(export_dir / REPORT, report.to_dict())
    invalid = {v.id for v in capture.views if not v.valid}
    _plot(export_dir / RIG, report, manifest["format"], by_name, invalid, points)
    write_check_page(export_dir, report.to_dict(), manifest, invalid)
    report.seconds = time.perf_counter() - start
    return report


def _plot(path: Path, report: CheckReport, fmt: str, by_name: dict[str, ExportedView], invalid: set[int],
          points: np.ndarray) -> None:
    """The rig of the read-back cameras: failing views in red (drawn last), views marked valid=false dashed."""
    from .rig import Frustum, plot_rig

    frustums = [Frustum(str(v.id), view.camera, view.world_to_cam,
                        "failed" if not v.passed else "invalid" if v.id in invalid else "ok")
                for v in sorted(report.views, key=lambda v: not v.passed)
                if (view := by_name.get(v.name)) is not None]
    missing = [v.id for v in report.views if v.name not in by_name]
    title = f"{fmt} export of {report.source}: {len(frustums)} read-back cameras"
    plot_rig(path, frustums, points, title + (f" (not read back: {missing})" if missing else ""))


def _check_view(
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

    if want_color and not isinstance(image_size, str):
        path = overlay_dir / f"mv_result_{result.id}.jpg"
        try:
            _write_overlay(path, export_dir / view.name, readback, (w, h), previews.get(export_dir / view.name))
        except InputError:
            result.problems.append(f"exported image {view.name} cannot be decoded")
        else:
            result.overlay = str(path.relative_to(export_dir))


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
    angle = float(np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1))))
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
    mask = render.mask.astype(np.uint8)
    out = img.copy()
    blend = cv2.addWeighted(img, 1 - OVERLAY_ALPHA, cv2.cvtColor(render.color, cv2.COLOR_RGB2BGR), OVERLAY_ALPHA, 0)
    cv2.copyTo(blend, mask, out)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, OUTLINE_BGR, 1)
    _, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 90])
    _write_bytes(path, buf.tobytes())


def format_report(report: CheckReport) -> str:
    """One line per view (id, name, camera max/mean px, IoU, depth, PASS/FAIL and why) and a summary."""
    name_w = max([4] + [len(v.name) for v in report.views])
    lines = [f"{'view':>5}  {'name':<{name_w}}  {'cam max px':>10}  {'cam mean px':>11}  {'IoU':>6}  "
             f"{'depth rel':>9}  result"]
    for v in report.views:
        why = f"  {'; '.join(v.problems)}" if v.problems else ""
        lines.append(f"{v.id:>5}  {v.name:<{name_w}}  {_num(v.camera_max_px, '10.2e')}  "
                     f"{_num(v.camera_mean_px, '11.2e')}  {_num(v.iou, '6.4f')}  {_num(v.depth_rel, '9.1e')}  "
                     f"{'PASS' if v.passed else 'FAIL'}{why}")
    lines += [f"FAIL: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    unrendered = sum(v.passed and v.render_size is None for v in report.views)
    if unrendered:
        lines.append(f"IoU/depth —: {unrendered} view(s) not rendered (read-back camera identical to the expected "
                     "one, no overlay asked)")
    passed = sum(v.passed for v in report.views)
    t = report.thresholds
    lines.append(
        f"{'PASS' if report.passed else 'FAIL'}: {passed}/{len(report.views)} views of the {report.format} export "
        f"of {report.source}{_read_by(report)} within {t.camera_px:g} px, IoU ≥ {t.silhouette_iou:g}, "
        f"depth ≤ {t.depth_rel:g} "
        f"({report.seconds:.1f} s; every number in {REPORT})"
    )
    return "\n".join(lines)


def _read_by(report: CheckReport) -> str:
    return "" if report.reader == report.format else f" read by {report.reader}'s rules"


def _num(value: float | None, fmt: str) -> str:
    width = int(fmt.split(".")[0])
    return f"{'—':>{width}}" if value is None else format(value, fmt)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def _inside(uv: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels inside a width×height image (OpenCV convention: pixel centres at integers)."""
    return np.all((uv >= -0.5) & (uv <= np.array(size) - 0.5), axis=1)


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


def _clear(out_dir: Path) -> None:
    """Remove the previous check's results (stale overlays of views that are now gone)."""
    try:
        out_dir.mkdir(exist_ok=True)
        for old in out_dir.glob("mv_result_*.jpg"):
            old.unlink()
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write the check results: {exc.strerror or exc}") from None


def _write_json(path: Path, data: dict) -> None:
    _write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
