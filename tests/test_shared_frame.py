"""The shared frame (`--intrinsics shared`): one size, one K (fx = fy, principal point by the program's centre
rule), landscape, for every view of the synthetic sample (landscape and portrait views, one rolled 180°,
k3 ≠ 0, per-view K), checked against numbers the tests compute themselves: image files read with PIL,
principal points from the rules' own formulas, cover and crop with OpenCV's undistortion of every source
border pixel, pixels re-made from the source JPEG with cv2.initUndistortRectifyMap + cv2.remap, and the
alpha channel against the footprint and a silhouette rendered here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import footprint
from PIL import Image

import exporters
from exporters import colmap
from fsconvert.cli import main
from fsconvert.export import Exported, export
from fsconvert.imageplan import ImageOptions, ViewPlan, plan_views
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh
from fsconvert.model import Capture, View
from fsconvert.options import from_dict
from fsconvert.protocol import CHECK_JSON, read_manifest
from fsconvert.render import Renderer

SCALE = 0.25
CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
FORMATS = ("colmap", "nerf", "facescape", "open3d", "neus", "llff", "mvsnet")
CASES: dict[str, tuple[str, dict]] = {f: (f, {}) for f in FORMATS} | {"nerf-blender": ("nerf", {"variant": "blender"})}
"""Every format with `intrinsics="shared"` at 1/4 scale; the blender variant adds the half-size rule and RGBA."""
RULES = {"llff": "half-size", "nerf-blender": "half-size"}
"""The centre rule each case's program takes (nerf-pytorch casts pixel i at (i − W/2)/f); the rest: image-centre."""
READER_PX_TOL = 0.01
"""Readers may round K (float32 projection matrices, text files): within 1/100 px of the frame's."""
COVER_TOL_PX = 0.5
"""Cover: every undistorted source border pixel centre lies within ±W/2, ±H/2 of the principal point (the frame is
centred on it and 2·⌈reach⌉ wide). With the image-centre rule that is exactly the image's pixel area
[-0.5, W - 0.5]; with the half-size rule the principal point is half a pixel right of / below the image's centre, so
the data may reach half a pixel past the right and bottom edges: the tolerance beyond [-0.5, W - 0.5] is 0.5 px."""
PIXEL_MEAN_MAX = 0.5
"""Mean |exported − expected| (8-bit levels) over covered pixels of a PNG export. Measured: ≤ 0.0004 at full size,
≤ 0.0035 at 1/4, never more than 1 level at a pixel (the stage's maps are interpolated to ≤ 7e-4 px). A JPEG export
(quality 95) measures 1.4-2.0 levels, JPEG noise: PNG keeps the bound 4x tighter."""
CONTROL_MIN = 4 * PIXEL_MEAN_MAX
"""A negative control (another view, or the image shifted by 1 px) must differ by at least this (measured: shifted
≥ 3.6 levels at full size, ≥ 10 at 1/4; another view ≥ 47)."""


@pytest.fixture(scope="module")
def capture(sample_tuple) -> Capture:
    return load_capture(sample_tuple)


def shared_options(fmt: str, scale: float | None = SCALE, **kwargs):
    """The format's default options with the shared frame at `scale` (and `kwargs`)."""
    module = exporters.get(fmt)
    base = module.Options(**kwargs)
    return replace(base, image=replace(base.image, intrinsics="shared", scale=scale))


@pytest.fixture(scope="module")
def exported(capture, tmp_path_factory):
    """case → Exported (written and checked once per module, on first use)."""
    root, done = tmp_path_factory.mktemp("shared"), {}

    def get(case: str) -> Exported:
        if case not in done:
            fmt, kwargs = CASES[case]
            done[case] = export(capture, fmt, root / case, shared_options(fmt, **kwargs), overlays=False)
        return done[case]

    return get


def plans_of(out: Path, capture: Capture) -> dict[int, ViewPlan]:
    """View id → the image-stage plan, rebuilt from the image options the manifest records (the effective ones)."""
    image = from_dict(ImageOptions, read_manifest(out)["options"]["image"])
    return {p.view.id: p for p in plan_views(capture.views, image)}


def centre(width: int, height: int, rule: str) -> tuple[float, float]:
    """The rules' formulas, written out here: half-size (W/2, H/2), image-centre ((W − 1)/2, (H − 1)/2)."""
    if rule == "half-size":
        return width / 2, height / 2
    return (width - 1) / 2, (height - 1) / 2


def median_focal(views: list[View]) -> float:
    return float(np.median([(v.camera.fx + v.camera.fy) / 2 for v in views]))


def image_sizes(out: Path) -> dict[str, tuple[int, int]]:
    return {v["name"]: Image.open(out / v["name"]).size for v in read_manifest(out)["views"]}


def source_border(width: int, height: int) -> np.ndarray:
    """Every pixel centre of the outermost rows and columns of a width×height image."""
    u, v = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    return np.concatenate([np.column_stack([u, np.zeros(width)]), np.column_stack([u, np.full(width, height - 1.0)]),
                           np.column_stack([np.zeros(height), v]), np.column_stack([np.full(height, width - 1.0), v])])


def out_from_source(plan: ViewPlan) -> np.ndarray:
    """The rotation output camera ← source camera, from the two world→camera poses: R_out · R_srcᵀ."""
    return plan.world_to_cam[:3, :3] @ plan.view.world_to_cam[:3, :3].T


def undistorted_border(plan: ViewPlan) -> np.ndarray:
    """The source border (full resolution) in the plan's output pixels, by cv2.undistortPoints."""
    src = plan.view.camera
    R = out_from_source(plan)
    expected_R = np.eye(3) if plan.rectification() is None else plan.rectification()
    assert np.allclose(R, expected_R, atol=1e-12), (plan.view.id, R, expected_R)
    pts = source_border(*src.size).reshape(-1, 1, 2)
    return cv2.undistortPoints(pts, src.K, src.dist, R=R, P=plan.camera.K, criteria=CRITERIA).reshape(-1, 2)


# ---- 1. one frame, every format --------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_every_view_in_one_landscape_frame(case: str, capture, exported) -> None:
    """One image size (the files), the manifest's frame record matching them, one K for every plan and reader
    (fx = fy = the median focal × scale, principal point by the rule), landscape, and the check passes."""
    e = exported(case)
    assert e.check is not None and e.check.passed, case
    out = e.out_dir
    sizes = set(image_sizes(out).values())
    assert len(sizes) == 1, (case, sizes)
    ((W, H),) = sizes
    assert W > H, (case, W, H)  # landscape, portrait views included
    rule = RULES.get(case, "image-centre")
    f = median_focal(capture.views) * SCALE
    cx, cy = centre(W, H, rule)
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    plans = plans_of(out, capture)
    assert sorted(plans) == sorted(e.views)
    K0 = plans[e.views[0]].camera.K
    assert np.allclose(K0, K, rtol=1e-12, atol=1e-12), (case, K0, K)
    for vid, plan in plans.items():
        assert plan.camera.size == (W, H), (case, vid, plan.camera.size)
        assert np.array_equal(plan.camera.K, K0), (case, vid, plan.camera.K, K0)
        assert not plan.camera.has_distortion, (case, vid)
    readback = exporters.get(CASES[case][0]).read(out)
    assert len(readback) == len(plans)
    for view in readback:
        assert view.camera.size == (W, H), (case, view.name, view.camera.size)
        assert np.allclose(view.camera.K, K, rtol=0, atol=READER_PX_TOL), (case, view.name, view.camera.K, K)
        assert not np.any(np.abs(view.camera.dist) > 1e-12), (case, view.name, view.camera.dist)
    manifest = read_manifest(out)
    assert "frame" in manifest, f"{case}: the manifest has no 'frame' record (keys {sorted(manifest)})"
    frame = manifest["frame"]
    assert frame["centre_rule"] == rule, (case, frame)
    assert (frame["width"], frame["height"]) == (W, H), (case, frame, W, H)
    assert frame["principal_point"] == pytest.approx([cx, cy], abs=1e-12), (case, frame)
    assert frame["focal"] == pytest.approx(f, rel=1e-12), (case, frame)


def test_the_sample_has_what_the_frame_must_hold(capture) -> None:
    """The cases above are only meaningful on landscape AND portrait views, a rolled one, k3 ≠ 0 and several K."""
    assert {v.camera.is_portrait for v in capture.views} == {False, True}
    assert any(v.camera.dist[4] != 0 for v in capture.views)
    assert len({(v.camera.fx, v.camera.cx, v.camera.cy) for v in capture.views}) == len(capture.views)
    plans = plan_views(capture.views, ImageOptions(intrinsics="shared", scale=SCALE, upright=True))
    assert any(p.rotated for p in plans) and {p.turn for p in plans} == {-1, 0, 1}
    # the median (what the frame takes) is not the mean of these focals: the test above can tell them apart
    assert abs(median_focal(capture.views) - np.mean([v.camera.fx for v in capture.views])) > 1


# ---- 2. the focal and the size ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [None, 0.5, SCALE])
def test_default_focal_is_the_median_times_the_scale(scale: float | None, capture) -> None:
    plans = plan_views(capture.views, ImageOptions(intrinsics="shared", scale=scale))
    expected = median_focal(capture.views) * (1 if scale is None else scale)
    for plan in plans:
        assert plan.camera.fx == plan.camera.fy == pytest.approx(expected, rel=1e-12), (plan.view.id, plan.camera.K)


def test_frame_focal_and_frame_size_are_honoured(sample_tuple, tmp_path, capsys) -> None:
    """From the command line: every image is exactly --frame-size, K holds exactly --frame-focal, the check passes."""
    out = tmp_path / "framed"
    code = main(["to-nerf", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--intrinsics", "shared",
                 "--frame-focal", "800", "--frame-size", "320x224", "--overlays", "none"])
    assert code == 0, capsys.readouterr().err
    assert set(image_sizes(out).values()) == {(320, 224)}
    frame = read_manifest(out)["frame"]
    assert (frame["width"], frame["height"], frame["focal"]) == (320, 224, 800.0), frame
    assert frame["principal_point"] == [159.5, 111.5]
    assert '"passed": true' in (out / CHECK_JSON).read_text()
    for view in exporters.get("nerf").read(out):
        assert view.camera.size == (320, 224)
        assert np.allclose(view.camera.K, [[800, 0, 159.5], [0, 800, 111.5], [0, 0, 1]], rtol=0, atol=1e-9)


def test_frame_focal_alone_sets_the_focal_and_covers(capture) -> None:
    plans = plan_views(capture.views, ImageOptions(intrinsics="shared", frame_focal=777.25))
    assert {p.camera.K.tobytes() for p in plans} == {plans[0].camera.K.tobytes()}
    assert plans[0].camera.fx == plans[0].camera.fy == 777.25
    check_cover(plans, tight=True)


def test_size_multiple_rounds_up_and_still_covers(capture) -> None:
    base = plan_views(capture.views, ImageOptions(intrinsics="shared", scale=SCALE))
    plans = plan_views(capture.views, ImageOptions(intrinsics="shared", scale=SCALE, size_multiple=32))
    (W, H), (W1, H1) = plans[0].camera.size, base[0].camera.size
    assert W % 32 == 0 and H % 32 == 0, (W, H)
    assert W1 <= W < W1 + 32 and H1 <= H < H1 + 32, ((W, H), (W1, H1))
    assert (W, H) != (W1, H1)  # the sample's frame is no multiple of 32 already: the rounding is exercised
    assert plans[0].camera.fx == base[0].camera.fx
    check_cover(plans, tight=False)


# ---- 3. cover and crop, by OpenCV --------------------------------------------------------------------------


def check_cover(plans: list[ViewPlan], *, tight: bool) -> None:
    """Every source border pixel centre of every view, undistorted into the frame, lies within ±W/2, ±H/2 of
    the principal point, hence in [-0.5 - COVER_TOL_PX, W - 0.5 + COVER_TOL_PX]; `tight`: some view's data
    reaches within 1 px of that extent on each axis (the frame is the smallest)."""
    W, H = plans[0].camera.size
    cx, cy = plans[0].camera.cx, plans[0].camera.cy
    reach = np.zeros(2)
    for plan in plans:
        assert plan.camera.size == (W, H)
        uv = undistorted_border(plan)
        assert uv[:, 0].min() >= -0.5 - COVER_TOL_PX and uv[:, 0].max() <= W - 0.5 + COVER_TOL_PX, (
            plan.view.id, uv.min(axis=0), uv.max(axis=0), (W, H))
        assert uv[:, 1].min() >= -0.5 - COVER_TOL_PX and uv[:, 1].max() <= H - 0.5 + COVER_TOL_PX, (
            plan.view.id, uv.min(axis=0), uv.max(axis=0), (W, H))
        extent = np.abs(uv - [cx, cy]).max(axis=0)
        assert np.all(extent <= np.array([W, H]) / 2 + 1e-9), (plan.view.id, extent, (W, H))
        reach = np.maximum(reach, extent)
    if tight:
        assert np.all(reach > np.array([W, H]) / 2 - 1), (reach, (W, H))


COVER = {
    "image-centre": ImageOptions(intrinsics="shared", scale=SCALE),
    "half-size": ImageOptions(intrinsics="shared", scale=SCALE, centre_rule="half-size"),
    "upright": ImageOptions(intrinsics="shared", scale=SCALE, upright=True),
    "half-size-upright-full": ImageOptions(intrinsics="shared", centre_rule="half-size", upright=True),
    "explicit-cover": ImageOptions(intrinsics="shared", scale=0.5, border="cover"),
}


@pytest.mark.parametrize("case", list(COVER))
def test_cover_holds_every_source_pixel(case: str, capture) -> None:
    check_cover(plan_views(capture.views, COVER[case]), tight=True)


CROP = {
    "image-centre": ImageOptions(intrinsics="shared", scale=SCALE, border="crop"),
    "half-size-upright": ImageOptions(intrinsics="shared", scale=SCALE, border="crop", centre_rule="half-size",
                                      upright=True),
    "full": ImageOptions(intrinsics="shared", border="crop"),
    "multiple": ImageOptions(intrinsics="shared", scale=0.5, border="crop", size_multiple=32),
}


@pytest.mark.parametrize("case", list(CROP))
def test_crop_has_source_data_at_every_pixel(case: str, capture) -> None:
    """helpers.footprint is full for every view, and so is OpenCV's own map into the decoded (1/reduce) source."""
    options = CROP[case]
    plans = plan_views(capture.views, options)
    cover = plan_views(capture.views, replace(options, border="cover"))[0].camera.size
    W, H = plans[0].camera.size
    assert cover[0] > W and cover[1] > H, ((W, H), cover)
    if options.size_multiple > 1:
        assert W % options.size_multiple == 0 and H % options.size_multiple == 0
    for plan in plans:
        assert plan.camera.size == (W, H)
        assert footprint(plan).all(), (case, plan.view.id, int((~footprint(plan)).sum()))
        src, r = plan.view.camera, plan.reduce
        mx, my = cv2.initUndistortRectifyMap(src.K, src.dist, out_from_source(plan), plan.camera.K, (W, H),
                                             cv2.CV_32FC1)
        # the decoded image's outer pixel centres in full-resolution pixels: 0.5·r − 0.5 .. (⌈n/r⌉ − 0.5)·r − 0.5
        lo = 0.5 * r - 0.5
        hi_x, hi_y = (((-(-n // r)) - 0.5) * r - 0.5 for n in src.size)
        tol = 1e-3  # float32 maps
        assert mx.min() >= lo - tol and mx.max() <= hi_x + tol, (case, plan.view.id, mx.min(), mx.max(), lo, hi_x)
        assert my.min() >= lo - tol and my.max() <= hi_y + tol, (case, plan.view.id, my.min(), my.max(), lo, hi_y)


# ---- 4. pixels, re-made from the source JPEG -----------------------------------------------------------------

_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_reduction(src_fx: float, src_fy: float, focal: float) -> int:
    """The largest JPEG DCT reduction whose image samples at least as densely as the output's focal."""
    return next(r for r in (8, 4, 2, 1) if r * focal <= min(src_fx, src_fy) * (1 + 1e-9))


def expected_image(plan: ViewPlan) -> tuple[np.ndarray, np.ndarray]:
    """(BGR image, covered mask) of the plan's output made here: the source JPEG decoded by OpenCV (at 1/r,
    K scaled to it), undistorted, rotated by R_out · R_srcᵀ and projected with the output K in one bilinear remap."""
    src = plan.view.camera
    r = decode_reduction(src.fx, src.fy, plan.camera.fx)
    img = cv2.imread(str(plan.view.image), _REDUCED[r] | cv2.IMREAD_IGNORE_ORIENTATION)
    h, w = img.shape[:2]
    assert (w, h) == (-(-src.width // r), -(-src.height // r))
    K = src.K.copy()
    K[:2] /= r
    K[:2, 2] += 0.5 / r - 0.5  # pixel centres: c' = (c + 0.5)/r − 0.5
    mx, my = cv2.initUndistortRectifyMap(K, src.dist, out_from_source(plan), plan.camera.K, plan.camera.size,
                                         cv2.CV_32FC1)
    covered = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT), covered


def mean_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16))[mask].mean())


@pytest.mark.parametrize("scale", [None, SCALE], ids=["full", "quarter"])
def test_pixels_match_opencv_from_the_source(scale: float | None, capture, tmp_path) -> None:
    """A portrait view (turned), the rolled one (upright) and a plain one with k3 ≠ 0: the exported PNG equals
    OpenCV's remap of the source to within PIXEL_MEAN_MAX over the covered pixels; another view's expected image,
    or the exported image shifted by 1 px, is at least CONTROL_MIN off."""
    image = ImageOptions(intrinsics="shared", scale=scale, upright=True, image_format="png")
    e = export(capture, "colmap", tmp_path / "px", colmap.Options(image=image, points=0), overlays=False)
    assert e.check is not None and e.check.passed
    names = {v["id"]: v["name"] for v in e.manifest["views"]}
    plans = list(plans_of(e.out_dir, capture).values())
    portrait = next(p for p in plans if p.turn != 0)
    rolled = next(p for p in plans if p.rotated)
    plain = next(p for p in plans if p.turn == 0 and not p.rotated and p.view.camera.dist[4] != 0)
    expected = {p.view.id: expected_image(p) for p in (portrait, rolled, plain)}
    for plan, other in ((portrait, rolled), (rolled, plain), (plain, portrait)):
        vid = plan.view.id
        got = cv2.imread(str(e.out_dir / names[vid]), cv2.IMREAD_COLOR)
        want, covered = expected[vid]
        assert got.shape == want.shape, (vid, got.shape, want.shape)
        assert covered.mean() > 0.5, (vid, covered.mean())
        diff = mean_difference(got, want, covered)
        assert diff <= PIXEL_MEAN_MAX, (vid, diff)
        other_want, other_covered = expected[other.view.id]
        both = covered & other_covered
        assert mean_difference(got, other_want, both) >= CONTROL_MIN, (vid, other.view.id)
        for axis in (0, 1):  # the exported image moved by one pixel down, then right
            moved = np.roll(got, 1, axis=axis)
            inner = covered & np.roll(covered, 1, axis=axis)
            inner[0 if axis == 0 else slice(None), 0 if axis == 1 else slice(None)] = False
            shifted = mean_difference(moved, want, inner)
            assert shifted >= CONTROL_MIN and shifted > 10 * diff, (vid, axis, shifted, diff)


# ---- 5. alpha ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alpha_exports(capture, tmp_path_factory):
    """(alpha → view id → the exported PNG as an array, RGB or RGBA; the plans): colmap, shared frame at 1/4, upright."""
    root, images, plans = tmp_path_factory.mktemp("alpha"), {}, None
    for alpha in ("none", "coverage", "subject"):
        image = ImageOptions(intrinsics="shared", scale=SCALE, upright=True, image_format="png", alpha=alpha)
        e = export(capture, "colmap", root / alpha, colmap.Options(image=image, points=0), overlays=False)
        assert e.check is not None and e.check.passed, alpha
        images[alpha] = {v["id"]: np.asarray(Image.open(e.out_dir / v["name"])) for v in e.manifest["views"]}
        plans = plans_of(e.out_dir, capture)
    return images, plans


def test_alpha_coverage_is_the_footprint(alpha_exports) -> None:
    images, plans = alpha_exports
    for vid, plan in plans.items():
        plain, rgba = images["none"][vid], images["coverage"][vid]
        assert plain.shape[2] == 3 and rgba.shape[2] == 4, (vid, plain.shape, rgba.shape)
        alpha, inside = rgba[..., 3], footprint(plan)
        assert set(np.unique(alpha).tolist()) == {0, 255}, vid
        assert (~inside).any(), vid  # the frame covers every view: each has pixels without source data
        assert np.array_equal(alpha == 255, inside), (vid, int(((alpha == 255) != inside).sum()))
        assert not rgba[..., :3][alpha == 0].any(), vid
        assert np.array_equal(rgba[..., :3][alpha == 255], plain[alpha == 255]), vid


def test_alpha_subject_is_footprint_and_silhouette(alpha_exports, capture) -> None:
    """The silhouette rendered here through each plan's pinhole camera (the export uses the same renderer):
    exact equality, IoU 1."""
    images, plans = alpha_exports
    assert capture.alignment is None  # the mesh file's frame is the cameras'
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for vid, plan in plans.items():
            rgba, plain = images["subject"][vid], images["none"][vid]
            silhouette = renderer.render(plan.camera, plan.world_to_cam, depth_only=True).depth > 0
            inside = footprint(plan)
            want = inside & silhouette
            assert 0 < want.sum() < inside.sum(), vid  # the subject is in view, and smaller than the data
            alpha = rgba[..., 3]
            assert set(np.unique(alpha).tolist()) == {0, 255}, vid
            got = alpha == 255
            iou = np.count_nonzero(got & want) / np.count_nonzero(got | want)
            assert np.array_equal(got, want), (vid, iou, int((got != want).sum()))
            assert not rgba[..., :3][~got].any(), vid
            assert np.array_equal(rgba[..., :3][got], plain[got]), vid


# ---- 6. bad input -----------------------------------------------------------------------------------------

BAD = {
    "frame size without shared": (["--frame-size", "320x224"], "--intrinsics shared"),
    "alpha with jpeg": (["--alpha", "coverage"], "png"),
    "size multiple 0": (["--intrinsics", "shared", "--size-multiple", "0"], "size_multiple"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(case: str, sample_tuple, tmp_path, capsys) -> None:
    args, needle = BAD[case]
    out = tmp_path / "out"
    code = main(["to-colmap", str(sample_tuple), "-o", str(out), "-q", *args])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and lines[0].startswith("fsconvert: error:"), captured.err
    assert needle in lines[0], lines[0]
    assert captured.out == "" and not out.exists()
