"""NeuS2: `transforms.json` in its `from_na` convention and RGBA `images/<id>.png` with the mask in alpha.

The layout of NeuS2 (19reborn/NeuS2 `DATA_CONVENTION.md`; read at 081b819, 2024-03-22):

    OUT/transforms.json      from_na: true, w, h (the ONE image size), aabb_scale: 1, scale, offset, and
                             fsconvert_mesh_bounds (the mesh's axis-aligned bounds in the file's world: NeuS2
                             ignores the key, the `neus2` program checks them against the cube); per frame
                             file_path ("images/<id>.png"), transform_matrix (4×4 camera→world, OpenCV axes)
                             and intrinsic_matrix (4×4: [[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0],
                             [0, 0, 0, 1]], cx, cy = OpenCV cx, cy + 0.5)
    OUT/images/<id>.png      undistorted, RGBA: alpha 255 where the mesh is seen and the pixel has source data,
                             else alpha 0 and RGB 0

How NeuS2 reads it (`src/nerf_loader.cu` `load_nerf`, `include/neural-graphics-primitives/nerf_loader.h`):

- `from_na` is tested with `json.contains("from_na")` (its value is never read). `nerf_matrix_to_ngp` negates
  the matrix's columns 1 and 2, maps its translation by `scale` and `offset` (x_ngp = x·scale + offset), and
  with from_na negates columns 1 and 2 again: the matrix is used as an OpenCV camera→world pose, its world
  only scaled and shifted. Without the key it is instant-ngp's OpenGL camera→world with the world axes
  cycled (xyz ← yzx). `scale` defaults to 0.33 and `offset` to 0.5 (a number or three); `aabb` overrides
  both. The file's world is the source world here (SfM units, or the `--align` frame), and scale/offset map
  the mesh's bounding sphere (centre of its bounding box, radius the largest distance to it, as NeuS's
  `gen_cameras.py` builds it) times `margin` onto the sphere inscribed in [0, 1]³, the box NeuS2 trains in
  with aabb_scale 1 (`testbed_nerf.cu`: [0.5 ± aabb_scale/2]³). NeuS2 saves its meshes at
  (x_ngp − offset)/scale (`marching_cubes.cu` `save_mesh`): in the source world, beside FaceScape's mesh.
- The focal comes from `intrinsic_matrix` [0][0], [1][1] (its skew is ignored) unless a focal key
  (x_fov, fl_x, camera_angle_x; y alike) is given; the principal point is [0][2] / w and [1][2] / h with
  the GLOBAL w, h, a fraction of whatever size the image file has; a frame's own `cx`, `cy` override it as
  cx / (the frame's w). Rays pass pixel index i at ((i + 0.5)/W − cx/w)·W/fx (`pixel_to_ray`,
  `generate_training_samples_nerf`): the file's cx is the OpenCV cx + 0.5 for an image of the global size
  (`conventions.K_to_corner_origin`), and an image of another size is read with its principal point
  scaled. NeuS2 stores all of it in float32.
- The image is `stbi_load(..., 4)`: the colour target is composited over the background by alpha and the
  mask loss takes alpha > 0.9999 as the object (`testbed_nerf.cu`); "NeuS2 need background masks as the
  alpha channel" (19reborn/NeuS2 issue 13). One resolution for every image: several are not supported with
  from_na (issue 11), and `scripts/run.py` renders every test frame at the global w×h.

So every view goes into one shared frame by default (`--intrinsics shared`: one size, one K, portrait views
turned landscape, K and R exact). `--intrinsics per-view` keeps each view's own size: the global w, h are
the commonest size, frames of another size get their own w, h, cx, cy (which NeuS2 honours), and the check
fails the export by the one-size rule.

A margin that puts the mesh outside the cube is refused with one line naming the margin it needs, not
warned about: NeuS2 reconstructs only inside the cube and drops what lies outside without a word, a
warning scrolls past in a dataset run of thousands of tuples, and the fix is one flag. A margin below 1 is
accepted as long as every vertex stays inside (the cube holds more than its inscribed sphere).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fsconvert import conventions as cv
from fsconvert.depthproducts import subjects_ahead
from fsconvert.errors import InputError, Where
from fsconvert.imageplan import ImageOptions, ViewPlan, frame_record, plan_views
from fsconvert.imagestage import Footprint, stems, write_images
from fsconvert.jsonvalues import matrix, number, read_object, text
from fsconvert.mesh import capture_geometry
from fsconvert.model import Camera, Capture
from fsconvert.options import option
from fsconvert.protocol import ExportedView, Program, Reading
from fsconvert.writers import write_json

NAME = "neus2"
SUMMARY = "NeuS2 transforms.json (from_na: OpenCV camera→world, intrinsic_matrix, scale/offset into [0,1]³), RGBA"

IMAGES, TRANSFORMS = "images", "transforms.json"
MESH_USE = "the NeuS2 export (scale/offset, alpha)"
BOUNDS_KEY = "fsconvert_mesh_bounds"
"""The mesh's axis-aligned bounds [[min x, y, z], [max x, y, z]] in the file's world; NeuS2 never reads it."""
AABB_SCALE = 1
"""The training box [0, 1]³ (NeuS2's `tools/data_format_from_neus.py` writes 1, and its DATA_CONVENTION.md)."""
AABB_SCALE_MAX = 1 << (8 - 1)
"""`1 << (NERF_CASCADES() - 1)`, NERF_CASCADES() = 8 (`testbed_nerf.cu`): the largest aabb_scale it accepts."""
NERF_SCALE, NERF_OFFSET = 0.33, 0.5
"""NeuS2's scale and offset when the file has none (`nerf_loader.h` NERF_SCALE, `load_nerf`)."""
IMAGE_EXTENSIONS = ("png", "exr")
"""What `load_nerf` tries, in order, when file_path has no extension."""
CUBE_TOL = 1e-9
"""Rounding allowed at the cube's faces (a mesh at margin 1 touches them)."""
RIGID_TOL = 1e-5
"""Largest |RᵀR − I| of a transform_matrix rotation read in float32."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(
        default_factory=lambda: ImageOptions(intrinsics="shared", image_format="png", alpha="subject"))
    """One shared frame (NeuS2 reads one global w, h), RGBA PNG with the mesh's silhouette within the source
    data as alpha: NeuS2 has no mask files, it reads the object mask from the alpha channel (the colour target
    is composited over the background by alpha, the mask loss takes alpha > 0.9999 as the object; issue 13:
    "NeuS2 need background masks as the alpha channel"), and pixels without source data must not be trained
    as the subject's colour."""
    margin: float = option(1.1, "the sphere inscribed in NeuS2's [0,1]³ cube is the mesh's bounding sphere times "
                                "this (below 1 only while every vertex stays inside the cube)")

    def __post_init__(self) -> None:
        if not (np.isfinite(self.margin) and self.margin > 0):
            raise InputError(f"margin must be a positive number, got {self.margin}")
        if not self.image.undistort:
            raise InputError("NeuS2's intrinsic_matrix holds no lens distortion: use --distortion undistort")


# ---- write -----------------------------------------------------------------------------------------


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the export (see the module docstring): scale and offset from the mesh file's vertices; for alpha
    "subject" (the default) its silhouettes, rendered on a second core as the images are made (`subjects_ahead`)."""
    vertices = capture_geometry(capture, MESH_USE).vertices
    scale, offset = cube_mapping(vertices, options.margin)
    plans = plan_views(capture.views, options.image)
    names = [f"{IMAGES}/{stem}{p.suffix}" for stem, p in zip(stems(capture.views), plans)]
    with subjects_ahead(capture, MESH_USE, plans, options.image.alpha, workers=workers,
                        progress=progress) as silhouettes:
        footprints = write_images(plans, names, folder, workers=workers, progress=progress, footprints=True,
                                  subjects=silhouettes)
    assert footprints is not None  # write_images returns them when asked for
    size = global_size(plans)
    meta = {"from_na": True, "w": size[0], "h": size[1], "aabb_scale": AABB_SCALE, "scale": scale,
            "offset": offset.tolist(), BOUNDS_KEY: [vertices.min(axis=0).tolist(), vertices.max(axis=0).tolist()],
            "frames": [_frame(name, plan, size) for name, plan in zip(names, plans)]}
    write_json(folder / TRANSFORMS, meta, compact_numbers=True)
    warnings = _warnings(options, plans, names, size, footprints, silhouettes)
    return {"images": names, "normalization": {"margin": options.margin, "scale": scale, "offset": offset.tolist()},
            **frame_record(capture.views, options.image), **({"warnings": warnings} if warnings else {})}


def cube_mapping(vertices: np.ndarray, margin: float) -> tuple[float, np.ndarray]:
    """(scale, offset) with x·scale + offset mapping the mesh's bounding sphere × `margin` onto the sphere
    inscribed in [0, 1]³; a one-line InputError when a vertex then lies outside the cube."""
    centre, radius = cv.bounding_sphere(vertices)
    if not radius > 0:
        raise InputError("the mesh has no extent: nothing to fit into NeuS2's [0, 1]³ cube")
    scale = 0.5 / (margin * radius)
    offset = 0.5 - scale * centre
    lo, hi = vertices.min(axis=0) * scale + offset, vertices.max(axis=0) * scale + offset
    if lo.min() < -CUBE_TOL or hi.max() > 1 + CUBE_TOL:
        half = float(max(hi.max() - 0.5, 0.5 - lo.min()))  # the bounding box is centred on the sphere
        need = math.ceil(margin * half / 0.5 * 1000) / 1000
        raise InputError(f"margin {margin:g} puts the mesh outside NeuS2's [0, 1]³ cube (it spans "
                         f"{lo.min():.3g}…{hi.max():.3g} after scale and offset), and NeuS2 reconstructs only "
                         f"inside it: use a margin of at least {need:g} (default 1.1)")
    return scale, offset


def global_size(plans: list[ViewPlan]) -> tuple[int, int]:
    """The one (w, h) transforms.json holds: the images' size (the commonest, with several)."""
    return Counter(p.camera.size for p in plans).most_common(1)[0][0]


def _frame(name: str, plan: ViewPlan, size: tuple[int, int]) -> dict[str, Any]:
    """One frame: OpenCV camera→world, 4×4 K in corner-origin pixels; its own w, h, cx, cy when its image is
    not of the global size (NeuS2 then reads cx / the frame's w)."""
    K = cv.K_to_corner_origin(plan.camera.K)
    intrinsic = np.eye(4)
    intrinsic[:3, :3] = K
    frame: dict[str, Any] = {"file_path": name, "transform_matrix": cv.w2c_to_c2w(plan.world_to_cam).tolist(),
                             "intrinsic_matrix": intrinsic.tolist()}
    if plan.camera.size != size:
        frame |= {"w": plan.camera.width, "h": plan.camera.height, "cx": float(K[0, 2]), "cy": float(K[1, 2])}
    return frame


def _warnings(options: Options, plans: list[ViewPlan], names: list[str], size: tuple[int, int],
              footprints: list[Footprint], silhouettes: Sequence[Footprint] | None) -> list[str]:
    """One line per thing NeuS2 will do wrong with this export (the summary and check.json)."""
    out = []
    other = [p.view.id for p in plans if p.camera.size != size]
    if other:
        out.append(f"{NAME}: views {other} are not {size[0]}×{size[1]} (the global w, h): NeuS2 does not support "
                   "several image sizes with from_na (19reborn/NeuS2 issue 11) and renders its test frames at w×h; "
                   "drop --intrinsics per-view (one shared frame)")
    alpha = options.image.alpha
    if alpha != "subject":
        what = "every pixel" if alpha == "none" else "every pixel with source data"
        out.append(f"{NAME}: --alpha {alpha}: NeuS2 reads the object mask from the alpha channel and takes {what} "
                   "for the object (background included); use --alpha subject (the default)")
    if silhouettes is not None:
        cut = [float((sil.mask() & ~fp.mask()).mean() / max(sil.mask().mean(), 1e-12))
               for fp, sil in zip(footprints, silhouettes)]
        worst = int(np.argmax(cut))
        if cut[worst] > 0:
            out.append(f"{NAME}: in {sum(c > 0 for c in cut)} of {len(names)} images the mesh reaches pixels without "
                       f"source data (up to {100 * cut[worst]:.1f} % of its silhouette, in {names[worst]}), where "
                       "alpha is 0: NeuS2 trains those rays as background; --border crop keeps only covered pixels")
    return out


# ---- read ------------------------------------------------------------------------------------------


def read(folder: str | Path) -> list[ExportedView]:
    """The cameras NeuS2 reads (the `neus2` program's rules), in float64: exactly what the file states,
    in the source world (scale and offset undone)."""
    return _load(Path(folder), np.float64).views


def _read_neus2(folder: Path) -> Reading:
    """NeuS2's `load_nerf` rules in its float32, and where it misreads the export as a whole."""
    return _load(folder, np.float32)


PROGRAMS = (
    Program("neus2", "NeuS2: transforms.json, from_na (OpenCV camera→world), scale/offset, intrinsic_matrix with "
            "the principal point over the global w, h, +0.5 pixel centres, one image size, float32", _read_neus2),
)


def _load(folder: Path, dtype: type[np.floating[Any]]) -> Reading:
    """`load_nerf` for one transforms.json: frames in file order (after `n_frames`), each camera rebuilt as
    NeuS2 builds it (`nerf_matrix_to_ngp`, the focal and principal point rules, pixel centres at +0.5) in
    `dtype`, then carried back from NeuS2's world by its own inverse, (x − offset)/scale."""
    path = folder / TRANSFORMS
    meta = read_object(path)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError("no frames: NeuS2 stops (No training images were found for NeRF training!)", file=path,
                         key="frames")
    unread: dict[str, str] = {}
    if "n_frames" in meta:
        keep = max(0, int(_number(meta, "n_frames", path, None)))
        unread = {name: f"n_frames = {keep}: NeuS2 loads the first {keep} frames only"
                  for name in (_name(folder, f) for f in frames[keep:]) if name}
        frames = frames[:keep]
    from_na = "from_na" in meta
    scale, offset = _mapping(meta, path, dtype)
    views = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise InputError("frame is not an object", file=path, key=f"frames[{i}]")
        image = _image(folder, _text(frame, "file_path", path, i))
        W, H = _image_size(image, path, i)
        (fx, fy), (px, py) = _intrinsics(meta, frame, (W, H), path, i, dtype)
        K = cv.K_from_corner_origin(cv.K_matrix(float(fx), float(fy), float(px * dtype(W)), float(py * dtype(H))))
        key = "transform_matrix_start" if "transform_matrix_start" in frame else "transform_matrix"
        ngp = nerf_matrix_to_ngp(_matrix(frame, key, path, i).astype(dtype), scale, offset, from_na)
        c2w = np.eye(4)
        c2w[:3, :3] = ngp[:, :3]
        c2w[:3, 3] = (ngp[:, 3].astype(np.float64) - offset) / scale  # NeuS2's inverse: save_mesh
        R = c2w[:3, :3]
        if np.abs(R.T @ R - np.eye(3)).max() > RIGID_TOL or np.linalg.det(R) < 0:
            raise InputError("not a rigid camera→world pose: NeuS2 would cast sheared or mirrored rays", file=path,
                             key=f"frames[{i}].{key}")
        views.append(ExportedView(_relative(image, folder), Camera(W, H, K), cv.c2w_to_w2c(c2w)))
    problems = _one_size(meta, path, views) + _outside_box(meta, path, scale, offset)
    return Reading(views, unread, problems)


def nerf_matrix_to_ngp(M: np.ndarray, scale: float, offset: np.ndarray, from_na: bool) -> np.ndarray:
    """`NerfDataset::nerf_matrix_to_ngp` (nerf_loader.h) on a 3×4 camera→world, in M's precision: columns 1
    and 2 negated, translation·scale + offset, then columns 1 and 2 negated again with from_na (an OpenCV
    camera→world), else the rows cycled xyz ← yzx (instant-ngp's OpenGL convention)."""
    flip = cv.CV_TO_GL.astype(M.dtype)  # its columns 1 and 2 negated
    out = np.asarray(M[:3, :4]) @ flip
    out[:, 3] = out[:, 3] * out.dtype.type(scale) + offset.astype(out.dtype)
    if from_na:
        flipped: np.ndarray = out @ flip
        return flipped
    cycled: np.ndarray = out[[1, 2, 0]]
    return cycled


def _mapping(meta: dict[str, Any], path: Path, dtype: type[np.floating[Any]]) -> tuple[float, np.ndarray]:
    """(scale, offset) as `load_nerf` sets them, in `dtype` (returned as float64 numbers)."""
    scale = _number(meta, "scale", path, None) if "scale" in meta else NERF_SCALE
    offset = np.full(3, NERF_OFFSET)
    if "offset" in meta:
        value = meta["offset"]
        offset = (np.full(3, _number(meta, "offset", path, None)) if not isinstance(value, list)
                  else matrix(value, {(3,)}, {"file": path, "key": "offset"}))
    if "aabb" in meta:  # an isotropic scale and shift of [[min], [max]] into the unit cube
        box = matrix(meta["aabb"], {(2, 3)}, {"file": path, "key": "aabb"})
        scale = 1.0 / max(1e-6, float(np.abs(box[1] - box[0]).max()))
        offset = 0.5 - box.mean(axis=0) * scale
    if not scale > 0:
        raise InputError(f"scale {scale:g}: NeuS2's world would collapse or mirror", file=path, key="scale")
    return float(dtype(scale)), offset.astype(dtype).astype(np.float64)


def _intrinsics(meta: dict[str, Any], frame: dict[str, Any], size: tuple[int, int], path: Path, i: int,
                dtype: type[np.floating[Any]]) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """((fx, fy) pixels, (cx / w, cy / h)) as `load_nerf` reads them for a frame whose image is `size`."""
    fx, fy = (_focal_key(meta, frame, axis, n, path, i) for axis, n in zip("xy", size))
    pp = [dtype(0.5), dtype(0.5)]
    if fx:
        f = (dtype(fx), dtype(fy or fx))
    elif fy:
        f = (dtype(fy), dtype(fy))
    elif "intrinsic_matrix" in frame:
        K = matrix(frame["intrinsic_matrix"], {(3, 3), (3, 4), (4, 4)}, _where(path, "intrinsic_matrix", i))
        f = (dtype(K[0, 0]), dtype(K[1, 1]))
        pp = [dtype(K[k, 2]) / dtype(_number(meta, n, path, None)) for k, n in enumerate("wh")]  # the GLOBAL w, h
    else:
        raise InputError("no focal length: NeuS2 stops (Couldn't read fov.)", file=path, key=f"frames[{i}]")
    for k, (c, n) in enumerate((("cx", "w"), ("cy", "h"))):
        if c in frame:
            pp[k] = dtype(_number(frame, c, path, i)) / dtype(_number(frame, n, path, i))
    if not (f[0] > 0 and f[1] > 0):
        raise InputError(f"focal length {float(f[0]):g}, {float(f[1]):g}: not a camera", file=path,
                         key=f"frames[{i}]")
    return f, (pp[0], pp[1])


def _focal_key(meta: dict[str, Any], frame: dict[str, Any], axis: str, size: int, path: Path, i: int) -> float:
    """`read_focal_length`: the frame's <axis>_fov (degrees), the file's fl_<axis>, camera_angle_<axis>
    (radians), the frame's fl_<axis>, camera_angle_<axis>; 0 when none (then intrinsic_matrix is read)."""
    for obj, key, unit in ((frame, f"{axis}_fov", "deg"), (meta, f"fl_{axis}", "px"),
                           (meta, f"camera_angle_{axis}", "rad"), (frame, f"fl_{axis}", "px"),
                           (frame, f"camera_angle_{axis}", "rad")):
        if key in obj:
            value = _number(obj, key, path, i if obj is frame else None)
            return value if unit == "px" else cv.focal_from_fov(size, np.radians(value) if unit == "deg" else value)
    return 0.0


def _one_size(meta: dict[str, Any], path: Path, views: list[ExportedView]) -> list[str]:
    """NeuS2 takes one image size, the global w, h: the first image of another size."""
    if not all(isinstance(meta.get(k), (int, float)) for k in ("w", "h")):
        return []
    size = (int(meta["w"]), int(meta["h"]))
    other = next((v for v in views if v.camera.size != size), None)
    if other is None:
        return []
    return [f"takes one image size, the global w, h of {path.name} ({size[0]}×{size[1]}): it does not support "
            "several with from_na (19reborn/NeuS2 issue 11) and renders every test frame at w×h (scripts/run.py): "
            f"{other.name} is {other.camera.width}×{other.camera.height}"]


def _outside_box(meta: dict[str, Any], path: Path, scale: float, offset: np.ndarray) -> list[str]:
    """The mesh (its recorded bounds) where NeuS2 puts it by scale and offset, against the box it trains in,
    [0.5 ± aabb_scale/2]³ (`Testbed::load_nerf`): what lies outside is never reconstructed."""
    aabb_scale = int(_number(meta, "aabb_scale", path, None)) if "aabb_scale" in meta else 1
    if aabb_scale < 1 or aabb_scale & (aabb_scale - 1):
        raise InputError(f"NeuS2 stops: NeRF dataset's `aabb_scale` must be a power of two, but is {aabb_scale}",
                         file=path, key="aabb_scale")
    if aabb_scale > AABB_SCALE_MAX:
        raise InputError(f"NeuS2 stops: NeRF dataset must have `aabb_scale <= {AABB_SCALE_MAX}`, but is {aabb_scale}",
                         file=path, key="aabb_scale")
    if BOUNDS_KEY not in meta:
        return []
    bounds = matrix(meta[BOUNDS_KEY], {(2, 3)}, {"file": path, "key": BOUNDS_KEY})
    # x·scale + offset (scale > 0); without from_na the axes are also cycled, which keeps a cube's inside
    ngp = bounds * scale + offset
    lo, hi = 0.5 - aabb_scale / 2, 0.5 + aabb_scale / 2
    if ngp.min() >= lo - CUBE_TOL and ngp.max() <= hi + CUBE_TOL:
        return []
    return [f"reconstructs only inside [{lo:g}, {hi:g}]³ (aabb_scale {aabb_scale}), and the mesh ({BOUNDS_KEY}) "
            f"spans {ngp.min():.3g}…{ngp.max():.3g} there after scale and offset: part of it is never reconstructed"]


def _image(folder: Path, file_path: str) -> Path:
    """basepath / file_path (backslashes as slashes); without an extension, .png then .exr."""
    image = folder / file_path.replace("\\", "/")
    if not image.suffix:
        image = next((p for e in IMAGE_EXTENSIONS if (p := image.with_name(f"{image.name}.{e}")).exists()), image)
    return image


def _name(folder: Path, frame: object) -> str:
    file_path = frame.get("file_path") if isinstance(frame, dict) else None
    return _relative(_image(folder, file_path), folder) if isinstance(file_path, str) else ""


def _relative(image: Path, folder: Path) -> str:
    return Path(os.path.relpath(image, folder)).as_posix()


def _image_size(image: Path, path: Path, i: int) -> tuple[int, int]:
    try:
        with Image.open(image) as im:
            return im.size
    except FileNotFoundError:
        raise InputError("image not found: NeuS2 stops", file=image, key=f"frames[{i}].file_path") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"not a readable image: {exc}", file=image) from None


def _where(path: Path, key: str, i: int | None) -> Where:
    return {"file": path, "key": key if i is None else f"frames[{i}].{key}"}


def _text(obj: dict[str, Any], key: str, path: Path, i: int | None) -> str:
    return text(obj, key, _where(path, key, i))


def _number(obj: dict[str, Any], key: str, path: Path, i: int | None) -> float:
    return number(obj, key, _where(path, key, i))


def _matrix(obj: dict[str, Any], key: str, path: Path, i: int) -> np.ndarray:
    """A finite 3×4 or 4×4 matrix (NeuS2 reads rows 0..2), as 3×4."""
    return matrix(obj.get(key), {(3, 4), (4, 4)}, _where(path, key, i))[:3]
