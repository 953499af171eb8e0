"""Headless rendering of a mesh through internal-convention cameras, pinhole and distorted.

`Renderer` draws into one OSMesa context at a time, double-sided: colour renders unlit, so colours equal the
texture (or vertex colours) in every view, with pyrender for a Trimesh and with pyrender's shaders alone for a
mesh file's arrays (`ColourPass`, the same pixels); depth-only renders with a depth-only GL pass (`DepthPass`,
same matrices). Depth is z-depth in mesh units (0 = background), sampled at
pixel centres. Distorted cameras are rendered as a pinhole image on a canvas that covers the
undistorted footprint, then resampled: for every distorted pixel, its exactly undistorted ray.
Where that ray falls between pinhole samples across a depth discontinuity (silhouettes, occlusion
edges), its depth is ray-cast exactly (open3d, imported on first use).

PyOpenGL is imported by the functions that draw, the first time a context is made, and pyrender (with trimesh
and scipy, ~0.75 s and ~100 MB) by the first colour render of a Trimesh only: depth passes and the colour passes of
a `Geometry` draw on an OSMesa context of their own (`DepthContext`). Importing this module (the check and its
settings, hence every command's start-up) loads neither.

One module of ~480 lines on purpose: the contexts, the colour passes and the distorted renders share the
renderer's GL state and its buffer-growth rules (the depth pass itself is `fsconvert.depthpass`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from . import conventions as cv
from .colourpass import GREY, ColourPass, read_color_buffer
from .depthpass import (
    DepthContext,
    DepthPass,
    buffer_side,
    compare_gl_contexts_by_address,
    linearised,
    read_coverage,
    read_depth_buffer,
    return_freed_memory,
)
from .mesh import Geometry
from .model import UNDISTORT_CRITERIA, Camera

if TYPE_CHECKING:
    import pyrender
    import trimesh
    from pyrender.platforms.osmesa import OSMesaPlatform

UNDISTORT_TOLERANCE_PX = 1e-6
"""Largest allowed re-projection error of an undistorted pixel coordinate."""

_CHUNK_ROWS = 256
_DEPTH_CONTINUITY = 0.002
"""Bilinear depth only where the four pinhole neighbours differ by less than this fraction of their depth."""

_BAND_ROWS = 256
"""Depth-buffer rows `Renderer.depth_rows` reads at a time (4.4 MB of float32 at 4344 px, a whole
view's 50 MB)."""
_SHARED_BUFFER_PIXELS = 2048 * 2048
"""Largest buffer grown to fit every size asked so far (larger ones fit the current request)."""


@dataclass(frozen=True)
class Render:
    """Colour (H×W×3 uint8, None for depth-only renders) and z-depth (H×W float32, 0 = background)."""

    color: np.ndarray | None
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.depth > 0


class Renderer:
    """Renders one mesh, unlit, through any number of pinhole cameras, of any size, in one reused context.

    Colours come from the mesh texture if it has one, else its vertex colours, else grey. A mesh file's
    `Geometry` (read without trimesh) draws depth and silhouettes, the same values as its Trimesh, and colour from
    its vertex colours (`Geometry.colors`, grey where None): the pixels pyrender draws of a Trimesh with those
    colours.
    """

    def __init__(self, mesh: trimesh.Trimesh | Geometry, *, bg_color: tuple[int, int, int] = (0, 0, 0)) -> None:
        if os.environ.get("PYOPENGL_PLATFORM") != "osmesa":
            raise RuntimeError("fsconvert renders with OSMesa: import fsconvert before OpenGL/pyrender, "
                               "with PYOPENGL_PLATFORM unset or 'osmesa'")
        self._bg = np.array(bg_color, np.uint8)
        self._scene: pyrender.Scene | None = None
        self._camera_node: pyrender.Node | None = None
        self._depth_pass: DepthPass | None = None
        self._colour_pass: ColourPass | None = None
        self._mesh = mesh
        self._raycaster: Any | None = None  # an o3d.t.geometry.RaycastingScene (open3d is untyped)
        self._buffer: np.ndarray | None = None
        """A band of the depth buffer as `silhouette` and `depth_rows` read it, kept from view to view."""
        lo, hi = mesh.bounds
        self._corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        self._platform: OSMesaPlatform | None = None
        self._depth_context: DepthContext | None = None
        self._gl: pyrender.Renderer | None = None
        self._closed = False

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the OpenGL context (idempotent)."""
        self._free_context()
        self._buffer = None
        self._closed = True

    def render(self, camera: Camera, world_to_cam: np.ndarray, *, depth_only: bool = False) -> Render:
        """Render through a pinhole `camera` (no distortion, no skew) at pose `world_to_cam` (OpenCV)."""
        if camera.has_distortion:
            raise ValueError("Renderer.render needs a pinhole camera; use distorted_render for distortion")
        if camera.K[0, 1] != 0:
            raise ValueError("pyrender cannot render a camera with skew")
        if self._closed:
            raise RuntimeError("Renderer is closed")
        w2c = cv.homogeneous(world_to_cam)
        clip = self._clip(w2c)
        if clip is None:  # the whole mesh is behind the camera
            depth = np.zeros((camera.height, camera.width), np.float32)
            return Render(None if depth_only else np.tile(self._bg, (*depth.shape, 1)), depth)
        znear, zfar = clip
        if depth_only:
            framebuffer = self._draw_depth(camera, w2c, clip)
            return Render(None, _read_depth(camera.width, camera.height, znear, zfar, framebuffer))
        if isinstance(self._mesh, Geometry):
            self._own_context(camera.width, camera.height)
            if self._colour_pass is None:
                self._colour_pass = ColourPass(self._mesh)
            self._colour_pass.draw(cv.gl_view_matrix(w2c), cv.gl_projection_matrix(camera.K, *camera.size, *clip),
                                   *camera.size, (*(self._bg / 255.0), 1.0))
            depth = _read_depth(camera.width, camera.height, znear, zfar)
            return Render(read_color_buffer(camera.width, camera.height), depth)
        import pyrender

        pr_camera = pyrender.IntrinsicsCamera(*cv.pyrender_intrinsics(camera.K), znear=znear, zfar=zfar)
        if self._scene is None:
            self._scene = pyrender.Scene(bg_color=np.array([*self._bg, 255]) / 255.0)
            self._scene.add(_pyrender_mesh(self._mesh))
        if self._camera_node is not None:
            self._scene.remove_node(self._camera_node)
        self._camera_node = self._scene.add(pr_camera, pose=cv.w2c_cv_to_c2w_gl(w2c))
        drawer = self._context(camera.width, camera.height)
        from OpenGL import GL

        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)  # the context's own buffer (a depth pass leaves its own bound)
        # double-sided, like the depth pass: a mesh with reversed winding must not be seen through
        drawer.render(self._scene, pyrender.RenderFlags.SKIP_CULL_FACES | pyrender.RenderFlags.FLAT)
        depth = _read_depth(camera.width, camera.height, znear, zfar)
        return Render(drawer.read_color_buf(), depth)

    def silhouette(self, camera: Camera, world_to_cam: np.ndarray) -> np.ndarray:
        """H×W uint8 through a pinhole `camera`: 255 where the mesh is seen, else 0. The same pixels as
        `render(...).depth > 0`, drawn without depth (`DepthPass.draw_coverage`): the depth pass leaves its buffer
        below 1 exactly where a fragment passed (cleared to 1, GL_LESS), which is wherever a fragment falls, since
        none reaches depth 1: with zfar 1 % beyond the mesh's box and znear ≥ 1e-4·zfar (`_clip`), the farthest
        fragment's depth is ≤ 1 − 1e-6, 16 steps of the 24-bit buffer below it; and a buffer value below 1
        linearises to a positive depth, 1 to the background's 0."""
        self._pinhole_only(camera, "silhouette")
        seen = np.empty((camera.height, camera.width), np.uint8)
        w2c = cv.homogeneous(world_to_cam)
        clip = self._clip(w2c)
        if clip is None:  # the whole mesh is behind the camera
            seen[:] = 0
            return seen
        read_coverage(seen, self._draw_depth(camera, w2c, clip, coverage=True))
        return cv2.flip(seen, 0, dst=seen)  # GL rows run bottom-up

    def depth_rows(self, camera: Camera, world_to_cam: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """The z-depth through a pinhole `camera`, value for value `render(..., depth_only=True).depth`, in bands
        of _BAND_ROWS rows from the top: (first row, float32 band: this renderer's array, overwritten by
        the next band). A 12.6 MP view's whole map is 50 MB, a band 4.4 MB."""
        self._pinhole_only(camera, "depth_rows")
        W, H = camera.size
        rows = min(H, _BAND_ROWS)
        w2c = cv.homogeneous(world_to_cam)
        clip = self._clip(w2c)
        framebuffer = 0 if clip is None else self._draw_depth(camera, w2c, clip)
        for top in range(0, H, rows):
            n = min(rows, H - top)
            band = self._band(W, n)
            if clip is None:  # the whole mesh is behind the camera
                band[:] = 0
            else:  # GL rows run bottom-up: image rows top … top + n − 1 are GL rows H − top − 1 … H − top − n
                linearised(cv2.flip(read_depth_buffer(band, H - top - n, framebuffer), 0, dst=band), *clip)
            yield top, band

    def _pinhole_only(self, camera: Camera, caller: str) -> None:
        if camera.has_distortion or camera.K[0, 1] != 0:
            raise ValueError(f"Renderer.{caller} needs a pinhole camera without skew")
        if self._closed:
            raise RuntimeError("Renderer is closed")

    def _band(self, width: int, rows: int) -> np.ndarray:
        """This renderer's rows×width float32 scratch array (`depth_rows`)."""
        if self._buffer is None or self._buffer.size < width * rows:
            self._buffer = np.empty(width * rows, np.float32)
        return self._buffer[:width * rows].reshape(rows, width)

    def _clip(self, w2c: np.ndarray) -> tuple[float, float] | None:
        """(znear, zfar) around the mesh's bounding box seen from 4×4 `w2c`; None when the whole mesh is behind
        the camera."""
        z = self._corners @ w2c[2, :3] + w2c[2, 3]
        if z.max() <= 0:
            return None
        zfar = float(z.max()) * 1.01
        return max(float(z.min()) * 0.99, zfar * 1e-4), zfar

    def _draw_depth(self, camera: Camera, w2c: np.ndarray, clip: tuple[float, float], *,
                    coverage: bool = False) -> int:
        """The depth pass (`coverage`: its coverage pass) through `camera` at 4×4 `w2c` with clip range `clip`; the
        framebuffer it drew into (its own, of the view's size: the context's buffer stays as small as colour
        renders leave it)."""
        if self._platform is not None:
            self._platform.make_current()
        else:
            if self._depth_context is None:
                self._depth_context = DepthContext()
            self._depth_context.make_current()
        if self._depth_pass is None:
            self._depth_pass = DepthPass(self._mesh)
        draw = self._depth_pass.draw_coverage if coverage else self._depth_pass.draw
        return draw(cv.gl_view_matrix(w2c), cv.gl_projection_matrix(camera.K, camera.width, camera.height, *clip),
                    camera.width, camera.height)

    def ray_depth(self, rays: np.ndarray, world_to_cam: np.ndarray) -> np.ndarray:
        """Exact z-depth (0 = miss) of the first surface along N×3 camera-frame rays (x, y, 1), ray-cast
        in float32 world coordinates with open3d."""
        import open3d as o3d  # ~2 s to import: only when needed

        if self._raycaster is None:
            self._raycaster = o3d.t.geometry.RaycastingScene()
            self._raycaster.add_triangles(o3d.core.Tensor(np.asarray(self._mesh.vertices, np.float32)),
                                          o3d.core.Tensor(np.asarray(self._mesh.faces, np.uint32)))
        c2w = cv.w2c_to_c2w(world_to_cam)
        directions = np.asarray(rays, np.float64) @ c2w[:3, :3].T  # not normalised: t_hit is z-depth
        origins = np.broadcast_to(c2w[:3, 3], directions.shape)
        hits = self._raycaster.cast_rays(o3d.core.Tensor(np.hstack([origins, directions]).astype(np.float32)))
        t = hits["t_hit"].numpy()
        return np.where(np.isfinite(t), t, 0).astype(np.float32)

    def _context(self, width: int, height: int) -> pyrender.Renderer:
        """pyrender's current OSMesa context with a `width`×`height` viewport in the lower-left corner of its buffer
        (where colour renders draw; depth passes draw into their own framebuffer, `DepthPass`, on this context once
        it exists, else on a `DepthContext`).

        A buffer that is too small is re-created (~0.15 s, mesh re-uploaded; swapping only OSMesa's buffer
        would be cheaper, but Mesa then keeps ~100 MB per buffer size until the context is destroyed). Up
        to _SHARED_BUFFER_PIXELS it grows to the largest width and height asked (rounded up to
        BUFFER_STEP), so that landscape and portrait views and per-view canvases share one context;
        beyond, it fits the request: a square buffer for 12.6 MP views of both orientations would hold
        ~70 MB more (render such views grouped by orientation).
        """
        import pyrender
        from pyrender.platforms.osmesa import OSMesaPlatform

        if self._depth_context is not None:  # depth passes drew without pyrender so far: its context takes over
            self._free_context()
        old = (0, 0) if self._platform is None else (self._platform.viewport_width, self._platform.viewport_height)
        grown = _grown_buffer(old, width, height)
        if grown is not None:
            compare_gl_contexts_by_address()  # before pyrender keys its first shader on this context
            self._free_context()
            self._platform = OSMesaPlatform(*grown)
            self._platform.init_context()
            self._platform.make_current()
            self._gl = pyrender.Renderer(*grown)
        assert self._platform is not None and self._gl is not None  # made above, or by an earlier call
        self._platform.make_current()
        self._gl.viewport_width, self._gl.viewport_height = width, height
        return self._gl

    def _own_context(self, width: int, height: int) -> None:
        """`_context` without pyrender, for a `Geometry`'s colour passes: a `DepthContext` whose own buffer grows by
        the same rule, so that every render draws into a buffer of the size pyrender's would have (llvmpipe's
        rasterisation depends on the buffer's height). A depth-only context (1×1) counts as none."""
        context = self._depth_context
        old = (0, 0) if context is None or context.size == (1, 1) else context.size
        grown = _grown_buffer(old, width, height)
        if grown is not None:
            self._free_context()
            self._depth_context = context = DepthContext(grown)
        assert context is not None  # made above, or by an earlier call
        context.make_current()

    def _free_context(self) -> None:
        if self._platform is not None:
            self._platform.make_current()
            assert self._gl is not None  # made with the platform
            self._gl.delete()
            self._platform.delete_context()
            self._platform = self._gl = self._depth_pass = None
            return_freed_memory()
        if self._depth_context is not None:
            self._depth_context.delete()
            self._depth_context = self._depth_pass = self._colour_pass = None
            return_freed_memory()


def _grown_buffer(old: tuple[int, int], width: int, height: int) -> tuple[int, int] | None:
    """The size a colour render's buffer of size `old` grows to for a `width`×`height` render (see
    `Renderer._context`), None where it is large enough."""
    if width <= old[0] and height <= old[1]:
        return None
    grown = (buffer_side(max(width, old[0])), buffer_side(max(height, old[1])))
    if grown[0] * grown[1] > _SHARED_BUFFER_PIXELS:
        grown = (buffer_side(width), buffer_side(height))
    return grown


def _read_depth(width: int, height: int, znear: float, zfar: float, framebuffer: int = 0) -> np.ndarray:
    """z-depth (float32, 0 = background) of the current viewport: z = n·f / (f − d·(f − n)) for a depth
    buffer value d < 1. Read into one array and converted and flipped in place (a 12.6 MP view is
    50 MB per array); the background (d = 1, which linearises to a finite f) is multiplied by 0, not
    assigned through a boolean index (~8× slower). pyrender's read_depth_buf computes the same through
    NDC with masked indexing, ~3× slower (70 ms for a 12.6 MP view)."""
    z = linearised(read_depth_buffer(np.empty((height, width), np.float32), 0, framebuffer), znear, zfar)
    return cv2.flip(z, 0, dst=z)  # GL rows run bottom-up


def _pyrender_mesh(mesh: trimesh.Trimesh) -> pyrender.Mesh:
    import pyrender
    import trimesh

    visual = mesh.visual
    assert visual is not None  # trimesh gives every Trimesh one (ColorVisuals when none is set)
    if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:  # kind "texture"
        material = visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if image is not None:
            texture = pyrender.Texture(source=np.asarray(image.convert("RGB")), source_channels="RGB")
            return _unlit_mesh(mesh, pyrender.MetallicRoughnessMaterial(
                baseColorFactor=(1.0, 1.0, 1.0, 1.0), baseColorTexture=texture), texcoord_0=visual.uv)
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        return _unlit_mesh(mesh, pyrender.MetallicRoughnessMaterial(
            alphaMode="BLEND", baseColorFactor=(1.0, 1.0, 1.0, 1.0), metallicFactor=0.2, roughnessFactor=0.8),
            color_0=visual.vertex_colors)
    return _plain_mesh(mesh)


def _plain_mesh(mesh: trimesh.Trimesh) -> pyrender.Mesh:
    import pyrender

    return _unlit_mesh(mesh, pyrender.MetallicRoughnessMaterial(baseColorFactor=GREY))


def _unlit_mesh(mesh: trimesh.Trimesh, material: pyrender.Material, **attributes: np.ndarray) -> pyrender.Mesh:
    """The mesh for FLAT (unlit) renders: positions, indices and colour attributes, no normals (which
    pyrender.Mesh.from_trimesh computes: ~2 s per million faces, for a shading FLAT never does)."""
    import pyrender

    return pyrender.Mesh([pyrender.Primitive(positions=np.asarray(mesh.vertices), indices=np.asarray(mesh.faces),
                                             material=material, **attributes)])


def undistortion_map(camera: Camera) -> np.ndarray:
    """H×W×2 normalised coordinates (x, y) of the ray seen by every pixel of the distorted `camera`.

    Iterative undistortion (cv2.undistortPoints, `model.UNDISTORT_CRITERIA`), then checked with
    cv2.projectPoints on the image border (largest radius, slowest convergence) and a stride-8 grid:
    raises RuntimeError if any re-projection is off by more than UNDISTORT_TOLERANCE_PX.
    """
    W, H = camera.size
    out = np.empty((H, W, 2))
    for r0 in range(0, H, _CHUNK_ROWS):
        rows = min(_CHUNK_ROWS, H - r0)
        uv = np.empty((rows, W, 2))
        uv[..., 0] = np.arange(W)
        uv[..., 1] = np.arange(r0, r0 + rows)[:, None]
        xy = cv2.undistortPoints(uv.reshape(-1, 1, 2), camera.K, camera.dist, None, None, None, UNDISTORT_CRITERIA)
        out[r0:r0 + rows] = xy.reshape(rows, W, 2)
    check = np.zeros((H, W), bool)
    check[::8, ::8] = check[[0, -1], :] = check[:, [0, -1]] = True
    vv, uu = np.nonzero(check)
    err = np.abs(camera.project(np.column_stack([out[vv, uu], np.ones(len(uu))])) - np.column_stack([uu, vv]))
    if err.max() > UNDISTORT_TOLERANCE_PX:
        raise RuntimeError(f"undistortion did not converge: {err.max():.2e} px re-projection error")
    return out


def distorted_render(
    renderer: Renderer,
    camera: Camera,
    world_to_cam: np.ndarray,
    *,
    margin: int = 2,
    depth_only: bool = False,
    exact_edges: bool = True,
) -> Render:
    """Render through a distorted `camera`: a pinhole render with the same focal length on a canvas
    covering the undistorted footprint of every pixel (plus `margin`), resampled per pixel.

    Colour is bilinear: exact inside surfaces; silhouettes blend with the background like an
    anti-aliased edge, located to the pinhole render's point sampling (±0.5 px).
    Depth is bilinear where the four pinhole neighbours are foreground and within 0.2 % of each other
    (one continuous, not grazing, surface). At the other pixels touching the surface (silhouettes,
    occlusion edges) it is ray-cast along the pixel's own ray if `exact_edges` (exact masks), else
    taken from the nearest pinhole pixel: cheaper, but silhouettes then move by up to 0.5 px,
    coherently along an edge (a biased mask). Depth never blends two surfaces or the background.
    """
    if not camera.has_distortion:
        return renderer.render(camera, world_to_cam, depth_only=depth_only)
    xy = undistortion_map(camera)
    pixels = _pixels(xy, camera.K)
    x0, y0 = np.floor(pixels.min(axis=(0, 1))).astype(int) - margin
    x1, y1 = np.ceil(pixels.max(axis=(0, 1))).astype(int) + margin
    canvas = Camera(int(x1 - x0 + 1), int(y1 - y0 + 1), cv.crop_K(camera.K, x0, y0))
    pinhole = renderer.render(canvas, world_to_cam, depth_only=depth_only)
    pixels = pixels - np.array([x0, y0])
    color = None
    if not depth_only:
        assert pinhole.color is not None  # a colour render has colour
        color = _sample(pinhole.color, pixels, cv2.INTER_LINEAR)
    linear, corners = _bilinear(pinhole.depth, pixels)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    smooth = (lo > 0) & (hi - lo <= _DEPTH_CONTINUITY * lo)
    depth = np.where(smooth, linear, 0).astype(np.float32)
    edge = ~smooth & (hi > 0)
    if exact_edges and edge.any():
        rays = np.column_stack([xy[edge], np.ones(int(edge.sum()))])
        depth[edge] = renderer.ray_depth(rays, world_to_cam)
    else:
        depth[edge] = _sample(pinhole.depth, pixels, cv2.INTER_NEAREST)[edge]
    return Render(color, depth)


def _pixels(xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel coordinates K·(x, y, 1) of H×W×2 normalised coordinates."""
    pixels: np.ndarray = xy @ K[:2, :2].T + K[:2, 2]
    return pixels


def _bilinear(img: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of `img` at H×W×2 `pixels` (zero outside), and the 4×H×W(×C) neighbours.

    Positions are float64; values and weights are float32 for integer or float32 images (exact for
    8/16-bit values, weights to 1e-7 px), float64 for float64 images.
    """
    H, W = img.shape[:2]
    flat = np.pad(img, [(1, 1), (1, 1)] + [(0, 0)] * (img.ndim - 2)).reshape((H + 2) * (W + 2), -1)
    px = np.clip(pixels[..., 0] + 1, 0, W + 1 - 1e-9)
    py = np.clip(pixels[..., 1] + 1, 0, H + 1 - 1e-9)
    x0, y0 = np.floor(px), np.floor(py)
    dtype = np.result_type(img.dtype, np.float32)
    fx, fy = (px - x0).astype(dtype)[..., None], (py - y0).astype(dtype)[..., None]
    idx = (y0.astype(np.intp) * (W + 2) + x0.astype(np.intp)).ravel()
    corners = np.stack([np.take(flat, i, axis=0) for i in (idx, idx + 1, idx + W + 2, idx + W + 3)])
    corners = corners.astype(dtype).reshape(4, *pixels.shape[:2], flat.shape[1])
    top = corners[0] + (corners[1] - corners[0]) * fx
    value = top + (corners[2] + (corners[3] - corners[2]) * fx - top) * fy
    if img.ndim == 2:
        return value[..., 0], corners[..., 0]
    return value, corners


def _sample(img: np.ndarray, pixels: np.ndarray, interpolation: int) -> np.ndarray:
    if interpolation == cv2.INTER_NEAREST:
        H, W = img.shape[:2]
        x, y = np.floor(pixels[..., 0] + 0.5).astype(np.intp), np.floor(pixels[..., 1] + 0.5).astype(np.intp)
        inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
        out = img[np.clip(y, 0, H - 1), np.clip(x, 0, W - 1)]
        out[~inside] = 0
        return out
    if interpolation != cv2.INTER_LINEAR:
        raise ValueError("interpolation must be cv2.INTER_LINEAR or cv2.INTER_NEAREST")
    out, _ = _bilinear(img, pixels)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(img.dtype)
