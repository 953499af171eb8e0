"""LLFF: `images/` + `poses_bounds.npy` (original NeRF's forward-facing data, nerf-pytorch, mip-NeRF).

    OUT/images/<id>.<ext>      undistorted, one size, one focal (fx = fy), principal point at the centre
                               by the reader's pixel rule
    OUT/poses_bounds.npy       float64 N×17, one row per image in sorted name order: the 3×5 matrix
                               [R | C | hwf] row-major, R the camera→world rotation with columns
                               [down, right, backwards], C the camera centre, hwf = (H, W, focal),
                               then near and far: the depth range of the mesh the view sees (z-depth
                               rendered through its camera), widened by `depth_margin` of its extent
                               (`Fyusion/LLFF` README, "Using your own poses without running COLMAP")

The readers take ONE H, W and focal for every view: nerf-pytorch's `_load_data` stacks the images
(`np.stack`) and overwrites every row's H, W with the stack's, `run_nerf.py` uses `poses[0]`'s hwf;
mip-NeRF's `LLFF` dataset does the same (`self.focal = poses[0, -1, -1]`). So every view goes into one
shared frame (`--intrinsics shared`, the default): undistorted, portrait views turned landscape, one
focal (the views' median), one size covering every view's source data, K and R exact; the pixels without
source data are black, which these readers take for image content (a warning says how many; `--border
crop` keeps only covered pixels).
The pixel rule differs (`--for`): nerf-pytorch and the original NeRF cast the ray of pixel index i at
(i − W/2)/f (`run_nerf_helpers.get_rays_np`, K = [[f, 0, 0.5·W], ...]): the principal point is W/2 in
OpenCV pixels (`--for nerf-pytorch`, the default); mip-NeRF casts it at (i − W/2 + 0.5)/f
(`internal/datasets.py`): (W − 1)/2 (`--for mipnerf`). The other reader sees every view half a pixel off.

`--intrinsics per-view` keeps each view at its own size (one FoV, the median): views of another size than
the first (FaceScape's portrait cameras) are refused unless `--allow-lossy`, and then the check names the
stop of `np.stack`. Lens distortion is refused (use --distortion undistort).

nerf-pytorch's `load_llff_data` turns the columns into OpenGL's (right, up, backwards) by
[col 1, −col 0, col 2], then rescales the world by 1/(0.75·min near) and recentres it to the mean
pose: a world similarity of its own, not in the file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from fsconvert import conventions as cv
from fsconvert.depthproducts import band_span, depth_bands, depth_range, subjects_ahead
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, common_fov, frame_record, plan_views
from fsconvert.imagestage import stems, uncovered_warnings, write_images
from fsconvert.mesh import capture_geometry, capture_mesh_path
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView, Program, Reading
from fsconvert.writers import npy_bytes, write_bytes

NAME = "llff"
SUMMARY = "LLFF images/ + poses_bounds.npy (NeRF forward-facing: one focal, centred principal point)"

IMAGES, POSES = "images", "poses_bounds.npy"
MESH_USE = "the LLFF export (near/far bounds)"
IMAGE_SUFFIXES = ("JPG", "jpg", "png")
"""What nerf-pytorch's `_load_data` lists in images/ (by `str.endswith`)."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=lambda: ImageOptions(intrinsics="shared"))
    """One shared frame by default: LLFF readers take one H, W and focal for every view."""
    target: Literal["nerf-pytorch", "mipnerf"] = option(
        "nerf-pytorch", "the reader: nerf-pytorch / original NeRF (principal point W/2: ray of pixel i at (i − W/2)/f) "
        "or mip-NeRF / multinerf ((W − 1)/2)", name="for")
    """The reader the export is for, its pixel rule, and the program the check reads it by."""
    depth_margin: float = option(0.05, "widen each view's visible mesh depth range (near, far) by this fraction "
                                 "of it, on both sides")
    allow_lossy: bool = option(False, "with --intrinsics per-view: export views whose size differs from the first "
                               "view's (LLFF readers stack the images and stop; the check names it)")

    def __post_init__(self) -> None:
        if not (np.isfinite(self.depth_margin) and self.depth_margin >= 0):
            raise InputError(f"depth_margin must be a number ≥ 0, got {self.depth_margin}")
        if not self.image.undistort:
            raise InputError("LLFF holds no lens distortion: use --distortion undistort")


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the export (see the module docstring): the near/far bounds from the mesh's vertices and faces
    (`capture_geometry`, numpy) after the images (the silhouettes of alpha "subject" before them)."""
    capture_mesh_path(capture, MESH_USE)  # refused before the images without one
    options = replace(options, image=effective_image_options(capture, options))
    plans = plan_views(capture.views, options.image)
    other = [p.view.id for p in plans if p.camera.size != plans[0].camera.size]
    if other:
        first = "×".join(map(str, plans[0].camera.size))
        message = (f"views {other} are not {first} like view {plans[0].view.id}: LLFF readers stack the images "
                   "and take the first one's H, W and focal")
        if not options.allow_lossy:
            raise InputError(f"{message}; pass --allow-lossy to export them anyway (the check reports the loss)",
                             file=capture.root)
        if progress:
            print(f"fsconvert: warning: {NAME}: {message} (their check fails by that loss)", file=sys.stderr)
    names = [f"{IMAGES}/{s}{p.suffix}" for s, p in zip(stems(capture.views), plans)]
    with subjects_ahead(capture, MESH_USE, plans, options.image.alpha, workers=workers, progress=progress) as alpha:
        footprints = write_images(plans, names, folder, workers=workers, progress=progress, footprints=True,
                                  subjects=alpha)
    assert footprints is not None  # write_images returns them when asked for
    rows = np.zeros((len(plans), 17))
    for i, bands in depth_bands(capture_geometry(capture, MESH_USE), plans, progress=progress):
        bounds = depth_range(band_span(bands), options.depth_margin, plans[i].view.id)
        rows[i] = poses_bounds_row(plans[i].world_to_cam, plans[i].camera, bounds)
    write_bytes(folder / POSES, npy_bytes(rows))
    warnings = [] if options.image.alpha != "none" else uncovered_warnings(NAME, names, footprints,
                                                                          "LLFF readers (no mask)")
    return {"images": names, "options": options, **frame_record(capture.views, options.image),
            **({"warnings": warnings} if warnings else {})}


CENTRE_RULES: dict[str, cv.CentreRule] = {"nerf-pytorch": "half-size", "mipnerf": "image-centre"}
"""Where each reader puts the principal point (see the module docstring)."""


def effective_image_options(capture: Capture, options: Options) -> ImageOptions:
    """The image options used: the reader's pixel rule; per-view, also the principal point centred and one
    horizontal FoV for every view (the given fov_x, else the median of the views' undistorted FoVs)."""
    image = replace(options.image, centre_rule=CENTRE_RULES[options.target])
    return image if image.shared else common_fov(capture.views, image, np.median)


def default_reader(options: Options) -> str:
    """The program this export is checked for (one of `PROGRAMS`)."""
    return options.target


def poses_bounds_row(w2c: np.ndarray, camera: Camera, bounds: tuple[float, float]) -> np.ndarray:
    """One 17-value row: [R | C | (H, W, f)] row-major with LLFF columns, then near, far."""
    pose = np.column_stack([cv.w2c_cv_to_c2w_llff(w2c), [camera.height, camera.width, camera.fx]])
    return np.concatenate([pose.ravel(), bounds])


# ---- read ------------------------------------------------------------------------------------------


def read(folder: str | Path) -> list[ExportedView]:
    """nerf-pytorch's rules (`load_llff.py` `_load_data` + `load_llff_data`, `run_nerf.py`)."""
    return _read(Path(folder), "nerf-pytorch").views


def _read(folder: Path, reader: str) -> Reading:
    """Rows paired with the sorted images/ files; H and W of the stacked images and the focal of row 0 for
    every view, the principal point by the reader's rule; near and far as each view's depth range."""
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
    sizes = []
    for image in images:
        with Image.open(image) as im:
            sizes.append(im.size)
    problems = []
    other = next((k for k, size in enumerate(sizes) if size != sizes[0]), None)
    if other is not None:
        problems.append(f"stacks the images (np.stack in _load_data) and stops: ValueError: all input arrays must "
                        f"have the same shape: {images[other].name} is {_size(sizes[other])}, {images[0].name} "
                        f"{_size(sizes[0])}")
    W, H = sizes[0]
    poses = rows[:, :15].reshape(-1, 3, 5)
    f = float(poses[0, 2, 4])
    camera = Camera(W, H, cv.centred_K(cv.K_matrix(f, f, 0, 0), W, H, CENTRE_RULES[reader]))
    views = [ExportedView(image.relative_to(folder).as_posix(), camera, cv.c2w_llff_to_w2c_cv(pose[:, :4]),
                          (float(row[15]), float(row[16])))
             for image, pose, row in zip(images, poses, rows)]
    return Reading(views, problems=problems)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


PROGRAMS = (
    Program("nerf-pytorch", "nerf-pytorch / original NeRF: one H, W, focal (the first view's), principal point "
            "W/2", lambda folder: _read(folder, "nerf-pytorch")),
    Program("mipnerf", "mip-NeRF / multinerf: one H, W, focal, principal point (W − 1)/2",
            lambda folder: _read(folder, "mipnerf")),
)
