"""fsconvert.render against analytic projections computed independently with cv2.projectPoints."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from helpers import distort_image
from PIL import Image
from scipy import ndimage, optimize

from fsconvert import conventions as cv
from fsconvert.mesh import Geometry
from fsconvert.model import Camera
from fsconvert.render import Renderer, distorted_render, undistortion_map

RADIUS = 0.3
DIST = np.array([0.45, 0.2, 8e-4, -6e-4, 2.0])  # k1 k2 p1 p2 k3, FaceScape-like with a non-zero k3


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=6, radius=RADIUS)


def pose_looking_at(point_cam: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A non-trivial world→camera pose and the world position of camera-frame `point_cam` (the sphere centre)."""
    R = cv.quat_wxyz_to_rotation(np.random.default_rng(seed).standard_normal(4))
    w2c = cv.homogeneous(np.column_stack([R, [0.2, -0.1, 0.4]]))
    return w2c, cv.invert_rigid(w2c)[:3, :3] @ point_cam + cv.invert_rigid(w2c)[:3, 3]


def rim(centre_cam: np.ndarray, n: int = 4000) -> np.ndarray:
    """Camera-frame points where the lines of sight touch the sphere (the silhouette's 3D outline)."""
    D = np.linalg.norm(centre_cam)
    axis = centre_cam / D
    a = np.cross(axis, [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(axis, a)
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    rho = RADIUS * np.sqrt(1 - (RADIUS / D) ** 2)
    return centre_cam * (1 - (RADIUS / D) ** 2) + rho * (np.cos(phi) * a + np.sin(phi) * b)


def polygon_area_centroid(uv: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = uv.T
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    return abs(area), np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)


def mask_area_centroid(mask: np.ndarray) -> tuple[float, np.ndarray]:
    v, u = np.nonzero(mask)
    return float(mask.sum()), np.array([u.mean(), v.mean()])


def test_sphere_silhouette_and_centre_depth_match_projection(sphere):
    camera = Camera(640, 480, cv.K_matrix(1500.0, 1500.0, 337.3, 230.4))
    centre_cam = np.array([0.0, 0.0, 3.0])
    w2c, centre_world = pose_looking_at(centre_cam)
    with Renderer(sphere.copy().apply_translation(centre_world)) as renderer:
        out = renderer.render(camera, w2c)
    area, centroid = mask_area_centroid(out.mask)
    true_area, true_centroid = polygon_area_centroid(camera.project(rim(centre_cam)))
    radius_err = np.sqrt(area / np.pi) - np.sqrt(true_area / np.pi)
    print(f"silhouette radius error {radius_err:+.4f} px, centroid error {centroid - true_centroid} px")
    assert abs(radius_err) <= 0.05
    assert np.abs(centroid - true_centroid).max() <= 0.05
    assert np.allclose(true_centroid, [camera.cx, camera.cy], atol=1e-9)  # on-axis sphere: centred on (cx, cy)
    u, v = round(camera.cx), round(camera.cy)
    assert out.depth[v, u] == pytest.approx(centre_cam[2] - RADIUS, rel=2e-5)
    assert out.depth[~out.mask].max() == 0 and out.depth.dtype == np.float32


def test_depth_is_z_depth_not_range(sphere):
    camera = Camera(640, 480, cv.K_matrix(700.0, 700.0, 300.0, 250.0))
    centre_cam = np.array([0.35, -0.2, 2.5])  # off axis: range and z-depth differ by up to 4 %
    w2c, centre_world = pose_looking_at(centre_cam)
    with Renderer(sphere.copy().apply_translation(centre_world)) as renderer:
        depth = renderer.render(camera, w2c, depth_only=True).depth
    v, u = np.nonzero(depth)
    rays = np.column_stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones(len(u))])
    d = depth[v, u].astype(np.float64)[:, None]
    as_z = np.abs(np.linalg.norm(d * rays - centre_cam, axis=1) - RADIUS)
    unit_rays = rays / np.linalg.norm(rays, axis=1, keepdims=True)
    as_range = np.abs(np.linalg.norm(d * unit_rays - centre_cam, axis=1) - RADIUS)
    print(f"z-depth surface residual: max {as_z.max():.2e}, as range: median {np.median(as_range):.2e}")
    assert as_z.max() < 2e-4 * RADIUS
    assert np.median(as_range) > 10 * as_z.max()


def test_principal_point_moves_content_by_exactly_its_offset(sphere):
    centre_cam = np.array([0.0, 0.0, 3.0])
    w2c, centre_world = pose_looking_at(centre_cam)
    shift = np.array([13.37, -7.71])
    with Renderer(sphere.copy().apply_translation(centre_world)) as renderer:
        centroids = [
            mask_area_centroid(renderer.render(Camera(640, 480, cv.K_matrix(1500.0, 1500.0, cx, cy)), w2c).mask)[1]
            for cx, cy in ([319.5, 239.5], [319.5 + shift[0], 239.5 + shift[1]])
        ]
    moved = centroids[1] - centroids[0]
    print(f"content moved by {moved}, principal point by {shift}")
    assert np.abs(moved - shift).max() <= 0.05
    assert np.abs(centroids[0] - [319.5, 239.5]).max() <= 0.05  # pixel centres at integers, not +0.5


def test_colours_are_unlit_texture_vertex_or_grey(sphere):
    camera = Camera(160, 120, cv.K_matrix(300.0, 300.0, 80.0, 60.0))
    w2c, centre_world = pose_looking_at(np.array([0.0, 0.0, 2.0]))
    placed = sphere.copy().apply_translation(centre_world)
    texture = np.full((8, 8, 3), (200, 50, 120), np.uint8)
    textured = trimesh.Trimesh(placed.vertices, placed.faces, process=False, visual=trimesh.visual.TextureVisuals(
        uv=np.full((len(placed.vertices), 2), 0.5), image=Image.fromarray(texture)))
    coloured = trimesh.Trimesh(placed.vertices, placed.faces, process=False, vertex_colors=(10, 220, 90, 255))
    for mesh, expected in ((textured, (200, 50, 120)), (coloured, (10, 220, 90)), (placed, (128, 128, 128))):
        with Renderer(mesh, bg_color=(1, 2, 3)) as renderer:
            out = renderer.render(camera, w2c)
        assert out.mask.sum() > 5000
        assert np.array_equal(np.unique(out.color[out.mask], axis=0), [expected])
        assert np.array_equal(np.unique(out.color[~out.mask], axis=0), [(1, 2, 3)])


@pytest.mark.parametrize("colours", ["vertex colours", "none"])
def test_a_geometry_draws_pyrenders_pixels_and_depth(sphere, colours: str):
    """A `Geometry`'s colour render (pyrender's flat shaders without pyrender: `fsconvert.colourpass`) equals
    pyrender's render of the same mesh as a Trimesh bit for bit, colour and depth, through a run of sizes that grows
    the buffer in both directions and a distorted camera."""
    w2c, centre_world = pose_looking_at(np.array([0.02, -0.01, 2.5]))
    placed = sphere.copy().apply_translation(centre_world)
    rgb = np.random.default_rng(3).integers(0, 256, (len(placed.vertices), 3)).astype(np.uint8)
    geometry = Geometry(np.asarray(placed.vertices), np.asarray(placed.faces), rgb if colours != "none" else None)
    mesh = trimesh.Trimesh(placed.vertices, placed.faces, process=False,
                           **({"vertex_colors": rgb} if colours != "none" else {}))
    cameras = [Camera(w, h, cv.K_matrix(700.0, 700.0, w / 2 - 3.2, h / 2 + 1.7)) for w, h in
               ((320, 240), (240, 320), (641, 479), (97, 61), (1300, 900))]
    with Renderer(mesh, bg_color=(1, 2, 3)) as theirs, Renderer(geometry, bg_color=(1, 2, 3)) as mine:
        for camera in cameras:
            mine.render(camera, w2c, depth_only=True)  # the check's order: depth passes first
            a, b = theirs.render(camera, w2c), mine.render(camera, w2c)
            assert a.color is not None and b.color is not None and a.mask.sum() > 500
            assert np.array_equal(a.color, b.color) and np.array_equal(a.depth, b.depth)
        distorted = Camera(320, 240, cv.K_matrix(700.0, 700.0, 158.4, 121.7), DIST * 0.1)
        a, b = distorted_render(theirs, distorted, w2c), distorted_render(mine, distorted, w2c)
        assert np.array_equal(a.color, b.color) and np.array_equal(a.depth, b.depth)


def test_resizing_reused_renderer_matches_fresh_renderer(sphere):
    """One context serves every size (its buffer only grows): same pixels as a renderer made for the size;
    depth may differ by llvmpipe's float rounding, which depends on the buffer size (measured ≤ 2e-6)."""
    w2c, centre_world = pose_looking_at(np.array([0.05, 0.0, 3.0]))
    mesh = sphere.copy().apply_translation(centre_world)
    cameras = [Camera(w, h, cv.K_matrix(900.0, 900.0, w / 2 - 3.2, h / 2 + 1.7)) for w, h in
               ((320, 240), (240, 320), (641, 479), (320, 240))]
    with Renderer(mesh) as reused:
        outs = [reused.render(c, w2c) for c in cameras]
    for camera, out in zip(cameras, outs):
        with Renderer(mesh) as fresh:
            ref = fresh.render(camera, w2c)
        assert out.color.shape == (camera.height, camera.width, 3)
        assert np.array_equal(out.color, ref.color) and np.array_equal(out.mask, ref.mask)
        assert np.abs(out.depth - ref.depth).max() <= 1e-5 * ref.depth.max()


def test_size_changes_do_not_accumulate_memory(sphere):
    """A renderer used at many sizes (one canvas per view) keeps its memory bounded."""
    w2c, centre_world = pose_looking_at(np.array([0.0, 0.0, 3.0]))
    mesh = sphere.copy().apply_translation(centre_world)

    def rss_mb() -> float:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

    with Renderer(mesh) as renderer:
        renderer.render(Camera(2000, 1500, cv.K_matrix(3000.0, 3000.0, 1000, 750)), w2c, depth_only=True)
        before = rss_mb()
        for i in range(1, 7):  # each size once held ~24 MB more until the renderer closed
            w, h = 2000 + 8 * i, 1500 + 4 * i
            renderer.render(Camera(w, h, cv.K_matrix(3000.0, 3000.0, w / 2, h / 2)), w2c, depth_only=True)
        assert rss_mb() - before < 40


def test_many_renders_do_not_accumulate_memory(sphere):
    """Each render used to compile a new shader program (PyOpenGL compared context pointers by identity,
    so pyrender's cache always missed): ~0.8 MB per 543×362 render, never freed."""
    w2c, centre_world = pose_looking_at(np.array([0.0, 0.0, 3.0]))
    mesh = sphere.copy().apply_translation(centre_world)
    camera = Camera(543, 362, cv.K_matrix(600.0, 600.0, 271.0, 180.0))

    def rss_mb() -> float:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

    with Renderer(mesh) as renderer:
        for depth_only in (False, True, False):
            renderer.render(camera, w2c, depth_only=depth_only)
        before = rss_mb()
        for i in range(150):
            renderer.render(camera, w2c, depth_only=bool(i % 2))
        assert rss_mb() - before < 20


def test_render_rejects_distortion_and_depth_only_has_no_colour(sphere):
    with Renderer(sphere) as renderer:
        with pytest.raises(ValueError):
            renderer.render(Camera(64, 48, cv.K_matrix(50, 50, 32, 24), DIST), np.eye(4))
        w2c = cv.homogeneous(np.column_stack([np.eye(3), [0, 0, 2.0]]))
        full = renderer.render(Camera(64, 48, cv.K_matrix(50, 50, 32, 24)), w2c)
        depth_only = renderer.render(Camera(64, 48, cv.K_matrix(50, 50, 32, 24)), w2c, depth_only=True)
    assert depth_only.color is None and np.array_equal(depth_only.mask, full.mask)
    fg = full.mask
    # the depth pass and pyrender's colour pass transform vertices in different orders: last-bit differences
    assert np.abs(depth_only.depth[fg] - full.depth[fg]).max() <= 1e-5 * full.depth[fg].max()


def test_depth_pass_is_double_sided_and_exact(sphere):
    """Depth-only renders see a mesh with reversed winding, and a mesh's inside from within; their z-depth
    at pixel centres equals the same triangles ray-cast (open3d, float32): median 1e-7 relative, 1e-6 at
    the 99th percentile, 2e-5 at the grazing rim (pyrender's colour pass: the same)."""
    camera = Camera(160, 120, cv.K_matrix(100.0, 100.0, 79.5, 59.5))
    vv, uu = np.mgrid[0:120, 0:160]
    rays = np.column_stack([(uu.ravel() - 79.5) / 100, (vv.ravel() - 59.5) / 100, np.ones(uu.size)])
    outside = cv.homogeneous(np.column_stack([np.eye(3), [0.05, -0.03, 1.0]]))
    for faces in (sphere.faces, sphere.faces[:, ::-1]):
        with Renderer(trimesh.Trimesh(sphere.vertices, faces, process=False)) as renderer:
            depth = renderer.render(camera, outside, depth_only=True).depth.ravel()
            exact = renderer.ray_depth(rays, outside)
            inside = renderer.render(camera, np.eye(4), depth_only=True)
        assert abs(int((depth > 0).sum()) - int((exact > 0).sum())) <= 4  # pixel centres on an edge
        both = (depth > 0) & (exact > 0)
        rel = np.abs(depth[both] - exact[both]) / exact[both]
        print(f"depth pass against ray casting: median {np.median(rel):.1e}, p99 {np.percentile(rel, 99):.1e}, "
              f"max {rel.max():.1e}")
        assert np.median(rel) < 2e-7 and np.percentile(rel, 99) < 1e-6 and rel.max() < 2e-5
        assert inside.mask.all()  # seen from its centre, the sphere is everywhere


@pytest.mark.parametrize("f", [4344.0, 700.0])  # FaceScape-like narrow field of view, and a wide one
def test_undistortion_map_round_trips_below_1e6_px(f):
    camera = Camera(1086, 724, cv.K_matrix(f, f, 560.3, 340.2), DIST)
    xy = undistortion_map(camera)
    uv = camera.project(np.column_stack([xy.reshape(-1, 2), np.ones(xy.shape[0] * xy.shape[1])]))
    grid = np.stack(np.meshgrid(np.arange(1086), np.arange(724)), axis=-1).reshape(-1, 2)
    err = np.abs(uv - grid).max()
    print(f"f={f}: max round-trip error {err:.2e} px")
    assert err < 1e-6


def test_distort_image_equals_direct_computation():
    camera = Camera(320, 240, cv.K_matrix(600.0, 600.0, 150.2, 128.9), DIST)
    pinhole_K = cv.K_matrix(600.0, 600.0, 180.0, 150.0)
    rng = np.random.default_rng(3)
    pinhole = cv2.GaussianBlur(rng.random((300, 380)), (0, 0), 2.0)
    out = distort_image(pinhole, pinhole_K, camera)
    nearest = distort_image(pinhole, pinhole_K, camera, interpolation=cv2.INTER_NEAREST)
    for u, v in rng.uniform([0, 0], [319, 239], (40, 2)).round():
        def residual(xy):
            return camera.project([[xy[0], xy[1], 1.0]])[0] - (u, v)
        xy = optimize.fsolve(residual, [(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy], xtol=1e-12)
        assert np.abs(residual(xy)).max() < 1e-6
        p = pinhole_K[:2, :2] @ xy + pinhole_K[:2, 2]
        direct = ndimage.map_coordinates(pinhole, [[p[1]], [p[0]]], order=1)[0]
        assert out[int(v), int(u)] == pytest.approx(direct, abs=1e-9)
        assert nearest[int(v), int(u)] == pinhole[int(np.floor(p[1] + 0.5)), int(np.floor(p[0] + 0.5))]
    uint8 = distort_image(np.rint(pinhole * 255).astype(np.uint8), pinhole_K, camera)
    assert uint8.dtype == np.uint8 and np.abs(uint8 - out * 255).max() <= 1.0


def test_distorted_render_silhouette_and_depth_match_projection(sphere):
    camera = Camera(640, 480, cv.K_matrix(1200.0, 1200.0, 331.7, 228.1), DIST)
    centre_cam = np.array([0.25, 0.15, 3.0])  # towards a corner, where the distortion is largest
    w2c, centre_world = pose_looking_at(centre_cam)
    with Renderer(sphere.copy().apply_translation(centre_world)) as renderer:
        out = distorted_render(renderer, camera, w2c)
        pinhole_area = renderer.render(camera.pinhole(), w2c).mask.sum()
    area, centroid = mask_area_centroid(out.mask)
    true_area, true_centroid = polygon_area_centroid(camera.project(rim(centre_cam)))
    radius_err = np.sqrt(area / np.pi) - np.sqrt(true_area / np.pi)
    print(f"distorted silhouette radius error {radius_err:+.4f} px, centroid error {centroid - true_centroid} px, "
          f"pinhole area differs by {pinhole_area - area} px")
    assert abs(radius_err) <= 0.05
    assert np.abs(centroid - true_centroid).max() <= 0.05
    assert abs(pinhole_area - area) > 200  # the distortion is really there
    # Depth: z-depth along each distorted pixel's ray; never blended with the background at silhouettes.
    v, u = np.nonzero(out.mask)
    xy = cv2.undistortPoints(np.column_stack([u, v]).astype(np.float64).reshape(-1, 1, 2), camera.K, camera.dist,
                             None, None, None, (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12))
    points = out.depth[v, u].astype(np.float64)[:, None] * np.column_stack([xy.reshape(-1, 2), np.ones(len(u))])
    residual = np.abs(np.linalg.norm(points - centre_cam, axis=1) - RADIUS)
    interior = cv2.erode(out.mask.astype(np.uint8), np.ones((3, 3)))[v, u] > 0
    print(f"distorted depth surface residual: interior max {residual[interior].max():.2e}, "
          f"silhouette max {residual[~interior].max():.2e}")
    assert residual.max() < 2e-4 * RADIUS  # as good as the pinhole render (facets of the icosphere)


def test_distorted_render_without_exact_edges_keeps_surface_depths(sphere):
    camera = Camera(640, 480, cv.K_matrix(1200.0, 1200.0, 331.7, 228.1), DIST)
    centre_cam = np.array([0.25, 0.15, 3.0])
    w2c, centre_world = pose_looking_at(centre_cam)
    with Renderer(sphere.copy().apply_translation(centre_world)) as renderer:
        exact = distorted_render(renderer, camera, w2c)
        cheap = distorted_render(renderer, camera, w2c, exact_edges=False)
    differ = exact.mask != cheap.mask
    print(f"nearest-neighbour edges: {differ.sum()} of {exact.mask.sum()} mask pixels differ")
    assert differ.sum() < 0.01 * exact.mask.sum()
    assert np.array_equal(exact.color, cheap.color)
    assert cheap.depth[cheap.mask].min() >= centre_cam[2] - RADIUS - 1e-4  # never blended with 0


def test_silhouette_is_exactly_where_depth_is_positive(sphere):
    """`Renderer.silhouette` reads no z: the same pixels as the depth render's depth > 0 (255 there, else 0),
    for a sphere in view, cut by the image border, straddling the camera plane, and wholly behind it; the depth
    render's background is +0.0 (no sign bit)."""
    camera = Camera(641, 479, cv.K_matrix(700.0, 700.0, 317.3, 241.9))
    cases = [np.array(c) for c in ([0.0, 0.0, 3.0], [0.45, -0.2, 1.5], [0.0, 0.35, 0.2], [0.0, 0.0, -2.0])]
    with Renderer(sphere) as renderer:
        for k, centre in enumerate(cases):
            w2c, centre_world = pose_looking_at(centre, seed=k)
            mesh_w2c = w2c @ cv.homogeneous(np.column_stack([np.eye(3), centre_world]))  # sphere at `centre`
            depth = renderer.render(camera, mesh_w2c, depth_only=True).depth
            seen = renderer.silhouette(camera, mesh_w2c)
            assert seen.dtype == np.uint8 and seen.shape == (camera.height, camera.width)
            assert np.array_equal(seen, np.where(depth > 0, 255, 0).astype(np.uint8))
            assert not np.signbit(depth).any()
            assert (0 < (seen > 0).mean() < 1) == (k < 3), k  # in view, cut or straddling: some pixels of each
        with pytest.raises(ValueError):
            renderer.silhouette(Camera(64, 48, cv.K_matrix(50, 50, 32, 24), DIST), np.eye(4))


def test_silhouette_covers_the_farthest_fragments_of_the_clip_range():
    """The worst case of the silhouette's coverage pass (no depth test): from inside a box looking at its far corner,
    the nearest plane is at its least (1e-4 of the far one) and the corner's depth at its largest (1 % before the far
    plane), so the fragments there come closest to depth 1, where the depth pass would drop them. Every pixel is
    covered, in both."""
    box = trimesh.creation.box(extents=(2.0, 3.0, 4.0))
    camera = Camera(641, 479, cv.K_matrix(300.0, 300.0, 320.0, 239.0))
    corner, eye = np.array([1.0, 1.5, 2.0]), np.array([-0.9, -1.4, -1.9])
    forward = (corner - eye) / np.linalg.norm(corner - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    R = np.stack([right, np.cross(forward, right), forward])  # rows: the camera's x, y, z in the world
    w2c = cv.homogeneous(np.column_stack([R, -R @ eye]))
    with Renderer(box) as renderer:
        depth = renderer.render(camera, w2c, depth_only=True).depth
        seen = renderer.silhouette(camera, w2c)
        znear, zfar = renderer._clip(w2c)
    assert znear == pytest.approx(1e-4 * zfar)
    assert depth.max() > 0.95 * zfar / 1.01  # the far corner is in view
    assert (depth > 0).all() and (seen == 255).all()
