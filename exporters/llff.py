"""LLFF: `images/` + `poses_bounds.npy` (original NeRF's forward-facing data, nerf-pytorch, mip-NeRF).

    OUT/images/<id>.<ext>      undistorted, principal point at the image centre, fx = fy, one focal
    OUT/poses_bounds.npy       float64 N×17, one row per image in sorted name order: the 3×5 matrix
                               [R | C | hwf] row-major, R the camera→world rotation with columns
                               [down, right, backwards], C the camera centre, hwf = (H, W, focal),
                               then near and far: the depth range of the mesh the view sees (z-depth
                               rendered through its camera), widened by `depth_margin` of its extent
                               (`Fyusion/LLFF` README, "Using your own poses without running COLMAP")

What LLFF cannot hold, and how the export deals with it:
- one focal and a centred principal point per image: the image stage resamples every view to a
  centred principal point and one horizontal field of view (`fov_x`, default the median of the views');
- one image size: nerf-pytorch's `_load_data` overwrites every row's H, W with the first image's
  shape, and `run_nerf.py` uses `poses[0]`'s hwf for every view. Views of another size (FaceScape's
  portrait cameras) are refused unless `--allow-lossy`; `read` applies exactly that rule, so the
  check reports the loss of such views in pixels;
- lens distortion: refused (use --distortion undistort).

nerf-pytorch's `load_llff_data` turns the columns into OpenGL's (right, up, backwards) by
[col 1, −col 0, col 2], then rescales the world by 1/(0.75·min near) and recentres it to the mean
pose: a world similarity of its own, not in the file. Its `get_rays` puts pixel i's ray at
(i − W/2)/f, half a pixel from the image centre (W − 1)/2 that LLFF's "centred principal point" and
this export mean; the check measures against the centred convention.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fsconvert import conventions as cv
from fsconvert.depthproducts import depth_range, render_depths
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, common_fov, plan_views
from fsconvert.imagestage import stems, write_images
from fsconvert.mesh import capture_mesh
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView
from fsconvert.writers import write_bytes

NAME = "llff"
SUMMARY = "LLFF images/ + poses_bounds.npy (NeRF forward-facing: one focal, centred principal point)"

IMAGES, POSES = "images", "poses_bounds.npy"
IMAGE_SUFFIXES = ("JPG", "jpg", "png")
"""What nerf-pytorch's `_load_data` lists in images/ (by `str.endswith`)."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    depth_margin: float = option(0.05, "widen each view's visible mesh depth range (near, far) by this fraction "
                                 "of it, on both sides")
    allow_lossy: bool = option(False, "export views whose size differs from the first view's (LLFF readers use the "
                               "first image's H, W, focal for all; the check reports the error)")

    def __post_init__(self) -> None:
        if not (np.isfinite(self.depth_margin) and self.depth_margin >= 0):
            raise InputError(f"depth_margin must be a number ≥ 0, got {self.depth_margin}")
        if not self.image.undistort:
            raise InputError("LLFF holds no lens distortion: use --distortion undistort")


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    mesh = capture_mesh(capture, "the LLFF export (near/far bounds)")
    options = replace(options, image=centred_image_options(capture, options.image))
    plans = plan_views(capture.views, options.image)
    other = [p.view.id for p in plans if p.camera.size != plans[0].camera.size]
    if other:
        first = "×".join(map(str, plans[0].camera.size))
        message = (f"views {other} are not {first} like view {plans[0].view.id}: LLFF readers give every image the "
                   "first one's H, W and focal")
        if not options.allow_lossy:
            raise InputError(f"{message}; pass --allow-lossy to export them anyway (the check reports the loss)",
                             file=capture.root)
        if progress:
            print(f"fsconvert: warning: {NAME}: {message} (their check fails by that loss)", file=sys.stderr)
    names = [f"{IMAGES}/{s}{p.suffix}" for s, p in zip(stems(capture.views), plans)]
    write_images(plans, names, folder, workers=workers, progress=progress)
    rows = np.zeros((len(plans), 17))
    for i, depth in render_depths(mesh, plans, progress=progress):
        bounds = depth_range(depth, options.depth_margin, plans[i].view.id)
        rows[i] = poses_bounds_row(plans[i].world_to_cam, plans[i].camera, bounds)
    buf = io.BytesIO()
    np.save(buf, rows)
    write_bytes(folder / POSES, buf.getvalue())
    return {"images": names, "options": options}


def centred_image_options(capture: Capture, image: ImageOptions) -> ImageOptions:
    """Principal point centred and one horizontal FoV for every view (the given fov_x, else the median of the
    views' undistorted FoVs)."""
    return common_fov(capture.views, image, np.median)


def poses_bounds_row(w2c: np.ndarray, camera: Camera, bounds: tuple[float, float]) -> np.ndarray:
    """One 17-value row: [R | C | (H, W, f)] row-major with LLFF columns, then near, far."""
    pose = np.column_stack([cv.w2c_cv_to_c2w_llff(w2c), [camera.height, camera.width, camera.fx]])
    return np.concatenate([pose.ravel(), bounds])


# ---- read ------------------------------------------------------------------------------------------


def read(folder: str | Path) -> list[ExportedView]:
    """nerf-pytorch's `_load_data` + `load_llff_data` rules: rows paired with the sorted images/ files,
    H and W of the first image and the focal of row 0 for every view, principal point at the centre."""
    folder = Path(folder)
    path = folder / POSES
    try:
        rows = np.load(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read: {exc}", file=path) from None
    if rows.ndim != 2 or rows.shape[1] != 17 or not np.isfinite(rows).all():
        raise InputError(f"expected N×17 finite numbers, got shape {rows.shape}", file=path)
    images = sorted(f for f in (folder / IMAGES).iterdir() if f.name.endswith(IMAGE_SUFFIXES))
    if len(images) != len(rows):
        raise InputError(f"{len(rows)} poses but {len(images)} images in {IMAGES}/", file=path)
    with Image.open(images[0]) as im:
        W, H = im.size
    poses = rows[:, :15].reshape(-1, 3, 5)
    f = float(poses[0, 2, 4])
    camera = Camera(W, H, cv.centred_K(cv.K_matrix(f, f, 0, 0), W, H))
    return [ExportedView(image.relative_to(folder).as_posix(), camera, cv.c2w_llff_to_w2c_cv(pose[:, :4]))
            for image, pose in zip(images, poses)]
