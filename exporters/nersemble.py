"""NeRSemble layout for VHAP: `camera_params/<subject>/camera_params.json` + `<subject>/<sequence>/images/`.

VHAP (ShenhanQian/VHAP) tracks FLAME on multi-view NeRSemble captures; its `export_as_nerf_dataset.py` then
writes the dataset GaussianAvatars trains on (GaussianAvatars reads VHAP's output, never this layout). One
export is one FaceScape tuple, as VHAP's `NeRSembleDataset` reads it (`vhap/data/nersemble_dataset.py`,
whose docstring draws the layout; paths from `VideoDataset.get_property_path` in `vhap/data/video_dataset.py`):

    OUT/camera_params/<subject>/camera_params.json
                               {"intrinsics": 3×3 for EVERY camera, "height": H, "width": W,
                                "world_2_cam": {camera id: 4×4 OpenCV world→camera}} (`load_camera_params`);
                               fsconvert adds "fsconvert_world" (VHAP ignores it), the similarity from the
                               source capture's frame to this file's metric world
    OUT/color_correction/<subject>/<camera id>.npy
                               4×4 identity: NersembleDataConfig's default use_color_correction asserts one
                               per camera (`load_color_correction`; rgb @ M[:3, :3] + M[:3, 3])
    OUT/<subject>/<sequence>/images/cam_<camera id>_<timestep>.jpg
                               RGB JPEG, undistorted, ONE size and ONE K (the shared frame)
    OUT/<subject>/<sequence>/alpha_maps/cam_<camera id>_<timestep>.jpg
                               8-bit grayscale JPEG (quality 100): 255 where the mesh's silhouette is and the
                               image has source data. VHAP reads alpha maps as `.jpg` (VideoDataset's
                               "alpha_map" property has suffix "jpg", and `preprocess_video.py` saves them at
                               the image's path with images → alpha_maps), not the `.png` the docstring of
                               nersemble_dataset.py draws; `export_as_nerf_dataset.py` needs them
                               (use_alpha_map = True); the tracker with NeRSemble's defaults does not
    OUT/<subject>/<sequence>/mesh.ply
                               the scan in the same metric world (double x y z, faces, colours): VHAP does
                               not read it; it is there to compare a FLAME fit with

Names: subject = the FaceScape id, sequence = the expression folder (characters other than letters, digits,
`.`, `-`, `_` become `_`: VHAP globs `<subject>/<sequence>*`), camera id = the view id zero-padded as
fsconvert names views ("003"), timestep `000000` (the tuple is one frame; VHAP's `preprocess_video.py`
numbers frames `%06d` from 0; VideoDataset takes the timestep as the file stem's last `_` field). With a
single camera VideoDataset drops the `cam_<id>_` prefix (`get_property_path`): so does this format.
Track it with `python vhap/track_nersemble.py --data.root_folder OUT --data.subject <subject>
--data.sequence <sequence>` (without `--data.n_downsample_rgb`: only `images/` is written; size it with
`--max-size`/`--scale`).

Several expressions of one subject: each tuple is calibrated on its own (FaceScape shares no camera between
tuples) and VHAP reads ONE camera_params.json per subject, so every expression is its own export root and its
own VHAP sequence, tracked separately; their NeRF exports (`export_as_nerf_dataset.py`) can then be joined by
`combine_nerf_datasets.py` (doc/nersemble.md step 4), which needs the exported folders side by side.

What VHAP does with the file (`load_camera_params`, `vhap/util/camera.py`, `vhap/util/render_nvdiffrast.py`,
`vhap/model/tracker.py`; defaults of `DataConfig` in `vhap/config/base.py`):
- camera→world orientation Rᵀ and location −Rᵀt; `align_cameras_to_axes` (default on) rotates the world so
  that the cameras' mean axes become the world axes (Gram–Schmidt, y and z flipped: OpenGL-like); cameras
  whose mean axes cancel (facing opposite ways) leave that turn to rounding, and the export refuses them;
- `convert_camera_convention("opencv->opengl")`: camera y and z axes flipped AND cy → height − cy;
- world→camera [R|T] again; the tracker renders through `projection_from_intrinsics`, NDC x = 2u/w − 1 and
  NDC y = 1 − 2v/h with (u, v) = f·x/z + c: the image's left/top EDGE at u, v = 0, so pixel centres are at
  +0.5 and the file holds the OpenCV principal point + 0.5 (`conventions.K_to_corner_origin`); nvdiffrast's
  raster rows run bottom-up and VHAP flips them (`.flip(1)`), at the size of the first timestep's images
  stacked over every camera (`dataset[0]["rgb"]`), while cy is mirrored with the file's height.
FLAME is in metres and starts at the world origin (tracker `init_params`: translation zeros), so the export is
metric: an aligned capture (`--align` FaceScape's Rt_scale_dict.json; written in metres whatever `--units`)
keeps its TU frame, whose origin is at the head; an unaligned one needs `--assume-metric-scale S` (metres per
SfM unit): the world is then X' = S·(X − c), c the centre of the mesh's bounding box. Without either the
export is refused.

`PROGRAMS`: "vhap" re-implements that loading and rendering and turns VHAP's camera back into the internal
convention in the source capture's frame; its problems name where VHAP would misread: images that are not
height×width or not all one size, cameras not at head-sized distances in metres from the origin or not seeing
it, missing alpha maps or colour corrections.

Writing and VHAP's reading rule stay in one module (~420 lines): the rule undoes exactly what `write` records
(`fsconvert_world`, the alignment to VHAP's axes), and both sides of that pairing read best side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from fsconvert import conventions as cv
from fsconvert.depthproducts import render_masks
from fsconvert.errors import InputError, Where
from fsconvert.imageplan import ImageOptions, ViewPlan, frame_record, plan_views
from fsconvert.imagestage import stems, write_images
from fsconvert.jsonvalues import matrix, number, read_object, rigid
from fsconvert.mesh import Geometry, capture_geometry
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView, Program, Reading
from fsconvert.writers import npy_bytes, ply_vertices, write_bytes, write_encoded, write_json, write_ply

NAME = "nersemble"
SUMMARY = "VHAP's NeRSemble layout: camera_params.json (one K, OpenCV world_2_cam, metres) + images/ + alpha_maps/"

CAMERA_PARAMS, CAMERA_PARAMS_JSON = "camera_params", "camera_params.json"
COLOR_CORRECTION = "color_correction"
IMAGES, ALPHA_MAPS = "images", "alpha_maps"
"""Folders of a sequence (VideoDataset.define_properties, n_downsample_rgb None)."""
SUFFIX = "jpg"
"""Suffix of images and alpha maps alike (VideoDataset.define_properties); listed by `str.endswith`."""
CAM_PREFIX = "cam_"
"""NeRSembleDataset.define_properties' cam_id_prefix."""
TIMESTEP = "000000"
MESH = "mesh.ply"
MESH_USE = "the NeRSemble export (alpha maps, mesh.ply)"
ALPHA_JPEG_QUALITY = 100
"""Alpha maps: a binary mask at quality 100 decodes within 1 level of 0/255."""
WORLD_KEY = "fsconvert_world"
"""camera_params.json key (unread by VHAP): the similarity from the source capture's frame to the file's world."""
CALIBRATION_SIZE = (3208, 2200)
"""(height, width) VHAP assumes when camera_params.json has none (NersembleDataConfig.image_size_during_calibration)."""
NEAR_FAR = (0.1, 10.0)
"""The tracker's clipping planes (render_nvdiffrast.py `projection_from_intrinsics` defaults), in world units."""
_MEAN_AXIS_MIN = 0.05
"""Least length of a Gram–Schmidt column of the cameras' mean rotation (`_mean_axes_gl`): float32 poses then move
VHAP's turn by ≤ ~1e-6 (FaceScape's sample: 0.71–0.72; cameras facing opposite ways: ~1e-16)."""
HEAD_RADIUS_M = 0.15
"""A head and neck fit in this radius around the origin, where VHAP starts FLAME: every camera must be more than
near + this and less than far − this from the origin, or the renderer clips the head."""
_NAME_UNSAFE = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=lambda: ImageOptions(intrinsics="shared", upright=True))
    """One shared frame (VHAP reads one intrinsics, height and width for every camera); rolled views turned
    upright, portrait ones landscape: VHAP's landmark detectors (STAR, face-alignment) expect upright faces."""
    assume_metric_scale: float | None = option(
        None, "metres per SfM unit for a tuple without --align (FLAME is in metres); the head is moved to the origin",
        metavar="S")

    def __post_init__(self) -> None:
        s = self.assume_metric_scale
        if s is not None and not (np.isfinite(s) and s > 0):
            raise InputError(f"assume_metric_scale must be a positive number of metres per SfM unit, got {s}")
        if not self.image.shared:
            raise InputError("VHAP reads one intrinsics, height and width for every camera: keep --intrinsics shared")
        if self.image.image_format != SUFFIX:
            raise InputError("VHAP lists images/*.jpg: drop --image-format png")
        if self.image.alpha != "none":
            raise InputError("VHAP reads RGB images; the alpha goes to alpha_maps/ (mesh silhouette and source "
                             "coverage): drop --alpha")


# ---- write -----------------------------------------------------------------------------------------


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    how = metric_source(capture, options.assume_metric_scale)  # the refusal comes before any work
    S = metric_world(capture, options.assume_metric_scale, capture_geometry(capture, MESH_USE).vertices)
    plans = plan_views(capture.views, options.image)
    # VHAP's turn of the world must be defined (the metric world turns nothing: the file's rotations are these)
    _mean_axes_gl(np.array([cv.w2c_to_c2w(p.world_to_cam)[:3, :3] for p in plans]), {"file": capture.root})
    subject, sequence = safe_name(capture.subject), safe_name(capture.expression)
    ids = stems(capture.views)
    sequence_dir = folder / subject / sequence
    stems_ = [file_stem(i, len(ids)) for i in ids]
    names = [f"{subject}/{sequence}/{IMAGES}/{stem}.{SUFFIX}" for stem in stems_]
    footprints = write_images(plans, names, folder, workers=workers, progress=progress, footprints=True)
    assert footprints is not None  # write_images returns them when asked for
    mesh = capture_geometry(capture, MESH_USE, colors=True)
    (sequence_dir / ALPHA_MAPS).mkdir()
    for k, mask in render_masks(mesh, plans, footprints, progress=progress, desc="alpha maps"):
        write_encoded(sequence_dir / ALPHA_MAPS / f"{stems_[k]}.{SUFFIX}", mask, f".{SUFFIX}",
                      [cv2.IMWRITE_JPEG_QUALITY, ALPHA_JPEG_QUALITY])
    world = {"similarity": S.tolist(), "units": "m", "from": how}
    (folder / CAMERA_PARAMS / subject).mkdir(parents=True)
    write_json(folder / CAMERA_PARAMS / subject / CAMERA_PARAMS_JSON, camera_params(plans, ids, S, world),
               compact_numbers=True)
    (folder / COLOR_CORRECTION / subject).mkdir(parents=True)
    identity = npy_bytes(np.eye(4))
    for i in ids:
        write_bytes(folder / COLOR_CORRECTION / subject / f"{i}.npy", identity)
    _write_mesh(sequence_dir / MESH, mesh, S)
    return {"images": names, **frame_record(capture.views, options.image),
            "vhap": {"subject": subject, "sequence": sequence, "timestep": TIMESTEP, "world": world}}


def metric_source(capture: Capture, assume_metric_scale: float | None) -> str:
    """Where the metric world comes from ("rt_scale_dict" or "assume-metric-scale"), or the one-line refusal."""
    if capture.alignment is not None:
        if assume_metric_scale is not None:
            raise InputError("give --align or --assume-metric-scale, not both (the alignment is metric already)",
                             file=capture.root)
        return "rt_scale_dict"
    if assume_metric_scale is None:
        raise InputError("VHAP tracks FLAME in metres: give --align RT_SCALE_DICT (FaceScape's Rt_scale_dict.json) "
                         "or --assume-metric-scale S (metres per SfM unit)", file=capture.root)
    return "assume-metric-scale"


def metric_world(capture: Capture, assume_metric_scale: float | None, vertices: np.ndarray) -> np.ndarray:
    """The similarity from the capture's frame to the metric world: an aligned capture's TU frame in metres;
    with `assume_metric_scale` S, X' = S·(X − c), c the centre of the bounding box of the mesh's `vertices`
    (capture frame), so that the head is at the origin, where VHAP starts FLAME."""
    if capture.alignment is not None:
        return cv.similarity_matrix(1.0 / capture.alignment.units_per_metre, np.eye(3), np.zeros(3))
    assert assume_metric_scale is not None  # metric_source refused it otherwise
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    return cv.similarity_matrix(assume_metric_scale, np.eye(3), -assume_metric_scale * centre)


def safe_name(name: str) -> str:
    """A subject or sequence folder name VHAP's glob and command line take as it is."""
    return _NAME_UNSAFE.sub("_", name)


def file_stem(camera_id: str, n_cameras: int, timestep: str = TIMESTEP) -> str:
    """`cam_<id>_<timestep>`, or `<timestep>` when there is one camera (VideoDataset.get_property_path)."""
    return f"{CAM_PREFIX}{camera_id}_{timestep}" if n_cameras > 1 else timestep


def camera_params(plans: list[ViewPlan], ids: list[str], S: np.ndarray, world: dict[str, Any]) -> dict[str, Any]:
    """camera_params.json: the shared frame's K with pixel centres at +0.5, its size, world→camera in the
    metric world, and the similarity record."""
    K = cv.K_to_corner_origin(plans[0].camera.K)
    width, height = plans[0].camera.size
    return {"intrinsics": K.tolist(), "height": height, "width": width,
            "world_2_cam": {i: cv.w2c_in_similar_world(p.world_to_cam, S).tolist() for i, p in zip(ids, plans)},
            WORLD_KEY: world}


def _write_mesh(path: Path, mesh: Geometry, S: np.ndarray) -> None:
    """The scan in the metric world: double x y z, colours when it has any, faces."""
    vertex = ply_vertices(cv.apply_similarity(S, mesh.vertices), rgb=mesh.colors, xyz_type="<f8")
    write_ply(path, vertex, mesh.faces, comment=f"fsconvert {NAME}: metres, the cameras' world")


# ---- read: VHAP's rules ----------------------------------------------------------------------------


def read(folder: str | Path) -> list[ExportedView]:
    """The cameras VHAP renders with (`_vhap`), in the internal convention and the source capture's frame."""
    return _vhap(Path(folder)).views


def _vhap(folder: Path) -> Reading:
    """NeRSembleDataset(...).load_camera_params and the tracker's rendering, per camera and timestep:

    the one subject of camera_params/ and its one sequence folder; K's fx, fy, cx, cy (skew unread), height and
    width (else NeRSemble's calibration size); world_2_cam's [R | t]; the world turned to the cameras' mean axes;
    OpenCV → OpenGL (camera y, z flipped, cy → height − cy); `projection_from_intrinsics` at the rendered size
    (the first image's), read through nvdiffrast's pixel centres and VHAP's row flip. Then back to the internal
    convention: camera axes to OpenCV, the world turn undone, `fsconvert_world` inverted."""
    subject, params_path = _subject(folder)
    sequence = _sequence(folder, subject)
    sequence_dir = folder / subject / sequence
    params = read_object(params_path)
    K = _float32(matrix(params.get("intrinsics"), {(3, 3)}, {"file": params_path, "key": "intrinsics"}))
    if "height" in params and "width" in params:
        H = number(params, "height", {"file": params_path, "key": "height"})
        W = number(params, "width", {"file": params_path, "key": "width"})
    else:
        H, W = CALIBRATION_SIZE
    w2cs = params.get("world_2_cam")
    if not isinstance(w2cs, dict) or not w2cs:
        raise InputError("expected an object {camera id: 4×4 world→camera}", file=params_path, key="world_2_cam")
    ids = list(w2cs)
    poses = [cv.homogeneous(_float32(rigid(w2cs[i], {"file": params_path, "key": f"world_2_cam.{i}"}))) for i in ids]
    to_source = cv.invert_similarity(_world(params.get(WORLD_KEY), params_path))

    # load_camera_params: camera→world (orientation Rᵀ, location −Rᵀt), the world turned, OpenCV → OpenGL
    c2ws = [cv.w2c_to_c2w(w2c) for w2c in poses]
    turn = np.eye(4)
    turn[:3, :3] = _mean_axes_gl(np.array([c2w[:3, :3] for c2w in c2ws]), {"file": params_path, "key": "world_2_cam"}
                                 ).T  # bases_w2c: X_vhap = turn·X_file
    c2ws_gl = [turn @ c2w @ cv.CV_TO_GL for c2w in c2ws]
    K_gl = K.copy()
    K_gl[1, 2] = H - K[1, 2]

    # the images of every timestep (VideoDataset: the last "_" field of images/*jpg stems)
    listed = sorted(f.name for f in (sequence_dir / IMAGES).iterdir()) if (sequence_dir / IMAGES).is_dir() else []
    timesteps = sorted({name.split(".")[0].split("_")[-1] for name in listed if name.endswith(SUFFIX)})
    if not timesteps:
        raise InputError(f"no {IMAGES}/*.{SUFFIX}: VHAP finds no timestep", file=sequence_dir)
    problems: list[str] = []
    sizes: dict[tuple[str, int], tuple[int, int]] = {}
    for t in timesteps:
        for k, i in enumerate(ids):
            path = sequence_dir / IMAGES / f"{file_stem(i, len(ids), t)}.{SUFFIX}"
            try:
                with Image.open(path) as im:
                    sizes[t, k] = im.size
            except (OSError, UnidentifiedImageError):
                problems.append(f"stops at camera {i}: Image.open cannot open {path.relative_to(folder)}")
    if not sizes:
        raise InputError("VHAP opens none of its images", file=sequence_dir)
    (t0, k0), (w, h) = next(iter(sizes.items()))  # the tracker renders at dataset[0]'s size

    def name(t: str, k: int) -> str:
        return f"{subject}/{sequence}/{IMAGES}/{file_stem(ids[k], len(ids), t)}.{SUFFIX}"

    other = next((key for key, size in sizes.items() if size != (w, h)), None)
    if other is not None:
        problems.append(f"stacks every camera's image of a timestep (default_collate) and stops: {name(*other)} is "
                        f"{_size(sizes[other])}, {name(t0, k0)} {_size((w, h))}")
    wrong = next((key for key, size in sizes.items() if size != (W, H)), None)
    if wrong is not None:
        problems.append(f"mirrors cy with camera_params.json's height and renders at the images' size: "
                        f"{name(*wrong)} is {_size(sizes[wrong])}, camera_params.json says {W:g}×{H:g}")

    K_cv = _pixels_of_projection(_projection(K_gl, w, h), w, h)
    views = [ExportedView(name(t, k), Camera(*sizes[t, k], K_cv),
                          cv.w2c_in_similar_world(cv.c2w_gl_to_w2c_cv(c2ws_gl[k]) @ turn, to_source))
             for t in timesteps for k in range(len(ids)) if (t, k) in sizes]
    problems += _metric_problems(ids, poses, Camera(w, h, K_cv))
    problems += _missing(folder, subject, sequence_dir, ids, timesteps)
    return Reading(views, problems=problems)


def _float32(values: np.ndarray) -> np.ndarray:
    """The numbers as VHAP holds them (torch.Tensor / torch.tensor of JSON floats: float32), in float64."""
    return values.astype(np.float32).astype(np.float64)


def _subject(folder: Path) -> tuple[str, Path]:
    found = sorted((folder / CAMERA_PARAMS).glob(f"*/{CAMERA_PARAMS_JSON}"))
    if len(found) != 1:
        raise InputError(f"expected one {CAMERA_PARAMS}/<subject>/{CAMERA_PARAMS_JSON}, found {len(found)}",
                         file=folder)
    return found[0].parent.name, found[0]


def _sequence(folder: Path, subject: str) -> str:
    found = sorted(d.name for d in (folder / subject).iterdir() if d.is_dir()) if (folder / subject).is_dir() else []
    if len(found) != 1:
        raise InputError(f"expected one sequence folder in {subject}/, found {len(found)}", file=folder)
    return found[0]


def _world(value: object, path: Path) -> np.ndarray:
    """The recorded similarity capture frame → file world (identity when the file has none)."""
    if value is None:
        return np.eye(4)
    where: Where = {"file": path, "key": f"{WORLD_KEY}.similarity"}
    S = matrix(value.get("similarity") if isinstance(value, dict) else None, {(4, 4)}, where)
    s, R, _ = cv.split_similarity(S)
    if not (s > 0 and np.abs(R.T @ R - np.eye(3)).max() < 1e-9 and np.array_equal(S[3], [0, 0, 0, 1])):
        raise InputError("not a similarity s·R·X + t", **where)
    return S


def _mean_axes_gl(orientations: np.ndarray, where: Where) -> np.ndarray:
    """`align_cameras_to_axes(..., target_convention="opengl")`'s bases (camera→world columns; vhap/util/camera.py:
    `gram_schmidt_orthogonalization(R.mean(0))`, then y and z negated): the mean of the cameras' rotations made
    orthonormal column by column. An InputError (at `where`) when a column is shorter than _MEAN_AXIS_MIN before
    it is normalised: VHAP's turn of the world is then set by rounding and it misreads every camera."""
    M = orientations.mean(axis=0)
    bases = np.zeros((3, 3))
    for c in range(3):
        v = M[:, c] - bases[:, :c] @ (bases[:, :c].T @ M[:, c])
        length = float(np.linalg.norm(v))
        if not length >= _MEAN_AXIS_MIN:
            raise InputError(f"VHAP turns the world to the cameras' mean axes (align_cameras_to_axes), and these "
                             f"cameras' {'xyz'[c]} axes cancel (mean {length:.2g} < {_MEAN_AXIS_MIN:g}): it would "
                             "misread every camera; cameras facing opposite ways are not a rig VHAP reads", **where)
        bases[:, c] = v / length
    flipped: np.ndarray = bases @ cv.CV_TO_GL[:3, :3]
    return flipped


def _projection(K: np.ndarray, w: int, h: int) -> np.ndarray:
    """`projection_from_intrinsics` (render_nvdiffrast.py; near and far move no pixel): OpenGL camera space to
    clip space, NDC x = 2u/w − 1 and y = 2v/h − 1 for u, v = f·x/(−z) + c, y up."""
    near, far = NEAR_FAR
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    return np.array([[2 * fx / w, 0.0, (w - 2 * cx) / w, 0.0],
                     [0.0, 2 * fy / h, (h - 2 * cy) / h, 0.0],
                     [0.0, 0.0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                     [0.0, 0.0, -1.0, 0.0]])


def _pixels_of_projection(P: np.ndarray, w: int, h: int) -> np.ndarray:
    """The OpenCV K of VHAP's renders through the projection matrix `P` at w×h: a point (x, y, z) in OpenCV
    camera axes is (x, −y, −z) in OpenGL's, so NDC = (P00·x/z − P02, −P11·y/z − P12); nvdiffrast centres pixel
    column i at NDC x = (2i + 1)/w − 1 and raster row r at NDC y = (2r + 1)/h − 1, and VHAP flips the rows
    (`.flip(1)`): edge-origin image coordinates u = (NDC x + 1)·w/2, v = (1 − NDC y)·h/2."""
    corner = cv.K_matrix(P[0, 0] * w / 2, P[1, 1] * h / 2, (1 - P[0, 2]) * w / 2, (1 + P[1, 2]) * h / 2)
    return cv.K_from_corner_origin(corner)


def _metric_problems(ids: list[str], poses: list[np.ndarray], camera: Camera) -> list[str]:
    """FLAME is in metres and starts at the world origin: every camera a head-sized distance in metres from it
    (in the file's world: VHAP's turn keeps distances), inside the clipping planes, and seeing it."""
    lo, hi = NEAR_FAR[0] + HEAD_RADIUS_M, NEAR_FAR[1] - HEAD_RADIUS_M
    for i, w2c in zip(ids, poses):
        d = float(np.linalg.norm(cv.camera_centre(w2c)))
        if not lo <= d <= hi:
            return [f"tracks FLAME in metres from the world origin and clips renders at {NEAR_FAR[0]:g}–"
                    f"{NEAR_FAR[1]:g} units: camera {i} is {d:.4g} units from it, not a head-sized distance in "
                    f"metres ({lo:g}–{hi:g})"]
    for i, w2c in zip(ids, poses):
        origin = w2c[:3, 3]  # the world origin in the camera's frame
        u, v = camera.project(origin[None])[0] if origin[2] > 0 else (-np.inf, -np.inf)
        if not (-0.5 <= u <= camera.width - 0.5 and -0.5 <= v <= camera.height - 0.5):
            return [f"starts FLAME at the world origin (tracker init_params), which camera {i} does not see"]
    return []


def _missing(folder: Path, subject: str, sequence_dir: Path, ids: list[str], timesteps: list[str]) -> list[str]:
    """Files VHAP opens with its NeRSemble defaults (colour corrections) and in its NeRF export (alpha maps)."""
    for i in ids:
        path = folder / COLOR_CORRECTION / subject / f"{i}.npy"
        if not path.is_file():
            return [f"asserts {path.relative_to(folder)} (use_color_correction, NeRSemble's default): missing"]
    for t in timesteps:
        for i in ids:
            alpha = sequence_dir / ALPHA_MAPS / f"{file_stem(i, len(ids), t)}.{SUFFIX}"
            if not alpha.is_file():
                return [f"export_as_nerf_dataset.py opens {alpha.relative_to(folder)} (use_alpha_map): missing"]
    return []


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


PROGRAMS = (
    Program("vhap", "VHAP's NeRSembleDataset and tracker: one K with pixel centres at +0.5 mirrored to OpenGL "
            "(cy → height − cy), world_2_cam OpenCV, metres", _vhap),
)
