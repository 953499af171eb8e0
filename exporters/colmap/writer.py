"""Writing the COLMAP workspace: images, the model (`--model-format`), points3D with tracks, and with
`--for 3dgs --depths` 3DGS's depth priors (see the package docstring)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fsconvert import conventions as cv
from fsconvert import surface
from fsconvert.depthproducts import point_visibility, subjects_ahead
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, ViewPlan, frame_record, plan_views
from fsconvert.imagestage import read_image, stems, write_images
from fsconvert.mesh import Geometry, capture_geometry, capture_proxy, face_areas
from fsconvert.model import Camera, Capture
from fsconvert.options import check_choices, option
from fsconvert.threads import beside
from fsconvert.writers import ply_vertices, write_ply, write_png

from .depths import write_depth_priors
from .layout import (
    DEPTH_PARAMS,
    DEPTHS,
    FOR_3DGS,
    IMAGES,
    MASKS,
    MAX_DEPTH_TOLERANCE,
    MODEL_FORMATS,
    NAME,
    PLY,
    SAMPLE_SEED,
    SPARSE,
    require_pycolmap,
)

if TYPE_CHECKING:  # pycolmap's own stubs; at run time the module comes from require_pycolmap
    from pycolmap import Camera as ColmapCamera
    from pycolmap import Reconstruction

SUMMARY = "COLMAP workspace (images/ + sparse/0 cameras, images, points3D with tracks); --for 3dgs: for 3DGS"


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    text: bool = option(False, "write the text model (.txt) instead of binary (.bin): --model-format txt",
                        exclusive="model format")
    """Kept as it always was: the same as `model_format="txt"` (`__post_init__` sets it)."""
    model_format: Literal["bin", "txt", "both"] = option(
        "bin", "the model files sparse/0/{cameras,images,points3D}: bin, txt (COLMAP's text model: OpenMVS's "
        "InterfaceCOLMAP and text-only tools) or both (COLMAP, pycolmap and 3DGS read the .bin, OpenMVS the .txt)",
        name="model_format", exclusive="model format")
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
    depths: bool = option(
        False, f"with --for 3dgs: 3DGS's depth priors (train.py -d depths): {DEPTHS}/<image stem>.png, the mesh's "
        f"16-bit inverse depth, and {SPARSE.as_posix()}/{DEPTH_PARAMS} (scale per image, offset 0)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.text:  # the flags exclude each other; "bin" is the default, i.e. not given
            if self.model_format == "both":
                raise InputError("text means model_format txt: give model_format both without text")
            object.__setattr__(self, "model_format", "txt")
        if self.points < 0:
            raise InputError(f"points must be ≥ 0, got {self.points}")
        if not 0 < self.depth_tolerance <= MAX_DEPTH_TOLERANCE:
            raise InputError(f"depth_tolerance must be in (0, {MAX_DEPTH_TOLERANCE}], got {self.depth_tolerance}")
        if self.target == "3dgs" and self.image.principal_point != "center":
            raise InputError("--for 3dgs: 3D Gaussian Splatting ignores cx, cy and reads PINHOLE cameras only: "
                             "keep --distortion undistort and --principal-point center")
        if self.depths and self.target != "3dgs":
            raise InputError("--depths writes 3D Gaussian Splatting's depth priors (train.py -d depths): "
                             "add --for 3dgs")
        if self.depths and not self.points:
            raise InputError("--depths: 3DGS starts from points3D.ply and the check proves the priors against the "
                             "points3D the views observe: keep --points above 0")


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the COLMAP workspace (see the package docstring)."""
    pycolmap = require_pycolmap(write=True)
    if options.points and capture.mesh is None:
        raise InputError("points3D need the tuple's mesh: give --mesh, or --points 0", file=capture.root)
    if options.depths and capture.mesh is None:
        raise InputError("--depths renders the tuple's mesh: give --mesh", file=capture.root)
    plans = plan_views(capture.views, options.image)
    names = [f"{stem}{p.suffix}" for stem, p in zip(stems(capture.views), plans)]
    masks = options.target == "3dgs" and options.image.border != "crop" and options.image.alpha == "none"
    image_paths = [str(IMAGES / n) for n in names]
    # points3D beside the images on a second core; not with --depths, whose priors go first (see below)
    with subjects_ahead(capture, "--alpha subject", plans, options.image.alpha, workers=workers,
                        progress=progress) as alpha, \
            beside(workers if options.points and not options.depths else 1,
                   lambda: _seen_points(capture, plans, options, False), "fsconvert-points3D") as seen:
        footprints = write_images(plans, image_paths, folder, workers=workers, progress=progress,
                                  footprints=masks, subjects=alpha)
    cloud = None if seen is None else seen.result()
    if masks:  # COLMAP's mask naming: masks/<image name>.png, 0 where the pixel has no source data
        (folder / MASKS).mkdir()
        assert footprints is not None  # write_images returns them when asked for
        for name, fp in zip(names, footprints):
            write_png(folder / MASKS / f"{name}.png", fp.alpha())
    sparse = folder / SPARSE
    sparse.mkdir(parents=True)
    depths: dict[str, Any] = {}
    depth_warnings: list[str] = []
    if options.depths:  # before points3D: this GL context and its depth maps are gone before the mesh is parsed
        depths, depth_warnings = write_depth_priors(capture_geometry(capture, "--depths"), plans, names,
                                                    [p.view.id for p in plans], folder, progress=progress)
    rec = pycolmap.Reconstruction()
    keypoints: list[np.ndarray] = [np.zeros((0, 2))] * len(plans)
    stats = {"sampled": options.points, "kept": 0, "dropped": 0}
    if options.points:
        if cloud is None:
            cloud = _seen_points(capture, plans, options, progress)
        if options.point_colors == "image":
            cloud = replace(cloud, rgb=_image_colors(cloud.seen, cloud.obs, [folder / IMAGES / n for n in names]))
        keypoints = cloud.obs
        stats |= {"kept": len(cloud.xyz), "dropped": options.points - len(cloud.xyz)}
    for i, (plan, name) in enumerate(zip(plans, names), start=1):
        rec.add_camera_with_trivial_rig(_colmap_camera(pycolmap, i, plan.camera))
        image = pycolmap.Image(name=name, keypoints=keypoints[i - 1], camera_id=i, image_id=i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(plan.world_to_cam[:3, :4]))
    if cloud is not None:
        _add_tracks(pycolmap, rec, cloud)
        rec.update_point_3d_errors()
    for ext in MODEL_FORMATS[options.model_format]:
        (rec.write_binary if ext == "bin" else rec.write_text)(str(sparse))
        for extra in ("rigs", "frames"):  # the legacy three files: every reader's (layout.MODEL_FILES)
            (sparse / f"{extra}.{ext}").unlink(missing_ok=True)
    if cloud is not None:
        write_ply(sparse / PLY, ply_vertices(cloud.xyz, cloud.normals, cloud.rgb))
    if progress and options.points:
        print(f"{NAME}: {stats['kept']} of {stats['sampled']} surface points seen by ≥ 2 views; "
              f"{stats['dropped']} dropped", file=sys.stderr)
    warnings = reader_warnings(pycolmap, plans, options) + depth_warnings
    return {"images": [str(IMAGES / n) for n in names], "points3D": stats, **frame_record(capture.views, options.image),
            **({"depths": depths} if depths else {}), **({"warnings": warnings} if warnings else {})}


def reader_warnings(pycolmap: ModuleType, plans: list[ViewPlan], options: Options) -> list[str]:
    """One line per thing COLMAP or 3DGS will do wrong with this export (the summary and check.json)."""
    out = []
    image = options.image
    if options.target == "3dgs":
        if image.border != "crop" and image.alpha == "none":
            out.append(f"{NAME}: the border without source data is masked in {MASKS}/ (255 = data): 3DGS's own "
                       "train.py does not read masks and trains on that border; use a trainer that takes masks, "
                       "or --border crop")
        if options.depths and image.alpha != "subject":
            out.append(f"{NAME}: 3DGS's depth loss has no per-pixel mask: where the mesh is not seen (hair, body, "
                       f"backdrop) {DEPTHS}/ holds inverse depth 0 (nothing there) and pulls the Gaussians the image "
                       "shows there away; add --image-format png --alpha subject, so that its image loss ignores "
                       "those pixels too")
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


def sample_surface(mesh: Geometry, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` area-uniform surface points (deterministic), their face normals and interpolated vertex colours.

    The points of `trimesh.sample.sample_surface(mesh, count, seed=SAMPLE_SEED)`, bit for bit (with trimesh's
    arithmetic, `fsconvert.surface`), with only face areas computed for every face (in chunks): trimesh's own
    pass builds and caches the triangles, edge vectors and normals of all faces (~290 MB at 1.3 M faces, for
    20 000 points).
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
    unit, valid = surface.normals(surface.cross(triangles))
    normals[valid] = unit
    bary = surface.barycentric(triangles, xyz)
    colors = mesh.rgb()[f[faces]].astype(np.float64)
    rgb = np.clip(np.rint(np.einsum("ni,nic->nc", bary, colors)), 0, 255).astype(np.uint8)
    return xyz, normals, rgb


def _seen_points(capture: Capture, plans: list[ViewPlan], options: Options, progress: bool) -> _Cloud:
    """Surface points sampled on the mesh, kept where ≥ 2 views see them, coloured from the mesh."""
    xyz, normals, rgb = sample_surface(capture_geometry(capture, "points3D", colors=True), options.points)
    # points on the full mesh, their depth test against its render proxy (a dense scan's ~100 000-face copy)
    visibility = point_visibility(capture_proxy(capture, "points3D"), plans, xyz, options.depth_tolerance,
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
    return _Cloud(xyz[keep], normals[keep], rgb[keep], seen, obs)


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
