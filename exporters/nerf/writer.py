"""Writing the NeRF layouts (`transforms.json`, or Blender `transforms_{train,val,test}.json`): see the
package docstring for the files, the frames and the normalization."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from fsconvert import conventions as cv
from fsconvert.depthproducts import Bands, depth_bands, render_masks, silhouette, subjects_ahead
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, ViewPlan, common_fov, frame_record, plan_views
from fsconvert.imagestage import Footprint, stems, write_images
from fsconvert.mesh import Geometry, capture_geometry, vertex_normals
from fsconvert.model import Capture
from fsconvert.options import check_choices, option
from fsconvert.writers import ply_vertices, write_json, write_ply, write_png

from .layout import (
    ALIGNMENT_KEY,
    BLENDER_POINTS,
    CAMERA_MODEL,
    DEPTHS,
    GAUSSIAN_SPLITS,
    IMAGES,
    MASKS,
    MESH,
    NAME,
    POINTS,
    SPLITS,
    TRANSFORMS,
)

SUMMARY = "NeRF transforms.json (nerfstudio, instant-ngp) or Blender transforms_*.json (NeRF, 3DGS)"

BLENDER_SPLIT = (0.8, 0.1, 0.1)
GAUSSIAN_SPLIT = (0.875, 0.0, 0.125)
"""Blender layout for 3DGS: its reader loads transforms_train.json and transforms_test.json only
(every 8th view held out, as its COLMAP reader's llffhold = 8)."""
NGP_SCALE = 0.33
"""instant-ngp's default scene scale: the aabb_scale box spans ±aabb_scale / (2·0.33) NeRF units."""
AABB_SCALE_MAX = 128
DEPTH_MAX = 65535
PLY_COMMENT = f"fsconvert {NAME}: normalized frame"
MESH_USE = "the NeRF export (normalization, mesh.ply, point cloud)"


BLENDER_IMAGE: dict[str, object] = {"image_format": "png", "intrinsics": "shared"}
"""The blender variant's image defaults: RGBA PNG (readers append '.png'), one shared frame (the original
NeRF stacks its images: one size, one focal)."""


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    """The blender variant takes `BLENDER_IMAGE` over the defaults (from the command line, and in Python when
    `image` is left at its default)."""
    variant: Literal["nerfstudio", "blender"] = option(
        "nerfstudio", "nerfstudio: transforms.json for nerfstudio and instant-ngp (default); blender: "
        "transforms_{train,val,test}.json, png, one centred FoV (original NeRF, 3DGS)",
        aliases=("--format",), image_defaults={"blender": BLENDER_IMAGE})
    normalize: Literal["none", "sphere", "cameras"] = option(
        "none", "world similarity recorded as applied_transform/applied_scale: none keeps the SfM world (default; "
        "best for nerfstudio), sphere fits the mesh's bounding sphere, cameras the camera centres, in --radius "
        "(instant-ngp)")
    """none: the source world (nerfstudio normalizes at load, and its point-cloud and depth loading
    are only consistent when applied_scale is 1); sphere: the mesh's bounding sphere (centre of its
    bounding box) → origin, radius `radius` (instant-ngp); cameras: mean camera centre → origin,
    farthest camera at `radius`."""
    radius: float = option(1.0, "radius of the normalized scene")
    masks: bool = option(False, "render mesh silhouettes: masks/<id>.png, 255 = object with image data "
                                "(blender: PNG alpha)")
    depth: bool = option(False, "render mesh z-depth: depths/<id>.png, uint16, 0 = background")
    depth_unit: float = option(0.001, "depth step: metres with --align (default 0.001: PNGs in mm, as nerfstudio "
                                      "reads them), else SfM units; give nerfstudio the depth_unit_scale_factor "
                                      "transforms.json records")
    """Depth PNG step: in metres when the capture is aligned (default: PNGs in millimetres, as nerfstudio
    reads them), else in SfM units (see `depth_unit`)."""
    split: tuple[float, float, float] | None = option(
        None, "deterministic interleaved split, e.g. 0.8,0.1,0.1 (blender default; 0.875,0,0.125 with --for 3dgs)",
        metavar="TRAIN,VAL,TEST")
    """train/val/test fractions; None: no split lists (nerfstudio), BLENDER_SPLIT (blender) or
    GAUSSIAN_SPLIT (blender for 3dgs)."""
    target: Literal["blender", "3dgs"] = option(
        "blender", "blender: the reader the export is for: the original NeRF's (default; train, val and test "
        "each hold a view) or 3DGS's (train and test only: it never reads val)", name="for")
    """The Blender reader the export is for, and the one the check reads it by."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not (np.isfinite(self.radius) and self.radius > 0):
            raise InputError(f"radius must be a positive number, got {self.radius}")
        if not (np.isfinite(self.depth_unit) and self.depth_unit > 0):
            raise InputError(f"depth_unit must be a positive number, got {self.depth_unit}")
        if self.split is not None:
            split = tuple(float(f) for f in self.split)
            if len(split) != 3 or min(split) < 0 or split[0] <= 0 or abs(sum(split) - 1) > 1e-6:
                raise InputError(f"split must be 3 fractions train,val,test ≥ 0 with train > 0 summing to 1, "
                                 f"got {self.split}")
            object.__setattr__(self, "split", split)
        if self.target != "blender" and self.variant != "blender":
            raise InputError(f"--for {self.target} needs --variant blender (the COLMAP route to 3DGS is "
                             "`fsconvert to-colmap --for 3dgs`)")
        if self.variant == "blender":
            if self.image == ImageOptions():
                object.__setattr__(self, "image", replace(self.image, **BLENDER_IMAGE))  # type: ignore[arg-type]
            if not self.image.undistort:
                raise InputError("--variant blender holds no lens distortion (NeRF/3DGS Blender readers): "
                                 "use --distortion undistort")
            if self.image.image_format != "png":
                raise InputError("--variant blender needs png images (readers append '.png' to file_path)")
            if self.depth:
                raise InputError("--variant blender has no depth maps; use the default format for --depth")


# ---- write -----------------------------------------------------------------------------------------


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the export (see the module docstring). The mesh's vertices normalize the world before the images;
    the mesh, its colours, masks and depth come after them (numpy alone for a binary PLY: `capture_geometry`)."""
    vertices = capture_geometry(capture, MESH_USE).vertices
    options = replace(options, image=effective_image_options(capture, options))
    plans = plan_views(capture.views, options.image)
    centres = np.array([p.view.centre for p in plans])
    similarity = normalization(options, vertices, centres)
    S = cv.similarity_matrix(*similarity)
    blender = options.variant == "blender"
    view_stems = stems(capture.views)
    names = [f"{IMAGES}/{stem}{p.suffix}" for stem, p in zip(view_stems, plans)]
    splits = assign_splits(len(plans), options.split or default_split(options))
    if blender:
        assert splits is not None  # default_split gives the blender variant its split
        empty = [s for k, s in enumerate(SPLITS) if s in _needed_splits(options) and k not in splits]
        if empty:
            raise InputError(f"--variant blender --for {options.target} needs a view in every split it reads; "
                             f"{', '.join(empty)} got none of {len(plans)} views (change --split)")
    frames = [_frame(p, name, stem, S, options) for p, name, stem in zip(plans, names, view_stems)]
    A, scale = cv.similarity_to_nerfstudio(S)
    record = {"applied_transform": A.tolist(), "applied_scale": scale}
    meta = record | ({ALIGNMENT_KEY: capture.alignment.record()} if capture.alignment else {})
    depth_step = depth_unit(capture, options)
    masks = options.masks and not blender  # blender's go into the images' alpha
    with subjects_ahead(capture, MESH_USE, plans, options.image.alpha, workers=workers, progress=progress) as alpha:
        footprints = write_images(plans, names, folder, workers=workers, progress=progress, footprints=masks,
                                  subjects=alpha)
    mesh = capture_geometry(capture, MESH_USE, colors=True)
    if masks or options.depth:
        _write_renders(mesh, plans, view_stems, footprints, options, depth_step, folder, progress)
    if blender:
        assert splits is not None  # default_split gives the blender variant its split
        _write_blender(folder, frames, splits, options, meta, plans)
    else:
        scene = np.concatenate([cv.apply_similarity(S, vertices), cv.apply_similarity(S, centres)])
        extent = float(np.abs(scene).max())
        _write_transforms(folder, frames, names, splits, options, meta, depth_step, extent)
    _write_mesh(folder / MESH, mesh, S)
    _write_points(folder / (BLENDER_POINTS if blender else POINTS), mesh, S)
    warnings = reader_warnings(options, plans, splits)
    return {"images": names, "options": options,
            "normalization": {"method": options.normalize, "similarity": S.tolist(), **record},
            **frame_record(capture.views, options.image), **({"warnings": warnings} if warnings else {})}


def depth_unit(capture: Capture, options: Options) -> float:
    """Capture-frame units per depth PNG step: `options.depth_unit` metres in an aligned capture, else
    `depth_unit` SfM units (what transforms.json records as depth_unit_scale_factor)."""
    return options.depth_unit * (capture.alignment.units_per_metre if capture.alignment else 1.0)


CENTRE_RULES: dict[str, cv.CentreRule] = {"blender": "half-size", "3dgs": "image-centre"}
"""Where each Blender reader puts the principal point: the original NeRF casts pixel i's ray at (i − W/2)/f
(`run_nerf_helpers.get_rays_np`); 3DGS's FoV-only frustum is centred at (W − 1)/2."""


def effective_image_options(capture: Capture, options: Options) -> ImageOptions:
    """The image options used. For blender: the reader's pixel rule; RGBA, alpha 0 where a pixel has no
    source data (with --masks also outside the mesh); with --intrinsics per-view every view turned
    landscape, principal point centred and one horizontal FoV (the given fov_x, else the widest of the
    views'), each view at its own focal and as large as it needs to hold all its source pixels."""
    image = options.image
    if options.variant != "blender":
        return image
    image = replace(image, centre_rule=CENTRE_RULES[options.target], alpha="subject" if options.masks else "coverage")
    if image.shared:
        return image
    return common_fov(capture.views, replace(image, principal_point="center", border="cover", orientation="landscape"),
                      max)


def default_split(options: Options) -> tuple[float, float, float] | None:
    if options.variant != "blender":
        return None
    return GAUSSIAN_SPLIT if options.target == "3dgs" else BLENDER_SPLIT


def _needed_splits(options: Options) -> tuple[str, ...]:
    """The Blender split files the reader opens (each must hold a view)."""
    return GAUSSIAN_SPLITS if options.target == "3dgs" else SPLITS


def reader_warnings(options: Options, plans: list[ViewPlan], splits: list[int] | None) -> list[str]:
    """One line per thing a target program will do wrong with this export (the summary and check.json)."""
    out = []
    if options.variant == "nerfstudio" and options.normalize != "none":
        out.append(f"{NAME}: --normalize {options.normalize} with nerfstudio: its dataparser orients, centres and "
                   "scales the cameras again at load and its point loader applies applied_scale once more, so "
                   "ply_file_path lands off the mesh; for nerfstudio use --normalize none (the default), keep "
                   f"--normalize {options.normalize} for instant-ngp")
    k3 = [p.view.id for p in plans if p.camera.dist[4] != 0]
    if options.variant == "nerfstudio" and k3:
        out.append(f"{NAME}: views {k3} have k3 ≠ 0: nerfstudio reads it, instant-ngp drops it (it models "
                   "k1 k2 p1 p2 only); use --distortion undistort for instant-ngp")
    val = [p.view.id for p, k in zip(plans, splits or []) if SPLITS[k] == "val"]
    if options.variant == "blender" and val:
        fix = "" if options.target == "3dgs" else "; --for 3dgs writes train/test only"
        out.append(f"{NAME}: views {val} are in transforms_val.json, which 3DGS's Blender reader never "
                   f"reads{fix}")
    return out


def normalization(options: Options, vertices: np.ndarray, centres: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) of the world similarity X' = s·R·X + t of `options.normalize` (R = I; identity for 'none')."""
    if options.normalize == "none":
        return 1.0, np.eye(3), np.zeros(3)
    sphere = options.normalize == "sphere"
    points = np.asarray(vertices if sphere else centres, dtype=np.float64)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2 if sphere else points.mean(axis=0)
    size = float(np.linalg.norm(points - centre, axis=1).max())
    if size <= 0:
        raise InputError(f"--normalize {options.normalize}: the {'mesh' if sphere else 'cameras'} have no extent")
    s = options.radius / size
    return s, np.eye(3), -s * centre


def assign_splits(n: int, fractions: tuple[float, float, float] | None) -> list[int] | None:
    """Split index (0 train, 1 val, 2 test) per view, interleaved: each view goes to the split
    furthest below its quota (ties to the earlier split). Deterministic; None without fractions."""
    if fractions is None:
        return None
    counts, out = [0, 0, 0], []
    for i in range(n):
        k = max(range(3), key=lambda j: (fractions[j] * (i + 1) - counts[j], -j))
        counts[k] += 1
        out.append(k)
    return out


def _frame(plan: ViewPlan, name: str, stem: str, S: np.ndarray, options: Options) -> dict[str, Any]:
    """One frame: pose in the normalized world, OpenGL camera→world; intrinsics in corner origin."""
    c2w = cv.w2c_cv_to_c2w_gl(cv.w2c_in_similar_world(plan.world_to_cam, S))
    if options.variant == "blender":
        return {"file_path": "./" + os.path.splitext(name)[0], "transform_matrix": c2w.tolist()}
    K = cv.K_to_corner_origin(plan.camera.K)
    frame = {"file_path": name, "transform_matrix": c2w.tolist(),
             "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
             "w": plan.camera.width, "h": plan.camera.height}
    if plan.camera.has_distortion:
        k1, k2, p1, p2, k3 = (float(d) for d in plan.camera.dist)
        frame |= {"k1": k1, "k2": k2, "k3": k3, "p1": p1, "p2": p2}
    if options.masks:
        frame["mask_path"] = f"{MASKS}/{stem}.png"
    if options.depth:
        frame["depth_file_path"] = f"{DEPTHS}/{stem}.png"
    return frame


def aabb_scale(extent: float) -> int:
    """Smallest power of 2 (≤ 128) whose instant-ngp box, ±aabb_scale/(2·0.33) around the origin,
    holds every camera centre and mesh vertex (largest |coordinate| = `extent`)."""
    needed = 2 * NGP_SCALE * extent
    scale = 1
    while scale < needed and scale < AABB_SCALE_MAX:
        scale *= 2
    if scale < needed:
        print(f"fsconvert: warning: {NAME}: the scene spans ±{extent:.3g} units, beyond instant-ngp's largest "
              f"box (aabb_scale {AABB_SCALE_MAX}); use --normalize sphere", file=sys.stderr)
    return scale


def _write_transforms(folder: Path, frames: list[dict[str, Any]], names: list[str], splits: list[int] | None,
                      options: Options, record: dict[str, Any], depth_step: float, extent: float) -> None:
    meta: dict[str, Any] = {"camera_model": CAMERA_MODEL, **record, "aabb_scale": aabb_scale(extent),
                            "ply_file_path": POINTS}
    if options.depth:
        meta["depth_unit_scale_factor"] = depth_step
    if splits is not None:
        for k, split in enumerate(SPLITS):
            meta[f"{split}_filenames"] = [n for n, s in zip(names, splits) if s == k]
    meta["frames"] = frames
    write_json(folder / TRANSFORMS, meta, compact_numbers=True)


def _write_blender(folder: Path, frames: list[dict[str, Any]], splits: list[int], options: Options,
                   record: dict[str, Any], plans: list[ViewPlan]) -> None:
    """transforms_<split>.json for each split the reader opens or that holds a view; camera_angle_x is the
    one horizontal FoV every view has (fov_x, or the shared frame's)."""
    fov = options.image.fov_x
    if fov is None:
        fov = cv.fov_from_focal(plans[0].camera.width, plans[0].camera.fx)
    for k, split in enumerate(SPLITS):
        chosen = [f for f, s in zip(frames, splits) if s == k]
        if chosen or split in _needed_splits(options):
            meta = {"camera_angle_x": fov, **record, "frames": chosen}
            write_json(folder / f"transforms_{split}.json", meta, compact_numbers=True)


# ---- masks and depth -------------------------------------------------------------------------------


def _write_renders(mesh: Geometry, plans: list[ViewPlan], stems: list[str], footprints: list[Footprint] | None,
                   options: Options, depth_step: float, folder: Path, progress: bool) -> None:
    """masks/ and depths/ PNGs of every output camera (source world, lens model included)."""
    for wanted, sub in ((options.masks, MASKS), (options.depth, DEPTHS)):
        if wanted:
            (folder / sub).mkdir()
    if not options.depth:  # masks alone: no depth read back
        assert footprints is not None  # write asks write_images for them with masks
        for i, mask in render_masks(mesh, plans, footprints, progress=progress):
            write_png(folder / MASKS / f"{stems[i]}.png", mask)
        return
    for i, bands in depth_bands(mesh, plans, progress=progress, desc="masks/depth"):
        seen = np.empty((plans[i].camera.height, plans[i].camera.width), np.uint8) if options.masks else None
        png = depth_png(bands, plans[i].camera.size, depth_step, plans[i].view.id, seen)
        if seen is not None:
            assert footprints is not None  # write asks write_images for them with masks
            write_png(folder / MASKS / f"{stems[i]}.png", cv2.bitwise_and(seen, footprints[i].alpha(), dst=seen))
        write_png(folder / DEPTHS / f"{stems[i]}.png", png)


def depth_png(bands: Bands, size: tuple[int, int], unit: float, view: int, mask: np.ndarray | None = None
              ) -> np.ndarray:
    """uint16 depth in `unit` steps of a view's depth bands (foreground ≥ 1, 0 = background), and, into `mask`,
    where the mesh is seen (255, `silhouette`); InputError when it overflows."""
    png = np.empty(size[::-1], np.uint16)
    deepest = 0.0
    for top, z in bands:
        rows = slice(top, top + len(z))
        if mask is not None:
            mask[rows] = silhouette(z)
        steps = np.rint(z.astype(np.float64) / unit)
        png[rows] = np.where(z > 0, np.maximum(steps, 1), 0)  # whole numbers, cast as astype(np.uint16) casts
        deepest = max(deepest, float(z.max()))
    most = float(np.rint(deepest / unit))  # the most steps: rounding keeps the order
    if most > DEPTH_MAX:
        raise InputError(f"depth up to {deepest:.6g} source units is {most:.0f} steps of {unit:g}, "
                         f"beyond uint16 ({DEPTH_MAX}); raise --depth-unit (and nerfstudio's "
                         "--depth-unit-scale-factor with it)", view=view)
    return png


# ---- mesh and point cloud --------------------------------------------------------------------------


def _write_mesh(path: Path, mesh: Geometry, S: np.ndarray) -> None:
    """The mesh in the normalized frame: double x y z, vertex colours (texture baked) when it has any."""
    vertex = ply_vertices(cv.apply_similarity(S, mesh.vertices), rgb=mesh.colors, xyz_type="<f8")
    write_ply(path, vertex, mesh.faces, comment=PLY_COMMENT)


def _write_points(path: Path, mesh: Geometry, S: np.ndarray) -> None:
    """Mesh vertices as the splatting point cloud: double x y z, float nx ny nz, uchar red green blue (mid grey
    where the mesh has no colours)."""
    normals = vertex_normals(mesh) @ cv.split_similarity(S)[1].T
    vertex = ply_vertices(cv.apply_similarity(S, mesh.vertices), normals, mesh.rgb(), xyz_type="<f8")
    write_ply(path, vertex, comment=PLY_COMMENT)


def default_reader(options: Options) -> str:
    """The program this export is checked for (one of `PROGRAMS`)."""
    return options.target if options.variant == "blender" else "nerfstudio"
