"""The camera-rig plot: camera frustums around the mesh, seen from the front and from above (`rig.png`).

Drawn with OpenCV on a fixed canvas (a few milliseconds; a matplotlib figure cost 0.2 s per tuple, most of it
laying out tick labels), orthographic, in the cameras' own frame of reference: "up" is the direction the
majority of cameras call up, "forward" their mean viewing direction; equal scale in both directions, with a
scale bar instead of ticks. Same inputs give the same PNG bytes: fixed size and style, integer rasterisation,
and the pixels are written by the project's one PNG writer (`fsconvert.writers.write_png`: no timestamp or
software tag).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from . import conventions as cv
from .mesh import subsample
from .model import Camera
from .writers import write_png

Style = Literal["ok", "failed", "invalid"]
"""How a frustum is drawn: a view that passed (or was not checked), one that failed, one marked valid=false."""
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class LineStyle:
    """A frustum style: BGR colour, line thickness (pixels), dashed or not."""

    colour: Colour
    thickness: int
    dashed: bool = False


STYLES: dict[str, LineStyle] = {  # in drawing order: failing views last, on top
    "ok": LineStyle((168, 95, 31), 1),
    "invalid": LineStyle((140, 140, 140), 1, dashed=True),
    "failed": LineStyle((40, 39, 214), 2),
}
LEGEND = {"ok": "camera", "failed": "failed the check", "invalid": "marked valid=false"}
FRUSTUM_DEPTH = 0.25
"""Frustum length as a fraction of the camera's distance to the mesh centre."""
MESH_POINTS = 4000
"""Mesh vertices drawn (evenly spaced in vertex order)."""
SIZE = (1200, 600)
"""Width and height of the plot (pixels)."""
PANELS = ((70, 60, 580, 500), (680, 60, 1190, 500))
"""The two views' boxes on the canvas: left, top, right, bottom (pixels)."""
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK, _CLOUD = (30, 30, 30), (153, 153, 153)
_PAPER = 255
"""White, in every channel (numpy fills a canvas from one number ~10× faster than from a colour)."""
_AXIS_COLOURS = ((40, 39, 214), (44, 160, 44), (180, 119, 31))
"""World x, y, z in the gizmo (BGR)."""
_MARGIN = 0.92
"""Share of a box the drawing spans in its tighter direction."""
_SUBPIXEL = 4
"""Line end points are drawn at 1/2^_SUBPIXEL pixel (OpenCV's `shift`)."""
_DASH = (7.0, 5.0)
"""Dashed lines: pixels drawn, pixels left out."""


@dataclass(frozen=True, eq=False)
class Frustum:
    """One camera to draw: intrinsics (for the frustum's shape), world→camera pose (internal convention)."""

    label: str
    camera: Camera
    world_to_cam: np.ndarray
    style: Style = "ok"


def plot_rig(path: str | Path, frustums: Sequence[Frustum], points: np.ndarray | None, title: str) -> None:
    """Write the front and top views of `frustums` around the mesh vertices `points` (N×3) to the PNG `path`."""
    poses = [cv.w2c_to_c2w(f.world_to_cam) for f in frustums]
    right, up, forward = _rig_axes(poses)
    cloud = np.empty((0, 3)) if points is None else subsample(np.asarray(points, dtype=np.float64), MESH_POINTS)
    centre = cloud.mean(axis=0) if len(cloud) else np.mean([p[:3, 3] for p in poses], axis=0)
    outlines = [_frustum_lines(f, p, centre) for f, p in zip(frustums, poses)]
    views = (("front (along the cameras' mean viewing direction)", up, "up"),
             ("top (from above)", forward, "viewing direction"))
    canvas = np.full((SIZE[1], SIZE[0], 3), _PAPER, np.uint8)
    _text(canvas, title, (SIZE[0] // 2, 28), 0.6, _INK, centred=True)
    for box, (name, v_axis, v_name) in zip(PANELS, views):
        basis = np.stack([right, v_axis])
        to_px = PanelMap.fitting(box, [cloud @ basis.T] + [line @ basis.T for lines in outlines for line in lines])
        if len(cloud):
            xy = np.rint(to_px(cloud @ basis.T)).astype(int)
            inside = (xy[:, 0] > box[0]) & (xy[:, 0] < box[2]) & (xy[:, 1] > box[1]) & (xy[:, 1] < box[3])
            canvas[xy[inside, 1], xy[inside, 0]] = _CLOUD
        for style, look in STYLES.items():
            drawn = [(f, lines) for f, lines in zip(frustums, outlines) if f.style == style]
            for _, lines in drawn:
                for line in lines:
                    _polyline(canvas, to_px(line @ basis.T), look)
            for f, lines in drawn:
                x, y = to_px(lines[0][:1] @ basis.T)[0]  # the camera centre
                _text(canvas, f.label, (int(round(x)) + 3, int(round(y)) - 3), 0.33, look.colour)
        cv2.rectangle(canvas, box[:2], box[2:], _INK, 1)
        _text(canvas, name, ((box[0] + box[2]) // 2, box[1] - 10), 0.45, _INK, centred=True)
        _text(canvas, "rig right (world units)", ((box[0] + box[2]) // 2, box[3] + 22), 0.4, _INK, centred=True)
        _vertical_text(canvas, f"rig {v_name} (world units)", box[0] - 12, (box[1] + box[3]) // 2)
        _world_axes(canvas, box, basis)
        _scale_bar(canvas, box, to_px)
    _legend(canvas, [s for s in STYLES if any(f.style == s for f in frustums)])
    write_png(Path(path), canvas)


@dataclass(frozen=True)
class PanelMap:
    """A view's 2-D world coordinates → canvas pixels: one scale (pixels per world unit) for both directions,
    the second coordinate upwards."""

    scale: float
    middle: tuple[float, float]
    """The world point at the box's middle."""
    box_middle: tuple[float, float]

    @classmethod
    def fitting(cls, box: tuple[int, int, int, int], parts: Sequence[np.ndarray]) -> PanelMap:
        """The map showing everything in `parts` (arrays of 2-D points) inside `box`, with a margin."""
        xy = np.vstack([p.reshape(-1, 2) for p in parts] + [np.zeros((0, 2))])
        lo, hi = (xy.min(axis=0), xy.max(axis=0)) if len(xy) else (np.zeros(2), np.ones(2))
        span = np.maximum(hi - lo, 1e-9)
        scale = _MARGIN * min((box[2] - box[0]) / span[0], (box[3] - box[1]) / span[1])
        middle = (lo + hi) / 2
        return cls(float(scale), (float(middle[0]), float(middle[1])), ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(self.box_middle) + (np.asarray(xy) - self.middle) * [self.scale, -self.scale]


def _polyline(canvas: np.ndarray, xy: np.ndarray, look: LineStyle) -> None:
    """Draw a polyline of canvas pixels (anti-aliased, sub-pixel end points), dashed if the style says so."""
    pieces = _dashes(xy) if look.dashed else [xy]
    scaled = [np.rint(p * (1 << _SUBPIXEL)).astype(np.int32) for p in pieces]
    cv2.polylines(canvas, scaled, False, look.colour, look.thickness, cv2.LINE_AA, _SUBPIXEL)


def _dashes(xy: np.ndarray) -> list[np.ndarray]:
    """The drawn pieces of a dashed polyline (_DASH), the pattern running on along the line."""
    on, off = _DASH
    pieces = []
    for a, b in zip(xy[:-1], xy[1:]):
        length = float(np.linalg.norm(b - a))
        for start in np.arange(0.0, length, on + off):
            t0, t1 = start / length, min(start + on, length) / length
            pieces.append(np.stack([a + (b - a) * t0, a + (b - a) * t1]))
    return pieces


def _text(canvas: np.ndarray, text: str, at: tuple[int, int], scale: float, colour: Colour, *,
          centred: bool = False) -> None:
    """Write `text` (ASCII; other characters as '?') with its baseline starting (or centred) at `at`."""
    text = text.encode("ascii", "replace").decode()
    x, y = at
    if centred:
        x -= cv2.getTextSize(text, _FONT, scale, 1)[0][0] // 2
    cv2.putText(canvas, text, (x, y), _FONT, scale, colour, 1, cv2.LINE_AA)


def _vertical_text(canvas: np.ndarray, text: str, right: int, middle: int) -> None:
    """Write `text` turned a quarter left, its baseline's end at column `right`, centred on row `middle`."""
    (w, h), base = cv2.getTextSize(text, _FONT, 0.4, 1)
    strip = np.full((h + base + 2, w + 2, 3), _PAPER, np.uint8)
    _text(strip, text, (1, h + 1), 0.4, _INK)
    turned = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    top, left = max(0, middle - turned.shape[0] // 2), max(0, right - turned.shape[1])
    region = canvas[top:top + turned.shape[0], left:left + turned.shape[1]]
    np.minimum(region, turned[:region.shape[0], :region.shape[1]], out=region)


def _world_axes(canvas: np.ndarray, box: tuple[int, int, int, int], basis: np.ndarray) -> None:
    """The world x, y, z axes as seen in this view: a small gizmo in the box's lower-left corner."""
    origin = np.array([box[0] + 50.0, box[3] - 62.0])
    for k, (name, colour) in enumerate(zip("xyz", _AXIS_COLOURS)):
        d = basis @ np.eye(3)[k] * [32.0, -32.0]
        if np.hypot(*d) > 2:
            tip = np.rint((origin + d) * (1 << _SUBPIXEL)).astype(int)
            cv2.arrowedLine(canvas, tuple(np.rint(origin * (1 << _SUBPIXEL)).astype(int)), tuple(tip), colour, 1,
                            cv2.LINE_AA, _SUBPIXEL, 0.25)
        label = np.rint(origin + d * 1.35 + [-4, 4]).astype(int)
        _text(canvas, name, (int(label[0]), int(label[1])), 0.4, colour)
    _text(canvas, "world", (box[0] + 6, box[3] - 6), 0.35, _INK)


def _scale_bar(canvas: np.ndarray, box: tuple[int, int, int, int], to_px: PanelMap) -> None:
    """A bar of a round length (1, 2 or 5 × 10^k world units, at most a fifth of the box's width)."""
    length = _round_length((box[2] - box[0]) / 5 / to_px.scale)
    pixels = int(round(length * to_px.scale))
    right, y = box[2] - 15, box[3] - 25
    cv2.line(canvas, (right - pixels, y), (right, y), _INK, 1)
    for x in (right - pixels, right):
        cv2.line(canvas, (x, y - 4), (x, y + 4), _INK, 1)
    _text(canvas, f"{length:g} world units", (right - pixels // 2, y + 16), 0.35, _INK, centred=True)


def _legend(canvas: np.ndarray, styles: Sequence[str]) -> None:
    """A sample line and the meaning of each style used, centred under the panels."""
    entries = [(STYLES[s], LEGEND[s], cv2.getTextSize(LEGEND[s], _FONT, 0.45, 1)[0][0]) for s in styles]
    x = (SIZE[0] - sum(36 + w + 30 for *_, w in entries)) // 2
    y = SIZE[1] - 22
    for look, text, w in entries:
        _polyline(canvas, np.array([[x, y - 4.0], [x + 28.0, y - 4.0]]), look)
        _text(canvas, text, (x + 36, y), 0.45, _INK)
        x += 36 + w + 30


def _rig_axes(poses: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World directions (right, up, forward) of the rig: up is minus the summed camera y (down) axes,
    forward the summed optical axes made orthogonal to up; world axes when there are no cameras."""
    if not poses:
        return np.eye(3)[0], -np.eye(3)[1], np.eye(3)[2]
    up = -np.sum([p[:3, 1] for p in poses], axis=0)
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-9 else -np.eye(3)[1]
    forward = np.sum([p[:3, 2] for p in poses], axis=0)
    forward -= forward @ up * up
    if np.linalg.norm(forward) < 1e-9:  # cameras all around: any horizontal direction
        forward = np.cross(up, np.eye(3)[int(np.argmin(np.abs(up)))])
    forward /= np.linalg.norm(forward)
    return np.cross(-up, forward), up, forward  # camera axes: x = y × z, with y down


def _frustum_lines(f: Frustum, c2w: np.ndarray, centre: np.ndarray) -> list[np.ndarray]:
    """World polylines of a frustum: centre → 4 image corners, the image rectangle, and an "up" tick
    on the image's top edge (a camera rolled by 180° shows it at the bottom)."""
    depth = FRUSTUM_DEPTH * float(np.linalg.norm(c2w[:3, 3] - centre))
    w, h = f.camera.size
    s = cv.PIXEL_CENTRE_SHIFT
    corners = np.array([[-s, -s], [w - s, -s], [w - s, h - s], [-s, h - s]])  # outer pixel edges
    tick = np.array([[(w - 1) / 2, -s - 0.15 * h]])
    rays = np.linalg.solve(f.camera.K, np.column_stack([np.vstack([corners, tick]), np.ones(5)]).T).T
    world = (rays * depth) @ c2w[:3, :3].T + c2w[:3, 3]
    o = c2w[:3, 3]
    rect = world[[0, 1, 2, 3, 0]]
    return [np.stack([o, world[0]]), np.stack([o, world[1]]), np.stack([o, world[2]]), np.stack([o, world[3]]),
            rect, np.stack([world[0], world[4], world[1]])]


def _round_length(x: float) -> float:
    """The largest of 1, 2, 5 × 10^k not above `x` (`x` > 0)."""
    if not np.isfinite(x) or x <= 0:
        return 1.0
    k = np.floor(np.log10(x))
    return float(max(m for m in (1, 2, 5, 10) if m * 10**k <= x * (1 + 1e-12)) * 10**k)

