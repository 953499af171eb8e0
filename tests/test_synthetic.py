"""The synthetic FaceScape sample: layout, realistic cameras, determinism, and the synthesis proof —
every surface point lands where cv2.projectPoints (with distortion, params.json camera) puts it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from scipy import ndimage

from fsconvert import conventions as cv
from fsconvert.loader import load_capture
from fsconvert.model import Camera
from fsconvert.render import Renderer, distorted_render
from fsconvert.synthetic import BACKGROUND, make_sample, textured_head

KEYS = ("K", "Rt", "distortion", "width", "height", "matches", "valid", "sn", "ori")
WIN = 96
"""Side of the square windows where alignment is measured."""


def load_params(tuple_dir: Path) -> dict:
    return json.loads((tuple_dir / "params.json").read_text())


def view_camera(params: dict, v: int) -> tuple[Camera, np.ndarray]:
    return (Camera(params[f"{v}_width"], params[f"{v}_height"], params[f"{v}_K"], params[f"{v}_distortion"]),
            cv.homogeneous(params[f"{v}_Rt"]))


def n_views(params: dict) -> int:
    return len(params) // len(KEYS)


def inverse_project(camera: Camera, uv: np.ndarray) -> np.ndarray:
    """Normalised rays (x, y) that cv2.projectPoints maps onto the N×2 pixels `uv` (Newton iterations
    with a finite-difference Jacobian of cv2.projectPoints itself)."""
    def project(xy: np.ndarray) -> np.ndarray:
        return camera.project(np.column_stack([xy, np.ones(len(xy))]))

    xy = (uv - [camera.cx, camera.cy]) / [camera.fx, camera.fy]
    for _ in range(4):
        p = project(xy)
        J = np.stack([(project(xy + [1e-7, 0]) - p) / 1e-7, (project(xy + [0, 1e-7]) - p) / 1e-7], axis=-1)
        xy = xy - np.linalg.solve(J, (p - uv)[..., None])[..., 0]
    assert np.abs(project(xy) - uv).max() < 1e-6
    return xy


def lk_shift(reference: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Sub-pixel (dx, dy) with image(x) ≈ reference(x − d): Gauss-Newton (Lucas-Kanade) on a
    Hann-weighted window, cubic-spline resampling. Accurate to ~1e-3 px on band-limited texture."""
    weight = cv2.createHanningWindow(reference.shape[::-1], cv2.CV_64F)
    d = np.zeros(2)
    for _ in range(8):
        moved = ndimage.shift(reference, (d[1], d[0]), order=3, mode="nearest")
        gy, gx = np.gradient(moved)
        r = image - moved
        A = [[np.sum(weight * gx * gx), np.sum(weight * gx * gy)], [np.sum(weight * gx * gy), np.sum(weight * gy * gy)]]
        d = d - np.linalg.solve(A, [np.sum(weight * gx * r), np.sum(weight * gy * r)])
    return d


def textured_windows(gray: np.ndarray, inside: np.ndarray, n: int = 6) -> list[tuple[int, int]]:
    """Top-left corners of the `n` most textured WIN×WIN windows lying inside the face."""
    H, W = gray.shape
    scored = [(gray[y:y + WIN, x:x + WIN].std(), x, y)
              for y in range(0, H - WIN, WIN // 2) for x in range(0, W - WIN, WIN // 2)
              if inside[y:y + WIN, x:x + WIN].all()]
    return [(x, y) for _, x, y in sorted(scored, reverse=True)[:n]]


def reconstruct(
    renderer: Renderer, camera: Camera, w2c: np.ndarray, corners: list[tuple[int, int]]
) -> list[np.ndarray]:
    """Independent re-synthesis of the distorted view in each window: a pinhole render (same focal,
    40 px margin) sampled (scipy, bilinear) where each pixel's inverse cv2.projectPoints ray lands."""
    margin = 40
    K = cv.crop_K(camera.K, -margin, -margin)
    pinhole = renderer.render(Camera(camera.width + 2 * margin, camera.height + 2 * margin, K), w2c).color
    gray = cv2.cvtColor(pinhole, cv2.COLOR_RGB2GRAY).astype(np.float64)
    out = []
    for x, y in corners:
        gy, gx = np.mgrid[y:y + WIN, x:x + WIN]
        xy = inverse_project(camera, np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float64))
        u, v = K[0, 0] * xy[:, 0] + K[0, 2], K[1, 1] * xy[:, 1] + K[1, 2]
        out.append(ndimage.map_coordinates(gray, [v, u], order=1).reshape(WIN, WIN))
    return out


def misalignment(
    renderer: Renderer, camera: Camera, w2c: np.ndarray, gray: np.ndarray, corners: list[tuple[int, int]]
) -> list[float]:
    """Per window, |LK shift| (px) between the image and its reconstruction through `camera`."""
    recs = reconstruct(renderer, camera, w2c, corners)
    return [float(np.hypot(*lk_shift(rec, gray[y:y + WIN, x:x + WIN]))) for rec, (x, y) in zip(recs, corners)]


@pytest.fixture(scope="module")
def alignment(sample_tuple: Path) -> dict[int, dict[str, object]]:
    """Per view: LK misalignment (px) of each window between the JPEG and the reconstruction from
    params.json, the same with cx + 0.5 px, and the silhouette IoU against the .ply render."""
    params = load_params(sample_tuple)
    subject, expression = sample_tuple.parent.name, sample_tuple.name
    ply = trimesh.load(sample_tuple.parents[2] / "models" / subject / f"{expression}.ply", process=False)
    results = {}
    with Renderer(textured_head(subject, expression), bg_color=BACKGROUND) as textured, Renderer(ply) as coloured:
        for v in range(n_views(params)):
            camera, w2c = view_camera(params, v)
            rgb = cv2.imread(str(sample_tuple / f"{v}.jpg"))[..., ::-1]
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
            ply_mask = distorted_render(coloured, camera, w2c, depth_only=True).mask
            jpg_mask = np.abs(rgb.astype(int) - BACKGROUND).max(axis=2) > 40
            iou = (ply_mask & jpg_mask).sum() / (ply_mask | jpg_mask).sum()
            corners = textured_windows(gray, cv2.erode(ply_mask.astype(np.uint8), np.ones((25, 25))) > 0)
            shifted = Camera(camera.width, camera.height, cv.crop_K(camera.K, -0.5, 0.0), camera.dist)
            results[v] = {"valid": params[f"{v}_valid"], "iou": iou,
                          "error": misalignment(textured, camera, w2c, gray, corners),
                          "error_cx_plus_half": misalignment(textured, shifted, w2c, gray, corners[:3])}
    for v, r in results.items():
        print(f"view {v} valid={r['valid']}: IoU {r['iou']:.4f}, max error {max(r['error']):.4f} px, "
              f"with cx+0.5: {min(r['error_cx_plus_half']):.3f}…{max(r['error_cx_plus_half']):.3f} px")
    return results


def test_projection_proof_valid_views_align_to_5_hundredths_px(alignment):
    valid = [r for r in alignment.values() if r["valid"]]
    assert len(valid) == len(alignment) - 1
    for r in valid:
        assert len(r["error"]) == 6
        assert max(r["error"]) <= 0.05
        assert r["iou"] > 0.99


def test_projection_proof_detects_half_pixel_error(alignment):
    for r in alignment.values():
        if r["valid"]:
            assert min(r["error_cx_plus_half"]) >= 0.4


def test_invalid_view_is_really_misaligned(alignment):
    (invalid,) = [r for r in alignment.values() if not r["valid"]]
    assert invalid["iou"] < 0.9


def test_layout_and_keys(sample_root: Path, sample_tuple: Path):
    assert sample_tuple.relative_to(sample_root) == Path("images/1/1_neutral")
    assert (sample_root / "models/1/1_neutral.ply").is_file()
    params = load_params(sample_tuple)
    assert n_views(params) == 8
    assert sorted(p.name for p in sample_tuple.iterdir()) == sorted(["params.json"] + [f"{v}.jpg" for v in range(8)])
    for v in range(8):
        assert [k for k in params if k.startswith(f"{v}_")] == [f"{v}_{k}" for k in KEYS]
        assert np.shape(params[f"{v}_K"]) == (3, 3) and np.shape(params[f"{v}_Rt"]) == (3, 4)
        assert len(params[f"{v}_distortion"]) == 5
        assert all(type(params[f"{v}_{k}"]) is t for k, t in
                   (("width", int), ("height", int), ("matches", int), ("valid", bool), ("sn", str), ("ori", str)))
        image = cv2.imread(str(sample_tuple / f"{v}.jpg"))
        assert image.shape == (params[f"{v}_height"], params[f"{v}_width"], 3)
    capture = load_capture(sample_tuple)
    assert len(capture.views) == 7 and len(capture.excluded) == 1


def test_cameras_are_realistic(sample_tuple: Path):
    params = load_params(sample_tuple)
    cams = [view_camera(params, v) for v in range(n_views(params))]
    sizes = {c.size for c, _ in cams}
    assert sizes == {(1086, 724), (724, 1086)}  # 3:2 landscape and portrait
    for c, _ in cams:
        assert c.fx == c.fy and 3.8 <= c.fx / max(c.size) <= 4.2
        offset = np.array([c.cx - (c.width - 1) / 2, c.cy - (c.height - 1) / 2])
        assert 1 <= np.abs(offset).max() <= 60  # off-centre by tens of pixels at this resolution
        k1, k2, p1, p2, _ = c.dist
        assert 0.1 <= k1 <= 0.5 and abs(k2) <= 0.2 and 1e-4 <= abs(p1) <= 1e-3 and 1e-4 <= abs(p2) <= 1e-3
    assert len({(c.cx, c.cy) for c, _ in cams}) == len(cams)
    assert sum(c.dist[4] != 0 for c, _ in cams) >= 1
    assert [params[f"{v}_valid"] for v in range(len(cams))].count(False) == 1
    # A camera rolled ~180°: its image "down" axis points against everyone else's.
    downs = np.array([w2c[1, :3] for _, w2c in cams])
    assert 1 <= (downs @ np.median(downs, axis=0) < -0.5).sum() < len(cams) / 2
    # An arc in front of the head at ~10 head radii, looking at it.
    mesh = trimesh.load(sample_tuple.parents[2] / "models/1/1_neutral.ply", process=False)
    head_radius = np.linalg.norm(mesh.vertices - mesh.centroid, axis=1).mean()
    centres = np.array([cv.camera_centre(w2c) for _, w2c in cams])
    distances = np.linalg.norm(centres - mesh.centroid, axis=1)
    assert np.all((distances > 8 * head_radius) & (distances < 14 * head_radius))
    directions = (centres - mesh.centroid) / distances[:, None]
    assert np.degrees(np.arccos(np.clip(directions @ directions.T, -1, 1))).max() > 90
    for v, (c, w2c) in enumerate(cams):
        if params[f"{v}_valid"]:
            u, y = c.project((w2c[:3, :3] @ mesh.centroid + w2c[:3, 3])[None])[0]
            assert 0.25 * c.width < u < 0.75 * c.width and 0.25 * c.height < y < 0.75 * c.height


def test_mesh_is_a_closed_coloured_head(sample_root: Path):
    mesh = trimesh.load(sample_root / "models/1/1_neutral.ply", process=False)
    assert 20_000 <= len(mesh.faces) <= 60_000 and mesh.is_watertight
    colours = mesh.visual.vertex_colors[:, :3].astype(float)
    assert colours.std(axis=0).min() > 20  # strong texture contrast in every channel
    head = textured_head("1", "1_neutral")
    assert np.array_equal(mesh.vertices, head.vertices) and np.array_equal(mesh.faces, head.faces)


def test_same_seed_is_byte_identical_and_tuples_differ(tmp_path: Path):
    kwargs = dict(subjects=("7",), expressions=("1_neutral", "3_mouth_stretch"), n_views=3, long_side=240)
    runs = [make_sample(tmp_path / name, **kwargs) for name in ("a", "b")]
    make_sample(tmp_path / "c", seed=1, **kwargs)

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 2 * (3 + 1) + 2 + 1 and a == b  # images + params.json, two meshes, Rt_scale_dict.json
    assert all(a[name] != c[name] for name in a)
    assert [p.relative_to(tmp_path / "a") for p in runs[0]] == [Path("images/7/1_neutral"),
                                                               Path("images/7/3_mouth_stretch")]
    first, second = (load_params(d) for d in runs[0])
    assert all(first[f"0_{k}"] != second[f"0_{k}"] for k in ("K", "Rt", "distortion"))
    assert a["models/7/1_neutral.ply"] != a["models/7/3_mouth_stretch.ply"]
