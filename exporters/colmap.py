"""COLMAP workspace: `images/<name>` + `sparse/0/{cameras,images,points3D}.{bin|txt}` + `points3D.ply`.

One COLMAP camera per view (corner-origin principal point); PINHOLE after undistortion, OPENCV or
FULL_OPENCV (k3 ≠ 0) when the lens model is kept. points3D are mesh surface samples with real
tracks: each point is observed by the views whose rendered depth agrees with it, at its projection
through the full output camera. The model is built with pycolmap ≥ 4.0 and written as the legacy
three files (no rigs/frames: every COLMAP reader since 3.x, and read_write_model-style parsers, load
those and any ≥ 3.12 reader recreates the same trivial rigs and frames). `points3D.ply` beside them
(x y z nx ny nz red green blue) initialises 3D Gaussian Splatting.

`--for 3dgs` writes what 3DGS's reader (PINHOLE only, principal point assumed at the centre) reads
without loss: centred principal points and, by default, each view cropped to the largest centred
rectangle with source data in every pixel (`--border crop`; K exact); with `--border keep|cover`
the frame stays and `masks/<image name>.png` (COLMAP's mask naming, 0 = no source data) is written.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import trimesh

from fsconvert import conventions as cv
from fsconvert.depthproducts import point_visibility
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, ViewPlan, plan_views
from fsconvert.imagestage import read_image, stems, write_images
from fsconvert.mesh import capture_mesh, face_areas, vertex_colors
from fsconvert.model import Camera, Capture
from fsconvert.options import check_choices, option
from fsconvert.protocol import ExportedView, Program, Reading
from fsconvert.writers import ply_vertices, write_ply, write_png

if TYPE_CHECKING:  # pycolmap's own stubs; at run time the module comes from require_pycolmap
    from pycolmap import Camera as ColmapCamera
    from pycolmap import Reconstruction

NAME = "colmap"
SUMMARY = "COLMAP workspace (images/ + sparse/0 cameras, images, points3D with tracks); --for 3dgs: for 3DGS"

IMAGES = Path("images")
SPARSE = Path("sparse") / "0"
PLY = "points3D.ply"
MASKS = Path("masks")
FOR_3DGS = "`fsconvert to-colmap --for 3dgs`"
MIN_PYCOLMAP_READ = (3, 12)
"""`Image.cam_from_world()` became a method (poses on frames) in 3.12."""
WRITE_API = ("add_camera_with_trivial_rig", "add_image_with_trivial_frame")
"""Reconstruction methods added in pycolmap 4.0 that `write` builds the model with."""
SAMPLE_SEED = 0
MAX_DEPTH_TOLERANCE = 0.05
"""Looser depth tests let hidden surfaces in (and could out-vote the visible ones on normal orientation)."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    text: bool = option(False, "write the text model (.txt) instead of binary (.bin)")
    points: int = option(20000, "mesh surface samples to triangulate into points3D (0 = none, no points3D.ply)")
    point_colors: Literal["mesh", "image"] = option(
        "mesh", "points3D colour: the mesh vertex colours (default), or the mean of the observed image pixels")
    depth_tolerance: float = option(
        0.005, "a view sees a point when its rendered depth differs from the point's by at most this × depth")
    target: Literal["colmap", "3dgs"] = option(
        "colmap", "the program the export is for: colmap, or 3dgs (3D Gaussian Splatting reads PINHOLE only and "
        "ignores cx, cy: centred principal point, cropped to where every pixel has source data; with --border "
        "keep|cover, masks/ instead)", name="for",
        image_defaults={"3dgs": {"principal_point": "center", "border": "crop"}})
    """Also the reader the check reads the export by."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.points < 0:
            raise InputError(f"points must be ≥ 0, got {self.points}")
        if not 0 < self.depth_tolerance <= MAX_DEPTH_TOLERANCE:
            raise InputError(f"depth_tolerance must be in (0, {MAX_DEPTH_TOLERANCE}], got {self.depth_tolerance}")
        if self.target == "3dgs" and self.image.principal_point != "center":
            raise InputError("--for 3dgs: 3D Gaussian Splatting ignores cx, cy and reads PINHOLE cameras only: "
                             "keep --distortion undistort and --principal-point center")


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the COLMAP workspace (see the module docstring)."""
    pycolmap = require_pycolmap(write=True)
    if options.points and capture.mesh is None:
        raise InputError("points3D need the tuple's mesh: give --mesh, or --points 0", file=capture.root)
    plans = plan_views(capture.views, options.image)
    names = [f"{stem}{p.suffix}" for stem, p in zip(stems(capture.views), plans)]
    masks = options.target == "3dgs" and options.image.border != "crop"
    footprints = write_images(plans, [str(IMAGES / n) for n in names], folder, workers=workers, progress=progress,
                              footprints=masks)
    if masks:  # COLMAP's mask naming: masks/<image name>.png, 0 where the pixel has no source data
        (folder / MASKS).mkdir()
        assert footprints is not None  # write_images returns them when asked for
        for name, fp in zip(names, footprints):
            write_png(folder / MASKS / f"{name}.png", np.where(fp.mask(), 255, 0).astype(np.uint8))
    rec = pycolmap.Reconstruction()
    keypoints: list[np.ndarray] = [np.zeros((0, 2))] * len(plans)
    stats = {"sampled": options.points, "kept": 0, "dropped": 0}
    if options.points:
        cloud = _mesh_points(capture, plans, options, folder / IMAGES, names, progress)
        keypoints = cloud.obs
        stats |= {"kept": len(cloud.xyz), "dropped": options.points - len(cloud.xyz)}
    for i, (plan, name) in enumerate(zip(plans, names), start=1):
        rec.add_camera_with_trivial_rig(_colmap_camera(pycolmap, i, plan.camera))
        image = pycolmap.Image(name=name, keypoints=keypoints[i - 1], camera_id=i, image_id=i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(plan.world_to_cam[:3, :4]))
    if options.points:
        _add_tracks(pycolmap, rec, cloud)
        rec.update_point_3d_errors()
    sparse = folder / SPARSE
    sparse.mkdir(parents=True)
    if options.text:
        rec.write_text(str(sparse))
    else:
        rec.write_binary(str(sparse))
    for extra in ("rigs", "frames"):
        (sparse / f"{extra}.{'txt' if options.text else 'bin'}").unlink(missing_ok=True)
    if options.points:
        write_ply(sparse / PLY, ply_vertices(cloud.xyz, cloud.normals, cloud.rgb))
    if progress and options.points:
        print(f"{NAME}: {stats['kept']} of {stats['sampled']} surface points seen by ≥ 2 views; "
              f"{stats['dropped']} dropped", file=sys.stderr)
    warnings = reader_warnings(pycolmap, plans, options)
    return {"images": [str(IMAGES / n) for n in names], "points3D": stats,
            **({"warnings": warnings} if warnings else {})}


def reader_warnings(pycolmap: ModuleType, plans: list[ViewPlan], options: Options) -> list[str]:
    """One line per thing COLMAP or 3DGS will do wrong with this export (the summary and check.json)."""
    out = []
    image = options.image
    if options.target == "3dgs":
        if image.border != "crop":
            out.append(f"{NAME}: the border without source data is masked in {MASKS}/ (255 = data): 3DGS's own "
                       "train.py does not read masks and trains on that border; use a trainer that takes masks, "
                       "or --border crop")
    elif image.principal_point == "center" and image.border == "keep":
        out.append(f"{NAME}: 3DGS reads these centred PINHOLE cameras exactly, but the strip that centring uncovers "
                   f"has no source data and no mask: for 3DGS use {FOR_3DGS} (crops it, or masks it)")
    elif any(p.camera.has_distortion for p in plans):
        out.append(f"{NAME}: 3DGS reads PINHOLE / SIMPLE_PINHOLE models only and stops on these: for 3DGS use "
                   f"{FOR_3DGS}")
    else:
        off = {p.view.id: np.linalg.norm(p.camera.K[:2, 2] - cv.image_centre(*p.camera.size)) for p in plans}
        off = {i: d for i, d in off.items() if d > 1e-9}
        if off:
            out.append(f"{NAME}: 3DGS ignores cx, cy: it would read {len(off)} of {len(plans)} views up to "
                       f"{max(off.values()):.1f} px off (their principal points are off-centre); for 3DGS use "
                       f"{FOR_3DGS}")
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
    """The program this export is checked for (one of `PROGRAMS`)."""
    return options.target


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


GAUSSIAN_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
"""The only COLMAP models 3DGS's reader accepts ("only undistorted datasets ... supported")."""


def read_3dgs(folder: Path) -> Reading:
    """3D Gaussian Splatting's COLMAP scene loading (graphdeco-inria `scene/dataset_readers.py`,
    `readColmapSceneInfo`): `sparse/0` (bin, else txt), PINHOLE / SIMPLE_PINHOLE only, FovX = 2·atan(W/2fx),
    FovY = 2·atan(H/2fy), the principal point at the image centre whatever the file says, image
    `images/<basename(name)>`, cameras sorted by name."""
    rec = load_model(folder)
    views = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        camera = rec.cameras[image.camera_id]
        if camera.model.name not in GAUSSIAN_MODELS:
            raise InputError(f"camera {camera.camera_id} is {camera.model.name}: 3DGS's reader accepts only "
                             f"{' / '.join(GAUSSIAN_MODELS)} (\"Colmap camera model not handled\")",
                             file=folder / SPARSE)
        p = [float(x) for x in camera.params]
        fx, fy = (p[0], p[0]) if camera.model.name == "SIMPLE_PINHOLE" else (p[0], p[1])
        W, H = int(camera.width), int(camera.height)
        K = cv.K_from_corner_origin(cv.K_matrix(fx, fy, W / 2, H / 2))  # FoV only: a symmetric frustum
        name = (IMAGES / os.path.basename(image.name)).as_posix()
        views.append(ExportedView(name, Camera(W, H, K), cv.homogeneous(image.cam_from_world().matrix())))
    return Reading(views)


PROGRAMS = (
    Program("colmap", "COLMAP (and pycolmap): sparse/0 as it is, every camera model", lambda f: Reading(read(f))),
    Program("3dgs", "3D Gaussian Splatting: sparse/0, PINHOLE / SIMPLE_PINHOLE only, cx, cy ignored", read_3dgs),
)


def load_model(out_dir: str | Path) -> Reconstruction:
    """The pycolmap Reconstruction of `out_dir/sparse/0` (bin, else txt); one-line InputErrors."""
    pycolmap = require_pycolmap(write=False)
    sparse = Path(out_dir) / SPARSE
    if not sparse.is_dir():
        raise InputError(f"no COLMAP model folder {SPARSE}", file=out_dir)
    _check_binary_layout(pycolmap, sparse)
    try:
        rec: Reconstruction = pycolmap.Reconstruction(str(sparse))
        return rec
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
        return off + 8 + 24 * int(struct.unpack_from("<Q", data, off)[0])

    def point(data: bytes, off: int) -> int:
        return off + 51 + 8 * int(struct.unpack_from("<Q", data, off + 43)[0])

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
            import pycolmap
        except ImportError:
            raise InputError("pycolmap is not installed (pip install 'pycolmap>=4.0')") from None
        module = pycolmap
    found = getattr(module, "__version__", "unknown")
    numbers = tuple(int(n) for n in re.findall(r"\d+", found)[:2])
    missing = [f for f in WRITE_API if not hasattr(module.Reconstruction, f)] if write else []
    if numbers < MIN_PYCOLMAP_READ or missing:
        need = "4.0 (Reconstruction." + " / ".join(WRITE_API) + ")" if write else "3.12"
        role = "exporter" if write else "reader"
        raise InputError(f"pycolmap {found} found; the COLMAP {role} needs pycolmap ≥ {need}")
    return module


# ---- cameras ---------------------------------------------------------------------------------------


def _colmap_camera(pycolmap: ModuleType, camera_id: int, camera: Camera) -> ColmapCamera:
    """PINHOLE, OPENCV (k3 = 0) or FULL_OPENCV [.., k3, 0, 0, 0]; principal point in COLMAP's convention."""
    K = cv.K_to_corner_origin(camera.K)
    params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
    model = "PINHOLE"
    if camera.has_distortion:
        k1, k2, p1, p2, k3 = camera.dist
        model = "FULL_OPENCV" if k3 != 0 else "OPENCV"
        params += [k1, k2, p1, p2] + ([k3, 0.0, 0.0, 0.0] if k3 != 0 else [])
    colmap_camera: ColmapCamera = pycolmap.Camera(camera_id=camera_id, model=model, width=camera.width,
                                                  height=camera.height, params=params)
    return colmap_camera


def internal_camera(camera: ColmapCamera, where: Path | None = None) -> Camera:
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
    return Camera(int(camera.width), int(camera.height), K, np.asarray((coeffs + [0.0] * 5)[:5]))


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
    """`count` area-uniform surface points (deterministic), their face normals and interpolated vertex colours.

    The points of `trimesh.sample.sample_surface(mesh, count, seed=SAMPLE_SEED)`, bit for bit, with
    only face areas computed for every face (in chunks): trimesh's own pass builds and caches the
    triangles, edge vectors and normals of all faces (~290 MB at 1.3 M faces, for 20 000 points).
    """
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces)
    weight_cum = np.cumsum(face_areas(mesh))
    random = np.random.default_rng(SAMPLE_SEED).random
    faces = np.searchsorted(weight_cum, random(count) * weight_cum[-1])
    origins, vectors = v[f[faces, 0]], v[f[faces, 1:]] - np.tile(v[f[faces, 0]], (1, 2)).reshape(-1, 2, 3)
    lengths = random((count, 2, 1))
    lengths[lengths.sum(axis=1).reshape(-1) > 1.0] -= 1.0
    xyz = (vectors * np.abs(lengths)).sum(axis=1) + origins
    triangles = v[f[faces]]
    normals = np.zeros((count, 3))
    # trimesh.triangles.normals and points_to_barycentric carry no annotations
    unit, valid = trimesh.triangles.normals(crosses=trimesh.triangles.cross(triangles))
    normals[valid] = unit
    bary = trimesh.triangles.points_to_barycentric(triangles, xyz)
    colors = vertex_colors(mesh)[f[faces]].astype(np.float64)
    rgb = np.clip(np.rint(np.einsum("ni,nic->nc", bary, colors)), 0, 255).astype(np.uint8)
    return xyz, normals, rgb


def _mesh_points(capture: Capture, plans: list[ViewPlan], options: Options, images: Path, names: list[str],
                 progress: bool) -> _Cloud:
    mesh = capture_mesh(capture, "points3D")
    xyz, normals, rgb = sample_surface(mesh, options.points)
    # points on the full mesh, their depth test against its render proxy (a dense scan's ~100 000-face copy)
    visibility = point_visibility(capture_mesh(capture, "points3D", proxy=True), plans, xyz, options.depth_tolerance,
                                  progress=progress, desc="points3D")
    seen = np.array([visible for visible, _ in visibility]).reshape(len(plans), len(xyz))
    obs = [uv for _, uv in visibility]
    facing = np.array([np.einsum("ij,ij->i", normals, cv.camera_centre(p.world_to_cam) - xyz) for p in plans])
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


def _image_colors(seen: np.ndarray, obs: list[np.ndarray], paths: list[Path]) -> np.ndarray:
    """Mean RGB of the pixels containing each observation (COLMAP pixel i spans [i, i + 1))."""
    total = np.zeros((seen.shape[1], 3))
    for seen_j, uv, path in zip(seen, obs, paths):
        img = read_image(path)
        H, W = img.shape[:2]
        col = np.clip(np.floor(uv).astype(np.int64), 0, [W - 1, H - 1])
        total[seen_j] += img[col[:, 1], col[:, 0], ::-1]
    mean: np.ndarray = np.clip(np.rint(total / seen.sum(axis=0)[:, None]), 0, 255).astype(np.uint8)
    return mean


def _add_tracks(pycolmap: ModuleType, rec: Reconstruction, cloud: _Cloud) -> None:
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
