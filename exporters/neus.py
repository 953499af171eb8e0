"""NeuS / IDR: `image/NNN.png`, `mask/NNN.png`, `cameras_sphere.npz`.

The layout of NeuS (`Totoro97/NeuS` README "Data Convention", `models/dataset.py`) and IDR
(`lioryariv/idr` `DATA_CONVENTION.md`), also read by VolSDF and many SDF and
head-reconstruction codebases:

    OUT/image/NNN.png          undistorted, NNN = 000, 001, … in view order (the loader pairs the k-th
                               sorted image with world_mat_k); the manifest maps them to view ids
    OUT/mask/NNN.png           255 where the mesh is seen and the undistorted image has source data
    OUT/cameras_sphere.npz     per view k, float64 4×4 matrices:
                               world_mat_k  [K·[R|t]; 0 0 0 1], world → pixels, OpenCV pixel centres (NeuS casts
                                            rays through integer pixel coordinates)
                               scale_mat_k  [[r,0,0,cx],[0,r,0,cy],[0,0,r,cz],[0,0,0,1]]: the unit sphere → the
                                            region of interest (the same for every view)
                               with --idr-keys also camera_mat_k (4×4 K, as NeuS's gen_cameras.py and IDR
                               write it) and world_mat_inv_k, scale_mat_inv_k, camera_mat_inv_k

NeuS's loader takes n = the number of image/*.png, casts world_mat_k and scale_mat_k to float32,
decomposes P = (world_mat_k @ scale_mat_k)[:3] with cv2.decomposeProjectionMatrix into K (divided by
K[2,2]) and a camera→world pose [Rᵀ | C], and works in the normalized world X_n = scale_mat⁻¹·X: the
object inside the unit sphere, rays' near/far from it, meshes extracted in ±1.01.

The sphere: `--sphere mesh` (default) is the mesh's bounding sphere (centre of its bounding box, radius
the largest distance to it, as gen_cameras.py builds it from the points of interest) times `margin`;
`--sphere cameras` centres it on the point nearest to every optical axis (the point the rig looks at)
with radius `margin` × half the distance of the nearest camera, for tuples whose mesh does not bound
the region of interest. The npz container is built by `fsconvert.writers.npz_bytes`: the same arrays are
the same bytes, whatever the Python release.
Images are always PNG (`--image-format` does not apply). NeuS stacks the images of a scene, so it
needs one image size; mixed portrait and landscape views are written as they are (each camera
exact), with a warning. IDR opens `cameras.npz` unless its dataset is given `cam_file`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from fsconvert import conventions as cv
from fsconvert.depthproducts import render_depths, silhouette
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.imagestage import warn_mixed_sizes, write_images
from fsconvert.mesh import capture_mesh
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView
from fsconvert.writers import npz_bytes, write_bytes, write_png

NAME = "neus"
SUMMARY = "NeuS / IDR image/ + mask/ + cameras_sphere.npz (world_mat = K·[R|t], scale_mat = unit sphere)"

IMAGES, MASKS, CAMERAS = "image", "mask", "cameras_sphere.npz"
SKEW_TOL_PX = 1e-3
"""Largest skew the reader accepts (pixels across the image); float32 world_mats decompose with ~1e-5."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    sphere: Literal["mesh", "cameras"] = option("mesh", "the region scale_mat maps the unit sphere onto: the mesh's "
                                                "bounding sphere, or around the point the cameras look at")
    margin: float = option(1.1, "radius factor of that sphere")
    idr_keys: bool = option(False, "also write camera_mat_k and the *_inv_k matrices, as IDR's cameras.npz has them")

    def __post_init__(self) -> None:
        if not (np.isfinite(self.margin) and self.margin > 0):
            raise InputError(f"margin must be a positive number, got {self.margin}")
        if not self.image.undistort:
            raise InputError("NeuS/IDR cameras hold no lens distortion: use --distortion undistort")
        object.__setattr__(self, "image", replace(self.image, image_format="png"))  # NeuS reads image/*.png


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    mesh = capture_mesh(capture, "the NeuS export (masks, scale_mat)")
    plans = plan_views(capture.views, options.image)
    if progress:
        warn_mixed_sizes(NAME, plans, "NeuS")
    digits = max(3, len(str(len(plans) - 1)))
    stems = [f"{k:0{digits}d}" for k in range(len(plans))]
    names = [f"{IMAGES}/{s}.png" for s in stems]
    footprints = write_images(plans, names, folder, workers=workers, progress=progress, footprints=True)
    assert footprints is not None  # write_images returns them when asked for
    (folder / MASKS).mkdir()
    for i, depth in render_depths(mesh, plans, progress=progress, desc="masks"):
        write_png(folder / MASKS / f"{stems[i]}.png", silhouette(depth, footprints[i]))
    if options.sphere == "mesh":
        centre, radius = cv.bounding_sphere(mesh.vertices)
    else:
        centre, radius = rig_sphere([p.world_to_cam for p in plans])
    scale_mat = cv.similarity_matrix(options.margin * radius, np.eye(3), centre)
    arrays: dict[str, np.ndarray] = {}
    for k, plan in enumerate(plans):
        arrays |= camera_arrays(k, plan.camera.K, plan.world_to_cam, scale_mat, options.idr_keys)
    write_bytes(folder / CAMERAS, npz_bytes(arrays))
    return {"images": names, "scale_mat": scale_mat.tolist()}


def rig_sphere(w2cs: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """(centre, radius): the least-squares point nearest to every optical axis, and half the distance
    from it to the nearest camera centre."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    centres = []
    for w2c in w2cs:
        c, d = cv.camera_centre(w2c), w2c[2, :3]  # optical axis: centre, direction (unit)
        M = np.eye(3) - np.outer(d, d)
        A, b = A + M, b + M @ c
        centres.append(c)
    if np.linalg.matrix_rank(A) < 3:
        raise InputError("--sphere cameras: the optical axes are parallel (no point they look at)")
    centre = np.linalg.solve(A, b)
    return centre, 0.5 * float(np.linalg.norm(np.array(centres) - centre, axis=1).min())


def camera_arrays(k: int, K: np.ndarray, w2c: np.ndarray, scale_mat: np.ndarray,
                  idr_keys: bool) -> dict[str, np.ndarray]:
    """The npz entries of view k."""
    world_mat = cv.projection_matrix(K, w2c)
    arrays = {f"world_mat_{k}": world_mat, f"scale_mat_{k}": scale_mat}
    if idr_keys:
        camera_mat = np.eye(4)
        camera_mat[:3, :3] = K
        arrays |= {f"camera_mat_{k}": camera_mat, f"camera_mat_inv_{k}": np.linalg.inv(camera_mat),
                   f"world_mat_inv_{k}": np.linalg.inv(world_mat), f"scale_mat_inv_{k}": np.linalg.inv(scale_mat)}
    return arrays


# ---- read ------------------------------------------------------------------------------------------


def read(folder: str | Path) -> list[ExportedView]:
    """NeuS's `Dataset` rules: n = the sorted image/*.png, world_mat_k and scale_mat_k for k < n in
    float32, P = world_mat @ scale_mat decomposed (cv2), then the scale undone: cameras in the source world."""
    folder = Path(folder)
    images = sorted((folder / IMAGES).glob("*.png"))
    if not images:
        raise InputError(f"no {IMAGES}/*.png", file=folder)
    path = folder / CAMERAS
    try:
        data = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read: {exc}", file=path) from None
    views = []
    with data:
        for k, image in enumerate(images):
            world_mat, scale_mat = (_matrix(data, f"{key}_{k}", path) for key in ("world_mat", "scale_mat"))
            K, w2c_unit = cv.decompose_projection((world_mat @ scale_mat)[:3, :4])
            w2c = cv.w2c_in_similar_world(w2c_unit, scale_mat.astype(np.float64))
            with Image.open(image) as im:
                size = im.size
            skew_px = abs(K[0, 1]) * size[1] / abs(K[1, 1])
            if skew_px > SKEW_TOL_PX:  # not K·[R|t] with a pinhole K: NeuS would cast skewed rays
                raise InputError(f"world_mat_{k} @ scale_mat_{k} decomposes into a K with skew {K[0, 1]:.3g} "
                                 f"({skew_px:.3g} px across the image)", file=path, key=f"world_mat_{k}")
            K[0, 1] = 0.0  # float32 rounding only
            views.append(ExportedView(image.relative_to(folder).as_posix(), Camera(*size, K), w2c))
    return views


def _matrix(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in data.files:
        raise InputError("missing", file=path, key=key)
    value = data[key]
    if value.shape != (4, 4) or not np.isfinite(value).all():
        raise InputError(f"expected a finite 4×4 matrix, got shape {value.shape}", file=path, key=key)
    return value.astype(np.float32)
