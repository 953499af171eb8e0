"""Depth products: what formats derive from the mesh through the output cameras, made here for all of them.

Depth maps through any cameras (distorted ones exactly, grouped by orientation to reuse the depth
buffer), silhouette masks, depth ranges, and which views see which surface points. Formats only
encode the values their own way (depth units, alpha channels, file names). `fsconvert.render` imports
OpenGL on first use (depth passes need no pyrender), and `fsconvert.mesh` trimesh only where a Trimesh is asked
for: listing formats or `--help` does not pay them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, overload

import cv2
import numpy as np
from tqdm import tqdm

from . import conventions as cv
from .errors import InputError
from .imagestage import Footprint
from .mesh import capture_geometry
from .model import UNDISTORT_CRITERIA, Camera, Capture
from .render import Renderer, distorted_render
from .threads import beside

if TYPE_CHECKING:
    from typing import TypeAlias

    import trimesh

    from .mesh import Geometry

    Surface: TypeAlias = trimesh.Trimesh | Geometry
    """What is rendered: a Trimesh, or a mesh file's vertices and faces alone (`Renderer`)."""

VISIBILITY_MAX_SIDE = 480
"""Default long side of the depth maps point visibility is tested on (observations stay exact)."""
_BORDER_MARGIN_PX = 2
_ROUND_TRIP_TOL_PX = 0.01


class Posed(Protocol):
    """Anything with a camera and a world→camera pose: a ViewPlan, an ExportedView, a `Pose`."""

    @property
    def camera(self) -> Camera: ...  # read-only: frozen dataclasses qualify

    @property
    def world_to_cam(self) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class Pose:
    """A camera at a pose (e.g. the pinhole canvas a visibility test renders)."""

    camera: Camera
    world_to_cam: np.ndarray


# ---- rendering -------------------------------------------------------------------------------------


Bands = Iterable[tuple[int, np.ndarray]]
"""A view's z-depth in bands of rows from the top: (first row, float32 rows; 0 = background)."""


def depth_bands(mesh: Surface, views: Sequence[Posed], *, progress: bool = False,
                desc: str = "depth") -> Iterator[tuple[int, Bands]]:
    """(index into `views`, its z-depth through the view's camera, lens model included) for every view:
    landscape views first, then portrait ones, so that each orientation reuses one depth buffer (it is made anew
    for each new size). Pinhole views come
    256 rows at a time (`Renderer.depth_rows`: a band is overwritten by the next, and a 12.6 MP view's whole
    map, 50 MB, is never made), distorted ones as one band, their whole map (`render.distorted_render`).
    Read a view's bands before the next view.

    Each view is drawn into a depth buffer of its own size (`depthpass.DepthPass`), so its depth does not depend
    on the views drawn before it (in the context's shared buffer, it did in the last float bits: ±1 step in
    ~0.02 % of nerf's uint16 depth pixels).
    """
    with Renderer(mesh) as renderer:
        for i in _render_order(views, progress, desc):
            camera, world_to_cam = views[i].camera, views[i].world_to_cam
            yield i, ([(0, distorted_render(renderer, camera, world_to_cam, depth_only=True).depth)]
                      if camera.has_distortion else renderer.depth_rows(camera, world_to_cam))


def depth_map(bands: Bands, size: tuple[int, int]) -> np.ndarray:
    """A view's whole H×W z-depth map (float32) from its bands (`size`: width, height)."""
    z = np.empty(size[::-1], np.float32)
    for top, band in bands:
        z[top:top + len(band)] = band
    return z


def render_masks(mesh: Surface, views: Sequence[Posed], footprints: Sequence[Footprint] | None = None, *,
                 progress: bool = False, desc: str = "masks",
                 in_view_order: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """(index into `views`, `silhouette` of its `depth_bands` depth and footprint), in the same order or with
    `in_view_order` in view order (a view's mask does not depend on the views drawn before it), the same bytes:
    pinhole views are drawn without depth (`Renderer.silhouette`, a coverage pass: 86 → 55 ms per 12.6 MP view
    of 20 000 faces), distorted ones threshold their resampled depth."""
    with Renderer(mesh) as renderer:
        for i in range(len(views)) if in_view_order else _render_order(views, progress, desc):
            camera, world_to_cam = views[i].camera, views[i].world_to_cam
            if camera.has_distortion:
                mask = silhouette(distorted_render(renderer, camera, world_to_cam, depth_only=True).depth)
            else:
                mask = renderer.silhouette(camera, world_to_cam)
            if footprints is not None:
                cv2.bitwise_and(mask, footprints[i].alpha(), dst=mask)
            yield i, mask


def depth_pngs(mesh: Surface, views: Sequence[Posed], scale: float, *, progress: bool = False,
               desc: str = "depth") -> Iterator[tuple[int, np.ndarray, float]]:
    """(index into `views`, round(z·scale) as uint16 with z its `depth_bands` depth (float32 arithmetic), the
    nearest z > 0 (inf: none)), in the same order, band by band."""
    for i, bands in depth_bands(mesh, views, progress=progress, desc=desc):
        camera = views[i].camera
        png, near = np.empty((camera.height, camera.width), np.uint16), math.inf
        for top, z in bands:
            near = min(near, float(np.min(z, where=z > 0, initial=np.inf)))
            np.multiply(z, np.float32(scale), out=z)
            png[top:top + len(z)] = np.rint(z, out=z)  # the float → uint16 cast of `astype`
        yield i, png, near


def _render_order(views: Sequence[Posed], progress: bool, desc: str) -> Iterable[int]:
    """Indices of `views`, landscape ones first (`depth_bands`), behind a progress bar."""
    order = sorted(range(len(views)), key=lambda i: views[i].camera.is_portrait)
    shown: Iterable[int] = tqdm(order, desc=desc, unit="view", disable=not progress, leave=False)
    return shown


@contextmanager
def subjects_ahead(capture: Capture, needed_for: str, plans: Sequence[Posed], image_alpha: str, *, workers: int,
                   progress: bool = False) -> Iterator[Sequence[Footprint] | None]:
    """Each view's silhouette of the capture's mesh (depth > 0) for the image option alpha "subject", else None:
    rendered in view order on a second core (`threads.beside`) while the block runs, for an image stage that takes
    view i's when it gets to it (`SilhouettesAhead`): the images start at once instead of after every silhouette
    (NeuS2, 12 views of 12.6 MP, -j 2: 4.5–4.6 → 3.7–3.9 s). The mesh is read (`capture_geometry(capture,
    needed_for)`) before the block, whose caller its errors reach, and kept through it. Without a second core they
    are all rendered before the block (a list). A dense scan's too render ahead (~0.3 s a view at 1.3 M faces): its
    GL context beside the image lanes holds the mesh and an 8-bit buffer (the coverage pass), NeuS2 at -j 2 651 MB
    at peak (with a depth buffer it was 760 MB, and they were rendered first: 521 MB, 6.6–7.0 against 5.2–5.4 s)."""
    if image_alpha != "subject":
        yield None
        return
    mesh = capture_geometry(capture, needed_for)
    ahead = SilhouettesAhead(len(plans))
    with beside(workers, lambda: ahead.render(mesh, plans), "fsconvert-silhouettes") as rendering:
        if rendering is None:
            found = silhouettes(mesh, plans, progress=progress)
            del mesh  # a dense scan's arrays are not held through the images
            yield found
            return
        try:
            yield ahead
        except BaseException:
            ahead.stop.set()  # the rendering ends at its next view
            raise
    rendering.result()  # an error after the last silhouette


class SilhouettesAhead(Sequence[Footprint]):
    """Silhouettes that one thread renders in view order (`render`) while others take them: `[i]` waits for view
    i's, and raises what ended the rendering before it (an error, or `stop`)."""

    def __init__(self, count: int) -> None:
        self.stop = threading.Event()
        self._count = count
        self._made: list[Footprint] = []
        self._end: BaseException | None = None  # set when the rendering has ended
        self._changed = threading.Condition()

    def render(self, mesh: Surface, views: Sequence[Posed]) -> None:
        """Render every view's silhouette in view order, or until `stop` is set (looked at between views)."""
        end: BaseException = RuntimeError("the silhouettes were stopped")
        try:
            for _, mask in render_masks(mesh, views, desc="silhouettes", in_view_order=True):
                if self.stop.is_set():
                    break
                with self._changed:
                    self._made.append(Footprint.of(mask))
                    self._changed.notify_all()
        except BaseException as exc:
            end = exc
            raise
        finally:
            with self._changed:
                self._end = end
                self._changed.notify_all()

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, i: int) -> Footprint: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Footprint]: ...

    def __getitem__(self, i: int | slice) -> Footprint | Sequence[Footprint]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._count))]
        k = range(self._count)[i]  # IndexError outside, negative indices from the end
        with self._changed:
            self._changed.wait_for(lambda: k < len(self._made) or self._end is not None)
            if k < len(self._made):
                return self._made[k]
            assert self._end is not None
            raise self._end


def silhouettes(mesh: Surface, views: Sequence[Posed], *, stop: threading.Event | None = None,
                progress: bool = False) -> list[Footprint]:
    """Each view's `render_masks` mask, packed (a 12.6 MP view's: 1.6 MB), in view order; [] once `stop` is set
    (looked at between views: on another thread, the work this one runs beside has failed)."""
    found: list[Footprint | None] = [None] * len(views)
    for i, mask in render_masks(mesh, views, progress=progress, desc="silhouettes"):
        if stop is not None and stop.is_set():
            return []
        found[i] = Footprint.of(mask)
    return [f for f in found if f is not None]


def foreground_span(z: np.ndarray, span: tuple[float, float] = (math.inf, 0.0)) -> tuple[float, float]:
    """The nearest and farthest z > 0 of depth rows `z` and of `span`, those of earlier rows ((inf, 0): none)."""
    return (min(span[0], float(np.min(z, where=z > 0, initial=np.inf))),
            max(span[1], float(np.max(z, where=z > 0, initial=0.0))))


def band_span(bands: Bands) -> tuple[float, float]:
    """`foreground_span` of a view's depth from its bands."""
    span = (math.inf, 0.0)
    for _, z in bands:
        span = foreground_span(z, span)
    return span


def depth_range(span: tuple[float, float], margin: float, view: int) -> tuple[float, float]:
    """(near, far) of a view's foreground `span` (`foreground_span` of its depth), each moved out by `margin` ×
    (far − near) (near stays above half its value): the depth of every surface point the view sees at a pixel
    centre, with room; InputError when the view sees no mesh."""
    near, far = span
    if not far > 0:
        raise InputError("the mesh is not visible in this view: no depth range", view=view)
    pad = margin * (far - near)
    return max(near - pad, near / 2), far + pad


def silhouette(depth: np.ndarray) -> np.ndarray:
    """uint8 mask: 255 where the mesh is (depth > 0), else 0."""
    mask: np.ndarray = cv2.compare(depth, 0.0, cv2.CMP_GT)  # type: ignore[call-overload]  # stubs: no scalars
    return mask


def point_visibility(mesh: Surface, views: Sequence[Posed], xyz: np.ndarray, tolerance: float, *,
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
    for j, bands in depth_bands(mesh, canvases, progress=progress, desc=desc):
        depth = depth_map(bands, canvases[j].camera.size)
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
    ok: np.ndarray = (x0 >= 0) & (x0 + 1 < W) & (y0 >= 0) & (y0 + 1 < H)
    x0, y0 = np.where(ok, x0, 0), np.where(ok, y0, 0)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        d = depth[y0 + dy, x0 + dx].astype(np.float64)
        ok &= (d > 0) & (np.abs(d - z) <= tolerance * z)
    return ok


def _pinhole_canvas(camera: Camera) -> Camera:
    """`camera` without distortion, cropped/extended so it covers the undistorted footprint of every pixel."""
    if not camera.has_distortion:
        return camera
    xy = camera.border_rays()
    px = camera.pinhole().project(np.column_stack([xy, np.ones(len(xy))]))
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
