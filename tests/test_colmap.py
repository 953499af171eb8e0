"""COLMAP exporter on the synthetic sample: read-back cameras, observations, visibility, file layouts,
3D Gaussian Splatting's loader rules, COLMAP 3.8 and a classic read_write_model-style parser."""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pycolmap
import pytest
from helpers import format_files, rotation_to_quat_wxyz

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import colmap
from fsconvert import conventions as cv
from fsconvert.check import check_export, format_check
from fsconvert.cli import main
from fsconvert.errors import InputError
from fsconvert.export import export as export_to
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh, read_geometry
from fsconvert.model import Camera
from fsconvert.protocol import read_manifest

CASES = {
    "undistort": ImageOptions(),
    "center": ImageOptions(principal_point="center"),
    "keep": ImageOptions(undistort=False),
    "upright": ImageOptions(undistort=False, upright=True),  # the 180°-rolled view turned: K, R, p1 p2 follow
}
SCALES = (1.0, 0.25)
MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 4: ("OPENCV", 8),
          6: ("FULL_OPENCV", 12)}


def image_options(case: str, scale: float) -> ImageOptions:
    return replace(CASES[case], scale=None if scale == 1 else scale)


@pytest.fixture(scope="module")
def capture(sample_tuple: Path):
    return load_capture(sample_tuple)


@pytest.fixture(scope="module")
def export(capture, tmp_path_factory):
    """export(case, scale=1, **options) → an export folder, written once per module."""
    made: dict[tuple, Path] = {}

    def make(case: str, scale: float = 1.0, **kwargs) -> Path:
        key = (case, scale, tuple(sorted(kwargs.items())))
        if key not in made:
            out = tmp_path_factory.mktemp("colmap") / "out"
            export_to(capture, colmap, out, colmap.Options(image=image_options(case, scale), **kwargs), thresholds=None)
            made[key] = out
        return made[key]

    return make


# ---- a classic read_write_model-style parser (cameras / images / points3D only) ----------------------


def read_model(sparse: Path) -> tuple[dict, dict, dict]:
    """(cameras, images, points3D) by the layout of formats.md §1.2–1.3; binary first, like 3DGS."""
    if (sparse / "cameras.bin").is_file():
        return (_cameras_bin(sparse / "cameras.bin"), _images_bin(sparse / "images.bin"),
                _points_bin(sparse / "points3D.bin"))
    return (_cameras_txt(sparse / "cameras.txt"), _images_txt(sparse / "images.txt"),
            _points_txt(sparse / "points3D.txt"))


def _cameras_bin(path: Path) -> dict:
    data, out = path.read_bytes(), {}
    (n,), off = struct.unpack_from("<Q", data), 8
    for _ in range(n):
        cid, model, w, h = struct.unpack_from("<iiQQ", data, off)
        name, count = MODELS[model]
        params = struct.unpack_from(f"<{count}d", data, off + 24)
        off += 24 + 8 * count
        out[cid] = SimpleNamespace(model=name, width=w, height=h, params=np.array(params))
    assert off == len(data)
    return out


def _images_bin(path: Path) -> dict:
    data, out = path.read_bytes(), {}
    (n,), off = struct.unpack_from("<Q", data), 8
    for _ in range(n):
        iid, *qt, cid = struct.unpack_from("<I7dI", data, off)
        end = data.index(b"\0", off + 64)
        name = data[off + 64:end].decode()
        (npts,) = struct.unpack_from("<Q", data, end + 1)
        pts = np.frombuffer(data, np.dtype([("xy", "<f8", 2), ("id", "<i8")]), npts, end + 9)
        off = end + 9 + 24 * npts
        out[iid] = SimpleNamespace(qvec=np.array(qt[:4]), tvec=np.array(qt[4:]), camera_id=cid, name=name,
                                   xys=pts["xy"].copy(), point3D_ids=pts["id"].copy())
    assert off == len(data)
    return out


def _points_bin(path: Path) -> dict:
    data, out = path.read_bytes(), {}
    (n,), off = struct.unpack_from("<Q", data), 8
    for _ in range(n):
        pid, x, y, z, r, g, b, err, tlen = struct.unpack_from("<QdddBBBdQ", data, off)
        track = np.frombuffer(data, "<u4", 2 * tlen, off + 51).reshape(-1, 2)
        off += 51 + 8 * tlen
        out[pid] = SimpleNamespace(xyz=np.array([x, y, z]), rgb=np.array([r, g, b]), error=err, track=track)
    assert off == len(data)
    return out


def _data_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _cameras_txt(path: Path) -> dict:
    out = {}
    for line in _data_lines(path):
        cid, model, w, h, *params = line.split()
        out[int(cid)] = SimpleNamespace(model=model, width=int(w), height=int(h), params=np.array(params, float))
    return out


def _images_txt(path: Path) -> dict:
    out, lines = {}, iter(path.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        iid, *qt, cid, name = line.split()
        pts = np.array(next(lines).split(), float).reshape(-1, 3)
        out[int(iid)] = SimpleNamespace(qvec=np.array(qt[:4], float), tvec=np.array(qt[4:], float), camera_id=int(cid),
                                        name=name, xys=pts[:, :2], point3D_ids=pts[:, 2].astype(np.int64))
    return out


def _points_txt(path: Path) -> dict:
    out = {}
    for line in _data_lines(path):
        e = line.split()
        out[int(e[0])] = SimpleNamespace(xyz=np.array(e[1:4], float), rgb=np.array(e[4:7], int), error=float(e[7]),
                                         track=np.array(e[8:], np.int64).reshape(-1, 2))
    return out


def read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """(vertex property lines, structured array) of a binary little-endian PLY."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    (count,) = [int(ln.split()[2]) for ln in header if ln.startswith("element vertex")]
    props = [ln for ln in header if ln.startswith("property")]
    types = {"float": "<f4", "uchar": "u1"}
    dtype = np.dtype([(ln.split()[2], types[ln.split()[1]]) for ln in props])
    assert len(data) - end == count * dtype.itemsize
    return props, np.frombuffer(data, dtype, count, end)


# ---- 3D Gaussian Splatting's COLMAP loader rules (formats.md §2.5) ---------------------------------


def gs_load(root: Path, center: bool) -> list[SimpleNamespace]:
    """What graphdeco-inria's reader does with `root`, as assertions: PINHOLE/SIMPLE_PINHOLE only,
    FoV from fx/fy, principal point centred when asked, images/<basename>, points3D.ply fields."""
    cameras, images, _ = read_model(root / "sparse" / "0")
    out = []
    for image in sorted(images.values(), key=lambda im: im.name):
        cam = cameras[image.camera_id]
        assert cam.model in ("PINHOLE", "SIMPLE_PINHOLE"), (
            "Colmap camera model not handled: only undistorted datasets (PINHOLE or SIMPLE_PINHOLE cameras) supported!")
        fx, fy = (cam.params[0],) * 2 if cam.model == "SIMPLE_PINHOLE" else cam.params[:2]
        cx, cy = cam.params[-2:]
        if center:
            assert abs(cx - cam.width / 2) <= 1e-6 and abs(cy - cam.height / 2) <= 1e-6, (image.name, cx, cy)
        pixels = cv2.imread(str(root / "images" / Path(image.name).name))
        assert pixels is not None and pixels.shape[:2] == (cam.height, cam.width)
        out.append(SimpleNamespace(name=image.name, fov_x=2 * math.atan(cam.width / (2 * fx)),
                                   fov_y=2 * math.atan(cam.height / (2 * fy))))
    props, vertex = read_ply(root / "sparse" / "0" / "points3D.ply")
    assert [p.split()[2] for p in props] == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]
    assert len(vertex) >= 1
    return out


# ---- read-back cameras and the projection check -----------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("case", CASES)
def test_read_back_equals_plan_cameras(export, capture, case, scale):
    out = export(case, scale)
    plans = plan_views(capture.views, image_options(case, scale))
    views = colmap.read(out)
    assert [v.name for v in views] == [v["name"] for v in read_manifest(out)["views"]]
    assert [v.name for v in views] == [f"images/{p.view.id:03d}.jpg" for p in plans]
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    for plan, view, image_id in zip(plans, views, sorted(rec.images), strict=True):
        assert view.camera.size == plan.camera.size
        assert np.abs(view.camera.K - plan.camera.K).max() <= 1e-9
        assert np.abs(view.camera.dist - plan.camera.dist).max() <= 1e-9
        assert np.abs(view.world_to_cam - plan.world_to_cam).max() <= 1e-9
        model = rec.cameras[rec.images[image_id].camera_id].model.name
        k3 = plan.view.camera.dist[4]
        assert model == ("PINHOLE" if CASES[case].undistort else "FULL_OPENCV" if k3 else "OPENCV")
        assert (out / view.name).is_file()
    if not CASES[case].undistort:  # both lens models occur, and the k3 view kept its k3
        models = {c.model.name for c in rec.cameras.values()}
        assert models == {"OPENCV", "FULL_OPENCV"}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("case", CASES)
def test_projection_check_passes(export, case, scale):
    report = check_export(export(case, scale))
    assert report.passed, format_check(report)
    assert max(v.camera_max_px for v in report.views) <= 0.01


def test_files_hold_full_precision_poses_and_intrinsics(export, capture):
    out = export("keep", 1.0, text=True)
    plans = plan_views(capture.views, CASES["keep"])
    cameras, images, _ = read_model(out / "sparse" / "0")
    for i, plan in enumerate(plans, start=1):
        image, cam = images[i], cameras[images[i].camera_id]
        q = rotation_to_quat_wxyz(plan.world_to_cam[:3, :3])
        assert min(np.abs(image.qvec - q).max(), np.abs(image.qvec + q).max()) <= 1e-15
        assert abs(np.linalg.norm(image.qvec) - 1) <= 1e-15
        assert np.array_equal(image.tvec, plan.world_to_cam[:3, 3])  # exact: 17 significant digits
        K = cv.K_to_corner_origin(plan.camera.K)
        assert np.array_equal(cam.params[:4], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
        assert np.array_equal(cam.params[4:9], plan.camera.dist[: len(cam.params[4:9])])
        assert not cam.params[9:].any()


# ---- observations -----------------------------------------------------------------------------------


def track_observations(rec: pycolmap.Reconstruction) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (image_id, point3D ids, their xyz, the stored POINTS2D xy), gathered from the tracks."""
    per_image: dict[int, list[tuple[int, int]]] = {}
    for pid, point in rec.points3D.items():
        for el in point.track.elements:
            per_image.setdefault(el.image_id, []).append((pid, el.point2D_idx))
    out = []
    for image_id, pairs in sorted(per_image.items()):
        keypoints = np.array([p.xy for p in rec.images[image_id].points2D])
        pids, idx = (np.array(a) for a in zip(*pairs))
        out.append((image_id, pids, np.array([rec.points3D[p].xyz for p in pids]), keypoints[idx]))
    return out


def observation_errors(rec: pycolmap.Reconstruction, cx_shift: float = 0.0) -> np.ndarray:
    """|projection through pycolmap's camera model − stored POINTS2D| for every track element."""
    errors = []
    for image_id, _, xyz, xy in track_observations(rec):
        image = rec.images[image_id]
        camera = rec.cameras[image.camera_id]
        if cx_shift:
            camera = pycolmap.Camera(camera_id=camera.camera_id, model=camera.model, width=camera.width,
                                     height=camera.height, params=camera.params)
            camera.params[2:4] += cx_shift
        errors.append(np.linalg.norm(camera.img_from_cam(image.cam_from_world() * xyz) - xy, axis=1))
    return np.concatenate(errors)


@pytest.mark.parametrize(("case", "scale"), [("undistort", 0.25), ("keep", 1.0), ("center", 1.0)])
def test_observations_reproject_through_pycolmap(export, case, scale):
    rec = pycolmap.Reconstruction(export(case, scale) / "sparse" / "0")
    err = observation_errors(rec)
    assert len(err) > 10000
    assert err.mean() <= 0.05 and err.max() <= 1e-6
    # negative control: the same cameras without the +0.5 pixel-centre shift miss by √0.5 px
    wrong = observation_errors(rec, cx_shift=-cv.PIXEL_CENTRE_SHIFT)
    assert wrong.mean() > 0.05 and abs(wrong.mean() - math.sqrt(0.5)) < 1e-6


@pytest.mark.parametrize(("case", "scale"), [("undistort", 1.0), ("keep", 0.25), ("upright", 1.0)])
def test_observations_follow_the_source_cameras(export, capture, case, scale):
    """Each observation is the source camera's projection carried through the image stage."""
    out = export(case, scale)
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    plans = plan_views(capture.views, image_options(case, scale))
    worst = 0.0
    for plan, image_id in zip(plans, sorted(rec.images)):
        image = rec.images[image_id]
        pts = [(p.xy, rec.points3D[p.point3D_id].xyz) for p in image.points2D if p.has_point3D()]
        xy, xyz = (np.array(a) for a in zip(*pts))
        expected = plan.src_to_out(plan.view.project(xyz)) + cv.PIXEL_CENTRE_SHIFT
        worst = max(worst, float(np.abs(xy - expected).max()))
    assert worst <= 1e-6


def test_observed_points_are_not_occluded(export, capture):
    """Cast a ray (open3d, independent of the renderer) from each camera to each observed point: the
    first hit is the point itself, within the depth tolerance; a loose tolerance lets occluded points in."""
    import open3d as o3d

    mesh = load_mesh(capture.mesh)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)),
                        o3d.core.Tensor(mesh.faces.astype(np.uint32)))

    def relative_gaps(out: Path) -> np.ndarray:
        rec = pycolmap.Reconstruction(out / "sparse" / "0")
        rays, dist = [], []
        for point in rec.points3D.values():
            for el in point.track.elements:
                centre = rec.images[el.image_id].projection_center()
                d = point.xyz - centre
                rays.append(np.r_[centre, d / np.linalg.norm(d)])
                dist.append(np.linalg.norm(d))
        hit = scene.cast_rays(o3d.core.Tensor(np.array(rays, np.float32)))["t_hit"].numpy()
        return np.abs(hit - np.array(dist)) / np.array(dist)

    tol = colmap.Options().depth_tolerance
    good = relative_gaps(export("undistort", 1.0))
    assert np.median(good) <= 1e-6 and good.max() <= tol
    assert (good > 1e-5).mean() <= 1e-4
    loose = relative_gaps(export("undistort", 1.0, depth_tolerance=colmap.MAX_DEPTH_TOLERANCE))
    assert loose.max() > 4 * tol and (loose > 1e-5).mean() > 10 * (good > 1e-5).mean()


def _track_spread(out: Path, shift: tuple[float, float]) -> tuple[float, np.ndarray]:
    """Mean absolute deviation of a track's pixel colours from their mean, over all points, with every
    observation moved by `shift`; and the per-point mean RGB (COLMAP pixel i spans [i, i + 1))."""
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    order = {pid: k for k, pid in enumerate(sorted(rec.points3D))}
    points, colours = [], []
    for image_id, pids, _, xy in track_observations(rec):
        img = cv2.imread(str(out / "images" / rec.images[image_id].name))[..., ::-1].astype(float)
        x, y = np.floor(xy + shift).astype(int).T
        colours.append(img[np.clip(y, 0, img.shape[0] - 1), np.clip(x, 0, img.shape[1] - 1)])
        points.append([order[p] for p in pids])
    points, colours = np.concatenate(points), np.concatenate(colours)
    count = np.bincount(points, minlength=len(order))[:, None]
    means = np.stack([np.bincount(points, colours[:, c], len(order)) for c in range(3)], axis=1) / count
    deviation = np.abs(colours - means[points]).mean(axis=1)
    return float(np.mean(np.bincount(points, deviation, len(order)) / count[:, 0])), means


@pytest.mark.parametrize("case", ["undistort", "keep"])
def test_tracks_are_photo_consistent(export, case):
    """Observations land on the same texture in every image: moving them by a pixel makes tracks less
    consistent. In 'image' colour mode the point colour is the mean of exactly those pixels."""
    out = export(case, 1.0, point_colors="image")
    exact, means = _track_spread(out, (0.0, 0.0))
    shifted = [_track_spread(out, s)[0] for s in ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))]
    assert exact < min(shifted) and exact <= 0.8 * max(shifted)
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    colours = np.array([rec.points3D[p].color for p in sorted(rec.points3D)], float)
    assert np.abs(colours - np.rint(means)).max() == 0


@pytest.mark.parametrize("point_colors", ["mesh", "image"])
def test_points_beside_the_images_are_the_serial_bytes(export, capture, tmp_path, point_colors):
    # -j 2: points3D are sampled and tested for visibility on a second thread while the images are made (image
    # colours after them); the fixture's export ran at -j 1, one after the other
    options = colmap.Options(image=image_options("undistort", 0.25), point_colors=point_colors)
    overlapped = export_to(capture, colmap, tmp_path / "j2", options, thresholds=None, workers=2).out_dir
    serial = export("undistort", 0.25, point_colors=point_colors)
    files = {p.relative_to(serial).as_posix() for p in serial.rglob("*") if p.is_file() and "fsconvert" not in p.parts}
    assert {"sparse/0/points3D.bin", "sparse/0/points3D.ply"} <= files
    assert [f for f in sorted(files) if (overlapped / f).read_bytes() != (serial / f).read_bytes()] == []


def test_silhouettes_and_points_beside_the_images_are_the_serial_bytes(capture, tmp_path):
    # -j 2 with alpha "subject": the silhouettes render ahead of the image lanes and points3D beside them, two
    # threads besides the lanes; -j 1 renders every silhouette first, then the images, then points3D
    options = colmap.Options(image=replace(image_options("undistort", 0.25), alpha="subject", image_format="png"))
    outs = [export_to(capture, colmap, tmp_path / f"j{j}", options, thresholds=None, workers=j).out_dir for j in (1, 2)]
    serial, overlapped = (format_files(out) for out in outs)
    assert sum(name.endswith(".png") for name in serial) == 7 and "sparse/0/points3D.bin" in serial
    assert sorted(overlapped) == sorted(serial) and [n for n in serial if overlapped[n] != serial[n]] == []


# ---- files, readers and third-party tools ----------------------------------------------------------


def test_text_layout_and_text_equals_binary(export, capture):
    text, binary = export("keep", 1.0, text=True), export("keep", 1.0)
    sparse = text / "sparse" / "0"
    assert sorted(p.name for p in sparse.iterdir()) == ["cameras.txt", "images.txt", "points3D.ply", "points3D.txt"]
    assert sorted(p.name for p in (binary / "sparse" / "0").iterdir()) == [
        "cameras.bin", "images.bin", "points3D.bin", "points3D.ply"]
    raw = (sparse / "images.txt").read_text()
    assert raw.endswith("\n")
    records = [ln for ln in raw.split("\n")[:-1] if not ln.startswith("#")]
    assert len(records) == 2 * len(capture.views)
    for header, keypoints in zip(records[::2], records[1::2]):
        fields = header.split()
        assert len(fields) == 10 and " " not in fields[9] and re.fullmatch(r"\d{3}\.jpg", fields[9])
        assert len(keypoints.split()) % 3 == 0 and len(keypoints.split()) > 0
    # the classic parser and pycolmap see the same model in both encodings
    ct, it, pt = read_model(sparse)
    cb, ib, pb = read_model(binary / "sparse" / "0")
    assert ct.keys() == cb.keys() and it.keys() == ib.keys() and pt.keys() == pb.keys()
    for i in cb:
        assert ct[i].model == cb[i].model and np.array_equal(ct[i].params, cb[i].params)
    for i in ib:
        assert it[i].name == ib[i].name and np.array_equal(it[i].qvec, ib[i].qvec)
        assert np.array_equal(it[i].xys, ib[i].xys) and np.array_equal(it[i].point3D_ids, ib[i].point3D_ids)
    for i in pb:
        assert np.array_equal(pt[i].xyz, pb[i].xyz) and np.array_equal(pt[i].track, pb[i].track)
        assert np.array_equal(pt[i].rgb, pb[i].rgb) and pb[i].error <= 1e-6
    rt, rb = pycolmap.Reconstruction(sparse), pycolmap.Reconstruction(binary / "sparse" / "0")
    n = (len(capture.views), len(pb))
    assert (rt.num_reg_images(), rt.num_points3D()) == (rb.num_reg_images(), rb.num_points3D()) == n
    # every track element points at a keypoint that points back at the point
    for pid, point in pb.items():
        for image_id, idx in point.track:
            assert ib[image_id].point3D_ids[idx] == pid


@pytest.mark.parametrize("text", [False, True])
def test_colmap_3_8_model_analyzer(export, capture, text):
    if shutil.which("colmap") is None:
        pytest.skip("the colmap binary (Debian colmap 3.8) is not installed")
    sparse = export("keep", 1.0, text=text) / "sparse" / "0"
    run = subprocess.run(["colmap", "model_analyzer", "--path", str(sparse)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout + run.stderr
    stats = {k: float(v) for k, v in re.findall(r"^(?:I\S+ \S+ +\d+ \S+\] )?([A-Za-z ]+): ([\d.]+)", out, re.M)}
    rec = pycolmap.Reconstruction(sparse)
    assert stats["Cameras"] == stats["Images"] == stats["Registered images"] == rec.num_reg_images()
    assert rec.num_reg_images() == len(capture.views)
    assert stats["Points"] == rec.num_points3D() > 0
    assert stats["Observations"] == rec.compute_num_observations()
    assert stats["Mean reprojection error"] <= 0.01


@pytest.mark.parametrize("scale", SCALES)
def test_3dgs_loader_accepts_centred_export(export, capture, scale):
    loaded = gs_load(export("center", scale), center=True)
    plans = plan_views(capture.views, image_options("center", scale))
    assert len(loaded) == len(plans)
    for plan, cam in zip(plans, loaded):
        assert abs(cam.fov_x - 2 * math.atan(plan.camera.width / (2 * plan.camera.fx))) <= 1e-12
        assert abs(cam.fov_y - 2 * math.atan(plan.camera.height / (2 * plan.camera.fy))) <= 1e-12


def test_3dgs_loader_rejects_distorted_and_off_centre_exports(export):
    """Negative controls: the in-test loader does fail on what 3DGS cannot use."""
    with pytest.raises(AssertionError, match="camera model not handled"):
        gs_load(export("keep", 1.0), center=False)
    gs_load(export("undistort", 1.0), center=False)
    with pytest.raises(AssertionError):
        gs_load(export("undistort", 1.0), center=True)


def test_points_ply_matches_points3D(export, capture):
    out = export("undistort", 1.0)
    props, vertex = read_ply(out / "sparse" / "0" / "points3D.ply")
    assert props == [f"property float {n}" for n in ("x", "y", "z", "nx", "ny", "nz")] + [
        f"property uchar {n}" for n in ("red", "green", "blue")]
    _, _, points = read_model(out / "sparse" / "0")
    order = sorted(points)
    xyz = np.array([points[p].xyz for p in order])
    assert len(vertex) == len(points) > 0
    assert np.abs(np.column_stack([vertex["x"], vertex["y"], vertex["z"]]) - xyz).max() <= 1e-6 * np.abs(xyz).max()
    assert np.array_equal(np.column_stack([vertex["red"], vertex["green"], vertex["blue"]]),
                          [points[p].rgb for p in order])
    normals = np.column_stack([vertex["nx"], vertex["ny"], vertex["nz"]]).astype(float)
    assert np.abs(np.linalg.norm(normals, axis=1) - 1).max() <= 1e-6
    # every observing camera is in front of the surface: n · (C − X) > 0
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    facing = [normals[k] @ (rec.images[int(i)].projection_center() - xyz[k])
              for k, p in enumerate(order) for i, _ in points[p].track]
    assert min(facing) > 0
    # the surviving surface samples, with the mesh's face normals and interpolated vertex colours (default)
    all_xyz, all_normals, all_rgb = colmap.sample_surface(read_geometry(capture.mesh, colors=True), 20000)
    where = {tuple(p): k for k, p in enumerate(all_xyz)}
    index = np.array([where[tuple(p)] for p in xyz])
    assert np.abs(normals - all_normals[index]).max() <= 1e-6
    assert np.array_equal(all_rgb[index], [points[p].rgb for p in order])


def test_inward_mesh_winding_gives_outward_normals(export, capture, tmp_path):
    """The views vote on the normals' orientation: a mesh with reversed faces (inward normals) keeps
    its visible points, and points3D.ply still gets normals facing the cameras."""
    mesh = load_mesh(capture.mesh)
    mesh.invert()
    flipped = tmp_path / "flipped.ply"
    flipped.write_bytes(mesh.export(file_type="ply"))
    assert load_mesh(flipped).volume < 0
    out = export_to(replace(capture, mesh=flipped), colmap, tmp_path / "out",
                 colmap.Options(image=image_options("undistort", 0.25)), thresholds=None).out_dir
    _, _, points = read_model(out / "sparse" / "0")
    _, vertex = read_ply(out / "sparse" / "0" / "points3D.ply")
    normals = np.column_stack([vertex["nx"], vertex["ny"], vertex["nz"]]).astype(float)
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    facing = [normals[k] @ (rec.images[int(i)].projection_center() - points[p].xyz)
              for k, p in enumerate(sorted(points)) for i, _ in points[p].track]
    assert min(facing) > 0
    reference = pycolmap.Reconstruction(export("undistort", 0.25) / "sparse" / "0").num_points3D()
    assert abs(len(points) - reference) <= 0.03 * reference


def test_manifest_reports_dropped_points(export):
    out = export("undistort", 1.0)
    stats = read_manifest(out)["points3D"]
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    assert stats["sampled"] == 20000 and stats["kept"] == rec.num_points3D()
    assert stats["dropped"] == 20000 - stats["kept"] > 0  # the back of the head is seen by no camera
    assert min(len(p.track.elements) for p in rec.points3D.values()) >= 2


def test_deterministic(export, capture, tmp_path):
    first = export("undistort", 0.25)
    export_to(capture, colmap, tmp_path / "again", colmap.Options(image=image_options("undistort", 0.25)),
              thresholds=None)
    for name in ("cameras.bin", "images.bin", "points3D.bin", "points3D.ply"):
        assert (first / "sparse/0" / name).read_bytes() == (tmp_path / "again/sparse/0" / name).read_bytes()


def test_without_points_and_without_mesh(capture, tmp_path):
    no_mesh = replace(capture, mesh=None)
    with pytest.raises(InputError, match="--points 0"):
        export_to(no_mesh, colmap, tmp_path / "a", colmap.Options(image=CASES["keep"]))
    assert not (tmp_path / "a").exists()
    out = export_to(no_mesh, colmap, tmp_path / "b", colmap.Options(image=CASES["keep"], points=0, text=True),
                 thresholds=None).out_dir
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    assert (rec.num_reg_images(), rec.num_points3D()) == (len(capture.views), 0)
    assert not (out / "sparse/0/points3D.ply").exists()
    images_txt = (out / "sparse/0/images.txt").read_text().split("\n")
    data = [ln for ln in images_txt[:-1] if not ln.startswith("#")]
    # an empty keypoint line after every image header, the last one included
    assert len(data) == 2 * len(capture.views) and all(ln == "" for ln in data[1::2])


# ---- errors -----------------------------------------------------------------------------------------


def test_unsupported_pycolmap_is_one_line_error():
    old = SimpleNamespace(__version__="3.11.1", Reconstruction=pycolmap.Reconstruction)
    with pytest.raises(InputError, match=r"^pycolmap 3\.11\.1 found; .* needs pycolmap ≥ 4\.0 \(Reconstruction"):
        colmap.require_pycolmap(write=True, module=old)
    no_api = SimpleNamespace(__version__="3.13.0", Reconstruction=type("Reconstruction", (), {}))
    with pytest.raises(InputError, match=r"^pycolmap 3\.13\.0 found; .*add_camera_with_trivial_rig"):
        colmap.require_pycolmap(write=True, module=no_api)
    assert colmap.require_pycolmap(write=False, module=no_api) is no_api  # reading needs 3.12 only
    assert colmap.require_pycolmap(write=True) is pycolmap


def _model_with(tmp_path: Path, model: str, params: list[float]) -> Path:
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model=model, width=64, height=48, params=params))
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.jpg", camera_id=1, image_id=1), pycolmap.Rigid3d())
    (tmp_path / "sparse/0").mkdir(parents=True)
    rec.write_text(str(tmp_path / "sparse/0"))
    return tmp_path


@pytest.mark.parametrize(("model", "params", "message"), [
    ("FULL_OPENCV", [50, 50, 32, 24, 0.1, 0, 0, 0, 0.2, 0.01, 0, 0], "k4..k6"),
    ("OPENCV_FISHEYE", [50, 50, 32, 24, 0.1, 0, 0, 0], "OPENCV_FISHEYE cannot be represented"),
])
def test_read_refuses_unrepresentable_models(tmp_path, model, params, message):
    with pytest.raises(InputError, match=message):
        colmap.read(_model_with(tmp_path, model, params))


@pytest.mark.parametrize(("model", "params"), [
    ("SIMPLE_RADIAL", [50.0, 32.5, 24.25, 0.1]),
    ("RADIAL", [50.0, 32.5, 24.25, 0.1, -0.05]),
    ("OPENCV", [50.0, 51.0, 32.5, 24.25, 0.1, -0.05, 0.001, -0.002]),
    ("FULL_OPENCV", [50.0, 51.0, 32.5, 24.25, 0.1, -0.05, 0.001, -0.002, 0.3, 0, 0, 0]),
])
def test_read_converts_representable_models(tmp_path, model, params):
    """The internal camera projects like pycolmap's (up to the pixel-centre shift)."""
    (view,) = colmap.read(_model_with(tmp_path, model, params))
    X = np.random.default_rng(0).uniform([-0.4, -0.3, 1.0], [0.4, 0.3, 2.0], (50, 3))
    camera = pycolmap.Reconstruction(tmp_path / "sparse/0").cameras[1]
    shifted = Camera(64, 48, cv.K_to_corner_origin(view.camera.K), view.camera.dist)
    assert np.abs(shifted.project(X) - camera.img_from_cam(X)).max() <= 1e-9
    assert view.name == "images/a.jpg"


def test_bad_options_and_missing_model(tmp_path):
    for kwargs in ({"points": -1}, {"point_colors": "texture"}, {"depth_tolerance": 0.0},
                   {"depth_tolerance": 2 * colmap.MAX_DEPTH_TOLERANCE}):
        with pytest.raises(InputError):
            colmap.Options(**kwargs)
    with pytest.raises(InputError, match=r"no COLMAP model folder sparse/0"):
        colmap.read(tmp_path)
    sparse = tmp_path / "sparse" / "0"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text("1 PINHOLE 64 48 50\n")  # 1 of 4 parameters
    (sparse / "images.txt").write_text("")
    (sparse / "points3D.txt").write_text("")
    with pytest.raises(InputError, match=r"not a readable COLMAP model: .*VerifyParams"):
        colmap.read(tmp_path)
    for name in ("cameras.bin", "images.bin", "points3D.bin"):  # COLMAP itself spends minutes on these
        (sparse / name).write_bytes(b"\x01")
    with pytest.raises(InputError, match=r"cameras.bin: truncated or corrupt"):
        colmap.read(tmp_path)


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin"])
def test_read_refuses_truncated_binary_model(export, tmp_path, name):
    out = tmp_path / "copy"
    shutil.copytree(export("undistort", 0.25), out)
    colmap.read(out)
    path = out / "sparse/0" / name
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match=rf"{name}: truncated or corrupt"):
        colmap.read(out)


def test_cli_to_colmap(sample_tuple, capture, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["to-colmap", str(sample_tuple), "-o", str(out), "--text", "--points", "2000",
                 "--principal-point", "center", "--scale", "0.25", "--image-format", "png", "-q", "-j", "2"])
    assert code == 0, capsys.readouterr()
    assert (out / "sparse/0/images.txt").is_file() and (out / "sparse/0/points3D.ply").is_file()
    assert sorted(p.suffix for p in (out / "images").iterdir()) == [".png"] * len(capture.views)
    manifest = json.loads((out / "fsconvert/manifest.json").read_text())
    assert manifest["options"]["text"] is True and manifest["points3D"]["sampled"] == 2000
    gs_load(out, center=True)
