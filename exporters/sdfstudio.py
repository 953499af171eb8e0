"""sdfstudio: `meta_data.json` + `NNNNNN_rgb.png` (and foreground masks, sensor depth), in sdfstudio's unit sphere.

The layout of sdfstudio (`autonomousvision/sdfstudio` `docs/sdfstudio-data.md`), read by its `sdfstudio-data`
parser (`nerfstudio/data/dataparsers/sdfstudio_dataparser.py`) and by nerfstudio's own `sdfstudio-data`
parser (`nerfstudio-project/nerfstudio` `nerfstudio/data/dataparsers/sdfstudio_dataparser.py`):

    OUT/meta_data.json                 camera_model "OPENCV", ONE height and width, has_mono_prior false,
                                       has_foreground_mask, has_sensor_depth, pairs null (pairs.txt is what the
                                       parser opens, and only with load_pairs), worldtogt, scene_box, frames
    OUT/NNNNNN_rgb.png                 undistorted, NNNNNN = 000000, 000001, … in view order (the manifest maps
                                       them to view ids); PNG unless --image-format jpg
    OUT/NNNNNN_foreground_mask.png     with --masks: 255 where the mesh is seen and the image has source data,
                                       as a 3-channel PNG (the parser keeps channel 0 by `[..., :1]`, which on a
                                       one-channel image would cut the WIDTH to 1), frame key `foreground_mask`
    OUT/NNNNNN_sensor_depth.npy        with --depth: float32 H×W z-depth of the mesh in the file's (unit-sphere)
                                       world units, 0 where no surface; frame key `sensor_depth_path`

Per frame: `rgb_path`; `camtoworld`, the OpenCV camera→world 4×4 (the parser negates columns 1 and 2 itself,
"Convert from COLMAP's/OPENCV's camera coordinate system to nerfstudio"); `intrinsics`, a 4×4 whose fx = [0][0],
fy = [1][1], cx = [0][2], cy = [1][2] are all the parser takes. Both parsers read these with `torch.tensor`, i.e.
float32. nerfstudio's `Cameras` cast the ray of pixel (i, j) through (i + 0.5, j + 0.5) (`get_image_coords`,
`pixel_offset=0.5`, `nerfstudio/cameras/cameras.py`), so the file's cx is the OpenCV cx + 0.5. The parser reads no
distortion (camera_model is not read at all), hence undistortion only, and ONE height/width for every camera: the
images go into one shared frame by default (`--intrinsics shared`: one size, one K, portrait views turned, K and R
exact); `--intrinsics per-view` writes several sizes, which the check reports as the misread it is.

The world: sdfstudio's surface models keep the object inside the unit sphere at the origin (the background model
takes over at |x| ≥ 1, `get_foreground_mask` in `nerfstudio/models/base_surface_model.py`), as its own converters
normalize it (`scripts/datasets/process_nerfstudio_to_sdfstudio.py`: "normalized into a unit sphere", worldtogt =
the inverse of that normalization). Here the mesh's bounding sphere (centre of its bounding box, the largest
distance to it) times `margin` becomes the unit sphere: X_file = (X_source − c) / s, and `worldtogt` =
[[s,0,0,cx],[0,s,0,cy],[0,0,s,cz],[0,0,0,1]] maps the file's world back to the source's (no parser reads it:
it is for evaluation, docs/sdfstudio-data.md). `scene_box` = aabb [−1, 1]³, radius 1, collider_type as chosen,
near / far = the ray distances from the nearest / farthest camera centre to the unit sphere (NearFarCollider
samples every ray between them, `nerfstudio/model_components/scene_colliders.py`). Sensor depth is the z-depth
(sdfstudio divides its rendered ray depth by the direction norm, `base_surface_model.py`, and compares with the
value at the pixel, `SensorDepthLoss` in `nerfstudio/model_components/losses.py`; 0 marks no value).

nerfstudio's parser differs: it auto-orients the world by default (`auto_orient=True`: the rotation taking the mean
camera up to +z, `camera_utils.auto_orient_and_center_poses(method="up", center_method="none")`, recorded in the
parser's metadata), and reads no foreground mask, no sensor depth, only `scene_box.aabb`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from fsconvert import conventions as cv
from fsconvert.depthproducts import depth_bands, render_masks, silhouette, subjects_ahead
from fsconvert.errors import InputError, Where
from fsconvert.imageplan import ImageOptions, ViewPlan, frame_record, plan_views, size_warnings
from fsconvert.imagestage import uncovered_warnings, write_images
from fsconvert.jsonvalues import matrix, number, read_object, show, text
from fsconvert.mesh import capture_geometry
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView, Program, Reading
from fsconvert.writers import npy_buffer, write_bytes, write_encoded, write_json

NAME = "sdfstudio"
SUMMARY = ("sdfstudio meta_data.json + NNNNNN_rgb.png (OpenCV camtoworld, 4×4 intrinsics with +0.5 pixel centres, "
           "unit-sphere world, worldtogt back to the source)")

META = "meta_data.json"
RGB, MASK, DEPTH = "_rgb", "_foreground_mask.png", "_sensor_depth.npy"
MESH_USE = "the sdfstudio export (the unit sphere, masks, depth)"
AABB = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
"""The scene box of sdfstudio's object scenes (`process_nerfstudio_to_sdfstudio.py`, scene_type "object")."""
RADIUS = 1.0
"""The sphere the object lies in (`get_foreground_mask`: |x| < 1.0)."""
MIN_NEAR = 0.05
"""The near plane sdfstudio's own converters write; the floor of ours (a camera inside the unit sphere)."""
RIGID_TOL = 1e-5
"""Largest |RᵀR − I| of a camtoworld rotation as read in float32 (rounding is ~1e-7)."""
SIMILARITY_TOL = 1e-9
"""Largest |AᵀA/s² − I| of worldtogt's linear part (written in float64)."""
UP_EPS = 1e-6
"""nerfstudio's `rotation_matrix_between` treats cross products with |v|₁ below this as parallel."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=lambda: ImageOptions(intrinsics="shared", image_format="png"))
    """One shared frame by default: the parser reads one height and width for every camera."""
    masks: bool = option(False, "write NNNNNN_foreground_mask.png (255 where the mesh is seen and the image has "
                         "source data; has_foreground_mask) for sdfstudio's --include-foreground-mask")
    depth: bool = option(False, "write NNNNNN_sensor_depth.npy, the mesh's z-depth (float32, in the file's unit-sphere "
                         "units, 0 = none; has_sensor_depth) for sdfstudio's --include-sensor-depth")
    margin: float = option(1.1, "the mesh's bounding sphere times this becomes sdfstudio's unit sphere (worldtogt "
                           "maps it back)")
    collider: Literal["near_far", "box", "sphere"] = option(
        "near_far", "scene_box collider_type: near_far (one near/far for every ray: the cameras' distances to the "
        "unit sphere), box (the aabb [-1, 1]³) or sphere (the unit sphere)")

    def __post_init__(self) -> None:
        if not (np.isfinite(self.margin) and self.margin >= 1):
            raise InputError(f"margin must be a number ≥ 1 (the mesh inside the unit sphere), got {self.margin}")
        if not self.image.undistort:
            raise InputError("sdfstudio's parser reads no lens distortion: use --distortion undistort")


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the export (see the module docstring): the unit sphere from the mesh's vertices (numpy alone) before
    the images, masks and depth from its vertices and faces again after them (read anew: a dense scan's are not
    held through the images)."""
    centre, radius = cv.bounding_sphere(capture_geometry(capture, MESH_USE).vertices)
    worldtogt = cv.similarity_matrix(options.margin * radius, np.eye(3), centre)
    plans = plan_views(capture.views, options.image)
    stems = [f"{k:06d}" for k in range(len(plans))]
    names = [f"{s}{RGB}{p.suffix}" for s, p in zip(stems, plans)]
    with subjects_ahead(capture, MESH_USE, plans, options.image.alpha, workers=workers, progress=progress) as alpha:
        footprints = write_images(plans, names, folder, workers=workers, progress=progress, footprints=True,
                                  subjects=alpha)
    assert footprints is not None  # write_images returns them when asked for
    to_file = cv.invert_similarity(worldtogt)
    frames: list[dict[str, Any]] = [frame_entry(name, plan, to_file) for name, plan in zip(names, plans)]

    def write_mask(i: int, mask: np.ndarray) -> None:
        # OpenCV's PNG, as every mask: it encodes row by row (fpng, for images, holds ~100 MB more for a 12.6 MP
        # view) and a mask compresses to a few kB
        write_encoded(folder / f"{stems[i]}{MASK}", cv2.merge([mask, mask, mask]), ".png")
        frames[i]["foreground_mask"] = f"{stems[i]}{MASK}"

    if options.depth:
        scale = float(worldtogt[0, 0])
        for i, bands in depth_bands(capture_geometry(capture, MESH_USE), plans, progress=progress,
                                    desc="masks/depth" if options.masks else "depth"):
            W, H = plans[i].camera.size
            data, depth = npy_buffer((H, W), "<f4")
            mask = np.empty((H, W), np.uint8) if options.masks else None
            for top, z in bands:  # a band of rows at a time: no float64 copy of a whole map
                rows = slice(top, top + len(z))
                depth[rows] = file_depth(z, scale)
                if mask is not None:
                    mask[rows] = silhouette(z)
            write_bytes(folder / f"{stems[i]}{DEPTH}", data)
            frames[i]["sensor_depth_path"] = f"{stems[i]}{DEPTH}"
            del data, depth  # before the mask's three channels
            if mask is not None:
                write_mask(i, cv2.bitwise_and(mask, footprints[i].alpha(), dst=mask))
    elif options.masks:  # the same masks without z (`render_masks`)
        for i, mask in render_masks(capture_geometry(capture, MESH_USE), plans, footprints, progress=progress):
            write_mask(i, mask)
    scene_box, warnings = scene_box_for([np.asarray(f["camtoworld"])[:3, 3] for f in frames], options.collider)
    width, height = plans[0].camera.size
    write_json(folder / META, {
        "camera_model": "OPENCV", "height": height, "width": width, "has_mono_prior": False,
        "has_foreground_mask": options.masks, "has_sensor_depth": options.depth, "pairs": None,
        "worldtogt": worldtogt.tolist(), "scene_box": scene_box, "frames": frames,
    }, compact_numbers=True)
    warnings += size_warnings(plans, NAME, "sdfstudio and nerfstudio's sdfstudio-data parsers (one height/width)")
    warnings += uncovered_warnings(NAME, names, footprints, "sdfstudio's loaders (alpha dropped)")
    return {"images": names, "worldtogt": worldtogt.tolist(), "scene_box": scene_box,
            **frame_record(capture.views, options.image), **({"warnings": warnings} if warnings else {})}


def frame_entry(name: str, plan: ViewPlan, to_file: np.ndarray) -> dict[str, Any]:
    """One frame: the image, the OpenCV camera→world pose in the file's world, the 4×4 corner-origin K."""
    intrinsics = np.eye(4)
    intrinsics[:3, :3] = cv.K_to_corner_origin(plan.camera.K)
    c2w = cv.w2c_to_c2w(cv.w2c_in_similar_world(plan.world_to_cam, to_file))
    return {"rgb_path": name, "camtoworld": c2w.tolist(), "intrinsics": intrinsics.tolist()}


def file_depth(depth: np.ndarray, scale: float) -> np.ndarray:
    """A source-world z-depth map (0 = none) in the file's world, X_file = (X − c) / `scale`: float32 z / scale."""
    out: np.ndarray = (depth.astype(np.float64) / scale).astype(np.float32)
    return out


def scene_box_for(centres: list[np.ndarray], collider: str) -> tuple[dict[str, Any], list[str]]:
    """sdfstudio's scene_box (docs/sdfstudio-data.md) for the unit sphere seen from camera centres (file world):
    near / far are the ray distances between which every camera's rays cross the unit sphere."""
    distances = np.linalg.norm(np.asarray(centres), axis=1)
    near, far = float(distances.min()) - RADIUS, float(distances.max()) + RADIUS
    warnings = []
    if near < MIN_NEAR:
        warnings.append(f"{NAME}: a camera is {distances.min():.3g} from the centre of the unit sphere: near set to "
                        f"{MIN_NEAR} (raise --margin?)")
        near = MIN_NEAR
    return {"aabb": AABB, "near": near, "far": far, "radius": RADIUS, "collider_type": collider}, warnings


# ---- read ------------------------------------------------------------------------------------------


def read(folder: str | Path) -> list[ExportedView]:
    """sdfstudio's `sdfstudio-data` parser rules (`_read_sdfstudio`): cameras in the source world."""
    return _read_sdfstudio(Path(folder)).views


@dataclass(frozen=True)
class _Meta:
    """meta_data.json as both parsers take it: per frame the image, float32 camtoworld (OpenCV) and K."""

    path: Path
    meta: dict[str, Any]
    width: int
    height: int
    names: list[str]
    c2w_cv: np.ndarray
    """N×4×4 float32."""
    intrinsics: np.ndarray
    """N×4×4 float32."""
    to_source: np.ndarray
    """worldtogt (float64): the file's world → the source world."""


def _load(folder: Path) -> _Meta:
    """What both parsers read: `meta["frames"][i]` `rgb_path` (relative to the folder), `intrinsics` and
    `camtoworld` by `torch.tensor` (float32), `meta["height"]`, `meta["width"]`; and `worldtogt`, which no
    parser reads: fsconvert's way back to the source world."""
    path = folder / META
    meta = read_object(path)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError("no frames", file=path, key="frames")
    height, width = (_size(meta, key, path) for key in ("height", "width"))
    names, c2ws, Ks = [], [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise InputError("frame is not an object", file=path, key=f"frames[{i}]")
        names.append(text(frame, "rgb_path", _where(path, "rgb_path", i)))
        c2ws.append(matrix(frame.get("camtoworld"), {(4, 4), (3, 4)}, _where(path, "camtoworld", i)))
        Ks.append(matrix(frame.get("intrinsics"), {(4, 4), (3, 3)}, _where(path, "intrinsics", i)))
    c2w = np.stack([cv.homogeneous(c) for c in c2ws]).astype(np.float32)
    intrinsics = np.stack([np.pad(K, ((0, 4 - len(K)), (0, 4 - len(K[0])))) for K in Ks]).astype(np.float32)
    return _Meta(path, meta, width, height, names, c2w, intrinsics, _worldtogt(meta, path))


def _cameras(m: _Meta, c2w_gl: np.ndarray, file_to_source: list[np.ndarray]) -> list[ExportedView]:
    """The views: `Cameras(fx, fy, cx, cy, height, width, camera_to_worlds)` with nerfstudio's ray rule (the
    ray of pixel index i at i + 0.5: OpenCV cx = file cx − 0.5), OpenGL camera→world poses, moved to the
    source world by `file_to_source` (per view)."""
    views = []
    for i, (name, K4, pose, to_source) in enumerate(zip(m.names, m.intrinsics, c2w_gl, file_to_source)):
        R = pose[:3, :3].astype(np.float64)
        if not np.abs(R.T @ R - np.eye(3)).max() <= RIGID_TOL or np.linalg.det(R) < 0:
            raise InputError("camtoworld is not a rigid camera→world pose (nerfstudio would cast skewed rays)",
                             file=m.path, key=f"frames[{i}].camtoworld")
        K = cv.K_from_corner_origin(cv.K_matrix(*(float(K4[r, c]) for r, c in ((0, 0), (1, 1), (0, 2), (1, 2)))))
        w2c = cv.w2c_in_similar_world(cv.c2w_gl_to_w2c_cv(pose.astype(np.float64)), to_source)
        views.append(ExportedView(name, Camera(m.width, m.height, K), w2c))
    return views


def _flip_to_gl(c2w_cv: np.ndarray) -> np.ndarray:
    """The parsers' `camera_to_worlds[:, 0:3, 1:3] *= -1`: OpenCV camera axes → nerfstudio's (OpenGL), in the
    poses' own precision."""
    flipped: np.ndarray = c2w_cv @ cv.CV_TO_GL.astype(c2w_cv.dtype)
    return flipped


def _read_sdfstudio(folder: Path) -> Reading:
    """sdfstudio's `SDFStudio._generate_dataparser_outputs` with its defaults (auto_orient False, scale_factor 1,
    no auto_scale_poses): the poses as written, flipped to OpenGL; `scene_box` read whole (KeyError on a missing
    key); with has_foreground_mask / has_sensor_depth, the masks (`np.array(Image.open(...))[..., :1] / 255`) and
    depth maps (`np.load`) that --include-foreground-mask / --include-sensor-depth would load."""
    m = _load(folder)
    box = m.meta.get("scene_box")
    if not isinstance(box, dict):
        raise InputError("missing or not an object", file=m.path, key="scene_box")
    for key in ("aabb", "near", "far", "radius", "collider_type"):
        if key not in box:
            raise InputError("missing: the parser stops (KeyError)", file=m.path, key=f"scene_box.{key}")
    views = _cameras(m, _flip_to_gl(m.c2w_cv), [m.to_source] * len(m.names))
    problems = _image_problems(folder, m)
    if m.meta.get("has_foreground_mask") is True:
        problems += _mask_problems(folder, m)
    if m.meta.get("has_sensor_depth") is True:
        problems += _depth_problems(folder, m)
    return Reading(views, problems=problems)


def _read_nerfstudio(folder: Path) -> Reading:
    """nerfstudio's `sdfstudio-data` parser: the same frames, flipped to OpenGL, then with its default
    auto_orient=True rotated by `auto_orient_and_center_poses(method="up", center_method="none")` (float32, as
    torch computes it); the rotation is what the parser records (`metadata["transform"]`), undone here on the
    way back to the source world. Foreground masks and sensor depth are not read."""
    m = _load(folder)
    if not isinstance(m.meta.get("scene_box"), dict) or "aabb" not in m.meta["scene_box"]:
        raise InputError("missing: the parser stops (KeyError)", file=m.path, key="scene_box.aabb")
    c2w_gl = _flip_to_gl(m.c2w_cv)
    rotation, problems = _orientation(c2w_gl)
    oriented = np.tile(np.eye(4, dtype=np.float32), (len(c2w_gl), 1, 1))
    oriented[:, :3, :] = rotation @ c2w_gl[:, :3, :]  # transform @ poses, transform = [rotation | 0]
    unrotate = cv.similarity_matrix(1.0, rotation.astype(np.float64).T, np.zeros(3))
    views = _cameras(m, oriented, [m.to_source @ unrotate] * len(m.names))
    return Reading(views, problems=problems + _image_problems(folder, m))


def _orientation(c2w_gl: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """nerfstudio's "up" orientation (`camera_utils.auto_orient_and_center_poses`): the mean of the poses' y
    columns, normalized, turned onto +z by `rotation_matrix_between` (Rodrigues about their cross product), in
    float32."""
    up = c2w_gl[:, :3, 1].mean(axis=0, dtype=np.float32)
    norm = np.linalg.norm(up)
    if not norm > 0:
        return np.eye(3, dtype=np.float32), ["auto_orient: the cameras' up vectors cancel out (mean 0): nerfstudio "
                                             "normalizes it to NaN poses"]
    return _rotation_between(up / norm, np.array([0, 0, 1], np.float32)), []


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """nerfstudio's `camera_utils.rotation_matrix_between(a, b)` (float32): the rotation about a × b taking a to b;
    for (anti)parallel vectors about a × x, x = e1 if |a₀| < eps else e2."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v = np.cross(a, b)
    if np.abs(v).sum() < UP_EPS:
        x = np.array([1, 0, 0] if abs(a[0]) < UP_EPS else [0, 1, 0], np.float32)
        v = np.cross(a, x)
    v = v / np.linalg.norm(v)
    S = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], np.float32)
    theta = np.arccos(np.clip(np.dot(a, b), -1, 1))
    R: np.ndarray = (np.eye(3, dtype=np.float32) + np.sin(theta) * S + (1 - np.cos(theta)) * (S @ S)).astype(np.float32)
    return R


def _image_problems(folder: Path, m: _Meta) -> list[str]:
    """The rays are cast over meta's height × width: an image of another size is misread (and the batch
    collation of several sizes stops); an image that is not 3- or 4-channel 8-bit stops `get_image`'s asserts."""
    for name in m.names:
        size, mode = _image(folder / name, m.path)
        if size != (m.width, m.height):
            return [f"casts every camera's rays over {META}'s {m.width}×{m.height}: {name} is {size[0]}×{size[1]}"]
        if mode not in ("RGB", "RGBA"):
            return [f"reads 3- or 4-channel 8-bit images (assert in get_image): {name} is {mode}"]
    return []


def _mask_problems(folder: Path, m: _Meta) -> list[str]:
    """`np.array(Image.open(mask), dtype="uint8")[..., :1]`: a one-channel mask loses its width, not a channel."""
    for i, frame in enumerate(m.meta["frames"]):
        name = text(frame, "foreground_mask", _where(m.path, "foreground_mask", i))
        size, mode = _image(folder / name, m.path)
        if mode not in ("RGB", "RGBA"):
            return [f"takes foreground_mask[..., :1]: {name} is {mode}, whose [..., :1] is its first column"]
        if size != (m.width, m.height):
            return [f"samples foreground masks at the rays' {m.width}×{m.height} pixels: {name} is {size[0]}×{size[1]}"]
    return []


def _depth_problems(folder: Path, m: _Meta) -> list[str]:
    """`np.load(sensor_depth_path)` as float: one value per pixel, height × width."""
    for i, frame in enumerate(m.meta["frames"]):
        name = text(frame, "sensor_depth_path", _where(m.path, "sensor_depth_path", i))
        try:
            depth = np.load(folder / name, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read: {exc}", file=folder / name) from None
        if depth.shape != (m.height, m.width) or depth.dtype.kind != "f":
            return [f"samples sensor depth at the rays' {m.width}×{m.height} pixels: {name} is {depth.dtype} "
                    f"{'×'.join(map(str, depth.shape))}"]
    return []


def _image(path: Path, meta: Path) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except FileNotFoundError:
        raise InputError(f"not found (named in {meta.name})", file=path) from None
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"not a readable image: {exc}", file=path) from None


def _worldtogt(meta: dict[str, Any], path: Path) -> np.ndarray:
    """worldtogt as a 4×4 similarity X_source = s·R·X_file + t (what fsconvert writes there)."""
    where: Where = {"file": path, "key": "worldtogt"}
    S = matrix(meta.get("worldtogt"), {(4, 4)}, where)
    s, R, _ = cv.split_similarity(S)
    if not np.array_equal(S[3], [0, 0, 0, 1]) or not s > 0 or np.abs(R.T @ R - np.eye(3)).max() > SIMILARITY_TOL \
            or np.linalg.det(R) < 0:
        raise InputError(f"not a similarity (scale, rotation, translation): {show(S.tolist())}", **where)
    return S


def _size(meta: dict[str, Any], key: str, path: Path) -> int:
    value = number(meta, key, {"file": path, "key": key})
    if value != int(value) or value < 1:
        raise InputError(f"not a positive integer: {value:g}", file=path, key=key)
    return int(value)


def _where(path: Path, key: str, i: int) -> Where:
    return {"file": path, "key": f"frames[{i}].{key}"}


PROGRAMS = (
    Program("sdfstudio", f"sdfstudio's sdfstudio-data parser: {META}, OpenCV camtoworld flipped to OpenGL, float32, "
            "one height/width, rays through pixel + 0.5; foreground masks and sensor depth", _read_sdfstudio),
    Program("nerfstudio-sdfstudio-data", f"nerfstudio's sdfstudio-data parser: the same {META} auto-oriented "
            "(mean up → +z, recorded and undone); masks and sensor depth not read", _read_nerfstudio),
)
