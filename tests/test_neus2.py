"""NeuS2 exports read back by an independent implementation of NeuS2's loading rules, written here from
19reborn/NeuS2 (081b819) `src/nerf_loader.cu` `load_nerf`, `include/neural-graphics-primitives/nerf_loader.h`
`nerf_matrix_to_ngp` and `common_device.cuh` `pixel_to_ray` (not by calling the exporter's reader), on the
synthetic sample: portrait, rolled, off-centre and k3 views, all in one shared frame."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import exported_once, footprint, format_files, output_pixels, plans_by_name
from PIL import Image

import exporters
from exporters import neus2
from fsconvert.check import check_export
from fsconvert.cli import main
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions, capture_up, is_rolled
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh
from fsconvert.render import Renderer

PX_TOL = 0.01
DEFAULT_IMAGE = neus2.Options().image
CASES = {
    "default": neus2.Options(),
    "upright-half": neus2.Options(image=replace(DEFAULT_IMAGE, upright=True, scale=0.5)),
    "per-view": neus2.Options(image=replace(DEFAULT_IMAGE, intrinsics="per-view", scale=0.5)),
}
"""The whole sample each time: the shared frame (rolled views kept rolled, or turned upright at half size),
and each view at its own size, which NeuS2 does not support."""









@pytest.fixture(scope="module")
def exported(capture, tmp_path_factory):
    """case → Exported (written and checked once per module, on first use)."""
    return exported_once(capture, tmp_path_factory.mktemp("neus2"), {c: ("neus2", o) for c, o in CASES.items()})


def copy_export(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def edit_transforms(out: Path, edit) -> None:
    path = out / "transforms.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=1))


def test_silhouettes_rendered_ahead_of_the_images_give_the_serial_bytes(exported, capture, tmp_path):
    # -j 2: the alpha's silhouettes render in view order on a second thread while the image lanes take each as
    # they reach it (depthproducts.subjects_ahead); the fixture's exports ran at -j 1: every silhouette first
    for case in ("default", "upright-half"):
        ahead = export(capture, neus2, tmp_path / case, CASES[case], thresholds=None, workers=2).out_dir
        serial = format_files(exported(case).out_dir)
        found = format_files(ahead)
        assert sorted(found) == sorted(serial) and [n for n in serial if found[n] != serial[n]] == []


# ---- NeuS2's rules, written here ----------------------------------------------------------------------


def neus2_load(out: Path, dtype=np.float32) -> list[dict]:
    """load_nerf for one transforms.json: from_na = the key is present; scale, offset; per frame the image
    (stbi_load: RGBA, its own size), the 3×4 of transform_matrix through nerf_matrix_to_ngp (columns 1, 2
    negated, translation·scale + offset, columns 1, 2 negated back with from_na), focal = intrinsic_matrix
    [0][0], [1][1], principal point = [0][2] / json["w"], [1][2] / json["h"] (the global size), overridden
    by a frame's cx / frame w. NeuS2 holds all of it in float32; dtype=np.float64 reads the file exactly."""
    meta = json.loads((out / "transforms.json").read_text())
    from_na = "from_na" in meta
    scale, offset = dtype(meta["scale"]), np.asarray(meta["offset"], dtype=dtype)
    views = []
    for frame in meta["frames"]:
        M = np.array(frame["transform_matrix"], dtype=dtype)[:3, :4]
        M[:, 1] *= -1
        M[:, 2] *= -1
        M[:, 3] = M[:, 3] * scale + offset
        if from_na:
            M[:, 1] *= -1
            M[:, 2] *= -1
        else:
            M = M[[1, 2, 0]]
        K = np.array(frame["intrinsic_matrix"], dtype=dtype)
        pp = [K[0, 2] / dtype(meta["w"]), K[1, 2] / dtype(meta["h"])]
        if "cx" in frame:
            pp[0] = dtype(frame["cx"]) / dtype(frame["w"])
        if "cy" in frame:
            pp[1] = dtype(frame["cy"]) / dtype(frame["h"])
        with Image.open(out / frame["file_path"]) as im:
            res, mode = im.size, im.mode
        views.append({"name": frame["file_path"], "xform": M, "focal": (K[0, 0], K[1, 1]), "pp": pp, "res": res,
                      "mode": mode, "scale": scale, "offset": offset, "size": (meta["w"], meta["h"])})
    return views


def ray_error_px(view: dict, X: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """How far (in pixels) NeuS2's ray through OpenCV pixel `pixels` passes from each source-world point X:
    pixel_to_ray at the pixel's centre, uv = (pixel index + 0.5) / res, dir = R·((uv − pp)·res / focal, 1),
    origin the xform's translation; X taken into NeuS2's world by x·scale + offset."""
    M = view["xform"].astype(np.float64)
    res, f = np.array(view["res"], float), np.array(view["focal"], float)
    pp = np.array(view["pp"], float)
    uv = (pixels + 0.5) / res
    d = (uv - pp) * res / f  # the ray's camera-frame direction (x, y, 1)
    X_ngp = X * float(view["scale"]) + view["offset"].astype(np.float64)
    X_cam = (X_ngp - M[:, 3]) @ M[:, :3]  # R is orthonormal: Rᵀ(X − t)
    return np.abs(X_cam[:, :2] / X_cam[:, 2:] - d).max(axis=1) * f.max()


# ---- the export read by NeuS2's rules ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["default", "upright-half"])
def test_neus2_rays_pass_the_mesh_where_the_source_cameras_see_it(case, exported, capture, vertices):
    result = exported(case)
    assert result.check.passed, (result.check.problems, [v.problems for v in result.check.views])
    plans = plans_by_name(result.out_dir, capture, neus2)
    views = neus2_load(result.out_dir)
    assert [v["name"] for v in views] == list(plans)  # every view, in view order
    up = capture_up(capture.views)
    assert any(v.camera.is_portrait for v in capture.views) and any(is_rolled(v, up) for v in capture.views)
    worst32, worst64, corner = 0.0, 0.0, []
    for view, exact in zip(views, neus2_load(result.out_dir, np.float64)):
        plan = plans[view["name"]]
        assert view["res"] == view["size"] == plan.camera.size and view["mode"] == "RGBA"  # one size: w×h
        idx, want = output_pixels(plan, vertices)
        worst32 = max(worst32, float(ray_error_px(view, vertices[idx], want).max()))
        worst64 = max(worst64, float(ray_error_px(exact, vertices[idx], want).max()))
        corner.append(float(ray_error_px(exact, vertices[idx], want - 0.5).max()))  # rays through pixel index i
    print(f"{case}: NeuS2's float32 rays pass the mesh {worst32:.2e} px off at worst ({worst64:.1e} px in float64)")
    assert worst32 < PX_TOL and worst64 < 1e-6
    assert corner == pytest.approx([0.5] * len(views), abs=1e-6)  # without NeuS2's +0.5: half a pixel off


def test_the_mesh_lies_inside_neus2s_unit_cube(exported, vertices):
    meta = json.loads((exported("default").out_dir / "transforms.json").read_text())
    assert meta["from_na"] is True and meta["aabb_scale"] == 1  # the box [0, 1]³
    placed = vertices * meta["scale"] + np.asarray(meta["offset"])
    assert placed.min() >= 0 and placed.max() <= 1
    centre = (placed.min(axis=0) + placed.max(axis=0)) / 2
    assert np.allclose(centre, 0.5, atol=1e-12)  # the bounding sphere's centre at the cube's
    assert np.linalg.norm(placed - 0.5, axis=1).max() == pytest.approx(0.5 / 1.1, rel=1e-12)  # margin 1.1
    back = (placed - np.asarray(meta["offset"])) / meta["scale"]  # NeuS2's save_mesh: the source world
    assert np.abs(back - vertices).max() < 1e-12 * np.abs(vertices).max()


@pytest.mark.parametrize("case", ["default", "upright-half"])
def test_alpha_is_the_rendered_silhouette_within_the_source_data(case, exported, capture):
    result = exported(case)
    plans = plans_by_name(result.out_dir, capture, neus2)
    with Renderer(load_mesh(capture.mesh)) as renderer:
        for name, plan in plans.items():
            rgba = np.asarray(Image.open(result.out_dir / name))
            assert rgba.shape == (plan.camera.height, plan.camera.width, 4)
            alpha = rgba[..., 3]
            assert set(np.unique(alpha)) == {0, 255}
            covered = footprint(plan)
            assert not covered.all()  # the shared frame holds pixels without source data: never the object
            silhouette = renderer.render(plan.camera, plan.world_to_cam, depth_only=True).mask
            assert np.array_equal(alpha > 0, silhouette & covered), name
            assert not rgba[alpha == 0, :3].any()  # RGB 0 where alpha is 0


def test_per_view_sizes_fail_the_check_by_neus2s_one_size(exported, capture, vertices, tmp_path):
    result = exported("per-view")
    meta = json.loads((result.out_dir / "transforms.json").read_text())
    portrait = {f"images/{v.id:03d}.png" for v in capture.views if v.camera.is_portrait}
    assert portrait and {f["file_path"] for f in meta["frames"] if "cx" in f} == portrait
    problems = result.check.problems
    assert len(problems) == 1 and problems[0].startswith("neus2: takes one image size, the global w, h"), problems
    assert re.search(r": images/\d+\.png is \d+×\d+$", problems[0]), problems[0]
    assert all(v.passed for v in result.check.views)  # each camera is exact: its own w, h, cx, cy
    assert any("NeuS2 does not support several image sizes" in w for w in result.check.warnings)
    plans = plans_by_name(result.out_dir, capture, neus2)
    for view in neus2_load(result.out_dir):
        idx, want = output_pixels(plans[view["name"]], vertices)
        assert ray_error_px(view, vertices[idx], want).max() < PX_TOL
    # without the frame's own cx, cy: the principal point over the GLOBAL w, h, scaled to the portrait image
    out = copy_export(result.out_dir, tmp_path)
    edit_transforms(out, lambda m: [f.pop(k, None) for f in m["frames"] for k in ("w", "h", "cx", "cy")])
    report = check_export(out, overlays=False)
    assert {v.name for v in report.views if not v.passed} == portrait
    assert min(v.camera_max_px for v in report.views if v.name in portrait) > 10


# ---- negative controls: a wrong convention fails `fsconvert check` ------------------------------------------


def c2w_as_opengl(meta) -> None:
    """transform_matrix as an OpenGL camera→world (instant-ngp's), from_na kept."""
    for f in meta["frames"]:
        f["transform_matrix"] = (np.array(f["transform_matrix"]) @ np.diag([1.0, -1, -1, 1])).tolist()


def cx_not_shifted(meta) -> None:
    """intrinsic_matrix with OpenCV's principal point (no +0.5)."""
    for f in meta["frames"]:
        f["intrinsic_matrix"][0][2] -= 0.5
        f["intrinsic_matrix"][1][2] -= 0.5


def w2c_for_c2w(meta) -> None:
    """transform_matrix holding world→camera."""
    for f in meta["frames"]:
        f["transform_matrix"] = np.linalg.inv(np.array(f["transform_matrix"])).tolist()


def no_from_na(meta) -> None:
    """The from_na key dropped: NeuS2 reads instant-ngp's convention (OpenGL, world axes cycled)."""
    del meta["from_na"]


@pytest.mark.parametrize("edit", [c2w_as_opengl, cx_not_shifted, w2c_for_c2w, no_from_na])
def test_wrong_convention_fails_fsconvert_check(edit, exported, tmp_path, capsys):
    out = copy_export(exported("default").out_dir, tmp_path)
    assert main(["check", str(out), "--overlays", "none"]) == 0  # the unmodified copy passes
    edit_transforms(out, edit)
    capsys.readouterr()
    assert main(["check", str(out), "--overlays", "none"]) == 1
    report = json.loads((out / "check" / "check.json").read_text())
    assert not report["passed"] and all(not v["passed"] for v in report["views"])
    if edit is cx_not_shifted:  # half a pixel on each axis
        assert all(v["camera_max_px"] == pytest.approx(0.5 ** 0.5, abs=1e-3) for v in report["views"])


def test_from_na_is_read_by_its_presence(exported, tmp_path):
    """NeuS2 tests json.contains("from_na"): false reads as true."""
    out = copy_export(exported("default").out_dir, tmp_path)
    reader = exporters.program(neus2, "neus2").read
    before = reader(out).views
    edit_transforms(out, lambda m: m.update(from_na=False))
    after = reader(out).views
    assert all(np.array_equal(a.world_to_cam, b.world_to_cam) for a, b in zip(before, after))


def test_scale_that_puts_the_mesh_outside_the_cube_fails_the_check(exported, tmp_path):
    """Scale and offset move cameras and mesh together (every projection stays exact): only the cube sees it."""
    out = copy_export(exported("default").out_dir, tmp_path)

    def zoom(meta) -> None:
        meta["scale"] *= 3
        meta["offset"] = (3 * (np.asarray(meta["offset"]) - 0.5) + 0.5).tolist()  # about the cube's centre

    edit_transforms(out, zoom)
    report = check_export(out, overlays=False)
    assert all(v.passed for v in report.views) and not report.passed
    assert len(report.problems) == 1 and report.problems[0].startswith("neus2: reconstructs only inside [0, 1]³")


# ---- bad input and the command line ---------------------------------------------------------------------


def test_margin_that_leaves_the_cube_is_one_line_and_names_the_margin_needed(capture, vertices, tmp_path, capsys):
    out = tmp_path / "small-margin"
    code = main(["to-neus2", str(capture.root), "-o", str(out), "-q", "-j", "1", "--margin", "0.5"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and not out.exists(), err
    assert "margin 0.5 puts the mesh outside NeuS2's [0, 1]³ cube" in err[0]
    need = float(re.search(r"use a margin of at least ([\d.]+)", err[0])[1])
    assert 0.5 < need < 1  # below 1 the sphere sticks out of the cube, the mesh's box need not
    done = export(capture, "neus2", tmp_path / "least", neus2.Options(margin=need), thresholds=None)
    meta = json.loads((done.out_dir / "transforms.json").read_text())
    placed = vertices * meta["scale"] + np.asarray(meta["offset"])
    assert placed.min() >= 0 and placed.max() <= 1 and max(placed.max() - 1, -placed.min()) > -1e-3


def test_defaults_and_cli(sample_tuple, tmp_path, capsys):
    image = neus2.Options().image
    assert (image.intrinsics, image.image_format, image.alpha) == ("shared", "png", "subject")
    with pytest.raises(Exception, match="use --distortion undistort"):
        neus2.Options(image=ImageOptions(undistort=False))
    out = tmp_path / "cli"
    assert main(["to-neus2", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--max-size", "400"]) == 0
    assert "PASS" in capsys.readouterr().out
    meta = json.loads((out / "transforms.json").read_text())
    assert max(meta["w"], meta["h"]) == 400 and len(meta["frames"]) == len(load_capture(sample_tuple).views)
