"""COLMAP workspace: `images/<name>` + `sparse/0/{cameras,images,points3D}.{bin|txt}` + `points3D.ply`.

One COLMAP camera per view (corner-origin principal point); PINHOLE after undistortion, OPENCV or
FULL_OPENCV (k3 ≠ 0) when the lens model is kept. points3D are mesh surface samples with real
tracks: each point is observed by the views whose rendered depth agrees with it, at its projection
through the full output camera. The model is built with pycolmap ≥ 4.0 and written as the legacy
three files (no rigs/frames: every COLMAP reader since 3.x, and read_write_model-style parsers, load
those and any ≥ 3.12 reader recreates the same trivial rigs and frames). `points3D.ply` beside them
(x y z nx ny nz red green blue) initialises 3D Gaussian Splatting.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import trimesh
from tqdm import tqdm

from fsconvert import conventions as cv
from fsconvert.errors import InputError
from fsconvert.export import ExportedView, staging, write_images, write_manifest
from fsconvert.imagestage import ImageOptions, ViewPlan, plan_views, read_image
from fsconvert.mesh import load_mesh, vertex_colors
from fsconvert.model import Camera, Capture

if TYPE_CHECKING:
    from fsconvert.render import Renderer

NAME = "colmap"
SUMMARY = "COLMAP workspace (images/ + sparse/0 cameras, images, points3D with tracks; 3DGS-ready)"

IMAGES = Path("images")
SPARSE = Path("sparse") / "0"
PLY = "points3D.ply"
MIN_PYCOLMAP_READ = (3, 12)
"""`Image.cam_from_world()` became a method (poses on frames) in 3.12."""
WRITE_API = ("add_camera_with_trivial_rig", "add_image_with_trivial_frame")
"""Reconstruction methods added in pycolmap 4.0 that `write` builds the model with."""
SAMPLE_SEED = 0
MAX_DEPTH_TOLERANCE = 0.05
"""Looser depth tests let hidden surfaces in (and could out-vote the visible ones on normal orientation)."""
_VISIBILITY_MAX_SIDE = 480
"""Long side of the depth maps the visibility of points3D is tested on (observations stay exact)."""
_BORDER_MARGIN_PX = 2
_ROUND_TRIP_TOL_PX = 0.01
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
_PLY_DTYPE = np.dtype([(n, "<f4") for n in ("x", "y", "z", "nx", "ny", "nz")]
                      + [(n, "u1") for n in ("red", "green", "blue")])


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    text: bool = False
    """Write the .txt model instead of the (default) .bin one."""
    points: int = 20000
    """Mesh surface samples to triangulate into points3D (0: no points, no points3D.ply)."""
    point_colors: Literal["mesh", "image"] = "mesh"
    """Point colour: the mesh vertex colours, or the mean of the observed image pixels."""
    depth_tolerance: float = 0.005
    """A view sees a point when its rendered depth differs from the point's by at most this × depth."""

    def __post_init__(self) -> None:
        if self.points < 0:
            raise InputError(f"points must be ≥ 0, got {self.points}")
        if self.point_colors not in ("mesh", "image"):
            raise InputError(f"point_colors must be 'mesh' or 'image', got {self.point_colors!r}")
        if not 0 < self.depth_tolerance <= MAX_DEPTH_TOLERANCE:
            raise InputError(f"depth_tolerance must be in (0, {MAX_DEPTH_TOLERANCE}], got {self.depth_tolerance}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", action="store_true", help="write the text model (.txt) instead of binary (.bin)")
    parser.add_argument("--points", type=int, default=Options.points,
                        help=f"mesh surface samples for points3D (default {Options.points}; 0 = none)")
    parser.add_argument("--point-colors", choices=("mesh", "image"), default=Options.point_colors,
                        help="points3D colour: mesh vertex colours (default) or the mean observed pixel")
    parser.add_argument("--depth-tolerance", type=float, default=Options.depth_tolerance,
                        help=f"relative depth agreement for a view to see a point (default {Options.depth_tolerance})")


def options_from_args(args: argparse.Namespace, image: ImageOptions) -> Options:
    return Options(image=image, text=args.text, points=args.points, point_colors=args.point_colors,
                   depth_tolerance=args.depth_tolerance)


def write(
    capture: Capture,
    out_dir: str | Path,
    options: Options = Options(),
    *,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write the COLMAP workspace `out_dir` (see the module docstring); returns `out_dir`."""
    pycolmap = require_pycolmap(write=True)
    if options.points and capture.mesh is None:
        raise InputError("points3D need the tuple's mesh: give --mesh, or --points 0", file=capture.root)
    plans = plan_views(capture.views, options.image)
    digits = max(3, len(str(max(v.id for v in capture.views))))
    names = [f"{p.view.id:0{digits}d}{p.suffix}" for p in plans]
    with staging(out_dir, overwrite) as tmp:
        write_images(plans, [str(IMAGES / n) for n in names], tmp, workers=workers, progress=progress)
        rec = pycolmap.Reconstruction()
        keypoints: list[np.ndarray] = [np.zeros((0, 2))] * len(plans)
        stats = {"sampled": options.points, "kept": 0, "dropped": 0}
        if options.points:
            cloud = _mesh_points(capture, plans, options, tmp / IMAGES, names, progress)
            keypoints = cloud.obs
            stats |= {"kept": len(cloud.xyz), "dropped": options.points - len(cloud.xyz)}
        for i, (plan, name) in enumerate(zip(plans, names), start=1):
            rec.add_camera_with_trivial_rig(_colmap_camera(pycolmap, i, plan.camera))
            image = pycolmap.Image(name=name, keypoints=keypoints[i - 1], camera_id=i, image_id=i)
            rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(plan.world_to_cam[:3, :4]))
        if options.points:
            _add_tracks(pycolmap, rec, cloud)
            rec.update_point_3d_errors()
        sparse = tmp / SPARSE
        sparse.mkdir(parents=True)
        if options.text:
            rec.write_text(str(sparse))
        else:
            rec.write_binary(str(sparse))
        for extra in ("rigs", "frames"):
            (sparse / f"{extra}.{'txt' if options.text else 'bin'}").unlink(missing_ok=True)
        if options.points:
            write_ply(sparse / PLY, cloud.xyz, cloud.normals, cloud.rgb)
        warnings = reader_warnings(pycolmap, plans, options.image)
        write_manifest(tmp, NAME, capture, options, [str(IMAGES / n) for n in names],
                       {"points3D": stats, **({"warnings": warnings} if warnings else {})})
    if progress and options.points:
        print(f"{NAME}: {stats['kept']} of {stats['sampled']} surface points seen by ≥ 2 views; "
              f"{stats['dropped']} dropped", file=sys.stderr)
    return Path(out_dir)


def reader_warnings(pycolmap: ModuleType, plans: list[ViewPlan], image: ImageOptions) -> list[str]:
    """One line per thing COLMAP or 3DGS will do wrong with this export (the summary and check.json)."""
    out = []
    if image.principal_point == "center" and image.border == "keep":
        out.append(f"{NAME}: 3DGS reads these centred PINHOLE cameras exactly, but the strip that centring uncovers "
                   "has no source data and no mask: for 3DGS use `fsconvert to-3dgs` (crops it, or masks it)")
    elif any(p.camera.has_distortion for p in plans):
        out.append(f"{NAME}: 3DGS reads PINHOLE / SIMPLE_PINHOLE models only and stops on these: for 3DGS use "
                   "`fsconvert to-3dgs`")
    else:
        off = {p.view.id: np.linalg.norm(p.camera.K[:2, 2] - (np.array(p.camera.size) - 1) / 2) for p in plans}
        off = {i: d for i, d in off.items() if d > 1e-9}
        if off:
            out.append(f"{NAME}: 3DGS ignores cx, cy: it would read {len(off)} of {len(plans)} views up to "
                       f"{max(off.values()):.1f} px off (their principal points are off-centre); for 3DGS use "
                       "`fsconvert to-3dgs`")
    limit = pycolmap.IncrementalMapperOptions().max_extra_param
    bogus = {p.view.id: float(np.abs(p.camera.dist).max()) for p in plans if np.abs(p.camera.dist).max() > limit}
    if bogus:
        need = int(np.ceil(max(bogus.values())))
        out.append(f"{NAME}: views {sorted(bogus)} have a distortion coefficient up to {max(bogus.values()):.3g}, "
                   f"beyond COLMAP's max_extra_param ({limit:g}): its mapper and point_triangulator take them for "
                   f"bogus cameras and leave them out of triangulation and bundle adjustment; pass "
                   f"--Mapper.max_extra_param {need} to them (or export with --distortion undistort)")
    return out


def default_reader(options: Options) -> str:
    """The program this export is checked for (fsconvert.readers)."""
    return "colmap"


def read(out_dir: str | Path) -> list[ExportedView]:
    """Read `out_dir/sparse/0` with pycolmap; cameras back in the internal convention, in image-id order."""
    rec = load_model(out_dir)
    sparse = Path(out_dir) / SPARSE
    views = []
    for image_id in sorted(rec.images):
        image = rec.images[image_id]
        camera = internal_camera(rec.cameras[image.camera_id], sparse)
        views.append(ExportedView(str(IMAGES / image.name), camera, cv.homogeneous(image.cam_from_world().matrix())))
    return views


def load_model(out_dir: str | Path):
    """The pycolmap Reconstruction of `out_dir/sparse/0` (bin, else txt); one-line InputErrors."""
    pycolmap = require_pycolmap(write=False)
    sparse = Path(out_dir) / SPARSE
    if not sparse.is_dir():
        raise InputError(f"no COLMAP model folder {SPARSE}", file=out_dir)
    _check_binary_layout(pycolmap, sparse)
    try:
        return pycolmap.Reconstruction(str(sparse))
    except Exception as exc:  # pycolmap raises ValueError/RuntimeError with COLMAP's check message
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise InputError(f"not a readable COLMAP model: {reason}", file=sparse) from None


def _check_binary_layout(pycolmap: ModuleType, sparse: Path) -> None:
    """Walk the records of a binary model (formats.md §1.3): they must end exactly at each file's end.

    COLMAP trusts the counts it reads, so a truncated or corrupt file costs minutes and gigabytes
    before a bad_alloc; here it is a one-line error.
    """
    models = [m for m in pycolmap.CameraModelId.__members__.values() if m.name != "INVALID"]
    n_params = {int(m): len(pycolmap.Camera.create_from_model_id(1, m, 1.0, 1, 1).params) for m in models}

    def camera(data: bytes, off: int) -> int:
        return off + 24 + 8 * n_params[struct.unpack_from("<i", data, off + 4)[0]]

    def image(data: bytes, off: int) -> int:
        off = data.index(b"\0", off + 64) + 1
        return off + 8 + 24 * struct.unpack_from("<Q", data, off)[0]

    def point(data: bytes, off: int) -> int:
        return off + 51 + 8 * struct.unpack_from("<Q", data, off + 43)[0]

    walks = (("cameras.bin", camera), ("images.bin", image), ("points3D.bin", point))
    if not all((sparse / name).is_file() for name, _ in walks):
        return  # COLMAP reads the text model then
    for name, record in walks:
        path = sparse / name
        data = path.read_bytes()
        try:
            (count,), off = struct.unpack_from("<Q", data), 8
            for _ in range(count):
                if off >= len(data):  # records missing
                    off = -1
                    break
                off = record(data, off)
        except (struct.error, ValueError, KeyError):
            off = -1
        if off != len(data):
            raise InputError("truncated or corrupt: its records do not end at the end of the file", file=path)


def require_pycolmap(*, write: bool, module: ModuleType | None = None) -> ModuleType:
    """The pycolmap module (or `module`, for tests), or a one-line InputError naming found vs needed."""
    if module is None:
        try:
            import pycolmap as module
        except ImportError:
            raise InputError("pycolmap is not installed (pip install 'pycolmap>=4.0')") from None
    found = getattr(module, "__version__", "unknown")
    numbers = tuple(int(n) for n in re.findall(r"\d+", found)[:2])
    missing = [f for f in WRITE_API if not hasattr(module.Reconstruction, f)] if write else []
    if numbers < MIN_PYCOLMAP_READ or missing:
        need = "4.0 (Reconstruction." + " / ".join(WRITE_API) + ")" if write else "3.12"
        role = "exporter" if write else "reader"
        raise InputError(f"pycolmap {found} found; the COLMAP {role} needs pycolmap ≥ {need}")
    return module


# ---- cameras ---------------------------------------------------------------------------------------


def _colmap_camera(pycolmap: ModuleType, camera_id: int, camera: Camera):
    """PINHOLE, OPENCV (k3 = 0) or FULL_OPENCV [.., k3, 0, 0, 0]; principal point in COLMAP's convention."""
    K = cv.K_to_corner_origin(camera.K)
    params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
    model = "PINHOLE"
    if camera.has_distortion:
        k1, k2, p1, p2, k3 = camera.dist
        model = "FULL_OPENCV" if k3 != 0 else "OPENCV"
        params += [k1, k2, p1, p2] + ([k3, 0.0, 0.0, 0.0] if k3 != 0 else [])
    return pycolmap.Camera(camera_id=camera_id, model=model, width=camera.width, height=camera.height,
                           params=params)


def internal_camera(camera, where: Path | None = None) -> Camera:
    """A pycolmap camera as an internal Camera; InputError for models k1 k2 p1 p2 k3 cannot hold."""
    model, p = camera.model.name, [float(x) for x in camera.params]
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):  # f cx cy [k1 [k2]]
        (fx, cx, cy), fy, coeffs = p[:3], p[0], p[3:]
    elif model in ("PINHOLE", "OPENCV", "FULL_OPENCV"):  # fx fy cx cy [k1 k2 p1 p2 [k3 k4 k5 k6]]
        (fx, fy, cx, cy), coeffs = p[:4], p[4:9]
        if any(p[9:]):
            raise InputError(f"camera {camera.camera_id}: FULL_OPENCV k4..k6 = {p[9:]} cannot be represented "
                             "(internal model is k1 k2 p1 p2 k3)", file=where)
    else:
        raise InputError(f"camera {camera.camera_id}: COLMAP model {model} cannot be represented by "
                         "k1 k2 p1 p2 k3", file=where)
    K = cv.K_from_corner_origin(cv.K_matrix(fx, fy, cx, cy))
    return Camera(int(camera.width), int(camera.height), K, (coeffs + [0.0] * 5)[:5])


# ---- points3D --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cloud:
    """Surface points seen by ≥ 2 views: position, normal, colour; per view a seen mask and the
    observations (COLMAP pixel convention) of every kept point."""

    xyz: np.ndarray
    normals: np.ndarray
    rgb: np.ndarray
    seen: np.ndarray
    """V×N bool."""
    obs: list[np.ndarray]
    """Per view, the observations of the points it sees, in point order."""


def sample_surface(mesh: trimesh.Trimesh, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` area-uniform surface points (deterministic), their face normals and interpolated vertex colours."""
    xyz, faces = trimesh.sample.sample_surface(mesh, count, seed=SAMPLE_SEED)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[faces], xyz)
    colors = vertex_colors(mesh)[mesh.faces[faces]].astype(np.float64)
    rgb = np.clip(np.rint(np.einsum("ni,nic->nc", bary, colors)), 0, 255).astype(np.uint8)
    return np.asarray(xyz, np.float64), np.asarray(mesh.face_normals[faces], np.float64), rgb


def _mesh_points(capture: Capture, plans: list[ViewPlan], options: Options, images: Path, names: list[str],
                 progress: bool) -> _Cloud:
    from fsconvert.render import Renderer  # pyrender/OpenGL: imported only when points are made

    mesh = load_mesh(capture.mesh)
    xyz, normals, rgb = sample_surface(mesh, options.points)
    seen = np.zeros((len(plans), len(xyz)), bool)
    facing = np.zeros((len(plans), len(xyz)))
    obs = []
    with Renderer(mesh) as renderer:
        for j, plan in enumerate(tqdm(plans, desc="points3D", unit="view", disable=not progress, leave=False)):
            seen[j], uv = observe(renderer, plan.camera, plan.world_to_cam, xyz, options.depth_tolerance)
            obs.append(uv)
            facing[j] = np.einsum("ij,ij->i", normals, cv.camera_centre(plan.world_to_cam) - xyz)
    # A ray grazing a thin fold (the nose) can pass the depth test on the fold's far side, which faces
    # away from the camera: drop those. The majority decides which way the mesh's normals point.
    if (seen & (facing < 0)).sum() > (seen & (facing > 0)).sum():
        normals, facing = -normals, -facing
    observed, seen = seen, seen & (facing > 0)
    keep = seen.sum(axis=0) >= 2
    obs = [uv[(seen_j & keep)[observed_j]] for uv, seen_j, observed_j in zip(obs, seen, observed)]
    seen = seen[:, keep]
    if not keep.any():
        raise InputError(f"no mesh point is seen by 2 or more views (of {len(plans)}); use --points 0",
                         file=capture.mesh)
    if options.point_colors == "image":
        rgb = _image_colors(seen, obs, [images / n for n in names])
    else:
        rgb = rgb[keep]
    return _Cloud(xyz[keep], normals[keep], rgb, seen, obs)


def observe(renderer: Renderer, camera: Camera, world_to_cam: np.ndarray, xyz: np.ndarray,
            tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Which world points `camera` sees (depth test against a render), and where (COLMAP pixel
    convention) for those it sees.

    The depth test uses a pinhole render with the same K on a canvas covering every pixel's ray, at
    each point's pinhole projection (its exact ray); the observation is the projection through the
    full camera model, kept inside the image and only where undistorting it returns to the point's ray.
    """
    pts = cv.homogeneous(world_to_cam)
    X = xyz @ pts[:3, :3].T + pts[:3, 3]
    z = X[:, 2]
    front = z > 0
    X = np.where(front[:, None], X, 1.0)  # points behind the camera: any finite stand-in, never visible
    canvas = _pinhole_canvas(camera)
    scale = min(1.0, _VISIBILITY_MAX_SIDE / max(canvas.size))
    if scale < 1:  # visibility needs no full-resolution depth: bound the render's time and memory
        size = (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale)))
        canvas = Camera(*size, cv.resize_K(canvas.K, size[0] / canvas.width, size[1] / canvas.height))
    depth = renderer.render(canvas, world_to_cam, depth_only=True).depth
    visible = front & _depth_agrees(depth, canvas.project(X), z, tolerance)
    corner = Camera(camera.width, camera.height, cv.K_to_corner_origin(camera.K), camera.dist)
    uv = corner.project(X)
    visible &= (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    if camera.has_distortion and visible.any():
        back = cv2.undistortPoints(uv[visible].reshape(-1, 1, 2), corner.K, corner.dist,
                                   criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)
        off = np.abs(back - X[visible, :2] / X[visible, 2:]).max(axis=1) * max(camera.fx, camera.fy)
        visible[np.flatnonzero(visible)[off > _ROUND_TRIP_TOL_PX]] = False
    return visible, uv[visible]


def _depth_agrees(depth: np.ndarray, px: np.ndarray, z: np.ndarray, tolerance: float) -> np.ndarray:
    """True where the depth at all four pixel centres around `px` is foreground and within
    `tolerance`·z of z: the point's own ray then meets no occluder's edge."""
    H, W = depth.shape
    x0, y0 = np.floor(px[:, 0]).astype(np.int64), np.floor(px[:, 1]).astype(np.int64)
    ok = (x0 >= 0) & (x0 + 1 < W) & (y0 >= 0) & (y0 + 1 < H)
    x0, y0 = np.where(ok, x0, 0), np.where(ok, y0, 0)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        d = depth[y0 + dy, x0 + dx].astype(np.float64)
        ok &= (d > 0) & (np.abs(d - z) <= tolerance * z)
    return ok


def _pinhole_canvas(camera: Camera) -> Camera:
    """`camera` without distortion, cropped/extended so it covers the undistorted footprint of every pixel."""
    if not camera.has_distortion:
        return camera
    W, H = camera.size
    u, v = np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64)
    border = np.concatenate([np.column_stack([u, np.zeros(W)]), np.column_stack([u, np.full(W, H - 1.0)]),
                             np.column_stack([np.zeros(H), v]), np.column_stack([np.full(H, W - 1.0), v])])
    pinhole = camera.pinhole()
    xy = cv2.undistortPoints(border.reshape(-1, 1, 2), camera.K, camera.dist, criteria=_UNDISTORT_CRITERIA)
    px = pinhole.project(np.column_stack([xy.reshape(-1, 2), np.ones(len(border))]))
    x0, y0 = np.floor(px.min(axis=0)).astype(int) - _BORDER_MARGIN_PX
    x1, y1 = np.ceil(px.max(axis=0)).astype(int) + _BORDER_MARGIN_PX
    return Camera(int(x1 - x0 + 1), int(y1 - y0 + 1), cv.crop_K(camera.K, x0, y0))


def _image_colors(seen: np.ndarray, obs: list[np.ndarray], paths: list[Path]) -> np.ndarray:
    """Mean RGB of the pixels containing each observation (COLMAP pixel i spans [i, i + 1))."""
    total = np.zeros((seen.shape[1], 3))
    for seen_j, uv, path in zip(seen, obs, paths):
        img = read_image(path)
        H, W = img.shape[:2]
        col = np.clip(np.floor(uv).astype(np.int64), 0, [W - 1, H - 1])
        total[seen_j] += img[col[:, 1], col[:, 0], ::-1]
    return np.clip(np.rint(total / seen.sum(axis=0)[:, None]), 0, 255).astype(np.uint8)


def _add_tracks(pycolmap: ModuleType, rec, cloud: _Cloud) -> None:
    """One points3D entry per kept point; its track lists (image_id, index into that image's keypoints)."""
    index = np.cumsum(cloud.seen, axis=1) - 1  # keypoint index of point n in view j, where seen
    points, views = np.nonzero(cloud.seen.T)  # sorted by point, then view
    bounds = np.searchsorted(points, np.arange(len(cloud.xyz) + 1)).tolist()
    image_ids, keypoints = (views + 1).tolist(), index[views, points].tolist()
    for n, (xyz, rgb) in enumerate(zip(cloud.xyz, cloud.rgb)):
        track = pycolmap.Track()
        for i in range(bounds[n], bounds[n + 1]):
            track.add_element(image_ids[i], keypoints[i])  # 2.5x faster than building TrackElement objects
        rec.add_point3D(xyz, track, rgb)


def write_ply(path: Path, xyz: np.ndarray, normals: np.ndarray, rgb: np.ndarray) -> None:
    """Binary little-endian PLY, vertex properties x y z nx ny nz (float) red green blue (uchar)."""
    vertex = np.empty(len(xyz), _PLY_DTYPE)
    for i, name in enumerate("xyz"):
        vertex[name], vertex[f"n{name}"] = xyz[:, i], normals[:, i]
    vertex["red"], vertex["green"], vertex["blue"] = rgb.T
    props = "".join(f"property {'float' if _PLY_DTYPE[n] == np.float32 else 'uchar'} {n}\n" for n in _PLY_DTYPE.names)
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertex)}\n{props}end_header\n"
    path.write_bytes(header.encode("ascii") + vertex.tobytes())
