"""How each target program reads an export: one rule function per reader, turning the export's files
into `ExportedView`s (internal convention) exactly as that program would see its cameras.

A reader keeps what the program ignores out of the camera (3DGS: the principal point; instant-ngp:
k3; Blender readers: everything but one `camera_angle_x`), so the generic check measures the loss.
It also names the views the program would not load at all (`Reading.unread`).

| reader | reads | ignores / rejects |
|---|---|---|
| colmap | sparse/0 through pycolmap | — |
| 3dgs | sparse/0 (COLMAP) or transforms_train/test.json (Blender) | cx, cy; non-pinhole models; transforms_val.json |
| nerfstudio | transforms.json, `nerfstudio-data` rules | — (k4 rejected) |
| instant-ngp | every *.json of the folder | k3; cx, cy without w, h beside them |
| blender | transforms_{train,val,test}.json, original NeRF rules | everything but camera_angle_x |
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import conventions as cv
from .errors import InputError
from .protocol import ExportedView
from .model import Camera


@dataclass(frozen=True)
class Reading:
    """An export as one program reads it."""

    views: list[ExportedView]
    unread: dict[str, str] = field(default_factory=dict)
    """Image name → why this program leaves the view out (e.g. a split file it never opens)."""


def _colmap(folder: Path) -> Reading:
    from exporters.colmap import read

    return Reading(read(folder))


def _nerfstudio(folder: Path) -> Reading:
    from exporters.nerf import TRANSFORMS, read_transforms

    return Reading(read_transforms(folder / TRANSFORMS, folder))


def _blender(folder: Path) -> Reading:
    from exporters.nerf import read_blender

    return Reading(read_blender(folder))


GAUSSIAN_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
"""The only COLMAP models 3DGS's reader accepts ("only undistorted datasets ... supported")."""
GAUSSIAN_BLENDER_SPLITS = ("train", "test")


def read_3dgs(folder: Path) -> Reading:
    """3D Gaussian Splatting's scene loading (graphdeco-inria, scene/__init__.py + dataset_readers.py).

    `sparse/` present: the COLMAP reader on `sparse/0` (bin, else txt): PINHOLE / SIMPLE_PINHOLE only,
    FovX = 2·atan(W/2fx), FovY = 2·atan(H/2fy), the principal point at the image centre whatever the
    file says, image `images/<basename(name)>`, cameras sorted by name. Else `transforms_train.json`:
    the Blender reader on transforms_train.json + transforms_test.json (both required, val never read),
    camera_angle_x only, fy = fx, image = file_path + '.png'.
    """
    if (folder / "sparse").is_dir():
        return _3dgs_colmap(folder)
    if (folder / "transforms_train.json").is_file():
        from exporters.nerf import read_blender

        views = read_blender(folder, GAUSSIAN_BLENDER_SPLITS, required=True)
        unread = {v.name: "3DGS reads transforms_train.json and transforms_test.json only, not transforms_val.json"
                  for v in read_blender(folder, ("val",))}
        return Reading(views, unread)
    raise InputError("3DGS: Could not recognize scene type! (no sparse/ folder, no transforms_train.json)",
                     file=folder)


def _3dgs_colmap(folder: Path) -> Reading:
    from exporters.colmap import IMAGES, SPARSE, load_model

    rec = load_model(folder)
    views = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        camera = rec.cameras[image.camera_id]
        if camera.model.name not in GAUSSIAN_MODELS:
            raise InputError(f"camera {camera.camera_id} is {camera.model.name}: 3DGS's reader accepts only "
                             f"{' / '.join(GAUSSIAN_MODELS)} (\"Colmap camera model not handled\")",
                             file=folder / SPARSE)
        p = [float(x) for x in camera.params]
        fx, fy = (p[0], p[0]) if camera.model.name == "SIMPLE_PINHOLE" else (p[0], p[1])
        W, H = int(camera.width), int(camera.height)
        K = cv.K_from_corner_origin(cv.K_matrix(fx, fy, W / 2, H / 2))  # FoV only: a symmetric frustum
        name = (IMAGES / os.path.basename(image.name)).as_posix()
        views.append(ExportedView(name, Camera(W, H, K), cv.homogeneous(image.cam_from_world().matrix())))
    return Reading(views)


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
    from exporters.nerf import check_image, load_json, source_similarity, source_w2c

    files = sorted(folder.glob("*.json"))
    if not files:
        raise InputError("instant-ngp: no *.json in the folder", file=folder)
    frames: list[tuple[str, Path, dict, dict, int, np.ndarray]] = []
    for path in files:
        meta = load_json(path)
        if not isinstance(meta.get("frames"), list):
            continue  # instant-ngp skips it with a warning
        world = source_similarity(meta, path, False)
        for i, frame in enumerate(meta["frames"]):
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
        camera = Camera(W, H, K, [k1, k2, p1, p2, 0.0])
        views.append(ExportedView(Path(os.path.relpath(image, folder)).as_posix(), camera,
                                  source_w2c(frame, world, path, i)))
    return Reading(views)


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _ngp_image(base: Path, file_path: str) -> Path:
    """resolve_path: relative to the JSON's folder; without an extension and missing, try the known ones."""
    image = base / file_path.replace("\\", "/")
    if not image.exists() and not image.suffix:
        image = next((p for e in NGP_EXTENSIONS if (p := image.with_name(f"{image.name}.{e}")).exists()), image)
    return image


def _ngp_focal(meta: dict, frame: dict, size: tuple[int, int], path: Path, i: int) -> tuple[float, float]:
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


def _ngp_principal(meta: dict, frame: dict, size: tuple[int, int]) -> tuple[float, float]:
    """Corner-origin principal point: (cx/w, cy/h) of the frame, else the top level, where w/h sit beside
    cx/cy; the image centre otherwise; scaled to the image file's size."""
    rel = [0.5, 0.5]
    for obj in (meta, frame):  # the frame's read_lens runs second and overrides
        for k, (c, n) in enumerate((("cx", "w"), ("cy", "h"))):
            if c in obj and n in obj:
                rel[k] = float(obj[c]) / float(obj[n])
    return rel[0] * size[0], rel[1] * size[1]


READERS: dict[str, Callable[[Path], Reading]] = {
    "colmap": _colmap,
    "3dgs": read_3dgs,
    "nerfstudio": _nerfstudio,
    "instant-ngp": read_instant_ngp,
    "blender": _blender,
}


def read(reader: str, folder: str | Path) -> Reading:
    """The export at `folder` as the program `reader` (a key of READERS) reads it."""
    if reader not in READERS:
        raise InputError(f"unknown reader '{reader}' (available: {', '.join(READERS)})")
    return READERS[reader](Path(folder))
