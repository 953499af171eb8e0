"""A FaceScape-format multi-view dataset with known ground truth (`fsconvert sample`).

Layout and params.json keys exactly as FaceScape ships them. Each tuple is a textured head-like
closed surface placed in arbitrary SfM units by a random similarity, seen by cameras whose values
follow the real rig (reference: facescape-peers.md §2): 3:2 landscape and portrait views, one
camera rolled 180°, fx = fy ≈ 4 × long side, off-centre principal points, k1 +0.1…+0.5, small
k2/p1/p2, k3 ≠ 0 in one view, and exactly one `valid: false` view whose Rt is wrong by several
degrees (its image is rendered from the true pose, like a failed SfM camera).

Images are rendered unlit from the textured mesh and distorted exactly (render.distorted_render).
The .ply carries the texture sampled at its vertices as vertex colours. Everything is derived from
`seed`, the subject and the expression name: the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import zlib
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import trimesh
from PIL import Image

from . import conventions as cv
from .alignment import expression_number
from .errors import InputError
from .model import Camera
from .render import Renderer, distorted_render

BACKGROUND = (24, 26, 30)
"""RGB of the plain dark background."""

SUBDIVISIONS = 5
"""Icosphere subdivisions of the head: 10242 vertices, 20480 faces."""

RT_SCALE_DICT = "Rt_scale_dict.json"
"""The alignment file beside images/ and models/ (FaceScape ships it as toolkit/predef/Rt_scale_dict.json)."""
TEXTURE_SIZE = 2048
HEAD_AXES_MM = np.array([75.0, 105.0, 95.0])
"""Head semi-axes in millimetres (x left-right, y up, z towards the face)."""

# Radial bumps on the front of the head: (amplitude mm, centre (x, y), sigma (x, y)) in unit-sphere
# direction coordinates; a centre with x > 0 stands for a mirrored pair.
_FACE = [
    (22.0, (0.0, -0.05), (0.08, 0.17)),  # nose ridge
    (8.0, (0.0, -0.15), (0.06, 0.06)),  # nose tip
    (6.0, (0.0, 0.22), (0.35, 0.06)),  # brow
    (-9.0, (0.28, 0.12), (0.10, 0.07)),  # eye sockets
    (5.0, (0.38, -0.15), (0.15, 0.15)),  # cheeks
    (8.0, (0.0, -0.62), (0.18, 0.10)),  # chin
    (-4.0, (0.0, -0.40), (0.15, 0.04)),  # mouth
]
_EXPRESSION = [  # (max |amplitude| mm, centre, sigma): each tuple draws its own amplitudes
    (6.0, (0.0, -0.40), (0.20, 0.08)),  # mouth open / pressed
    (5.0, (0.20, -0.35), (0.08, 0.08)),  # mouth corners
    (3.0, (0.0, 0.25), (0.35, 0.06)),  # brow raise
    (4.0, (0.38, -0.15), (0.15, 0.15)),  # cheek raise
]
_Bump = tuple[float, tuple[float, float], tuple[float, float]]
"""(amplitude mm, centre (x, y), sigma (x, y)), as in _FACE and _EXPRESSION."""
_RtScaleEntry = list[float | list[list[float]]]
"""An Rt_scale_dict.json entry as written: [s, Rt 3×4 rows]."""


def make_sample(
    out_dir: Path,
    *,
    subjects: tuple[str, ...] = ("1",),
    expressions: tuple[str, ...] = ("1_neutral",),
    n_views: int = 8,
    long_side: int = 1086,
    seed: int = 0,
    jpeg_quality: int = 95,
) -> list[Path]:
    """Write a FaceScape-layout sample under `out_dir` and return the tuple directories.

    `out_dir/images/<id>/<exp>/{0..n_views-1}.jpg`, `.../params.json`, `out_dir/models/<id>/<exp>.ply`,
    and `out_dir/Rt_scale_dict.json`: per tuple the similarity back to the head's own millimetre frame
    (its "TU" frame: centred, y up, z towards the face), as FaceScape ships it.
    """
    if n_views < 3:
        raise InputError(f"--views must be at least 3 (landscape, portrait, rolled and invalid views), got {n_views}")
    if long_side < 64:
        raise InputError(f"--long-side must be at least 64 pixels, got {long_side}")
    out_dir = Path(out_dir)
    tuples = []
    alignment: dict[str, dict[str, _RtScaleEntry]] = {}
    for subject in subjects:
        for expression in expressions:
            head, axes, S, rng = _head(seed, subject, expression)
            alignment.setdefault(subject, {})[expression_number(expression)] = _rt_scale_entry(S)
            model = out_dir / "models" / subject / f"{expression}.ply"
            model.parent.mkdir(parents=True, exist_ok=True)
            model.write_bytes(trimesh.exchange.ply.export_ply(_vertex_coloured(head), encoding="binary"))
            tuple_dir = out_dir / "images" / subject / expression
            tuple_dir.mkdir(parents=True, exist_ok=True)
            _write_views(tuple_dir, head, _cameras(rng, n_views, long_side, axes, S), jpeg_quality)
            tuples.append(tuple_dir)
    _write_rt_scale_dict(out_dir / RT_SCALE_DICT, alignment)
    return tuples


def _rt_scale_entry(S: np.ndarray) -> _RtScaleEntry:
    """FaceScape's `[s, Rt 3×4]` (X_tu = R·(s·X) + t) undoing the head-mm → SfM placement `S`."""
    scale, R, t = cv.split_similarity(cv.invert_similarity(S))
    return [scale, np.column_stack([R, t]).tolist()]


def _write_rt_scale_dict(path: Path, table: dict[str, dict[str, _RtScaleEntry]]) -> None:
    """One entry per line, like params.json."""
    lines = ",\n".join(f" {json.dumps(subject)}: {{" + ", ".join(f"{json.dumps(exp)}: {json.dumps(entry)}"
                                                           for exp, entry in exps.items()) + "}"
                       for subject, exps in table.items())
    path.write_text("{\n" + lines + "\n}\n")


def textured_head(subject: str, expression: str, *, seed: int = 0) -> trimesh.Trimesh:
    """The textured mesh (SfM units) rendered into a tuple's images; its .ply holds the same vertices
    and faces, with the texture sampled at the vertices."""
    return _head(seed, subject, expression)[0]


def dense_scan(mesh: trimesh.Trimesh, min_faces: int, *, relief: float = 2e-4, seed: int = 0) -> trimesh.Trimesh:
    """`mesh` subdivided (4× the faces per step) until it has `min_faces`, vertex colours interpolated, with a
    fine relief along the normals (`relief` × its size, ~40 bumps across it) like a multi-view stereo scan's."""
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    assert isinstance(mesh.visual, trimesh.visual.ColorVisuals)  # a vertex-coloured mesh, like a scan's .ply
    colors = np.asarray(mesh.visual.vertex_colors, np.float64)
    while len(f) < min_faces:
        # trimesh.remesh.subdivide has no annotations
        v, f, attr = trimesh.remesh.subdivide(v, f, vertex_attributes={"c": colors})
        colors = attr["c"]
    smooth = trimesh.Trimesh(v, f, process=False)
    extent = float(np.ptp(v, axis=0).max())
    rng = np.random.default_rng(seed)
    waves, phases = rng.normal(size=(24, 3)) * (2 * np.pi * 40 / extent), rng.uniform(0, 2 * np.pi, 24)
    height = np.sin(v @ waves.T + phases).sum(axis=1) / np.sqrt(len(phases)) * relief * extent
    return trimesh.Trimesh(v + smooth.vertex_normals * height[:, None], f,
                           vertex_colors=np.rint(colors).astype(np.uint8), process=False)


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


@lru_cache(maxsize=4)
def _subject(seed: int, subject: str) -> tuple[np.ndarray, tuple[_Bump, ...], np.ndarray]:
    """A subject's (read-only texture, facial bumps, head semi-axes in mm)."""
    rng = _rng(seed, subject)
    texture = _texture(rng)
    texture.flags.writeable = False
    bumps = tuple((a * rng.uniform(0.8, 1.2), (x, y + rng.normal(0, 0.01)), (sx * rng.uniform(0.9, 1.1), sy))
                  for a, (x, y), (sx, sy) in _FACE)
    return texture, bumps, HEAD_AXES_MM * rng.uniform(0.94, 1.06, 3)


def _head(
    seed: int, subject: str, expression: str
) -> tuple[trimesh.Trimesh, np.ndarray, np.ndarray, np.random.Generator]:
    """(textured mesh in SfM units, head semi-axes in mm, head-mm→SfM similarity, the tuple's rng for
    its cameras). The subject fixes texture and face; the expression a deformation and the placement."""
    texture, bumps, axes = _subject(seed, subject)
    rng = _rng(seed, subject, expression)
    bumps += tuple((a * rng.uniform(-1, 1), c, s) for a, c, s in _EXPRESSION)
    sphere = trimesh.creation.icosphere(subdivisions=SUBDIVISIONS)
    dirs = np.asarray(sphere.vertices)
    local_mm = dirs * _head_radius(dirs, axes, bumps)[:, None]
    S = cv.similarity_matrix(rng.uniform(0.01, 0.05), cv.quat_wxyz_to_rotation(rng.standard_normal(4)),
                             rng.uniform(-3, 3, 3))
    # The .ply stores float32: render exactly the geometry it holds.
    vertices = (local_mm @ S[:3, :3].T + S[:3, 3]).astype(np.float32).astype(np.float64)
    # trimesh.visual.TextureVisuals.__init__ has no annotations
    visual = trimesh.visual.TextureVisuals(uv=_uv(dirs), image=Image.fromarray(texture))
    return trimesh.Trimesh(vertices, np.asarray(sphere.faces), visual=visual, process=False), axes, S, rng


def _vertex_coloured(head: trimesh.Trimesh) -> trimesh.Trimesh:
    visual = head.visual
    assert isinstance(visual, trimesh.visual.TextureVisuals)  # the textured head of _head
    colours = _sample_texture(np.asarray(visual.material.image), visual.uv)
    return trimesh.Trimesh(head.vertices, head.faces, vertex_colors=colours, process=False)


def _write_views(tuple_dir: Path, head: trimesh.Trimesh, shots: list[_Shot], jpeg_quality: int) -> None:
    """Render, distort and write every view's JPEG, then params.json (one key per line)."""
    params: dict[str, object] = {}
    with Renderer(head, bg_color=BACKGROUND) as renderer:
        for view_id, shot in enumerate(shots):
            rgb = distorted_render(renderer, shot.camera, shot.true_w2c, exact_edges=False).color
            assert rgb is not None  # a colour render
            _, jpg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            (tuple_dir / f"{view_id}.jpg").write_bytes(jpg.tobytes())
            params.update({
                f"{view_id}_K": shot.camera.K.tolist(),
                f"{view_id}_Rt": shot.w2c[:3, :4].tolist(),
                f"{view_id}_distortion": shot.camera.dist.tolist(),
                f"{view_id}_width": shot.camera.width,
                f"{view_id}_height": shot.camera.height,
                f"{view_id}_matches": shot.matches,
                f"{view_id}_valid": shot.valid,
                f"{view_id}_sn": shot.sn,
                f"{view_id}_ori": shot.ori,
            })
    lines = ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in params.items())
    (tuple_dir / "params.json").write_text("{\n" + lines + "\n}\n")


def _head_radius(dirs: np.ndarray, axes: np.ndarray, bumps: tuple[_Bump, ...]) -> np.ndarray:
    """Ellipsoid radius plus facial bumps (mm) along unit directions: a star-shaped, closed head."""
    x, y, z = dirs.T
    radius: np.ndarray = 1.0 / np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)
    front = np.clip(z / 0.4, 0, 1) ** 2 * (3 - 2 * np.clip(z / 0.4, 0, 1))  # smoothstep: face side only
    for amplitude, (cx, cy), (sx, sy) in bumps:
        for mx in ((cx, -cx) if cx > 0 else (cx,)):
            radius += amplitude * front * np.exp(-((x - mx) / sx) ** 2 - ((y - cy) / sy) ** 2)
    return radius


def _uv(dirs: np.ndarray) -> np.ndarray:
    """Azimuthal-equidistant texture coordinates centred on the face (+z): continuous everywhere but
    the back pole, which no camera sees."""
    theta = np.arccos(np.clip(dirs[:, 2], -1, 1))
    scale = theta / np.maximum(np.hypot(dirs[:, 0], dirs[:, 1]), 1e-12) / (2 * np.pi)
    uv: np.ndarray = 0.5 + dirs[:, :2] * scale[:, None]
    return uv


def _texture(rng: np.random.Generator) -> np.ndarray:
    """Band-limited, high-contrast colour noise (TEXTURE_SIZE² RGB uint8): wavelengths ≳ 10 texels."""
    signal = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE, 3), np.float32)
    for factor, sigma, weight in ((2, 1.25, 1.0), (8, 1.5, 0.7)):  # fine and coarse blurred noise
        n = TEXTURE_SIZE // factor
        noise = cv2.GaussianBlur(rng.standard_normal((n, n, 3), dtype=np.float32), (0, 0), sigma)
        noise *= weight / noise[::4, ::4].std()
        signal += cv2.resize(noise, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_CUBIC)
    skin = np.array([190.0, 140.0, 115.0], np.float32)
    return np.clip(skin + 40.0 * signal, 0, 255).astype(np.uint8)


def _sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """RGBA uint8 of the texture at (u, v) (v up, texel centres at (i + 0.5)/size), bilinear."""
    size = texture.shape[0]
    map_x = (uv[:, 0] * size - 0.5).astype(np.float32).reshape(-1, 1)
    map_y = ((1 - uv[:, 1]) * size - 0.5).astype(np.float32).reshape(-1, 1)
    rgb = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).reshape(-1, 3)
    rgba: np.ndarray = np.column_stack([rgb, np.full(len(rgb), 255, np.uint8)])
    return rgba


class _Shot(NamedTuple):
    camera: Camera
    true_w2c: np.ndarray
    """The pose the image is rendered from."""
    w2c: np.ndarray
    """The pose written to params.json (wrong for the invalid view)."""
    valid: bool
    matches: int
    sn: str
    ori: str


def _cameras(
    rng: np.random.Generator, n_views: int, long_side: int, axes: np.ndarray, S: np.ndarray
) -> list[_Shot]:
    """The rig: cameras on an arc in front of the head (built in head millimetres, posed in SfM units)."""
    order = rng.permutation(n_views)
    rolled, invalid, k3_view = order[0], order[1], order[-1]
    portraits = set(order[2:2 + max(1, n_views // 4)].tolist())
    short_side = round(long_side * 2 / 3)
    focals = 4.0 * long_side * rng.uniform(0.97, 1.03, 3)  # a few cameras share a bit-identical focal
    yaws = np.linspace(-60, 60, n_views) + rng.uniform(-4, 4, n_views)
    distance = 10 * float(axes.mean())
    shots = []
    for i in range(n_views):
        width, height = (short_side, long_side) if i in portraits else (long_side, short_side)
        f = focals[rng.integers(len(focals))]
        cx, cy = np.array([width - 1, height - 1]) / 2 + rng.uniform(-0.05, 0.05, 2) * long_side
        dist = np.array([rng.uniform(0.1, 0.5), rng.uniform(-0.2, 0.2),
                         *(rng.choice([-1, 1], 2) * rng.uniform(1e-4, 1e-3, 2)),
                         rng.choice([-1, 1]) * rng.uniform(0.5, 3.0) if i == k3_view else 0.0])

        yaw, pitch = np.radians(yaws[i]), np.radians(rng.uniform(-15, 20))
        target = np.array([0.0, -5.0, 30.0]) + rng.normal(0, 5, 3)
        centre = target + distance * rng.uniform(0.95, 1.1) * np.array(
            [np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        w2c = _look_at(centre, target, roll=np.radians(rng.normal(0, 2)))
        if i == rolled:
            w2c = cv.rotate180_w2c(w2c)
        stored = w2c
        if i == invalid:  # a failed SfM camera: rotated by 4–8° and moved by ~3 % of its distance
            axis = rng.standard_normal(3)
            R_err = cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(rng.uniform(4, 8)))[0]
            t_err = R_err @ w2c[:3, 3] + rng.normal(0, 0.03 * distance, 3)
            stored = cv.homogeneous(np.column_stack([R_err @ w2c[:3, :3], t_err]))
        shots.append(_Shot(
            Camera(width, height, cv.K_matrix(f, f, cx, cy), dist),
            cv.w2c_in_similar_world(w2c, S),
            cv.w2c_in_similar_world(stored, S),
            bool(i != invalid),
            int(rng.integers(800, 6000) if i != invalid else rng.integers(5, 40)),
            str(rng.integers(10**8, 10**9)),
            f"DSC_{rng.integers(0, 10**4):04d}.JPG",
        ))
    return shots


def _look_at(centre: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """OpenCV world→camera pose at `centre` looking at `target`, head up (+y) as image up, then rolled."""
    forward = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.stack([right, down, forward])
    return cv.homogeneous(np.column_stack([R, -R @ centre]))
