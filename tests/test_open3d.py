"""Open3D exporter: exact trajectory round trips, depth against the mesh, TSDF fusion against the mesh.

Every reader here is Open3D's own (`o3d.io.read_pinhole_camera_trajectory`, `read_pinhole_camera_intrinsic`,
`read_image`, `read_triangle_mesh`); ground truth is the image stage's plan and the source mesh, ray-cast
with Open3D's RaycastingScene (independent of the pyrender renderer that made the depth maps).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

import exporters.open3d as ex
from exporters.open3d import camerafiles
from fsconvert import conventions as cv
from fsconvert.check import check_export, format_check
from fsconvert.cli import main
from fsconvert.errors import InputError
from fsconvert.export import export
from fsconvert.fuse import RGBDFrame, integrate
from fsconvert.imageplan import ImageOptions, ViewPlan, plan_views
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh
from fsconvert.model import Camera, Capture
from fsconvert.protocol import read_manifest
from fsconvert.threads import CoreBudget, second_core, share_cores

EXPORTS = {
    "scale1": ex.Options(fuse=True),
    "scale1/4-upright": ex.Options(image=ImageOptions(scale=0.25, upright=True)),
}
LOG_PRECISION = 5e-9
"""Half a unit in the 8th decimal, the .log writer's precision."""


@pytest.fixture(scope="module")
def capture(sample_tuple: Path) -> Capture:
    return load_capture(sample_tuple)


@pytest.fixture(scope="module")
def exports(capture: Capture, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("open3d")
    return {key: export(capture, ex, root / f"out{i}", opts, thresholds=None).out_dir
            for i, (key, opts) in enumerate(EXPORTS.items())}


@pytest.fixture(scope="module")
def mesh_scene(capture: Capture) -> tuple[o3d.t.geometry.RaycastingScene, float]:
    """Ray-casting scene of the source mesh, and the head size = its bounding-box diagonal."""
    mesh = load_mesh(capture.mesh)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices, o3d.core.float32), o3d.core.Tensor(mesh.faces, o3d.core.uint32))
    return scene, float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))


def _plans(capture: Capture, key: str) -> list[ViewPlan]:
    return plan_views(capture.views, EXPORTS[key].image)


# ---- cameras --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", EXPORTS)
def test_trajectory_json_reads_back_exactly(capture: Capture, exports: dict[str, Path], key: str) -> None:
    out, plans = exports[key], _plans(capture, key)
    views = ex.read(out)
    assert [v.name for v in views] == [v["name"] for v in read_manifest(out)["views"]]
    assert len(views) == len(plans) == 7
    assert [v.camera.size for v in views] == [p.camera.size for p in plans]
    k_err = max(np.abs(v.camera.K - p.camera.K).max() for v, p in zip(views, plans))
    e_err = max(np.abs(v.world_to_cam - p.world_to_cam).max() for v, p in zip(views, plans))
    assert k_err <= 1e-9 and e_err <= 1e-9  # measured: 0 and 0
    assert all(not v.camera.has_distortion for v in views)
    if key != "scale1":  # the 180°-rolled view really went through the upright rotation
        assert sum(p.rotated for p in plans) == 1

    # The file itself: column-major 4×4 world→camera and 3×3 K, numbers exact (17 significant digits).
    stored = json.loads((out / ex.TRAJECTORY_JSON).read_text())["parameters"]
    for entry, p in zip(stored, plans):
        assert entry["extrinsic"] == p.world_to_cam.flatten(order="F").tolist()
        assert entry["intrinsic"]["intrinsic_matrix"] == p.camera.K.flatten(order="F").tolist()
        assert (entry["intrinsic"]["width"], entry["intrinsic"]["height"]) == p.camera.size
    # Negative control: the row-major layout is a different file.
    assert stored[0]["extrinsic"] != plans[0].world_to_cam.flatten().tolist()


@pytest.mark.parametrize("key", EXPORTS)
def test_log_round_trip(capture: Capture, exports: dict[str, Path], key: str) -> None:
    out, plans = exports[key], _plans(capture, key)
    views = ex.read_log(out)
    # Open3D inverts the stored (rounded, so not exactly orthonormal) matrix with a general inverse: undo it alike.
    c2w_err = max(np.abs(np.linalg.inv(v.world_to_cam) - cv.w2c_to_c2w(p.world_to_cam)).max()
                  for v, p in zip(views, plans))
    assert c2w_err <= LOG_PRECISION + 1e-12  # measured ≈ 5e-9
    w2c_err = max(np.abs(v.world_to_cam - p.world_to_cam).max() for v, p in zip(views, plans))
    assert w2c_err <= 1e-6  # the inverse of 8-decimal numbers at |t| ≈ 25 units; measured ≈ 1e-7
    assert max(np.abs(v.camera.K - p.camera.K).max() for v, p in zip(views, plans)) <= 1e-9
    assert [v.camera.size for v in views] == [p.camera.size for p in plans]

    # The file itself: per frame "i i i+1" and the camera→world matrix, row-major.
    lines = (out / ex.TRAJECTORY_LOG).read_text().splitlines()
    assert len(lines) == 5 * len(plans)
    for i, p in enumerate(plans):
        assert lines[5 * i].split() == [str(i), str(i), str(i + 1)]
        rows = np.array([[float(x) for x in line.split()] for line in lines[5 * i + 1:5 * i + 5]])
        assert np.abs(rows - cv.w2c_to_c2w(p.world_to_cam)).max() <= LOG_PRECISION + 1e-12
    # Negative control: read from Python, the .log alone carries Open3D's default 640×480 intrinsics.
    default = o3d.io.read_pinhole_camera_trajectory(str(out / ex.TRAJECTORY_LOG)).parameters[0].intrinsic
    assert (default.width, default.height) == (640, 480)


def _open3d_files(cameras: list[Camera], world_to_cams: list[np.ndarray], folder: Path) -> dict[str, bytes]:
    """The camera files Open3D 0.19's own writers make of these cameras: the judge of `camerafiles`."""
    params = []
    for camera, w2c in zip(cameras, world_to_cams):
        p = o3d.camera.PinholeCameraParameters()
        p.intrinsic = o3d.camera.PinholeCameraIntrinsic(camera.width, camera.height, camera.K)
        p.extrinsic = w2c
        params.append(p)
    trajectory = o3d.camera.PinholeCameraTrajectory()
    trajectory.parameters = params
    for name in ("t.json", "t.log"):
        assert o3d.io.write_pinhole_camera_trajectory(str(folder / name), trajectory)
    assert o3d.io.write_pinhole_camera_intrinsic(str(folder / "i.json"), params[0].intrinsic)
    return {name: (folder / name).read_bytes() for name in ("t.json", "t.log", "i.json")}


def _our_files(cameras: list[Camera], world_to_cams: list[np.ndarray]) -> dict[str, bytes]:
    return {"t.json": camerafiles.trajectory_json(cameras, world_to_cams).encode(),
            "t.log": camerafiles.trajectory_log(world_to_cams).encode(),
            "i.json": camerafiles.intrinsic_json(cameras[0]).encode()}


CAMERA_KINDS = ("rigid", "round", "tiny", "general")
"""What `_random_cameras` makes (see its branches)."""


def _random_cameras(rng: np.random.Generator, kind: str, n: int) -> tuple[list[Camera], list[np.ndarray]]:
    cameras, world_to_cams = [], []
    for _ in range(n):
        w, h = (int(x) for x in rng.integers(1, 9000, 2))
        if kind == "rigid":  # real poses: a rotation and a translation of any size
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            w2c = np.eye(4)
            w2c[:3, :3], w2c[:3, 3] = q * np.sign(np.linalg.det(q)), rng.normal(size=3) * 10.0 ** rng.integers(-2, 4)
            K = np.array([[rng.uniform(100, 9000), 0, rng.uniform(0, w)], [0, rng.uniform(100, 9000), rng.uniform(0, h)],
                          [0, 0, 1]])
        elif kind == "round":  # short numbers: jsoncpp puts the arrays on one line
            w2c = np.eye(4)
            w2c[:3, 3] = rng.integers(-5, 5, 3)
            K = np.array([[float(rng.integers(1, 3000)), 0, float(rng.integers(0, 500))], [0, 1000.0, 0.5], [0, 0, 1]])
        elif kind == "tiny":  # inverses around 1e8: the log's 8 decimals print every digit of Eigen's result
            w2c = rng.normal(size=(4, 4)) * 1e-8
            K = np.array([[1e-300, -0.0, 1e21], [5e-324, 1e16, 123456789012345678.0], [-0.0, 0, 1]])
        else:  # general matrices of mixed magnitudes
            w2c = rng.normal(size=(4, 4)) * 10.0 ** rng.integers(-30, 30, size=(4, 4))
            K = rng.normal(size=(3, 3)) * 10.0 ** rng.integers(-6, 6, size=(3, 3))
        cameras.append(Camera(w, h, K))
        world_to_cams.append(w2c)
    return cameras, world_to_cams


@pytest.mark.parametrize("key", EXPORTS)
def test_camera_files_are_open3ds_own(capture: Capture, exports: dict[str, Path], key: str, tmp_path: Path) -> None:
    out, plans = exports[key], _plans(capture, key)
    theirs = _open3d_files([p.camera for p in plans], [p.world_to_cam for p in plans], tmp_path)
    assert (out / ex.TRAJECTORY_JSON).read_bytes() == theirs["t.json"]
    assert (out / ex.TRAJECTORY_LOG).read_bytes() == theirs["t.log"]
    assert b"-0.00000000" in theirs["t.log"]  # Eigen's inverse leaves signed zeros that a plain inverse need not
    stem = Path(ex.frame_names(out)[0]).stem
    assert (out / ex.INTRINSICS / f"{stem}.json").read_bytes() == theirs["i.json"]


@pytest.mark.parametrize("kind", CAMERA_KINDS)
def test_camera_writers_match_open3d_on_any_values(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(CAMERA_KINDS.index(kind))
    for n in (1, 2, 24, 25, 40):  # 25 parameters and more: jsoncpp's array rule switches on the count alone
        cameras, world_to_cams = _random_cameras(rng, kind, n)
        assert _our_files(cameras, world_to_cams) == _open3d_files(cameras, world_to_cams, tmp_path), (kind, n)
    big = np.stack(_random_cameras(rng, kind, 2000)[1])
    theirs = _open3d_files([Camera(1, 1, np.eye(3))] * len(big), list(big), tmp_path)["t.log"]
    assert camerafiles.trajectory_log(list(big)).encode() == theirs
    # Negative control: numpy's inverse prints other digits or signs somewhere in 2000 matrices.
    numpy_log = "".join(f"{i} {i} {i + 1}\n" + "".join(" ".join(f"{x:.8f}" for x in r) + "\n" for r in inv)
                        for i, inv in enumerate(np.linalg.inv(big))).encode()
    assert numpy_log != theirs


@pytest.mark.parametrize("key", EXPORTS)
def test_projection_check_passes(exports: dict[str, Path], key: str) -> None:
    report = check_export(exports[key], overlays=False)
    assert report.passed, format_check(report)
    assert len(report.views) == 7
    assert max(v.camera_max_px for v in report.views) <= 0.01  # measured ≈ 1e-13 px


# ---- depth ----------------------------------------------------------------------------------------


def _cast(scene: o3d.t.geometry.RaycastingScene, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance along unit `dirs` from `origin` to the first hit (inf for a miss)."""
    rays = np.hstack([np.broadcast_to(origin, dirs.shape), dirs]).astype(np.float32)
    return scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().astype(np.float64)


def _depth_errors(scene, vertices: np.ndarray, view, depth: np.ndarray, shift: float) -> tuple[np.ndarray, int]:
    """At the pixel of every vertex visible from `view`: |depth map − mesh z-depth| / z, the latter ray-cast
    through that pixel's centre (OpenCV convention + `shift`); and how many pixels disagree on coverage."""
    R, t = view.world_to_cam[:3, :3], view.world_to_cam[:3, 3]
    centre = cv.camera_centre(view.world_to_cam)
    to_vertex = vertices - centre
    dist = np.linalg.norm(to_vertex, axis=1)
    visible = _cast(scene, centre, to_vertex / dist[:, None]) >= dist * (1 - 1e-5)
    px = np.rint(view.camera.project(vertices[visible] @ R.T + t)).astype(int)
    w, h = view.camera.size
    px = px[(px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < w) & (px[:, 1] < h)]
    rays_cam = np.column_stack([px + shift, np.ones(len(px))]) @ np.linalg.inv(view.camera.K).T  # z = 1
    rays = rays_cam @ R
    norm = np.linalg.norm(rays, axis=1)
    z_mesh = _cast(scene, centre, rays / norm[:, None]) / norm
    z_map = depth[px[:, 1], px[:, 0]]
    both = np.isfinite(z_mesh) & (z_map > 0)
    disagree = int(np.sum(np.isfinite(z_mesh) != (z_map > 0)))
    return np.abs(z_map[both] - z_mesh[both]) / z_mesh[both], disagree


@pytest.mark.parametrize("key", EXPORTS)
def test_depth_is_mesh_z_depth(capture: Capture, exports: dict[str, Path], mesh_scene, key: str) -> None:
    out, (scene, _) = exports[key], mesh_scene
    scale = json.loads((out / ex.RGBD).read_text())["depth_scale"]
    vertices = load_mesh(capture.mesh).vertices
    worst, worst_shifted = 0.0, []
    for view in ex.read(out):
        raw = np.asarray(o3d.io.read_image(str(out / ex.DEPTH / f"{Path(view.name).stem}.png")))
        assert raw.dtype == np.uint16 and raw.shape == (view.camera.height, view.camera.width)
        depth = raw / scale
        # Quantisation: half a raw step is ≤ 1e-4 of the nearest depth.
        assert 0.5 / raw[raw > 0].min() <= ex.DEPTH_MAX_RELATIVE_ERROR
        rel, disagree = _depth_errors(scene, vertices, view, depth, 0.0)
        assert len(rel) > 3000 and disagree <= 2  # measured: 0–1 silhouette pixels of ~3500–4400
        worst = max(worst, float(rel.max()))
        shifted, disagree_shifted = _depth_errors(scene, vertices, view, depth, cv.PIXEL_CENTRE_SHIFT)
        worst_shifted.append((float(np.quantile(shifted, 0.99)), disagree_shifted))
    assert worst <= 1e-3  # the 0.1 % requirement; measured 2.6e-5 (scale 1) and 1.8e-4 (scale 1/4)
    # Negative control: rays through the corner-origin centres (+0.5 px) miss the depth map's geometry.
    assert all(p99 > 1e-3 and d > 2 for p99, d in worst_shifted)  # measured p99 ≥ 2.4e-3, 58–233 pixels


def test_depth_scale_fits_uint16() -> None:
    for max_depth in (27.42092, 0.5, 1234.5, 1e-3, 65535.0):
        s = ex.depth_scale(max_depth)
        assert s * max_depth <= ex.DEPTH_MAX_RAW
        assert s >= 0.99 * ex.DEPTH_MAX_RAW / max_depth
        assert float(f"{s:.3g}") == s
    assert ex.depth_scale(27.0) == 2420.0  # 65535 / 27 = 2427.2
    with pytest.raises(InputError, match="behind every camera"):
        ex.depth_scale(-1.0)


def _files(out: Path) -> dict[str, bytes]:
    """The format's files (not the manifest, nor the check that other tests ran in the fixture's folders)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parts[len(out.parts)] not in ("fsconvert", "check")}


def test_overlapped_depth_writes_the_serial_bytes(capture: Capture, exports: dict[str, Path], tmp_path: Path) -> None:
    # -j 2: depth maps rendered on this thread while a helper writes the colour images and cameras and the
    # other encodes the 16-bit PNGs (`threads.second_core`); -j 1: one after another, as the fixture's export ran.
    key = "scale1/4-upright"
    overlapped = export(capture, ex, tmp_path / "j2", EXPORTS[key], thresholds=None, workers=2).out_dir
    serial, found = _files(exports[key]), _files(overlapped)
    assert sorted(found) == sorted(serial) and len([n for n in found if n.startswith(ex.DEPTH)]) == 7
    assert [n for n in serial if found[n] != serial[n]] == []


def test_depth_overlaps_only_on_a_second_core() -> None:
    with second_core(1) as overlap:
        assert not overlap
    with second_core(2) as overlap:  # no core budget: the caller's -j
        assert overlap
    budget = CoreBudget(multiprocessing.get_context("spawn"), 1)  # a dataset run's, its one core held by this job
    budget.permits.acquire()
    share_cores(budget)
    try:
        with second_core(2) as overlap:
            assert not overlap  # no spare core: serial
        budget.permits.release()  # another job finished: one core spare
        with second_core(2) as overlap:
            assert overlap and not budget.permits.acquire(False)  # held while open ...
        assert budget.permits.acquire(False)  # ... and given back
    finally:
        share_cores(None)


def test_overlapped_export_stops_at_a_colour_error(sample_tuple: Path, tmp_path: Path) -> None:
    # A corrupt JPEG fails the colour thread while this one renders depth: its one-line error, nothing left.
    tuple_dir = shutil.copytree(sample_tuple, tmp_path / "tuple")
    path = tuple_dir / "3.jpg"
    data = bytearray(path.read_bytes())
    sector = np.random.default_rng(17).integers(0, 256, 4096, dtype=np.uint8).tobytes()  # a bad disk block
    data[len(data) // 2 : len(data) // 2 + len(sector)] = sector
    path.write_bytes(bytes(data))
    capture = load_capture(tuple_dir, mesh=load_capture(sample_tuple).mesh)
    with pytest.raises(InputError, match=r"3\.jpg.*view 3.*corrupt JPEG data"):
        export(capture, ex, tmp_path / "out", ex.Options(image=ImageOptions(scale=0.25)), thresholds=None, workers=2)
    assert not (tmp_path / "out").exists()


# ---- fusion ---------------------------------------------------------------------------------------


def _mean_distance(scene, mesh: o3d.geometry.TriangleMesh) -> float:
    points = np.asarray(mesh.vertices, dtype=np.float32)
    return float(scene.compute_distance(o3d.core.Tensor(points)).numpy().mean()) if len(points) else np.inf


def test_fusion_reproduces_the_mesh(exports: dict[str, Path], mesh_scene) -> None:
    out, (scene, head_size) = exports["scale1"], mesh_scene
    fused = o3d.io.read_triangle_mesh(str(out / ex.FUSED))
    assert len(fused.vertices) > 100_000 and fused.has_vertex_colors()
    # Head size = bounding-box diagonal of the source mesh (= 2 × the mesh_radius in rgbd.json).
    assert ex.read_rgbd_json(out)["mesh_radius"] == pytest.approx(head_size / 2, rel=1e-12)
    error = _mean_distance(scene, fused) / head_size
    assert error <= 0.005  # measured ≈ 1.1e-4

    # Negative control: the same frames with camera→world where Open3D wants world→camera.
    rgbd = ex.read_rgbd_json(out)
    frames = [
        RGBDFrame(out / v.name, out / ex.DEPTH / f"{Path(v.name).stem}.png", v.camera, cv.w2c_to_c2w(v.world_to_cam))
        for v in ex.read(out)
    ]
    # (4× coarser voxels keep it fast; at the export's voxel size the error is the same 4.3 head sizes.)
    wrong = integrate(frames, voxel_size=4 * rgbd["mesh_radius"] / ex.VOXELS_PER_RADIUS,
                      depth_scale=rgbd["depth_scale"], depth_trunc=rgbd["depth_trunc"])
    assert _mean_distance(scene, wrong) / head_size > 0.5  # measured ≈ 4.3 head sizes


# ---- errors ---------------------------------------------------------------------------------------


def test_refuses_what_open3d_cannot_hold(capture: Capture, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no lens distortion model"):
        ex.Options(image=ImageOptions(undistort=False))
    with pytest.raises(InputError, match="add --fuse"):
        ex.Options(voxel_size=0.01)
    with pytest.raises(InputError, match="must be positive"):
        ex.Options(fuse=True, voxel_size=0.0)
    no_mesh = Capture(capture.subject, capture.expression, capture.root, capture.views, mesh=None)
    with pytest.raises(InputError, match="needs the tuple.s mesh"):
        export(no_mesh, ex, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_read_validates_what_open3d_only_logs(exports: dict[str, Path], tmp_path: Path) -> None:
    out = shutil.copytree(exports["scale1/4-upright"], tmp_path / "copy")
    (out / ex.COLOR / "000003.jpg").unlink()
    with pytest.raises(InputError, match="read 7 camera.*6 colour images"):
        ex.read(out)
    out = shutil.copytree(exports["scale1/4-upright"], tmp_path / "broken")
    (out / ex.TRAJECTORY_JSON).write_text((out / ex.TRAJECTORY_JSON).read_text()[:500])
    with pytest.raises(InputError, match="read 0 camera"):
        ex.read(out)
    (out / ex.INTRINSICS / "000000.json").write_text("{}")
    with pytest.raises(InputError, match="no valid intrinsic"):
        ex.read_log(out)
    (out / ex.RGBD).write_text('{"depth_scale": 0, "depth_trunc": 1, "mesh_radius": 1}')
    with pytest.raises(InputError, match="depth_scale"):
        ex.read_rgbd_json(out)


def test_cli(sample_tuple: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:

    out = tmp_path / "cli"
    assert main(["to-open3d", str(sample_tuple), "-o", str(out), "--distortion", "keep", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no lens distortion model" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code = main(["to-open3d", str(sample_tuple), "-o", str(out), "--scale", "0.25", "--fuse", "--no-overlays",
                 "-q", "-j", "2"])
    assert code == 0, capsys.readouterr()
    assert (out / ex.FUSED).is_file() and len(ex.read(out)) == 7
