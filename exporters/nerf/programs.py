"""How programs read the NeRF layouts: one rule per program, each turning an export into the cameras that
program would use (internal convention, the recorded normalization undone: source world).

| program | reads | ignores / rejects |
|---|---|---|
| nerfstudio | transforms.json, `nerfstudio-data` rules | — (k4 rejected) |
| instant-ngp | every *.json of the folder | k3; cx, cy without w, h beside them |
| blender | transforms_{train,val,test}.json, original NeRF rules | everything but camera_angle_x |
| 3dgs | transforms_train.json + transforms_test.json (Blender) | cx, cy; transforms_val.json |
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fsconvert import conventions as cv
from fsconvert.errors import InputError, Where
from fsconvert.jsonvalues import matrix, number, read_object, text
from fsconvert.model import Camera
from fsconvert.protocol import ExportedView, Program, Reading

from .layout import GAUSSIAN_SPLITS, LEGACY_APPLIED_TRANSFORM, PERSPECTIVE_MODELS, SPLITS, TRANSFORMS

RIGID_TOL = 1e-6


def read(out_dir: str | Path) -> list[ExportedView]:
    """Read `transforms.json` by nerfstudio's `nerfstudio-data` rules, or `transforms_*.json` by the
    Blender rules; cameras in the internal convention, normalization undone (source world)."""
    out_dir = Path(out_dir)
    if (out_dir / TRANSFORMS).is_file():
        return read_transforms(out_dir / TRANSFORMS, out_dir)
    if (out_dir / "transforms_train.json").is_file():
        return read_blender(out_dir)
    raise InputError(f"no {TRANSFORMS} or transforms_train.json", file=out_dir)


def read_transforms(path: Path, out_dir: Path) -> list[ExportedView]:
    """nerfstudio rules: a top-level fl_x/fl_y/cx/cy/w/h/distortion key wins, else every frame has it;
    file_path is relative to the JSON's folder and must name an existing file (frames sorted by it)."""
    meta = read_object(path)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError("no frames", file=path, key="frames")
    model = meta.get("camera_model", "PERSPECTIVE")
    if model not in PERSPECTIVE_MODELS + ("PERSPECTIVE",):
        raise InputError(f"camera model {model!r} cannot be represented by k1 k2 p1 p2 k3", file=path,
                         key="camera_model")
    world = source_similarity(meta, path, (path.parent / "colmap" / "sparse" / "0").exists())
    top_distortion = any(k in meta for k in ("k1", "k2", "k3", "p1", "p2", "distortion_params"))
    views = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise InputError("frame is not an object", file=path, key=f"frames[{i}]")
        image = path.parent / _string(frame, "file_path", path, i)
        fx, fy, cx, cy = (_number(meta if k in meta else frame, k, path, None if k in meta else i)
                          for k in ("fl_x", "fl_y", "cx", "cy"))
        w, h = (int(_number(meta if k in meta else frame, k, path, None if k in meta else i)) for k in ("w", "h"))
        k1, k2, k3, k4, p1, p2 = _distortion(meta if top_distortion else frame, path, None if top_distortion else i)
        if k4 != 0:
            raise InputError(f"k4 = {k4:g} (nerfstudio's r⁸ term) cannot be represented", file=path,
                             key=f"frames[{i}]")
        check_image(image, (w, h), path, i)
        camera = Camera(w, h, cv.K_from_corner_origin(cv.K_matrix(fx, fy, cx, cy)), np.asarray([k1, k2, p1, p2, k3]))
        views.append(ExportedView(_relative(image, out_dir), camera,
                                  source_w2c(frame, world, path, i)))
    return sorted(views, key=lambda v: v.name)


def read_blender(out_dir: Path, splits: tuple[str, ...] = SPLITS, *, required: bool = False,
                 rule: cv.CentreRule = "half-size") -> list[ExportedView]:
    """Blender rules: `transforms_{split}.json` of `splits` (each one `required`, else skipped when
    absent), image = file_path + '.png' ('./' dropped), focal = 0.5·W/tan(0.5·camera_angle_x) from
    the image width, the principal point at the centre by `rule` (the original NeRF: W/2, its rays at
    (i − W/2)/f; 3DGS's FoV-only frustum: (W − 1)/2)."""
    views = []
    for split in splits:
        path = out_dir / f"transforms_{split}.json"
        if not path.is_file():
            if required:
                raise InputError("missing: the reader needs it", file=path)
            continue
        meta = read_object(path)
        fov = _number(meta, "camera_angle_x", path, None)
        world = source_similarity(meta, path, False)
        frames = meta.get("frames")
        if not isinstance(frames, list):
            raise InputError("no frames", file=path, key="frames")
        for i, frame in enumerate(frames):
            image = out_dir / (_string(frame, "file_path", path, i).replace("./", "") + ".png")
            W, H = check_image(image, None, path, i)
            f = cv.focal_from_fov(W, fov)
            K = cv.centred_K(cv.K_matrix(f, f, 0.0, 0.0), W, H, rule)
            views.append(ExportedView(_relative(image, out_dir), Camera(W, H, K), source_w2c(frame, world, path, i)))
    return views


def source_similarity(meta: dict[str, Any], path: Path, legacy: bool) -> np.ndarray:
    """The similarity from the file's world back to the source world (inverse of the recorded one)."""
    A = meta.get("applied_transform", LEGACY_APPLIED_TRANSFORM if legacy else np.eye(4)[:3].tolist())
    s = meta.get("applied_scale", 1.0)
    try:
        A, s = np.array(A, dtype=np.float64), float(s)
    except (TypeError, ValueError):
        raise InputError("applied_transform must be 3×4 numbers and applied_scale a number", file=path) from None
    if A.shape != (3, 4) or not np.isfinite(A).all() or not (np.isfinite(s) and s > 0):
        raise InputError("applied_transform must be 3×4 finite numbers and applied_scale > 0", file=path)
    if np.abs(A[:, :3].T @ A[:, :3] - np.eye(3)).max() > RIGID_TOL or np.linalg.det(A[:, :3]) < 0:
        raise InputError("applied_transform is not a rotation and translation", file=path, key="applied_transform")
    return cv.invert_similarity(cv.similarity_from_nerfstudio(A, s))


def source_w2c(frame: dict[str, Any], world: np.ndarray, path: Path, i: int) -> np.ndarray:
    c2w = _matrix(frame, "transform_matrix", path, i)
    R = c2w[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > RIGID_TOL or np.linalg.det(R) < 0:
        raise InputError("transform_matrix is not a rigid camera→world pose", file=path,
                         key=f"frames[{i}].transform_matrix")
    return cv.w2c_in_similar_world(cv.c2w_gl_to_w2c_cv(c2w), world)


def _distortion(obj: dict[str, Any], path: Path, i: int | None) -> tuple[float, ...]:
    """(k1, k2, k3, k4, p1, p2) from `distortion_params` or the separate keys (0 when absent)."""
    if i is None and "distortion_params" in obj:  # top level only
        params = _matrix(obj, "distortion_params", path, i, shape=(6,))
        return tuple(float(p) for p in params)
    return tuple(_number(obj, k, path, i) if k in obj else 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2"))


def _where(path: Path, key: str, i: int | None) -> Where:
    """A one-line error's location: the file, and the key (of frame i, or at the top level)."""
    return {"file": path, "key": key if i is None else f"frames[{i}].{key}"}


def _string(obj: dict[str, Any], key: str, path: Path, i: int | None) -> str:
    return text(obj, key, _where(path, key, i))


def _number(obj: dict[str, Any], key: str, path: Path, i: int | None) -> float:
    return number(obj, key, _where(path, key, i))


def _matrix(obj: dict[str, Any], key: str, path: Path, i: int | None, shape: tuple[int, ...] = (4, 4)) -> np.ndarray:
    """A finite matrix of `shape`; a 4×4 may be given as its first 3 rows (instant-ngp reads rows 0..2 only)."""
    shapes: set[tuple[int, ...]] = {shape, (3, 4)} if shape == (4, 4) else {shape}
    value = matrix(obj.get(key), shapes, _where(path, key, i))
    return cv.homogeneous(value) if value.shape == (3, 4) else value


def check_image(image: Path, size: tuple[int, int] | None, path: Path, i: int) -> tuple[int, int]:
    try:
        with Image.open(image) as im:
            found = im.size
    except FileNotFoundError:
        raise InputError("image not found", file=image, key=f"frames[{i}].file_path") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"not a readable image: {exc}", file=image) from None
    if size is not None and found != size:
        raise InputError(f"image is {found[0]}×{found[1]}, {path.name} says {size[0]}×{size[1]}", file=image)
    return found


def _relative(image: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(image, out_dir)).as_posix()


NGP_FOCAL_KEYS = (("fl_x", "fl_y", "px"), ("camera_angle_x", "camera_angle_y", "rad"), ("x_fov", "y_fov", "deg"))
"""instant-ngp's focal-length keys, first found wins (read_focal_length), top level then per frame."""
NGP_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "tga", "pic", "pnm", "psd", "exr")


def read_instant_ngp(folder: Path) -> Reading:
    """instant-ngp's loader (src/nerf_loader.cu): every *.json of the folder, merged; per frame a
    key overrides the top level. Focal from fl_x / camera_angle_x / x_fov (fy = fx when only x is
    given); principal point cx/w, cy/h, read only where w and h sit beside cx and cy (else the
    centre); image size from the image file; lens k1 k2 p1 p2 (k3 is dropped: the OpenCV kernel has
    no k3). Frames natural-sorted by file_path. The world is the file's: the similarity fsconvert
    records (applied_transform, applied_scale) is undone to compare with the source.
    """
    files = sorted(folder.glob("*.json"))
    if not files:
        raise InputError("instant-ngp: no *.json in the folder", file=folder)
    frames: list[tuple[str, Path, dict[str, Any], dict[str, Any], int, np.ndarray]] = []
    for path in files:
        meta = read_object(path)
        file_frames = meta.get("frames")
        if not isinstance(file_frames, list):
            continue  # instant-ngp skips it with a warning
        world = source_similarity(meta, path, False)
        for i, frame in enumerate(file_frames):
            file_path = frame.get("file_path") if isinstance(frame, dict) else None
            if not isinstance(file_path, str):
                raise InputError("missing or not a string", file=path, key=f"frames[{i}].file_path")
            frames.append((file_path, path, meta, frame, i, world))
    views = []
    for file_path, path, meta, frame, i, world in sorted(frames, key=lambda f: _natural(f[0])):
        image = _ngp_image(path.parent, file_path)
        W, H = check_image(image, None, path, i)
        fx, fy = _ngp_focal(meta, frame, (W, H), path, i)
        cx, cy = _ngp_principal(meta, frame, (W, H))
        k1, k2, p1, p2 = (float(frame.get(k, meta.get(k, 0.0))) for k in ("k1", "k2", "p1", "p2"))
        if frame.get("is_fisheye", meta.get("is_fisheye", False)):
            raise InputError("is_fisheye: the OpenCV fisheye model cannot be represented by k1 k2 p1 p2 k3",
                             file=path, key=f"frames[{i}]")
        K = cv.K_from_corner_origin(cv.K_matrix(fx, fy, cx, cy))
        camera = Camera(W, H, K, np.asarray([k1, k2, p1, p2, 0.0]))
        views.append(ExportedView(Path(os.path.relpath(image, folder)).as_posix(), camera,
                                  source_w2c(frame, world, path, i)))
    return Reading(views)


def _natural(text: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _ngp_image(base: Path, file_path: str) -> Path:
    """resolve_path: relative to the JSON's folder; without an extension and missing, try the known ones."""
    image = base / file_path.replace("\\", "/")
    if not image.exists() and not image.suffix:
        image = next((p for e in NGP_EXTENSIONS if (p := image.with_name(f"{image.name}.{e}")).exists()), image)
    return image


def _ngp_focal(meta: dict[str, Any], frame: dict[str, Any], size: tuple[int, int], path: Path,
               i: int) -> tuple[float, float]:
    """(fx, fy) in pixels: the frame's keys if it has any focal key, else the top level's."""
    for obj in (frame, meta):
        for x_key, y_key, unit in NGP_FOCAL_KEYS:
            if x_key in obj:
                fx = _ngp_length(float(obj[x_key]), size[0], unit)
                fy = _ngp_length(float(obj[y_key]), size[1], unit) if y_key in obj else fx
                return fx, fy
    raise InputError("instant-ngp: Couldn't read fov.", file=path, key=f"frames[{i}]")


def _ngp_length(value: float, size: int, unit: str) -> float:
    if unit == "px":
        return value
    return cv.focal_from_fov(size, np.radians(value) if unit == "deg" else value)


def _ngp_principal(meta: dict[str, Any], frame: dict[str, Any], size: tuple[int, int]) -> tuple[float, float]:
    """Corner-origin principal point: (cx/w, cy/h) of the frame, else the top level, where w/h sit beside
    cx/cy; the image centre otherwise; scaled to the image file's size."""
    rel = [0.5, 0.5]
    for obj in (meta, frame):  # the frame's read_lens runs second and overrides
        for k, (c, n) in enumerate((("cx", "w"), ("cy", "h"))):
            if c in obj and n in obj:
                rel[k] = float(obj[c]) / float(obj[n])
    return rel[0] * size[0], rel[1] * size[1]


def _read_3dgs(folder: Path) -> Reading:
    """3D Gaussian Splatting's Blender scene loading (graphdeco-inria `scene/dataset_readers.py`,
    `readNerfSyntheticInfo`): transforms_train.json and transforms_test.json (both required; val is never
    read), camera_angle_x only, fy = fx, image = file_path + '.png'."""
    views = read_blender(folder, GAUSSIAN_SPLITS, required=True, rule="image-centre")
    unread = {v.name: "3DGS reads transforms_train.json and transforms_test.json only, not transforms_val.json"
              for v in read_blender(folder, tuple(s for s in SPLITS if s not in GAUSSIAN_SPLITS))}
    return Reading(views, unread)


def _read_nerfstudio(folder: Path) -> Reading:
    return Reading(read_transforms(folder / TRANSFORMS, folder))


def _read_blender(folder: Path) -> Reading:
    """The original NeRF's `load_blender` (nerf-pytorch `load_blender.py`, bmild/nerf alike): `np.array(imgs)`
    per split and one concatenation, so ONE size; H, W of the first image and focal from camera_angle_x for
    every view; `get_rays_np` puts the principal point at (W/2, H/2)."""
    views = read_blender(folder)
    if not views:
        return Reading(views)
    first = views[0].camera
    other = next((v for v in views if v.camera.size != first.size), None)
    problems = [] if other is None else [
        f"stacks every image (np.array(imgs) in load_blender.py) and stops: ValueError: inhomogeneous shape: "
        f"{other.name} is {other.camera.width}×{other.camera.height}, {views[0].name} {first.width}×{first.height}"]
    return Reading(views, problems=problems)


PROGRAMS = (
    Program("nerfstudio", "nerfstudio's nerfstudio-data parser: transforms.json; k4 rejected", _read_nerfstudio),
    Program("instant-ngp", "instant-ngp: every *.json of the folder; k3 dropped, cx/cy only beside w/h",
            read_instant_ngp),
    Program("blender", "the original NeRF's load_blender: transforms_{train,val,test}.json, camera_angle_x only",
            _read_blender),
    Program("3dgs", "3D Gaussian Splatting's Blender reader: transforms_train/test.json, camera_angle_x only",
            _read_3dgs),
)
