"""Open3D: a pinhole camera trajectory with undistorted colour and rendered depth, ready for RGB-D fusion.

Layout of OUT (frame i of both trajectories is the i-th file of color/ and of depth/ in sorted order;
stems are zero-padded view ids):

- `trajectory.json`: PinholeCameraTrajectory, per view `intrinsic` (OpenCV K, top-left pixel centre at
  (0, 0)) and `extrinsic` (world→camera), both column-major, byte for byte as Open3D's writer writes them
  (`camerafiles`, which needs no Open3D).
- `trajectory.log`: the same poses as Redwood camera→world matrices (8 decimals); it holds no
  intrinsics, so `intrinsics/<stem>.json` (PinholeCameraIntrinsic) stand beside it.
- `color/<stem>.jpg`: images resampled to the pinhole camera (Open3D has no lens distortion model).
- `depth/<stem>.png`: uint16 z-depth of the mesh rendered through the same camera; z = raw / depth_scale
  in the capture's unit (SfM units; mm or m when aligned), 0 = no surface.
- `rgbd.json`: `depth_scale` and `depth_trunc` for `RGBDImage.create_from_color_and_depth`,
  `mesh_radius` (half the mesh's bounding-box diagonal), the reference for the default voxel size, and
  `unit` ("mm" or "m") when the capture is aligned.
- `fused_mesh.ply` with `--fuse`: ScalableTSDFVolume fusion of the RGB-D frames (see `fuse`).

Open3D itself reads the export back (`read`, `read_log`) and fuses it; it is imported there (`import open3d as
o3d`, the real package: imports are absolute), so that writing and listing exporters do not pay its 2 s start-up.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsconvert.depthproducts import depth_pngs
from fsconvert.errors import InputError, OutputError
from fsconvert.fuse import RGBDFrame, integrate
from fsconvert.imageplan import ImageOptions, ViewPlan, frame_record, plan_views
from fsconvert.imagestage import stems, write_images
from fsconvert.mesh import Geometry, capture_geometry
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView, Program, Reading
from fsconvert.threads import second_core
from fsconvert.writers import write_json, write_png, write_text

from . import camerafiles

NAME = "open3d"
SUMMARY = "Open3D pinhole trajectory (.json + .log), undistorted colour and rendered depth (RGB-D)"

TRAJECTORY_JSON = "trajectory.json"
TRAJECTORY_LOG = "trajectory.log"
INTRINSICS = "intrinsics"
COLOR = "color"
DEPTH = "depth"
RGBD = "rgbd.json"
FUSED = "fused_mesh.ply"

DEPTH_MAX_RAW = 65535
DEPTH_MAX_RELATIVE_ERROR = 1e-4
"""Largest allowed depth quantisation error (half a raw step) relative to the depth."""
VOXELS_PER_RADIUS = 256
"""Default TSDF voxel size = mesh_radius / this."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    fuse: bool = option(False, f"also fuse the RGB-D frames (Open3D ScalableTSDFVolume) into {FUSED}")
    voxel_size: float | None = option(
        None, f"TSDF voxel size in mesh units (default: mesh radius / {VOXELS_PER_RADIUS})")

    def __post_init__(self) -> None:
        if not self.image.undistort:
            raise InputError("Open3D has no lens distortion model: use --distortion undistort")
        if self.image.alpha != "none":
            raise InputError("Open3D's RGB-D images have no alpha: leave --alpha none")
        if self.voxel_size is not None and not self.fuse:
            raise InputError("voxel_size applies to fusion only: add --fuse")
        if self.voxel_size is not None and not self.voxel_size > 0:
            raise InputError(f"voxel_size must be positive, got {self.voxel_size}")


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the layout described in the module docstring; depth needs the capture's mesh."""
    mesh = capture_geometry(capture, "the Open3D export (rendered depth)")
    plans = plan_views(capture.views, options.image)
    view_stems = stems(capture.views, digits=6)
    names = [f"{COLOR}/{s}{p.suffix}" for s, p in zip(view_stems, plans)]
    scale = depth_scale(_max_depth(mesh.vertices, plans))
    lo, hi = mesh.bounds
    rgbd = {
        "depth_scale": scale,
        "depth_trunc": (DEPTH_MAX_RAW + 1) / scale,
        "mesh_radius": float(np.linalg.norm(hi - lo) / 2),
        **({"unit": capture.alignment.units} if capture.alignment else {}),
    }
    depth_paths = [folder / DEPTH / f"{s}.png" for s in view_stems]
    _write_cameras(plans, view_stems, folder)
    with second_core(workers) as overlap:  # see _write_depths
        if not overlap:
            write_images(plans, names, folder, workers=workers, progress=progress)
            _write_depths(mesh, plans, depth_paths, scale, progress)
        else:
            with ThreadPoolExecutor(2, thread_name_prefix="fsconvert-open3d") as helpers:
                colour = helpers.submit(write_images, plans, names, folder, workers=workers, progress=progress)
                try:
                    _write_depths(mesh, plans, depth_paths, scale, progress, helpers, colour)
                finally:  # the colour thread finishes its running view before an error propagates
                    colour.result()
    write_json(folder / RGBD, rgbd)
    if options.fuse:
        fuse(folder, options.voxel_size, progress=progress)
    return {"images": names, **frame_record(capture.views, options.image)}


def depth_scale(max_depth: float) -> float:
    """Raw units per mesh unit: the largest 3-significant-digit number mapping `max_depth` into uint16."""
    if not max_depth > 0:
        raise InputError("the mesh is behind every camera")
    s = DEPTH_MAX_RAW / max_depth
    step = 10.0 ** (np.floor(np.log10(s)) - 2)
    return float(f"{np.floor(s / step) * step:.3g}")


def read(out_dir: str | Path) -> list[ExportedView]:
    """Cameras from `trajectory.json` through `o3d.io.read_pinhole_camera_trajectory`, named by color/."""
    out = Path(out_dir)
    names = frame_names(out)
    params = _read_trajectory(out / TRAJECTORY_JSON, len(names))
    return [ExportedView(n, _camera(p.intrinsic, out / TRAJECTORY_JSON), p.extrinsic) for n, p in zip(names, params)]


def read_log(out_dir: str | Path) -> list[ExportedView]:
    """Poses from `trajectory.log` (Open3D's reader inverts them), intrinsics from `intrinsics/<stem>.json`."""
    import open3d as o3d

    out = Path(out_dir)
    names = frame_names(out)
    params = _read_trajectory(out / TRAJECTORY_LOG, len(names))
    views = []
    for name, p in zip(names, params):
        path = out / INTRINSICS / f"{Path(name).stem}.json"
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            intrinsic = o3d.io.read_pinhole_camera_intrinsic(str(path))
        views.append(ExportedView(name, _camera(intrinsic, path), p.extrinsic))
    return views


PROGRAMS = (
    Program("open3d", f"Open3D's read_pinhole_camera_trajectory on {TRAJECTORY_JSON} (intrinsics and poses)",
            lambda folder: Reading(read(folder))),
    Program("open3d-log", f"Open3D on the Redwood {TRAJECTORY_LOG} (poses only) with {INTRINSICS}/<stem>.json",
            lambda folder: Reading(read_log(folder))),
)


def frame_names(out_dir: Path) -> list[str]:
    """`color/<file>` for every colour image, sorted: frame i of the trajectories."""
    folder = Path(out_dir) / COLOR
    if not folder.is_dir():
        raise InputError(f"not an Open3D export (no {COLOR}/ folder)", file=out_dir)
    return [f"{COLOR}/{p.name}" for p in sorted(folder.iterdir()) if p.is_file()]


def fuse(out_dir: str | Path, voxel_size: float | None = None, *, progress: bool = False) -> Path:
    """TSDF-fuse the export's RGB-D frames (cameras read back from trajectory.json) into `fused_mesh.ply`.

    Voxel size defaults to mesh_radius / VOXELS_PER_RADIUS; depth_scale and depth_trunc come from rgbd.json.
    """
    import open3d as o3d

    out = Path(out_dir)
    rgbd = read_rgbd_json(out)
    frames = [
        RGBDFrame(out / v.name, out / DEPTH / f"{Path(v.name).stem}.png", v.camera, v.world_to_cam) for v in read(out)
    ]
    mesh = integrate(
        frames,
        voxel_size=voxel_size if voxel_size is not None else rgbd["mesh_radius"] / VOXELS_PER_RADIUS,
        depth_scale=rgbd["depth_scale"],
        depth_trunc=rgbd["depth_trunc"],
        progress=progress,
    )
    if len(mesh.vertices) == 0:
        raise InputError("TSDF fusion produced an empty mesh (no depth inside the truncation range)", file=out)
    path = out / FUSED
    if not o3d.io.write_triangle_mesh(str(path), mesh):
        raise OutputError(f"{path}: cannot write")
    return path


def read_rgbd_json(out_dir: str | Path) -> dict[str, float]:
    """`rgbd.json`: depth_scale, depth_trunc, mesh_radius (all positive numbers)."""
    path = Path(out_dir) / RGBD
    try:
        data = json.loads(path.read_text())
        values = {key: float(data[key]) for key in ("depth_scale", "depth_trunc", "mesh_radius")}
    except FileNotFoundError:
        raise InputError("missing (not an Open3D export?)", file=path) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"unreadable: {exc!r}", file=path) from None
    for key, value in values.items():
        if not value > 0:
            raise InputError(f"must be positive, got {value}", file=path, key=key)
    return values


def _max_depth(vertices: np.ndarray, plans: list[ViewPlan]) -> float:
    """An upper bound of every rendered depth: the largest vertex z over all output cameras."""
    return max(float(np.max(vertices @ p.world_to_cam[2, :3] + p.world_to_cam[2, 3])) for p in plans)


def _write_depths(mesh: Geometry, plans: list[ViewPlan], paths: list[Path], scale: float, progress: bool,
                  encoder: Executor | None = None, beside: Future[Any] | None = None) -> None:
    """Render z-depth through every output camera; write round(z·scale) as uint16 PNG, encoded here or on
    `encoder` while the next view renders (one map at a time); stop at the first error of the work `beside` it.

    `write` overlaps the depth maps with the colour images on a second core (`threads.second_core`): this thread
    renders every depth map (OSMesa's context is one thread's; measured 0.25 s per 12.6 MP view at 1.3 M faces), a
    helper thread runs the colour images on all `workers` lanes, and each 16-bit PNG is encoded on the other helper
    thread while the next view renders. The depth maps take about a third of the work: with `workers` − 1 colour
    lanes a core idled once they were done (12 views of 12.6 MP at -j 2: 3.2 s, now 2.7–3.0 s). Serial otherwise:
    colour images, then depth maps."""
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    waiting: deque[Future[None]] = deque()
    for i, png, near in depth_pngs(mesh, plans, scale, progress=progress):
        if beside is not None and beside.done():
            beside.result()  # raises its error now rather than after every depth map
        if 0.5 / (near * scale) > DEPTH_MAX_RELATIVE_ERROR:
            raise InputError(
                f"depth range {near:.6g}..{DEPTH_MAX_RAW / scale:.6g} does not fit uint16 with "
                f"{DEPTH_MAX_RELATIVE_ERROR:g} relative precision",
                view=plans[i].view.id,
            )
        if encoder is None:
            write_png(paths[i], png)
            continue
        waiting.append(encoder.submit(write_png, paths[i], png))
        while len(waiting) > 1:
            waiting.popleft().result()
    for future in waiting:
        future.result()


def _write_cameras(plans: list[ViewPlan], stems: list[str], out: Path) -> None:
    """trajectory.json, trajectory.log and intrinsics/<stem>.json, as Open3D's own writers write them."""
    (out / INTRINSICS).mkdir()
    for plan, stem in zip(plans, stems):
        write_text(out / INTRINSICS / f"{stem}.json", camerafiles.intrinsic_json(plan.camera))
    world_to_cams = [plan.world_to_cam for plan in plans]
    write_text(out / TRAJECTORY_JSON, camerafiles.trajectory_json([plan.camera for plan in plans], world_to_cams))
    write_text(out / TRAJECTORY_LOG, camerafiles.trajectory_log(world_to_cams))


def _read_trajectory(path: Path, expected: int) -> list[Any]:
    """PinholeCameraParameters of a .json or .log trajectory; Open3D only logs failures, so count them.
    (Open3D has no type information: its objects are Any here.)"""
    import open3d as o3d

    if not path.is_file():
        raise InputError("missing", file=path)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        params: list[Any] = o3d.io.read_pinhole_camera_trajectory(str(path)).parameters
    if len(params) != expected:
        raise InputError(f"Open3D read {len(params)} camera(s), but there are {expected} colour images", file=path)
    return params


def _camera(intrinsic: Any, path: Path) -> Camera:  # an o3d.camera.PinholeCameraIntrinsic
    if intrinsic.width <= 0 or intrinsic.height <= 0:
        raise InputError("Open3D read no valid intrinsic (width/height missing)", file=path)
    return Camera(intrinsic.width, intrinsic.height, intrinsic.intrinsic_matrix)
