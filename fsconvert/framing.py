"""Where output frames lie: which way views are turned, the centred rectangles that crop or cover a view's
source data, and the shared frame, one camera for every view of a capture.

Pure geometry on the source cameras (undistorted border rays, rotations about the optical axis); the image
plan (`fsconvert.imageplan`) turns it into plans and maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import conventions as cv
from .errors import InputError
from .model import Camera, View

REDUCTIONS = (8, 4, 2, 1)
"""JPEG decode reductions (DCT scaling), largest first."""
CROP_MARGIN_PX = 0.5
"""Kept between a cropped output's outer pixel centres and the undistorted source border."""
_ROTATE_180 = np.diag([-1.0, -1.0, 1.0])


def is_rolled(view: View, up: np.ndarray) -> bool:
    """True when the camera's image-up direction points against the world `up` (roll beyond ±90°)."""
    image_up_world = -view.R[1]  # camera −y axis in world coordinates
    return float(image_up_world @ up) < 0


def capture_up(views: Sequence[View]) -> np.ndarray:
    """The world up direction the majority of cameras agree on (sum of camera −y axes)."""
    s = np.sum([-v.R[1] for v in views], axis=0)
    n = float(np.linalg.norm(s))
    return s / n if n > 0 else np.array([0.0, -1.0, 0.0])


def landscape_turn(view: View, up: np.ndarray) -> int:
    """1 (clockwise) or −1: the 90° turn after which the view's image-up is nearest the world `up`."""
    # image-up after a turn is the camera's new −y axis: clockwise it is the old −x axis, else +x
    return 1 if float(-view.R[0] @ up) >= float(view.R[0] @ up) else -1


def rotation(turn: int, rolled: bool) -> np.ndarray | None:
    """The rotation output camera ← source camera of a view rolled 180° and/or turned 90° (None: identity)."""
    R = _ROTATE_180 if rolled else None
    if turn:
        R = cv.turn90(turn > 0) @ (np.eye(3) if R is None else R)
    return R


def largest_centred_box(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Half-extents (a, b) of the largest-area box [−a, a]×[−b, b] with no point (x, y) strictly inside:
    the points sampling the closed border of a region around the origin, the box lies in it."""
    order = np.argsort(np.abs(x), kind="stable")
    ax, ay = np.abs(x)[order], np.abs(y)[order]
    # the box of half-width ax[k] may hold the points before k only above their |y|
    b = np.minimum.accumulate(np.concatenate([[np.inf], ay[:-1]]))
    area = np.where(np.isfinite(b), ax * b, 0.0)
    k = int(np.argmax(area))
    return float(ax[k]), float(b[k])


def crop_side(half_extent: float, focal: float) -> int:
    """Pixels of a centred crop whose outer pixel centres stay CROP_MARGIN_PX inside ±`half_extent`·`focal`."""
    return int(np.floor(2 * (half_extent * focal - CROP_MARGIN_PX))) + 1


def cover_side(half_extent: float, focal: float) -> int:
    """Pixels of a centred frame reaching ±`half_extent`·`focal` (to within half a pixel)."""
    return 2 * int(np.ceil(half_extent * focal))


def centred_frame(src: Camera, K: np.ndarray, border: str, fov_x: float | None, reduce: int, turned: bool,
                  rule: cv.CentreRule) -> tuple[int, int, np.ndarray]:
    """Size and K (principal point at the centre) of one view's `border` rectangle, before any turn.

    `crop`: the largest-area centred rectangle all of whose pixel centres lie inside the undistorted
    source (the image stage's footprint for JPEGs decoded at 1/`reduce`); `cover`: the smallest one
    holding every undistorted source pixel, at the view's focal, or with `fov_x` one focal f = fx
    and the width giving that FoV across the output's width (the source height when `turned`). The
    principal point is the centre by `rule`.
    """
    x, y = src.border_rays(reduce if border == "crop" else 1).T
    fx, fy = float(K[0, 0]), float(K[1, 1])
    if border == "crop":
        a, b = largest_centred_box(x, y)
        w, h = crop_side(a, fx), crop_side(b, fy)
        return w, h, cv.centred_K(K, w, h, rule)
    a, b = float(np.abs(x).max()), float(np.abs(y).max())
    if fov_x is not None:
        t = np.tan(fov_x / 2)
        if turned:  # the output's width is the source's height
            h = int(np.ceil(2 * fy * t - 1e-9))
            f = h / (2 * t)
            w = cover_side(a, f)
        else:
            w = int(np.ceil(2 * fx * t - 1e-9))
            f = w / (2 * t)
            h = cover_side(b, f)
        fx = fy = f
    else:
        w, h = cover_side(a, fx), cover_side(b, fy)
    return w, h, cv.centred_K(cv.K_matrix(fx, fy, 0.0, 0.0), w, h, rule)


@dataclass(frozen=True)
class Orientation:
    """How one view enters a landscape frame: a 90° turn (1 clockwise, −1 counter-clockwise, 0 none) or a
    180° roll upright."""

    turn: int
    rolled: bool

    @classmethod
    def of(cls, view: View, up: np.ndarray, upright: bool) -> Orientation:
        """Portrait views turned landscape (image-up nearest the world `up`); landscape views rolled upright
        when `upright` asks and they point down."""
        if view.camera.is_portrait:
            return cls(landscape_turn(view, up), False)
        return cls(0, upright and is_rolled(view, up))


@dataclass(frozen=True)
class SharedFrame:
    """One pinhole camera (size and K, fx = fy, principal point by the program's centre rule) for every view."""

    width: int
    height: int
    K: np.ndarray

    def record(self, rule: cv.CentreRule) -> dict[str, object]:
        """What the manifest keeps of it."""
        return {"width": self.width, "height": self.height, "focal": float(self.K[0, 0]),
                "principal_point": self.K[:2, 2].tolist(), "centre_rule": rule}


def shared_frame(views: Sequence[View], orientations: Sequence[Orientation], *, border: str,
                 rule: cv.CentreRule, scale: float | None = None, max_size: int | None = None,
                 size: tuple[int, int] | None = None, focal: float | None = None,
                 multiple: int = 1) -> SharedFrame:
    """The frame every view is resampled into: landscape, one focal f and one size.

    f is `focal`, else the median of the views' focals ((fx + fy)/2) times the output scale (`scale`, or
    what brings the frame's long side to `max_size`). The size is `size`, else with `border` "cover" the
    smallest centred frame holding every view's undistorted source data at f (turned and rolled as
    `orientations` say), with "crop" the largest centred one inside every view's data; rounded to a
    `multiple` (up to cover, down to crop). The principal point is the centre by `rule`.
    """
    f0 = float(np.median([(v.camera.fx + v.camera.fy) / 2 for v in views])) if focal is None else focal

    def sides(f: float, reduce: bool) -> tuple[int, int]:
        if size is not None:
            return size
        reach = np.array([_reach(v.camera, o, border, reduction_for_focal(v.camera, f) if reduce else 1)
                          for v, o in zip(views, orientations)])
        if border == "crop":  # inside every view's data
            a, b = reach.min(axis=0).tolist()
            w, h = crop_side(a, f), crop_side(b, f)
            return w // multiple * multiple, h // multiple * multiple
        a, b = reach.max(axis=0).tolist()
        return math.ceil(cover_side(a, f) / multiple) * multiple, math.ceil(cover_side(b, f) / multiple) * multiple

    f = f0
    if focal is None and (scale is not None or max_size is not None):
        f = f0 * (scale if scale is not None else min(1.0, (max_size or 0) / max(sides(f0, False))))
    w, h = sides(f, border == "crop")  # a crop stays inside what the reduced decodes hold
    if min(w, h) < 1:
        raise InputError(f"the shared frame would be {w}×{h} pixels: the views' source data do not overlap "
                         "around the principal point (use --border cover)")
    return SharedFrame(w, h, cv.centred_K(cv.K_matrix(f, f, 0.0, 0.0), w, h, rule))


def _reach(camera: Camera, orientation: Orientation, border: str, reduce: int) -> tuple[float, float]:
    """Half-extents (normalised: x/z, y/z) of a view's source data (decoded at 1/`reduce`) once turned or
    rolled: the largest |x|, |y| of its undistorted border (cover), or its largest centred box (crop)."""
    xy = camera.border_rays(reduce)
    R = rotation(orientation.turn, orientation.rolled)
    if R is not None:
        xy = xy @ R[:2, :2].T
    if border == "crop":
        return largest_centred_box(xy[:, 0], xy[:, 1])
    return float(np.abs(xy[:, 0]).max()), float(np.abs(xy[:, 1]).max())


def reduction_for_focal(src: Camera, focal: float) -> int:
    """The largest JPEG decode reduction whose image still samples at least as densely as an output of
    focal length `focal` (the shared frame: every view at one focal, whatever its own)."""
    dense = min(src.fx, src.fy) * (1 + 1e-9)
    return next((r for r in REDUCTIONS if r * focal <= dense), 1)
