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
Images are always PNG (`--image-format` does not apply). NeuS stacks the images of a scene and IDR reads
them at one `img_res`, so every view goes into one shared frame by default (`--intrinsics shared`: one
size, one K, portrait views turned landscape, K and R exact; `mask/` is 0 where a pixel has no source
data); `--intrinsics per-view` writes each view at its own size, and the check then fails the export by
the stop NeuS and IDR would hit. IDR opens `cameras.npz` unless its dataset is given `cam_file`:
`--idr-keys` writes that file too.
"""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from fsconvert import conventions as cv
from fsconvert.depthproducts import render_masks, silhouettes, subjects_ahead
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, ViewPlan, frame_record, plan_views, size_warnings
from fsconvert.imagestage import Footprint, write_images
from fsconvert.mesh import capture_geometry
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView, Program, Reading
from fsconvert.threads import beside
from fsconvert.writers import npz_bytes, write_bytes, write_png

NAME = "neus"
SUMMARY = "NeuS / IDR image/ + mask/ + cameras_sphere.npz (world_mat = K·[R|t], scale_mat = unit sphere)"

IMAGES, MASKS, CAMERAS = "image", "mask", "cameras_sphere.npz"
IDR_CAMERAS = "cameras.npz"
"""What IDR's SceneDataset opens unless given `cam_file` (lioryariv/idr `code/datasets/scene_dataset.py`)."""
MESH_USE = "the NeuS export (masks, scale_mat)"
SKEW_TOL_PX = 1e-3
"""Largest skew the reader accepts (pixels across the image); float32 world_mats decompose with ~1e-5."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=lambda: ImageOptions(intrinsics="shared", image_format="png"))
    """One shared frame by default: NeuS and IDR stack every image of a scene. PNG always (`__post_init__`); the
    default says so too, so that `--alpha` needs no `--image-format png`."""
    sphere: Literal["mesh", "cameras"] = option("mesh", "the region scale_mat maps the unit sphere onto: the mesh's "
                                                "bounding sphere, or around the point the cameras look at")
    margin: float = option(1.1, "radius factor of that sphere")
    idr_keys: bool = option(False, "also write camera_mat_k and the *_inv_k matrices, as IDR's cameras.npz has them, "
                            f"and the same file as {IDR_CAMERAS}, the name IDR opens")

    def __post_init__(self) -> None:
        if not (np.isfinite(self.margin) and self.margin > 0):
            raise InputError(f"margin must be a positive number, got {self.margin}")
        if not self.image.undistort:
            raise InputError("NeuS/IDR cameras hold no lens distortion: use --distortion undistort")
        object.__setattr__(self, "image", replace(self.image, image_format="png"))  # NeuS reads image/*.png


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the export (see the module docstring): scale_mat from the mesh's vertices (numpy alone) before the
    images, the masks from its vertices and faces again after them or beside them (read anew: a dense scan's are not
    held through the images); with alpha "subject", from the silhouettes the alpha was made of."""
    vertices = capture_geometry(capture, MESH_USE).vertices  # also refuses a capture without a mesh before any work
    plans = plan_views(capture.views, options.image)
    if options.sphere == "mesh":
        centre, radius = cv.bounding_sphere(vertices)
    else:
        centre, radius = rig_sphere([p.world_to_cam for p in plans])
    del vertices  # a dense scan's are 16 MB, not to be held through the images
    scale_mat = cv.similarity_matrix(options.margin * radius, np.eye(3), centre)
    digits = max(3, len(str(len(plans) - 1)))
    stems = [f"{k:0{digits}d}" for k in range(len(plans))]
    names = [f"{IMAGES}/{s}.png" for s in stems]
    stop = threading.Event()  # the images failed: the silhouettes beside them stop at their next view
    # with alpha "subject" the masks take the alpha's silhouettes, rendered once
    with subjects_ahead(capture, MESH_USE, plans, options.image.alpha, workers=workers, progress=progress) as alpha, \
            beside(workers if alpha is None else 1,
                   lambda: silhouettes(capture_geometry(capture, MESH_USE), plans, stop=stop),
                   "fsconvert-masks") as seen:
        try:
            footprints = _stage_images(plans, names, folder, workers, progress, alpha)
        except BaseException:
            stop.set()
            raise
    (folder / MASKS).mkdir()
    if seen is None and alpha is None:
        for i, mask in render_masks(capture_geometry(capture, MESH_USE), plans, footprints, progress=progress):
            write_png(folder / MASKS / f"{stems[i]}.png", mask)
    else:  # rendered before or while the images were made; ANDed with the footprints and encoded on two threads
        views = alpha if seen is None else seen.result()
        assert views is not None  # one of the two made them

        def write_masks(part: range) -> None:
            for i in part:
                write_png(folder / MASKS / f"{stems[i]}.png", (views[i] & footprints[i]).alpha())

        with beside(workers, lambda: write_masks(range(1, len(plans), 2)), "fsconvert-masks") as odd:
            write_masks(range(0, len(plans), 1 if odd is None else 2))
        if odd is not None:
            odd.result()
    arrays: dict[str, np.ndarray] = {}
    for k, plan in enumerate(plans):
        arrays |= camera_arrays(k, plan.camera.K, plan.world_to_cam, scale_mat, options.idr_keys)
    data = npz_bytes(arrays)
    for name in (CAMERAS, IDR_CAMERAS) if options.idr_keys else (CAMERAS,):
        write_bytes(folder / name, data)
    warnings = size_warnings(plans, NAME, "NeuS and IDR")
    return {"images": names, "scale_mat": scale_mat.tolist(), **frame_record(capture.views, options.image),
            **({"warnings": warnings} if warnings else {})}


def _stage_images(plans: list[ViewPlan], names: list[str], folder: Path, workers: int, progress: bool,
                  alpha: Sequence[Footprint] | None) -> list[Footprint]:
    """The image stage; each image's footprint."""
    footprints = write_images(plans, names, folder, workers=workers, progress=progress, footprints=True,
                              subjects=alpha)
    assert footprints is not None  # write_images returns them when asked for
    return footprints


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
    """NeuS's `Dataset` rules (Totoro97/NeuS `models/dataset.py`): n = the sorted image/*.png, world_mat_k
    and scale_mat_k for k < n in float32, P = world_mat @ scale_mat decomposed (cv2, `load_K_Rt_from_P`),
    then the scale undone: cameras in the source world."""
    return _read_cameras(Path(folder), CAMERAS)


def _read_cameras(folder: Path, cameras: str) -> list[ExportedView]:
    images = _images(folder)
    path = folder / cameras
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


def _images(folder: Path) -> list[Path]:
    images = sorted((folder / IMAGES).glob("*.png"))
    if not images:
        raise InputError(f"no {IMAGES}/*.png", file=folder)
    return images


def _one_size(views: list[ExportedView], how: str) -> list[str]:
    """The program's stop on images of several sizes (it stacks them, or has one resolution per scene)."""
    first = views[0]
    other = next((v for v in views if v.camera.size != first.camera.size), None)
    if other is None:
        return []
    return [f"{how}: {other.name} is {other.camera.width}×{other.camera.height}, {first.name} "
            f"{first.camera.width}×{first.camera.height}"]


def _neus(folder: Path) -> Reading:
    views = read(folder)
    return Reading(views, problems=_one_size(views, "stacks every image (np.stack in models/dataset.py) and stops: "
                                                    "ValueError: all input arrays must have the same shape"))


def _idr(folder: Path) -> Reading:
    """IDR's SceneDataset (and VolSDF's): `cameras.npz` unless given cam_file, the same decomposition in
    float32, every image reshaped to the scene's one `img_res`."""
    views = _read_cameras(folder, IDR_CAMERAS)
    return Reading(views, problems=_one_size(views, "reads every image at the scene's one img_res and misreads or "
                                                    "stops on another size"))


PROGRAMS = (
    Program("neus", f"NeuS: {IMAGES}/*.png stacked (one size), {CAMERAS} in float32", _neus),
    Program("idr", f"IDR / VolSDF: {IDR_CAMERAS} (--idr-keys writes it), one img_res", _idr),
)


def _matrix(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in data.files:
        raise InputError("missing", file=path, key=key)
    value = data[key]
    if value.shape != (4, 4) or not np.isfinite(value).all():
        raise InputError(f"expected a finite 4×4 matrix, got shape {value.shape}", file=path, key=key)
    return value.astype(np.float32)
