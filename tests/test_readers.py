"""Reader rules (fsconvert.readers) on hand-written files, the image stage's centred crop/cover
frames and 90° turns, and the export-time warnings with their exact conditions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
from helpers import footprint, read_as
from PIL import Image

from exporters import colmap, nerf
from exporters.nerf import writer as nerf_writer
from exporters.nerf.layout import SPLITS
from fsconvert import conventions as cv
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.loader import load_capture
from fsconvert.model import Camera
from fsconvert.options import from_dict
from fsconvert.protocol import read_manifest

EXACT = 1e-9


@pytest.fixture(scope="module")
def capture(sample_tuple):
    return load_capture(sample_tuple)


def pose(t=(0.1, 0.2, 3.0)) -> np.ndarray:
    return cv.homogeneous(np.column_stack([np.eye(3), t]))


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


# ---- instant-ngp -------------------------------------------------------------------------------------


def test_instant_ngp_rules_on_hand_written_files(tmp_path):
    """Every *.json merged, natural order; per-frame focal overrides the top level, fy = fx when only x
    is given, camera_angle_x from the image width; cx only beside w (else the centre), scaled to the
    image file; k3 dropped; file_path without extension probed."""
    for name, size in (("f2.png", (40, 30)), ("f10.jpg", (80, 60)), ("g1.png", (40, 30))):
        Image.new("RGB", size).save(tmp_path / name)
    c2w = cv.w2c_cv_to_c2w_gl(pose()).tolist()
    write_json(tmp_path / "a.json", {
        "camera_angle_x": 0.5, "cx": 25.0, "w": 50, "k1": 0.1, "k3": 0.7, "p2": 0.01,
        "frames": [
            {"file_path": "f10", "transform_matrix": c2w},                           # top-level lens and angle
            {"file_path": "f2.png", "transform_matrix": c2w, "fl_x": 100.0, "cy": 3.0},  # cy without h: centre
        ],
    })
    write_json(tmp_path / "b.json", {"frames": [{"file_path": "g1.png", "transform_matrix": c2w[:3],
                                                 "fl_x": 90.0, "fl_y": 95.0, "cx": 10.0, "cy": 12.0, "w": 40,
                                                 "h": 30}]})
    write_json(tmp_path / "notes.json", {"comment": "no frames: skipped"})
    views = {v.name: v for v in read_as("instant-ngp", tmp_path).views}
    assert list(views) == ["f2.png", "f10.jpg", "g1.png"]  # natural sort across files
    f10, f2, g1 = views["f10.jpg"], views["f2.png"], views["g1.png"]
    f = 0.5 * 80 / np.tan(0.25)
    assert np.abs(f10.camera.K - cv.K_matrix(f, f, 25 / 50 * 80 - 0.5, 29.5)).max() < EXACT
    assert list(f10.camera.dist) == [0.1, 0.0, 0.0, 0.01, 0.0]  # k3 dropped
    assert np.abs(f2.camera.K - cv.K_matrix(100, 100, 25 / 50 * 40 - 0.5, 14.5)).max() < EXACT
    assert np.abs(g1.camera.K - cv.K_matrix(90, 95, 9.5, 11.5)).max() < EXACT and not g1.camera.has_distortion
    assert np.abs(g1.world_to_cam - pose()).max() < 1e-12


def test_instant_ngp_without_a_focal_is_an_input_error(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    write_json(tmp_path / "t.json", {"frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(InputError, match="Couldn't read fov"):
        read_as("instant-ngp", tmp_path)


# ---- 3DGS --------------------------------------------------------------------------------------------


def colmap_model(folder: Path, model: str, params: list[float], names=("b/2.png", "a/1.png")) -> None:
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model=model, width=40, height=30, params=params))
    for i, name in enumerate(names, start=1):
        image = pycolmap.Image(name=name, camera_id=1, image_id=i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pose((0.1 * i, 0, 3))[:3, :4]))
    sparse = folder / "sparse" / "0"
    sparse.mkdir(parents=True)
    rec.write_text(str(sparse))


def test_3dgs_colmap_reader_ignores_the_principal_point(tmp_path):
    colmap_model(tmp_path, "PINHOLE", [50.0, 55.0, 12.0, 9.0])
    views = read_as("3dgs", tmp_path).views
    assert [v.name for v in views] == ["images/1.png", "images/2.png"]  # sorted by name, basename only
    for v in views:  # FoV only: the principal point at W/2, H/2 (corner origin), whatever the file says
        assert np.abs(v.camera.K - cv.K_matrix(50, 55, 19.5, 14.5)).max() < EXACT
    assert np.abs(views[0].world_to_cam - pose((0.2, 0, 3))).max() < 1e-12  # a/1.png is image 2


def test_3dgs_colmap_reader_rejects_distorted_models(tmp_path):
    colmap_model(tmp_path, "OPENCV", [50.0, 55.0, 20.0, 15.0, 0.1, 0, 0, 0])
    with pytest.raises(InputError, match="OPENCV: 3DGS's reader accepts only SIMPLE_PINHOLE / PINHOLE"):
        read_as("3dgs", tmp_path)


def test_3dgs_blender_reader_needs_train_and_test_and_skips_val(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "b.png")
    frame = {"transform_matrix": cv.w2c_cv_to_c2w_gl(pose()).tolist()}
    write_json(tmp_path / "transforms_train.json", {"camera_angle_x": 0.5, "frames": [{**frame, "file_path": "./a"}]})
    write_json(tmp_path / "transforms_val.json", {"camera_angle_x": 0.5, "frames": [{**frame, "file_path": "./b"}]})
    with pytest.raises(InputError, match="transforms_test.json: missing"):
        read_as("3dgs", tmp_path)
    write_json(tmp_path / "transforms_test.json", {"camera_angle_x": 0.5, "frames": []})
    reading = read_as("3dgs", tmp_path)
    assert [v.name for v in reading.views] == ["a.png"] and list(reading.unread) == ["b.png"]
    assert [v.name for v in read_as("blender", tmp_path).views] == ["a.png", "b.png"]


def test_unknown_reader_and_a_reader_of_another_layout(tmp_path):
    with pytest.raises(InputError, match="unknown reader 'mitsuba'"):
        read_as("mitsuba", tmp_path)
    with pytest.raises(InputError, match="colmap does not read the nerf layout"):
        read_as("colmap", tmp_path)
    with pytest.raises(InputError, match="transforms_train.json: missing"):
        read_as("3dgs", tmp_path)


# ---- centred crop / cover and the landscape turn ----------------------------------------------------


def grown(plan, dw: int, dh: int):
    """The plan with its centred output camera dw, dh pixels larger."""
    w, h = plan.camera.width + dw, plan.camera.height + dh
    return replace(plan, camera=Camera(w, h, cv.centred_K(plan.camera.K, w, h)))


@pytest.mark.parametrize("image", [ImageOptions(principal_point="center", border="crop"),
                                   ImageOptions(principal_point="center", border="crop", max_size=300, upright=True)])
def test_crop_is_the_largest_centred_frame_with_source_data_everywhere(capture, image):
    for plan in plan_views(capture.views, image):
        assert abs(plan.camera.cx - (plan.camera.width - 1) / 2) < EXACT
        assert abs(plan.camera.cy - (plan.camera.height - 1) / 2) < EXACT
        assert footprint(plan).all(), plan.view.id
        # one more pixel on each side, in width or in height, reaches outside the source data
        assert not footprint(grown(plan, 2, 0)).all() and not footprint(grown(plan, 0, 2)).all(), plan.view.id


def test_cover_holds_every_source_pixel(capture):
    for plan in plan_views(capture.views, ImageOptions(principal_point="center", border="cover")):
        W, H = plan.view.camera.size
        u, v = np.meshgrid(np.arange(0, W, 7.0), np.arange(0, H, 7.0))
        out = plan.src_to_out(np.column_stack([u.ravel(), v.ravel()]))
        assert np.all((out >= -0.5) & (out <= np.array(plan.camera.size) - 0.5)), plan.view.id
        assert not footprint(plan).all()  # the corners undistortion leaves empty are outside the footprint


def test_landscape_turns_portrait_views_exactly(capture):
    image = ImageOptions(principal_point="center", border="cover", orientation="landscape")
    plans = plan_views(capture.views, image)
    up = sum(-p.world_to_cam[1, :3] for p in plans)
    for plan in plans:
        assert plan.camera.width > plan.camera.height
        assert bool(plan.turn) == plan.view.camera.is_portrait
        if plan.turn:  # turned the way that leaves image-up nearest the capture's up
            assert -plan.world_to_cam[1, :3] @ up > 0
        # the output camera sees the mesh where the image stage puts the source pixel
        X = plan.view.centre + 3 * (plan.view.R.T @ np.array([0.01, -0.02, 1.0]))
        uv_src = plan.view.project(X[None])
        Xc = X @ plan.world_to_cam[:3, :3].T + plan.world_to_cam[:3, 3]
        assert np.abs(plan.camera.project(Xc[None]) - plan.src_to_out(uv_src)).max() < 1e-6


# ---- warnings ------------------------------------------------------------------------------------------


def colmap_warnings(capture, image: ImageOptions, k3: float | None = None) -> list[str]:
    views = capture.views
    if k3 is not None:
        views = [replace(v, camera=replace(v.camera, dist=[*v.camera.dist[:4], k3])) if v.camera.dist[4] else v
                 for v in views]
    return colmap.reader_warnings(pycolmap, plan_views(views, image), colmap.Options(image=image))


def test_colmap_warnings_appear_exactly_when_their_condition_holds(capture):
    keep_pp = colmap_warnings(capture, ImageOptions())
    assert len(keep_pp) == 1 and "3DGS ignores cx, cy: it would read 7 of 7 views up to" in keep_pp[0]
    plans = plan_views(capture.views, ImageOptions())
    worst = max(np.linalg.norm(p.camera.K[:2, 2] - (np.array(p.camera.size) - 1) / 2) for p in plans)
    assert f"up to {worst:.1f} px off" in keep_pp[0]
    centred = colmap_warnings(capture, ImageOptions(principal_point="center"))
    assert len(centred) == 1 and "the strip that centring uncovers has no source data and no mask" in centred[0]
    assert colmap_warnings(capture, ImageOptions(principal_point="center", border="crop")) == []
    kept = colmap_warnings(capture, ImageOptions(undistort=False))  # the sample's view 3 has k3 = 2.75
    assert len(kept) == 2 and "PINHOLE / SIMPLE_PINHOLE models only" in kept[0]
    assert kept[1].startswith("colmap: views [3] have a distortion coefficient up to 2.75, beyond COLMAP's "
                              "max_extra_param (1)") and "--Mapper.max_extra_param 3" in kept[1]
    assert len(colmap_warnings(capture, ImageOptions(undistort=False), k3=1.0)) == 1  # |k3| ≤ 1: COLMAP keeps it
    assert "max_extra_param 2" in colmap_warnings(capture, ImageOptions(undistort=False), k3=-1.5)[1]


def nerf_warnings(capture, **kwargs) -> list[str]:
    options = nerf.Options(**kwargs)
    options = replace(options, image=nerf_writer.effective_image_options(capture, options))
    plans = plan_views(capture.views, options.image)
    return nerf_writer.reader_warnings(options, plans, nerf_writer.assign_splits(len(plans), options.split or
                                                                                nerf_writer.default_split(options)))


def test_nerf_warnings_appear_exactly_when_their_condition_holds(capture):
    assert nerf_warnings(capture) == []
    for method in ("sphere", "cameras"):
        (line,) = nerf_warnings(capture, normalize=method)
        assert f"--normalize {method} with nerfstudio" in line and "use --normalize none" in line
    blender = {"variant": "blender", "image": ImageOptions(image_format="png")}
    assert not any("normalize" in w for w in nerf_warnings(capture, normalize="sphere", **blender))
    (k3,) = nerf_warnings(capture, image=ImageOptions(undistort=False))
    assert k3.startswith("nerf: views [3] have k3 ≠ 0") and "instant-ngp drops it" in k3
    (val,) = nerf_warnings(capture, **blender)
    assert "views [3] are in transforms_val.json, which 3DGS's Blender reader never reads" in val
    assert nerf_warnings(capture, target="3dgs", **blender) == []
    (val,) = nerf_warnings(capture, target="3dgs", split=(0.6, 0.2, 0.2), **blender)
    assert val.endswith("never reads")


# ---- end to end: the Blender layout ---------------------------------------------------------------------


def uncovered_pixels(plan) -> np.ndarray:
    """H×W bool: output pixels the image stage's remap blends with the border (no full source data),
    found by remapping a white image, independently of `ViewPlan.footprint`."""
    mx, my = plan.maps()
    decoded = (-(-plan.view.camera.height // plan.reduce), -(-plan.view.camera.width // plan.reduce))
    data = cv2.remap(np.full(decoded, 255, np.uint8), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return data < 255


def test_blender_default_is_landscape_lossless_and_masks_what_has_no_data(sample_tuple, capture, tmp_path, capsys):
    from fsconvert.cli import main

    out = tmp_path / "blender"
    assert main(["to-nerf", str(sample_tuple), "-o", str(out), "--variant", "blender", "-q", "-j", "1",
                 "--no-overlays"]) == 0  # the check, by the Blender reader's rules, passes
    text = capsys.readouterr().out
    assert "read by blender's rules" in text and "warning: nerf: views [3] are in transforms_val.json" in text
    options = from_dict(nerf.Options, read_manifest(out)["options"])
    plans = {p.view.id: p for p in plan_views(capture.views, options.image)}
    fovs = {json.loads((out / f"transforms_{s}.json").read_text())["camera_angle_x"] for s in SPLITS}
    assert len(fovs) == 1
    report = []
    for entry in read_manifest(out)["views"]:
        plan, rgba = plans[entry["id"]], np.asarray(Image.open(out / entry["name"]))
        assert rgba.shape == (plan.camera.height, plan.camera.width, 4) and plan.camera.width > plan.camera.height
        uncovered = uncovered_pixels(plan)
        outside_alpha = np.count_nonzero(uncovered & (rgba[..., 3] > 0)) / uncovered.size
        report.append((entry["id"], plan.turn, outside_alpha, np.count_nonzero(rgba[..., 3] == 0) / uncovered.size))
        assert outside_alpha <= 0.01, entry
    print("view, turn, uncovered outside alpha, transparent:", report)
    assert {turn for _, turn, _, _ in report} == {-1, 0, 1}  # both portrait views turned, landscape ones not

