"""The image plan: for every view, the output camera and pose and how its pixels move (pure geometry, no I/O).

A plan composes undistortion (optional), scaling, centring, cropping or covering, a 90° turn and a 180°
upright rotation into one map per view (`ViewPlan.maps`), run by the image stage (`fsconvert.imagestage`)
as a single `cv2.remap`. With `intrinsics="shared"` every view gets one camera, the shared frame
(`fsconvert.framing`): one size, one K, landscape. JPEGs are decoded at 1/2, 1/4 or 1/8 size (DCT scaling)
when the output is at least that much smaller (`ViewPlan.reduce`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np

from . import conventions as cv
from .errors import InputError
from .framing import (
    REDUCTIONS,
    Orientation,
    SharedFrame,
    capture_up,
    centred_frame,
    is_rolled,
    landscape_turn,
    reduction_for_focal,
    rotation,
    shared_frame,
)
from .model import UNDISTORT_CRITERIA, Camera, View
from .options import check_choices, option
from .remapmaps import CoarseMaps

__all__ = ["REDUCTIONS", "ImageOptions", "ViewPlan", "capture_up", "common_fov", "is_rolled", "plan_view",
           "plan_views"]


def frame_size(text: str) -> tuple[int, int]:
    """'1600x1200' → (1600, 1200): the command line's and configs' form of `ImageOptions.frame_size`."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1600x1200, got {text!r}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class ImageOptions:
    """How exported images are made from the source JPEGs (the "images" options of every format)."""

    undistort: bool = option(True, "resample to pinhole (default) or keep the lens model and the original JPEGs",
                             name="distortion", choices={"undistort": True, "keep": False})
    """Resample to a pinhole camera; False keeps the distortion (and the original file when unscaled)."""
    principal_point: Literal["keep", "center"] = option(
        "keep", "after undistortion: keep the principal point, or centre it (3D Gaussian Splatting)")
    """New K after undistortion: same principal point (scaled), or moved to the image centre (3DGS)."""
    fov_x: float | None = option(None, cli=False)
    """With principal_point 'center': set fx = fy so that every view has this horizontal field of view
    (radians); for formats holding one `camera_angle_x` for all views (Blender, 3DGS)."""
    scale: float | None = option(None, "output scale in (0, 1], e.g. 0.25", exclusive="size")
    """Output size = round(scale × source size)."""
    max_size: int | None = option(None, "scale down so the long side is at most this many pixels", exclusive="size")
    """Scale down (never up) so that the long side is at most this."""
    upright: bool = option(False, "rotate cameras rolled ~180° upright (K and R follow)")
    """Rotate views rolled ~180° (camera up pointing down in the world) by 180°; K, R and p1, p2 follow."""
    image_format: Literal["jpg", "png"] = option("jpg", "format of resampled images (default: the format's)")
    jpeg_quality: int = option(95, "JPEG quality of resampled images")
    link: Literal["hardlink", "symlink", "copy"] = option(
        "hardlink", "how unmodified originals are placed (hardlink falls back to copy)")
    border: Literal["keep", "crop", "cover"] = option(
        "keep", "with a centred principal point: keep the size (an uncovered strip remains), crop to the largest "
        "centred rectangle with source data everywhere, or cover every source pixel")
    """With principal_point 'center': keep the output size (centring leaves a strip without source
    data), crop to the largest centred rectangle whose every pixel has source data (3DGS), or cover
    every source pixel with the smallest centred rectangle (lossless; the rest is outside `footprint`).
    With fov_x and 'cover', each view keeps its focal and gets the width giving that FoV."""
    orientation: Literal["keep", "landscape"] = option(
        "keep", "landscape: turn portrait views 90° (undistorted; K and R follow exactly)")
    """landscape: turn portrait views 90° (the way that puts image-up nearest the capture's up); K and
    R follow exactly. For formats with one horizontal FoV for all views (Blender)."""
    allow_corrupt_images: bool = option(
        False, "export JPEGs whose data the decoder reports as corrupt (a warning per view) instead of failing")
    """Export source JPEGs whose data the decoder reports as corrupt (a warning per view) instead of refusing."""
    intrinsics: Literal["per-view", "shared"] = option(
        "per-view", "shared: every view gets ONE K (fx = fy, principal point at the centre by the program's pixel "
        "rule) and ONE landscape size, undistorted, turned if portrait, in one remap (programs that stack images: "
        "NeuS/IDR, original NeRF, LLFF, ...); per-view: each view keeps its own")
    """per-view: each view its own camera; shared: the shared frame (`fsconvert.framing.shared_frame`), where
    `border` keep reads as cover and the focal is the median of the views' (`frame_focal` to choose it)."""
    frame_size: tuple[int, int] | None = option(None, "the shared frame's size instead of covering the views' data",
                                                parse=frame_size, metavar="WxH")
    frame_focal: float | None = option(None, "the shared frame's focal length in output pixels (default: the median "
                                       "of the views', times the output scale)", metavar="F")
    size_multiple: int = option(1, "round the shared frame's size to a multiple of this (32 for loaders that resize "
                                "to multiples of 32, e.g. CasMVSNet)", metavar="N")
    alpha: Literal["none", "coverage", "subject"] = option(
        "none", "PNG images as RGBA: alpha 0 (and RGB 0) where a pixel has no source data (coverage), or also outside "
        "the mesh's silhouette (subject)")
    centre_rule: cv.CentreRule = option("image-centre", cli=False)
    """Where the program the export is for puts a centred principal point (`conventions.CentreRule`): set by
    the format from its target, recorded in the manifest."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.principal_point == "center" and not self.undistort:
            raise InputError("principal_point 'center' needs undistortion (it resamples the image)")
        if self.fov_x is not None and (self.principal_point != "center" or not 0 < self.fov_x < np.pi):
            raise InputError("fov_x needs principal_point 'center' and a value in (0, π) radians")
        if self.scale is not None and not 0 < self.scale <= 1:
            raise InputError(f"scale must be in (0, 1], got {self.scale}")
        if self.max_size is not None and self.max_size < 16:
            raise InputError(f"max_size must be at least 16, got {self.max_size}")
        if self.scale is not None and self.max_size is not None:
            raise InputError("give scale or max_size, not both")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.border != "keep" and self.principal_point != "center" and self.intrinsics != "shared":
            raise InputError(f"border '{self.border}' needs principal_point 'center'")
        if self.fov_x is not None and self.border == "crop":
            raise InputError("fov_x with border 'crop' would crop views to one FoV: use border 'cover'")
        if self.orientation == "landscape" and not self.undistort:
            raise InputError("orientation 'landscape' needs undistortion (it resamples the image)")
        shared = self.intrinsics == "shared"
        if shared and not self.undistort:
            raise InputError("--intrinsics shared needs undistortion (one pinhole camera for every view)")
        if shared and self.fov_x is not None:
            raise InputError("fov_x sets each view's own focal: with --intrinsics shared use --frame-focal")
        for name in ("frame_size", "frame_focal"):
            if getattr(self, name) is not None and not shared:
                raise InputError(f"--{name.replace('_', '-')} sets the shared frame: add --intrinsics shared")
        if self.size_multiple != 1 and not shared:
            raise InputError("--size-multiple rounds the shared frame: add --intrinsics shared")
        if self.size_multiple < 1:
            raise InputError(f"size_multiple must be at least 1, got {self.size_multiple}")
        if self.frame_size is not None and (min(self.frame_size) < 1 or any(n % self.size_multiple
                                                                           for n in self.frame_size)):
            raise InputError(f"frame_size must be positive multiples of {self.size_multiple}, got {self.frame_size}")
        if self.frame_focal is not None and not (np.isfinite(self.frame_focal) and self.frame_focal > 0):
            raise InputError(f"frame_focal must be a positive number, got {self.frame_focal}")
        if shared and self.frame_focal is not None and (self.scale is not None or self.max_size is not None):
            raise InputError("--frame-focal sets the output's focal: give it or --scale/--max-size, not both")
        if self.alpha != "none" and self.image_format != "png":
            raise InputError(f"--alpha {self.alpha} writes RGBA PNG: add --image-format png")
        if self.alpha != "none" and not self.undistort:
            raise InputError(f"--alpha {self.alpha} needs undistortion (it resamples the image)")

    @property
    def shared(self) -> bool:
        """One camera for every view (`intrinsics` "shared")."""
        return self.intrinsics == "shared"




@dataclass(frozen=True, eq=False)
class ViewPlan:
    """What the stage does to one view: the output camera and pose, and how pixels move."""

    view: View
    camera: Camera
    """Output camera (internal convention); pinhole when undistorting."""
    world_to_cam: np.ndarray
    """Output pose; differs from the source only when the view is rotated upright."""
    rotated: bool
    reduce: int
    """JPEG decode reduction factor (1, 2, 4 or 8)."""
    options: ImageOptions
    turn: int = 0
    """90° turn of an undistorted view: 1 clockwise, −1 counter-clockwise (after any 180° rotation)."""

    @property
    def resample(self) -> bool:
        """False when the original file is placed as it is: never one with an EXIF Orientation other than 1
        (its stored grid is what the camera describes; OpenCV's imread would turn it), re-encoded without it."""
        return (self.options.undistort or self.rotated or self.camera.size != self.view.camera.size
                or self.view.exif_orientation != 1)

    @property
    def suffix(self) -> str:
        return self.view.image.suffix if not self.resample else f".{self.options.image_format}"

    def src_to_out(self, uv_src: np.ndarray) -> np.ndarray:
        """Source pixels (distorted, full resolution) → output pixels. Exact to ~1e-9 px."""
        src = self.view.camera
        uv = np.asarray(uv_src, dtype=np.float64).reshape(-1, 2)
        if self.turn:
            return cv2.undistortPoints(uv.reshape(-1, 1, 2), src.K, src.dist, R=self.rectification(),
                                       P=self.camera.K, criteria=UNDISTORT_CRITERIA).reshape(-1, 2)
        if self.options.undistort:
            K_out = cv.rotate180_K(self.camera.K, *self.camera.size) if self.rotated else self.camera.K
            out = cv2.undistortPoints(
                uv.reshape(-1, 1, 2), src.K, src.dist, P=K_out, criteria=UNDISTORT_CRITERIA
            ).reshape(-1, 2)
        else:
            out = cv.resize_points(uv, *self._scale())
        if self.rotated:
            out = np.array([self.camera.width - 1, self.camera.height - 1]) - out
        return out

    def rectification(self) -> np.ndarray | None:
        """The rotation output camera ← source camera of an undistorted view (None: identity)."""
        return rotation(self.turn, self.rotated)

    def _scale(self) -> tuple[float, float]:
        return self.camera.width / self.view.camera.width, self.camera.height / self.view.camera.height

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 remap maps: output pixel → pixel of the decoded (possibly reduced) source image (they may be
        views of larger arrays: pass them to cv2.remap, copy them before writing)."""
        return next(self.map_bands(self.camera.height))[1:]

    def map_bands(self, rows: int, *, scratch: bool = False) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first output row, the `maps` of up to `rows` output rows from it) down the image: the same values as
        `maps()`, bit for bit, in a twelfth of the memory for 256-row bands of a 12.6 MP view (its whole maps
        are 100 MB). `scratch`: undistortion bands live in this thread's reusable arrays, which the next band
        overwrites."""
        src = self.view.camera
        K_dec = cv.resize_K(src.K, 1 / self.reduce, 1 / self.reduce)
        w, h = self.camera.size
        if self.options.undistort:  # a 180° rotation is the rectification R = diag(-1, -1, 1)
            coarse = CoarseMaps.of(K_dec, src.dist, self.rectification(), self.camera.K, (w, h))
            for y in range(0, h, rows):
                yield y, *coarse.fine((y, min(h, y + rows)), scratch=scratch)
            return
        sx, sy = self._scale()
        r = self.reduce
        xs = ((np.arange(w) + 0.5) / sx / r - 0.5).astype(np.float32)
        ys = ((np.arange(h) + 0.5) / sy / r - 0.5).astype(np.float32)
        mx, my = np.broadcast_to(xs, (h, w)), np.broadcast_to(ys[:, None], (h, w))
        if self.rotated:
            mx, my = mx[::-1, ::-1], my[::-1, ::-1]
        for y in range(0, h, rows):
            yield y, np.ascontiguousarray(mx[y:y + rows]), np.ascontiguousarray(my[y:y + rows])


def output_size(width: int, height: int, options: ImageOptions) -> tuple[int, int]:
    """Integer output size for the scale or max_size option."""
    s = options.scale
    if options.max_size is not None:
        s = min(1.0, options.max_size / max(width, height))
    if s is None or s == 1:
        return width, height
    return max(1, round(width * s)), max(1, round(height * s))


def plan_view(view: View, options: ImageOptions, up: np.ndarray | None = None) -> ViewPlan:
    """The plan for one view. `up` (world) is needed for upright rotation and the landscape
    orientation; see `plan_views`."""
    src = view.camera
    w, h = output_size(src.width, src.height, options)
    sx, sy = w / src.width, h / src.height
    K = cv.resize_K(src.K, sx, sy)
    dist = src.dist
    turn = 0
    if options.undistort:
        dist = np.zeros(5)
        if options.orientation == "landscape" and h > w and up is not None:
            turn = landscape_turn(view, up)
        if options.border != "keep":
            reduce = _reduction(src, K, w, h) if options.border == "crop" else 1
            w, h, K = centred_frame(src, K, options.border, options.fov_x, reduce, bool(turn), options.centre_rule)
        else:
            if options.fov_x is not None:  # across the output's width: the source height when turned
                f = cv.focal_from_fov(h if turn else w, options.fov_x)
                K = cv.K_matrix(f, f, K[0, 2], K[1, 2])
            if options.principal_point == "center":
                K = cv.centred_K(K, w, h, options.centre_rule)
    rotated = bool(options.upright and up is not None and is_rolled(view, up) and not turn)
    w2c = view.world_to_cam
    if rotated:
        K, w2c, dist = cv.rotate180_K(K, w, h), cv.rotate180_w2c(w2c), cv.rotate180_dist(dist)
    reduce = _reduction(src, K, w, h)
    if turn:
        K, w2c, (w, h) = cv.rotate90_K(K, w, h, turn > 0), cv.rotate90_w2c(w2c, turn > 0), (h, w)
    if options.principal_point == "center" and (turn or rotated):  # by the rule in the output's orientation
        K = cv.centred_K(K, w, h, options.centre_rule)
    return ViewPlan(view, Camera(w, h, K, dist), w2c, rotated, reduce, options, turn)


def _reduction(src: Camera, K: np.ndarray, w: int, h: int) -> int:
    """The JPEG decode reduction for an output of w×h at K (source orientation).

    Decode reduced when the reduced image still samples at least as densely as the output. The
    output size at the source focal is compared with the reduced size ⌈W/r⌉: a rounded-up output
    (1086 px at 1/4 → 272 = ⌈1086/4⌉) still decodes at 1/4; a zoomed-in fov_x needs more pixels.
    """
    need = (max(w, K[0, 0] / src.fx * src.width), max(h, K[1, 1] / src.fy * src.height))
    return next((r for r in REDUCTIONS
                 if all(n <= m + 1e-9 for n, m in zip(need, cv.reduced_size(src.size, r)))), 1)


def plan_views(views: Sequence[View], options: ImageOptions) -> list[ViewPlan]:
    """Plans for all views of a capture (upright rotation and the landscape turn judged against the
    capture's up); with `options.shared`, every view in the shared frame."""
    if options.shared:
        return [_plan_in_frame(v, o, frame, options) for v, o, frame in _shared(views, options)]
    up = capture_up(views) if options.upright or options.orientation == "landscape" else None
    return [plan_view(v, options, up) for v in views]


def frame_of(views: Sequence[View], options: ImageOptions) -> SharedFrame:
    """The shared frame `plan_views` puts every view in (`options.shared`)."""
    return _shared(views, options)[0][2]


def frame_record(views: Sequence[View], options: ImageOptions) -> dict[str, object]:
    """For the manifest: {"frame": size, focal, principal point and centre rule} of the shared frame, or {}."""
    return {"frame": frame_of(views, options).record(options.centre_rule)} if options.shared else {}


def size_warnings(plans: Sequence[ViewPlan], fmt: str, programs: str) -> list[str]:
    """One line when the output images have several sizes, for a format whose `programs` stack a scene's
    images (each camera stays exact; the check names where they stop)."""
    sizes = sorted({p.camera.size for p in plans})
    if len(sizes) < 2:
        return []
    return [f"{fmt}: images of {len(sizes)} sizes ({', '.join(f'{w}×{h}' for w, h in sizes)}): {programs} stack a "
            "scene's images and stop on them; drop --intrinsics per-view (one shared frame)"]


def _shared(views: Sequence[View], options: ImageOptions) -> list[tuple[View, Orientation, SharedFrame]]:
    up = capture_up(views)
    orientations = [Orientation.of(v, up, options.upright) for v in views]
    frame = shared_frame(views, orientations, border="crop" if options.border == "crop" else "cover",
                         rule=options.centre_rule, scale=options.scale, max_size=options.max_size,
                         size=options.frame_size, focal=options.frame_focal, multiple=options.size_multiple)
    return [(v, o, frame) for v, o in zip(views, orientations)]


def _plan_in_frame(view: View, orientation: Orientation, frame: SharedFrame, options: ImageOptions) -> ViewPlan:
    """One view resampled into the shared frame: turned or rolled as `orientation` says, then the frame's K."""
    w2c = view.world_to_cam
    if orientation.rolled:
        w2c = cv.rotate180_w2c(w2c)
    if orientation.turn:
        w2c = cv.rotate90_w2c(w2c, orientation.turn > 0)
    camera = Camera(frame.width, frame.height, frame.K)
    reduce = reduction_for_focal(view.camera, float(frame.K[0, 0]))
    return ViewPlan(view, camera, w2c, orientation.rolled, reduce, options, orientation.turn)


def common_fov(views: Sequence[View], options: ImageOptions, choose: Callable[[list[float]], float]) -> ImageOptions:
    """`options` with one horizontal field of view for every view (formats that hold one `camera_angle_x`
    or one focal): the given `fov_x`, else `choose` (e.g. max, a median) of the views' FoVs as `options`
    plans them with a centred principal point."""
    options = replace(options, principal_point="center")
    if options.fov_x is not None:
        return options
    fovs = [cv.fov_from_focal(p.camera.width, p.camera.fx) for p in plan_views(views, options)]
    return replace(options, fov_x=float(choose(fovs)))


