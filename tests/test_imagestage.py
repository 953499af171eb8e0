"""The image stage against the synthetic sample's truth.

Exported images are compared with a render of the textured truth mesh (the one the sample's JPEGs
were rendered from) through the stage's OUTPUT camera: an affine Lucas–Kanade fit over the textured
head gives the displacement field between the two, and its maximum over the compared pixels must
stay ≤ 0.05 px. The estimator itself is validated on renders with a known shift and a known zoom.
Camera numbers (src_to_out against projection through the output camera, remap maps against
src_to_out) are exact to float precision; sizes, reduced decoding, links and formats are exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import run_plan
from scipy import ndimage

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert import conventions as cv
from fsconvert import synthetic
from fsconvert.imageplan import ImageOptions, ViewPlan, capture_up, is_rolled, plan_views
from fsconvert.imagestage import read_image
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh
from fsconvert.model import Camera
from fsconvert.render import Renderer, distorted_render

ALIGN_PX = 0.05
CAMERA_PX = 0.01
MAP_PX = 1e-3

UNDISTORTED = {
    "keep-1": ImageOptions(image_format="png"),
    "keep-1/2": ImageOptions(scale=0.5, image_format="png"),
    "keep-1/3": ImageOptions(scale=1 / 3, image_format="png"),
    "keep-1/4": ImageOptions(scale=0.25, image_format="png"),
    "keep-max300": ImageOptions(max_size=300, image_format="png"),
    "center-1": ImageOptions(principal_point="center", image_format="png"),
    "center-1/2": ImageOptions(principal_point="center", scale=0.5, image_format="png"),
    "center-1/3": ImageOptions(principal_point="center", scale=1 / 3, image_format="png"),
    "center-1/4": ImageOptions(principal_point="center", scale=0.25, image_format="png"),
    "center-max300": ImageOptions(principal_point="center", max_size=300, image_format="png"),
}
DISTORTED = {
    "distorted-1/2": ImageOptions(undistort=False, scale=0.5, image_format="png"),
    "distorted-1/3": ImageOptions(undistort=False, scale=1 / 3, image_format="png"),
    "distorted-1/4": ImageOptions(undistort=False, scale=0.25, image_format="png"),
}
UPRIGHT = {
    "upright-undistorted": ImageOptions(upright=True, image_format="png"),
    "upright-distorted": ImageOptions(undistort=False, upright=True, image_format="png"),
    "upright-distorted-1/2": ImageOptions(undistort=False, upright=True, scale=0.5, image_format="png"),
}
ALL = UNDISTORTED | DISTORTED | UPRIGHT
IMAGE_CASES = ("keep-1", "keep-1/2", "keep-1/3", "keep-1/4", "keep-max300", "center-1", "center-1/4",
               "distorted-1/2", "distorted-1/4")
"""Compared pixel by pixel with the truth (every case of ALL is checked for cameras and maps)."""


# ---- truth: the sample's textured mesh, rendered through any output camera --------------------------


def textured_truth(sample_root: Path, subject: str = "1", expression: str = "1_neutral", seed: int = 0):
    """The textured mesh the sample's images were rendered from (its .ply holds the same geometry)."""
    mesh = synthetic.textured_head(subject, expression, seed=seed)
    ply = load_mesh(sample_root / "models" / subject / f"{expression}.ply")
    assert np.array_equal(ply.faces, mesh.faces) and np.array_equal(ply.vertices, mesh.vertices)
    return mesh


@pytest.fixture(scope="module")
def capture(sample_tuple: Path):
    return load_capture(sample_tuple)


@pytest.fixture(scope="module")
def renderer(sample_root: Path):
    with Renderer(textured_truth(sample_root), bg_color=synthetic.BACKGROUND) as r:
        yield r


@pytest.fixture(scope="module")
def vertices(capture) -> np.ndarray:
    return np.asarray(load_mesh(capture.mesh).vertices)


# ---- the alignment estimator ------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    shift: np.ndarray
    """Displacement at the centroid of the compared pixels (x, y)."""
    max_px: float
    """Largest displacement of the affine field over the compared pixels."""
    pixels: int


def gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)


def align(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, max_pixels: int = 40000) -> Alignment:
    """Affine displacement d(x) with image(x) ≈ g·reference(x + d(x)) + o over `mask` (Lucas–Kanade,
    cubic-spline sampling in float64, gain and offset free). Both images are smoothed by σ = 1 px."""
    a = ndimage.gaussian_filter(gray(image), 1.0)
    b = ndimage.gaussian_filter(gray(reference), 1.0)
    coeffs = ndimage.spline_filter(b, order=3)
    gy, gx = (ndimage.spline_filter(g, order=3) for g in np.gradient(b))
    ys, xs = np.nonzero(mask)
    step = max(1, len(xs) // max_pixels)
    ys, xs = ys[::step], xs[::step]
    c = np.array([xs.mean(), ys.mean()])
    X, Y = xs - c[0], ys - c[1]
    p = np.zeros(6)  # tx, ty, a_xx, a_xy, a_yx, a_yy
    for _ in range(20):
        dx, dy = p[0] + p[2] * X + p[3] * Y, p[1] + p[4] * X + p[5] * Y
        at = [ys + dy, xs + dx]
        bs, gxs, gys = (ndimage.map_coordinates(k, at, order=3, prefilter=False) for k in (coeffs, gx, gy))
        J = np.column_stack([gxs, gys, gxs * X, gxs * Y, gys * X, gys * Y, bs, np.ones_like(bs)])
        step_p = np.linalg.lstsq(J, a[ys, xs] - bs, rcond=None)[0][:6]
        p += step_p
        if np.abs(step_p[:2]).max() < 1e-6:
            break
    dx, dy = p[0] + p[2] * X + p[3] * Y, p[1] + p[4] * X + p[5] * Y
    return Alignment(p[:2].copy(), float(np.hypot(dx, dy).max()), len(xs))


def decoded_size(plan: ViewPlan) -> tuple[int, int]:
    return -(-plan.view.camera.width // plan.reduce), -(-plan.view.camera.height // plan.reduce)


def compared_pixels(plan: ViewPlan, render_mask: np.ndarray, margin: int = 4) -> np.ndarray:
    """The head, away from its silhouette and from output pixels that see outside the source image."""
    mx, my = plan.maps()
    w, h = decoded_size(plan)
    covered = (mx >= 1) & (mx <= w - 2) & (my >= 1) & (my <= h - 2)
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode((render_mask & covered).astype(np.uint8), kernel) > 0


def truth(renderer: Renderer, plan: ViewPlan):
    return distorted_render(renderer, plan.camera, plan.world_to_cam)


def exported(plan: ViewPlan, tmp_path: Path) -> np.ndarray:
    dest = run_plan(plan, tmp_path / f"{plan.view.id}{plan.suffix}")
    return cv2.imread(str(dest))


def image_alignment(renderer: Renderer, plan: ViewPlan, tmp_path: Path) -> Alignment:
    ref = truth(renderer, plan)
    return align(exported(plan, tmp_path), ref.color[..., ::-1], compared_pixels(plan, ref.mask))


def test_truth_reproduces_the_source_images(capture, renderer):
    """The rebuilt textured mesh, rendered through the SOURCE camera (with distortion), is the
    sample's JPEG: no displacement, only JPEG noise (the basis of every image comparison here)."""
    for view in capture.views[:2]:
        ref = distorted_render(renderer, view.camera, view.world_to_cam)
        img = cv2.imread(str(view.image))
        mask = cv2.erode(ref.mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        a = align(img, ref.color[..., ::-1], mask)
        diff = np.abs(gray(img) - gray(ref.color[..., ::-1]))[mask].mean()
        print(f"view {view.id}: source JPEG vs truth render max {a.max_px:.4f} px, mean |diff| {diff:.2f}")
        assert a.max_px < 0.01 and diff < 2


def test_estimator_recovers_a_known_shift_and_zoom(capture, renderer):
    """Negative control: renders 0.1 px apart, or zoomed by 5e-4, are measured as such."""
    v = capture.views[0]
    cam = v.camera.pinhole()
    ref = renderer.render(cam, v.world_to_cam)
    mask = cv2.erode(ref.mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    shifted = renderer.render(Camera(cam.width, cam.height, cv.crop_K(cam.K, -0.1, 0.07)), v.world_to_cam)
    a = align(shifted.color[..., ::-1], ref.color[..., ::-1], mask)
    print(f"known shift (+0.1, −0.07) measured {a.shift}, max {a.max_px:.4f} px")
    # shifted(x) = ref(x − (0.1, −0.07)): the measured displacement is (−0.1, +0.07)
    assert np.allclose(a.shift, [-0.1, 0.07], atol=0.003)
    assert a.max_px == pytest.approx(np.hypot(0.1, 0.07), abs=0.005) and a.max_px > ALIGN_PX

    zoom = 5e-4
    K = cam.K.copy()
    K[:2, :2] *= 1 + zoom
    zoomed = renderer.render(Camera(cam.width, cam.height, K), v.world_to_cam)
    a = align(zoomed.color[..., ::-1], ref.color[..., ::-1], mask)
    ys, xs = np.nonzero(mask)
    true_max = zoom / (1 + zoom) * np.hypot(xs - cam.cx, ys - cam.cy)[:: max(1, len(xs) // 40000)].max()
    print(f"zoom 5e-4: measured max {a.max_px:.4f} px, true {true_max:.4f} px")
    assert a.max_px == pytest.approx(true_max, rel=0.05) and a.max_px > ALIGN_PX

    same = align(ref.color[..., ::-1], ref.color[..., ::-1], mask)
    assert same.max_px < 1e-6


# ---- images against the truth -----------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_images_align_with_truth(capture, renderer, tmp_path, name):
    options = ALL[name]
    plans = plan_views(capture.views, options)
    worst = []
    for plan in plans:
        a = image_alignment(renderer, plan, tmp_path)
        worst.append((a.max_px, plan.view.id, plan.reduce, plan.camera.size, a.pixels))
        assert a.pixels > 2000
    print(f"{name}: max displacement per view (px, id, reduce, size, pixels): "
          + ", ".join(f"{m:.4f}@{i}/r{r}/{s[0]}x{s[1]}" for m, i, r, s, _ in worst))
    assert max(worst)[0] <= ALIGN_PX, max(worst)


def test_upright_rotation(capture, renderer, tmp_path, vertices):
    """The rolled view (and only it) is turned: K, R and p1/p2 change together, and both the cameras
    (by re-projection) and the images (against the truth) agree."""
    up = capture_up(capture.views)
    rolled = [v.id for v in capture.views if is_rolled(v, up)]
    assert len(rolled) == 1
    for name, options in UPRIGHT.items():
        plans = plan_views(capture.views, options)
        assert [p.view.id for p in plans if p.rotated] == rolled
        (plan,) = [p for p in plans if p.rotated]
        src, (w, h) = plan.view.camera, plan.camera.size
        K = cv.resize_K(src.K, w / src.width, h / src.height)
        assert plan.camera.cx == pytest.approx(w - 1 - K[0, 2], abs=1e-9)
        assert plan.camera.cy == pytest.approx(h - 1 - K[1, 2], abs=1e-9)
        assert np.allclose(plan.world_to_cam[:3], np.diag([-1, -1, 1]) @ plan.view.world_to_cam[:3], atol=1e-15)
        if not options.undistort:
            assert np.array_equal(plan.camera.dist, src.dist * [1, 1, -1, -1, 1])
        up_after = -plan.world_to_cam[1, :3]
        assert float(up_after @ up) > 0  # image up now points up in the world
        err = camera_error(plan, vertices)
        a = image_alignment(renderer, plan, tmp_path)
        print(f"{name}: view {plan.view.id} camera error {err:.2e} px, image max displacement {a.max_px:.4f} px")
        assert err <= CAMERA_PX and a.max_px <= ALIGN_PX
        # negative control: the unrotated output camera does not fit the rotated image
        unrotated = replace(plan, camera=Camera(w, h, K, src.dist if not options.undistort else np.zeros(5)),
                            world_to_cam=plan.view.world_to_cam)
        assert camera_error(unrotated, vertices) > 10


# ---- cameras and maps -------------------------------------------------------------------------------


def camera_error(plan: ViewPlan, vertices: np.ndarray) -> float:
    """Max |src_to_out(source projection) − projection through the output camera| over visible vertices."""
    X_src = plan.view.to_camera(vertices)
    uv = plan.view.camera.project(X_src)
    size = np.array(plan.view.camera.size)
    inside = (X_src[:, 2] > 0) & np.all((uv > -0.5) & (uv < size - 0.5), axis=1)
    X = vertices[inside]
    expected = plan.src_to_out(uv[inside])
    X_out = X @ plan.world_to_cam[:3, :3].T + plan.world_to_cam[:3, 3]
    assert len(X) > 1000
    return float(np.linalg.norm(plan.camera.project(X_out) - expected, axis=1).max())


@pytest.mark.parametrize("name", ALL)
def test_camera_fidelity(capture, vertices, name):
    errors = [camera_error(p, vertices) for p in plan_views(capture.views, ALL[name])]
    print(f"{name}: camera error max {max(errors):.2e} px")
    assert max(errors) <= CAMERA_PX


@pytest.mark.parametrize("name", ALL)
def test_maps_agree_with_src_to_out(capture, name):
    """Forward: remap maps (output pixel → decoded source pixel); inverse: src_to_out (iterative)."""
    worst = 0.0
    for plan in plan_views(capture.views, ALL[name]):
        mx, my = plan.maps()
        assert mx.shape == (plan.camera.height, plan.camera.width) and mx.dtype == np.float32
        v, u = np.mgrid[0:plan.camera.height:5, 0:plan.camera.width:5]
        r = plan.reduce
        src = (np.column_stack([mx[v, u].ravel(), my[v, u].ravel()]).astype(np.float64) + 0.5) * r - 0.5
        inside = np.all((src >= 0) & (src <= np.array(plan.view.camera.size) - 1), axis=1)
        out = plan.src_to_out(src[inside])
        err = np.abs(out - np.column_stack([u.ravel(), v.ravel()])[inside]).max()
        worst = max(worst, float(err))
    print(f"{name}: maps vs src_to_out max {worst:.2e} px")
    assert worst <= MAP_PX


# ---- reduced decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("options, reduce", [
    (ImageOptions(), 1), (ImageOptions(scale=0.6), 1), (ImageOptions(scale=0.5), 2), (ImageOptions(scale=1 / 3), 2),
    (ImageOptions(scale=0.25), 4), (ImageOptions(scale=0.2), 4), (ImageOptions(scale=0.125), 8),
    (ImageOptions(scale=0.1), 8), (ImageOptions(max_size=543), 2), (ImageOptions(max_size=300), 2),
    (ImageOptions(max_size=272), 4), (ImageOptions(undistort=False, scale=0.25), 4),
    (ImageOptions(principal_point="center", fov_x=0.05, scale=0.25), 1),  # zoomed in 4×: needs every pixel
])
def test_reduced_decode_factor(capture, options, reduce):
    """1086×724 and 724×1086 views: 1/4 gives 272 px = ⌈1086/4⌉, still a 1/4 decode."""
    assert {p.reduce for p in plan_views(capture.views, options)} == {reduce}


@pytest.mark.parametrize("r", [2, 4, 8])
def test_reduced_jpeg_decode_is_block_averaging(capture, r):
    """IMREAD_REDUCED_COLOR_r pixel i covers source pixels r·i … r·i + r − 1: same geometry as exact
    r×r block means of the full decode (what plan.maps assumes): no shift beyond 0.01 reduced px."""
    for view in capture.views[:2]:  # a landscape and a portrait view
        full = read_image(view.image).astype(np.float64)
        reduced = read_image(view.image, r)
        assert reduced.shape[:2] == (-(-view.camera.height // r), -(-view.camera.width // r))
        h, w = full.shape[0] // r, full.shape[1] // r
        blocks = full[:h * r, :w * r].reshape(h, r, w, r, 3).mean(axis=(1, 3))
        mask = cv2.erode((gray(blocks.astype(np.uint8)) > 40).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        a = align(reduced[:h, :w], np.rint(blocks).astype(np.uint8), mask)
        print(f"view {view.id} 1/{r}: reduced vs block means shift {a.shift}, max {a.max_px:.4f}")
        assert np.abs(a.shift).max() < 0.01 and a.max_px < 0.1  # 1/8: ~7000 pixels, aliased texture
        assert np.abs(reduced[:h, :w] - blocks)[mask].mean() < 4


@pytest.mark.parametrize("scale", [0.5, 0.25, 0.125])
def test_reduced_decode_plus_map_matches_full_decode_plus_map(capture, renderer, tmp_path, scale):
    """The same plan run with its reduced decode and forced to a full decode: no shift between them,
    and both align with the truth (the full decode is bilinear-downsampled, hence aliased at 1/8)."""
    for plan in plan_views(capture.views, ImageOptions(scale=scale, image_format="png"))[:2]:
        assert plan.reduce == round(1 / scale)
        full_plan = replace(plan, reduce=1)
        reduced = exported(plan, tmp_path)
        full = cv2.imread(str(run_plan(full_plan, tmp_path / "full.png")))
        ref = truth(renderer, plan)
        mask = compared_pixels(plan, ref.mask) & compared_pixels(full_plan, ref.mask)
        between = align(reduced, full, mask)
        a_red = align(reduced, ref.color[..., ::-1], mask)
        a_full = align(full, ref.color[..., ::-1], mask)
        print(f"1/{1 / scale:g} view {plan.view.id}: reduced vs full shift {between.shift} (max {between.max_px:.4f});"
              f" vs truth: reduced {a_red.max_px:.4f}, full {a_full.max_px:.4f} px")
        assert np.abs(between.shift).max() <= 0.03
        assert a_red.max_px <= ALIGN_PX


# ---- sizes, links, formats ---------------------------------------------------------------------------


@pytest.mark.parametrize("options, landscape", [
    (ImageOptions(scale=0.5), (543, 362)),
    (ImageOptions(scale=1 / 3), (362, 241)),
    (ImageOptions(scale=0.25), (272, 181)),
    (ImageOptions(scale=0.1), (109, 72)),
    (ImageOptions(max_size=300), (300, 200)),
    (ImageOptions(max_size=1000), (1000, 667)),
    (ImageOptions(max_size=5000), (1086, 724)),  # never scales up
    (ImageOptions(undistort=False, scale=0.25), (272, 181)),
])
def test_output_size_and_K(capture, tmp_path, options, landscape):
    """Integer sizes round(scale × size); K follows with separate sx = w/W, sy = h/H (c' = (c + ½)s − ½)."""
    for plan in plan_views(capture.views, options):
        src = plan.view.camera
        w, h = landscape if not src.is_portrait else landscape[::-1]
        assert plan.camera.size == (w, h)
        sx, sy = w / src.width, h / src.height
        expected = np.array([[src.fx * sx, 0, (src.cx + 0.5) * sx - 0.5],
                             [0, src.fy * sy, (src.cy + 0.5) * sy - 0.5], [0, 0, 1]])
        assert np.allclose(plan.camera.K, expected, rtol=0, atol=1e-9)
        assert np.array_equal(plan.camera.dist, np.zeros(5) if options.undistort else src.dist)
        img = cv2.imread(str(run_plan(plan, tmp_path / f"{plan.view.id}{plan.suffix}")))
        assert img.shape[1::-1] == (w, h)


def test_quarter_scale_has_different_sx_and_sy(capture):
    plan = plan_views(capture.views, ImageOptions(scale=0.25))[0]
    sx, sy = plan.camera.width / plan.view.camera.width, plan.camera.height / plan.view.camera.height
    assert (sx, sy) == (272 / 1086, 0.25)
    assert plan.camera.fx / plan.view.camera.fx == pytest.approx(sx, abs=1e-15)
    assert plan.camera.fy / plan.view.camera.fy == pytest.approx(sy, abs=1e-15)


@pytest.mark.parametrize("link", ["hardlink", "symlink", "copy"])
def test_unscaled_distorted_views_are_placed_not_reencoded(capture, tmp_path, link):
    plans = plan_views(capture.views, ImageOptions(undistort=False, link=link))
    for plan in plans:
        assert not plan.resample and plan.suffix == ".jpg" and plan.camera.equals(plan.view.camera)
        dest = run_plan(plan, tmp_path / f"{plan.view.id}.jpg")
        src = plan.view.image
        assert dest.read_bytes() == src.read_bytes()
        if link == "hardlink":
            assert os.stat(dest).st_ino == os.stat(src).st_ino and not dest.is_symlink()
        elif link == "symlink":
            assert dest.is_symlink() and Path(os.readlink(dest)) == src.resolve()
        else:
            assert not dest.is_symlink() and os.stat(dest).st_ino != os.stat(src).st_ino


def test_upright_distorted_unscaled_view_is_rotated_not_linked(capture, tmp_path):
    plans = plan_views(capture.views, ImageOptions(undistort=False, upright=True))
    (plan,) = [p for p in plans if p.rotated]
    assert plan.resample and plan.suffix == ".jpg"
    img = cv2.imread(str(run_plan(plan, tmp_path / "r.jpg")), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    src = cv2.imread(str(plan.view.image), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    assert np.abs(img - src[::-1, ::-1]).mean() < 1.5  # the 180° rotation, re-encoded at quality 95
    others = [p for p in plans if not p.rotated]
    assert all(not p.resample for p in others)


PARALLEL_SCRIPT = """
import sys
from pathlib import Path
import fsconvert
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.imagestage import run_plans
from fsconvert.loader import load_capture

if __name__ == "__main__":
    tuple_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    plans = plan_views(load_capture(tuple_dir).views, ImageOptions())
    for round in range(3):  # OpenCV's thread pool has run in this process before each pool starts
        for workers in (1, 2):
            dest = out / f"{round}-{workers}"
            dest.mkdir()
            run_plans([(p, dest / f"{p.view.id}{p.suffix}") for p in plans], workers=workers)
"""


def test_worker_processes_after_opencv_ran_in_the_parent(sample_tuple, tmp_path):
    """Regression: forked workers deadlocked (6 runs of this script out of 6 with a fork context) once
    the parent had run multithreaded cv2 calls. Worker output is byte-identical to in-process output."""
    script = tmp_path / "parallel.py"
    script.write_text(PARALLEL_SCRIPT)
    subprocess.run([sys.executable, str(script), str(sample_tuple), str(tmp_path)], check=True, timeout=120)
    for round in range(3):
        one, two = (sorted((tmp_path / f"{round}-{w}").iterdir()) for w in (1, 2))
        assert [p.name for p in one] == [p.name for p in two] and len(one) == 7
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_png_and_jpg_output(capture, tmp_path, fmt):
    """The file holds the remapped pixels: PNG exactly, JPEG as encoded at the asked quality."""
    options = ImageOptions(scale=0.5, image_format=fmt, jpeg_quality=90)
    plan = plan_views(capture.views, options)[1]
    assert plan.suffix == f".{fmt}"
    dest = run_plan(plan, tmp_path / f"out{plan.suffix}")
    expected = cv2.remap(read_image(plan.view.image, plan.reduce), *plan.maps(), cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
    magic = {"png": b"\x89PNG\r\n\x1a\n", "jpg": b"\xff\xd8\xff"}[fmt]
    assert dest.read_bytes()[:len(magic)] == magic
    if fmt == "png":
        assert np.array_equal(cv2.imread(str(dest)), expected)
    else:
        assert dest.read_bytes() == cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


@pytest.mark.parametrize("options", [ImageOptions(), ImageOptions(scale=0.8), ImageOptions(scale=0.3),
                                     ImageOptions(intrinsics="shared", upright=True),
                                     ImageOptions(undistort=False, scale=0.5, upright=True)])
def test_map_bands_are_the_whole_maps_bit_for_bit(capture, options):
    """The image stage remaps band by band: every band size gives the whole image's maps exactly (the same
    coarse rows at the same fractional positions), so its pixels are the same."""
    for plan in plan_views(capture.views, options):
        whole = plan.maps()
        for rows in (1, 7, 256, plan.camera.height):
            bands = list(plan.map_bands(rows))
            assert [y for y, *_ in bands] == list(range(0, plan.camera.height, rows))
            for k in (0, 1):
                joined = np.concatenate([band[1 + k] for band in bands])
                assert joined.dtype == np.float32 and np.array_equal(joined, whole[k]), (plan.view.id, rows)
