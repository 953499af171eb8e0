"""What formats derive from the mesh and the output cameras, made once here for all of them.

Depth maps through any cameras (distorted ones exactly, grouped by orientation to reuse the GL
buffer), silhouette masks, which views see which surface points, and the writers for the results:
one PNG writer (8- and 16-bit), one binary PLY writer. Formats only encode values their own way
(depth units, alpha channels, file names). Rendering is imported on first use (pyrender/OpenGL).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from . import conventions as cv
from .errors import InputError, OutputError
from .model import Camera

if TYPE_CHECKING:
    import trimesh

    from .imagestage import Footprint

UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
"""Termination of every iterative undistortion (cv2.undistortPoints): converged to ~1e-12 px."""
VISIBILITY_MAX_SIDE = 480
"""Default long side of the depth maps point visibility is tested on (observations stay exact)."""
_BORDER_MARGIN_PX = 2
_ROUND_TRIP_TOL_PX = 0.01
_UINT16_PNG = (cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_COMPRESSION, 1)
_PLY_TYPES = {"f8": "double", "f4": "float", "u1": "uchar"}


class Posed(Protocol):
    """Anything with a camera and a world→camera pose: a ViewPlan, an ExportedView, a `Pose`."""

    camera: Camera
    world_to_cam: np.ndarray


@dataclass(frozen=True, eq=False)
class Pose:
    """A camera at a pose (e.g. the pinhole canvas a visibility test renders)."""

    camera: Camera
    world_to_cam: np.ndarray


# ---- rendering -------------------------------------------------------------------------------------


def render_depths(mesh: trimesh.Trimesh, views: Sequence[Posed], *, progress: bool = False,
                  desc: str = "depth") -> Iterator[tuple[int, np.ndarray]]:
    """(index into `views`, H×W float32 z-depth, 0 = background) through each view's camera, lens
    model included (`render.distorted_render`): landscape views first, then portrait ones, so that
    each orientation reuses one GL buffer (views of 12.6 MP alternating in orientation would re-create
    the context at every view, ~0.15 s each).

    The order is part of the output: OSMesa's depth differs in the last float bits with the size of
    the buffer a view is drawn into (±1 step in ~0.02 % of nerf's uint16 depth pixels).
    """
    from .render import Renderer, distorted_render

    order = sorted(range(len(views)), key=lambda i: views[i].camera.is_portrait)
    with Renderer(mesh) as renderer:
        for i in tqdm(order, desc=desc, unit="view", disable=not progress, leave=False):
            yield i, distorted_render(renderer, views[i].camera, views[i].world_to_cam, depth_only=True).depth


def depth_range(depth: np.ndarray, margin: float, view: int) -> tuple[float, float]:
    """(near, far) of a z-depth map's foreground, each moved out by `margin` × (far − near) (near stays
    above half its value): the depth of every surface point the view sees at a pixel centre, with room."""
    z = depth[depth > 0]
    if not z.size:
        raise InputError("the mesh is not visible in this view: no depth range", view=view)
    near, far = float(z.min()), float(z.max())
    pad = margin * (far - near)
    return max(near - pad, near / 2), far + pad


def silhouette(depth: np.ndarray, footprint: Footprint | None = None) -> np.ndarray:
    """uint8 mask: 255 where the mesh is (depth > 0) and, with a footprint, the pixel has source data."""
    mask = depth > 0
    if footprint is not None:
        mask &= footprint.mask()
    return np.where(mask, 255, 0).astype(np.uint8)


def point_visibility(mesh: trimesh.Trimesh, views: Sequence[Posed], xyz: np.ndarray, tolerance: float, *,
                     max_side: int = VISIBILITY_MAX_SIDE, progress: bool = False,
                     desc: str = "visibility") -> list[tuple[np.ndarray, np.ndarray]]:
    """Per view: which world points `xyz` it sees (N bool), and where (M×2, corner-origin pixels as
    COLMAP stores them) for the M points it sees.

    The depth test uses a pinhole render with the same K on a canvas covering every pixel's ray (long
    side ≤ `max_side`), at each point's pinhole projection (its exact ray): the depths at the four
    pixel centres around it must all be foreground and within `tolerance`·z. The observation is the
    projection through the full camera model, kept inside the image and only where undistorting it
    returns to the point's ray.
    """
    canvases = [Pose(_bounded(_pinhole_canvas(v.camera), max_side), v.world_to_cam) for v in views]
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, bool), np.zeros((0, 2)))] * len(views)
    for j, depth in render_depths(mesh, canvases, progress=progress, desc=desc):
        out[j] = _observe(views[j].camera, views[j].world_to_cam, canvases[j].camera, depth, xyz, tolerance)
    return out


def _observe(camera: Camera, world_to_cam: np.ndarray, canvas: Camera, depth: np.ndarray, xyz: np.ndarray,
             tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    pts = cv.homogeneous(world_to_cam)
    X = xyz @ pts[:3, :3].T + pts[:3, 3]
    z = X[:, 2]
    front = z > 0
    X = np.where(front[:, None], X, 1.0)  # points behind the camera: any finite stand-in, never visible
    visible = front & _depth_agrees(depth, canvas.project(X), z, tolerance)
    corner = Camera(camera.width, camera.height, cv.K_to_corner_origin(camera.K), camera.dist)
    uv = corner.project(X)
    visible &= (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    if camera.has_distortion and visible.any():
        back = cv2.undistortPoints(uv[visible].reshape(-1, 1, 2), corner.K, corner.dist,
                                   criteria=UNDISTORT_CRITERIA).reshape(-1, 2)
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
    xy = cv2.undistortPoints(border.reshape(-1, 1, 2), camera.K, camera.dist, criteria=UNDISTORT_CRITERIA)
    px = pinhole.project(np.column_stack([xy.reshape(-1, 2), np.ones(len(border))]))
    x0, y0 = np.floor(px.min(axis=0)).astype(int) - _BORDER_MARGIN_PX
    x1, y1 = np.ceil(px.max(axis=0)).astype(int) + _BORDER_MARGIN_PX
    return Camera(int(x1 - x0 + 1), int(y1 - y0 + 1), cv.crop_K(camera.K, x0, y0))


def _bounded(camera: Camera, max_side: int) -> Camera:
    """`camera` resized so that its long side is at most `max_side` (never enlarged)."""
    scale = min(1.0, max_side / max(camera.size))
    if scale == 1:
        return camera
    size = (max(1, round(camera.width * scale)), max(1, round(camera.height * scale)))
    return Camera(*size, cv.resize_K(camera.K, size[0] / camera.width, size[1] / camera.height))


# ---- writers ---------------------------------------------------------------------------------------


def write_png(path: Path, img: np.ndarray) -> None:
    """Lossless PNG (16-bit images, i.e. depth maps: `up` filter, zlib level 1; for a 12.6 MP depth map
    0.11 s and 1.8 MB, against 0.16 s and 2.5 MB with `up` and RLE, 0.18 s and 3.7 MB by default)."""
    write_encoded(path, img, ".png", _UINT16_PNG if img.dtype == np.uint16 else [])


def write_encoded(path: Path, img: np.ndarray, ext: str, params: Sequence[int] = ()) -> None:
    """cv2.imencode to `ext` and write; failures become OutputError."""
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise OutputError(f"{path}: cannot encode image")
    write_bytes(path, buf.tobytes())


def ply_vertices(xyz: np.ndarray, normals: np.ndarray | None = None, rgb: np.ndarray | None = None, *,
                 xyz_type: str = "<f4", normal_type: str = "<f4") -> np.ndarray:
    """A structured vertex array: x y z, then nx ny nz with normals, then red green blue (uchar) with rgb."""
    fields = [(n, xyz_type) for n in "xyz"]
    fields += [(f"n{n}", normal_type) for n in "xyz"] if normals is not None else []
    fields += [(n, "u1") for n in ("red", "green", "blue")] if rgb is not None else []
    vertex = np.empty(len(xyz), np.dtype(fields))
    for i, n in enumerate("xyz"):
        vertex[n] = xyz[:, i]
        if normals is not None:
            vertex[f"n{n}"] = normals[:, i]
    if rgb is not None:
        vertex["red"], vertex["green"], vertex["blue"] = np.asarray(rgb).T
    return vertex


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray | None = None, *,
              comment: str | None = None) -> None:
    """Binary little-endian PLY of a structured vertex array (f8 double, f4 float, u1 uchar) and
    optional triangles (F×3 vertex indices, written as `list uchar int vertex_indices`)."""
    props = "".join(f"property {_PLY_TYPES[vertices.dtype[n].str[1:]]} {n}\n" for n in vertices.dtype.names)
    header = "ply\nformat binary_little_endian 1.0\n" + (f"comment {comment}\n" if comment else "")
    header += f"element vertex {len(vertices)}\n{props}"
    body = vertices.tobytes()
    if faces is not None:
        header += f"element face {len(faces)}\nproperty list uchar int vertex_indices\n"
        table = np.empty(len(faces), np.dtype([("count", "u1"), ("index", "<i4", 3)]))
        table["count"], table["index"] = 3, faces
        body += table.tobytes()
    write_bytes(path, (header + "end_header\n").encode("ascii") + body)


def write_bytes(path: Path, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
