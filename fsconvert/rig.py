"""The camera-rig plot: camera frustums around the mesh, seen from the front and from above (`rig.png`).

Drawn with matplotlib's Agg canvas (no display), orthographic, in the cameras' own frame of reference:
"up" is the direction the majority of cameras call up, "forward" their mean viewing direction. Same
inputs give the same PNG bytes: fixed size, DPI and style, and the pixels are written by the project's
one PNG writer (`fsconvert.derived.write_png`: no timestamp or software tag).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

import cv2
import numpy as np

from . import conventions as cv
from .mesh import subsample
from .model import Camera
from .writers import write_png

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Style = Literal["ok", "failed", "invalid"]
"""How a frustum is drawn: a view that passed (or was not checked), one that failed, one marked valid=false."""


class _LineStyle(TypedDict):
    """Matplotlib line keyword arguments of one frustum style."""

    color: str
    linestyle: Literal["-", "--"]
    linewidth: float


STYLES: dict[str, _LineStyle] = {  # in drawing order
    "ok": {"color": "#1f5fa8", "linestyle": "-", "linewidth": 0.9},
    "invalid": {"color": "#8c8c8c", "linestyle": "--", "linewidth": 0.9},
    "failed": {"color": "#d62728", "linestyle": "-", "linewidth": 1.6},
}
LEGEND = {"ok": "camera", "failed": "failed the check", "invalid": "marked valid=false"}
FRUSTUM_DEPTH = 0.25
"""Frustum length as a fraction of the camera's distance to the mesh centre."""
MESH_POINTS = 4000
"""Mesh vertices drawn (evenly spaced in vertex order)."""
FIGSIZE, DPI = (12.0, 6.0), 100


@dataclass(frozen=True, eq=False)
class Frustum:
    """One camera to draw: intrinsics (for the frustum's shape), world→camera pose (internal convention)."""

    label: str
    camera: Camera
    world_to_cam: np.ndarray
    style: Style = "ok"


def plot_rig(path: str | Path, frustums: Sequence[Frustum], points: np.ndarray | None, title: str) -> None:
    """Write the front and top views of `frustums` around the mesh vertices `points` (N×3) to the PNG `path`."""
    from matplotlib import style as mpl_style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    poses = [cv.w2c_to_c2w(f.world_to_cam) for f in frustums]
    right, up, forward = _rig_axes(poses)
    cloud = np.empty((0, 3)) if points is None else subsample(np.asarray(points, dtype=np.float64), MESH_POINTS)
    centre = cloud.mean(axis=0) if len(cloud) else np.mean([p[:3, 3] for p in poses], axis=0)
    outlines = [_frustum_lines(f, p, centre) for f, p in zip(frustums, poses)]
    views = (("front (along the cameras' mean viewing direction)", right, up, "up"),
             ("top (from above)", right, forward, "viewing direction"))

    with mpl_style.context("default"):
        fig = Figure(figsize=FIGSIZE, dpi=DPI)
        canvas = FigureCanvasAgg(fig)
        fig.suptitle(title, fontsize=11)
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.88, wspace=0.18)
        for i, (name, h_axis, v_axis, v_name) in enumerate(views):
            ax = fig.add_subplot(1, 2, i + 1)
            basis = np.stack([h_axis, v_axis])
            if len(cloud):
                xy = cloud @ basis.T
                ax.scatter(xy[:, 0], xy[:, 1], s=0.5, c="#999999", marker=".", linewidths=0)
            for style in STYLES:  # one collection per style: failing views drawn last, on top
                drawn = [(f, lines) for f, lines in zip(frustums, outlines) if f.style == style]
                if drawn:
                    ax.add_collection(LineCollection([line @ basis.T for _, lines in drawn for line in lines],
                                                     **STYLES[style]))
                for f, lines in drawn:
                    x, y = lines[0][0] @ basis.T  # the camera centre
                    ax.annotate(f.label, (x, y), fontsize=7, color=STYLES[style]["color"], xytext=(2, 2),
                                textcoords="offset points")
            ax.autoscale_view()
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("rig right (world units)", fontsize=8)
            ax.set_ylabel(f"rig {v_name} (world units)", fontsize=8)
            ax.tick_params(labelsize=7)
            _world_axes(ax, basis)
            _scale_bar(ax, np.vstack([cloud, *(line for lines in outlines for line in lines)]) @ basis.T)
        used = [s for s in STYLES if any(f.style == s for f in frustums)]
        handles = [Line2D([], [], **STYLES[s], label=LEGEND[s]) for s in used]
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        # FigureCanvasAgg.draw and buffer_rgba have no annotations
        canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    write_png(Path(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))  # the figure is opaque: no alpha channel


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


def _world_axes(ax: Axes, basis: np.ndarray) -> None:
    """The world x, y, z axes as seen in this view, drawn as a small gizmo in the lower-left corner."""
    origin = np.array([0.09, 0.11])
    for k, (name, color) in enumerate(zip("xyz", ("#d62728", "#2ca02c", "#1f77b4"))):
        d = basis @ np.eye(3)[k] * 0.07
        # matplotlib's stubs want xytext a tuple; any (x, y) pair works, as xy's stub allows
        ax.annotate("", xy=origin + d, xytext=origin, xycoords="axes fraction",  # type: ignore[arg-type]
                    arrowprops={"arrowstyle": "->", "color": color, "linewidth": 1.2})
        ax.annotate(name, origin + d * 1.35, xycoords="axes fraction", fontsize=8, color=color,
                    ha="center", va="center")
    ax.annotate("world", origin - np.array([0, 0.1]), xycoords="axes fraction", fontsize=7, ha="center")


def _scale_bar(ax: Axes, xy: np.ndarray) -> None:
    """A bar of a round length (1, 2 or 5 × 10^k world units, at most a fifth of what the view spans)."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = _round_length(float(np.ptp(xy, axis=0).max()) / 5 if len(xy) else 1.0)
    ax.add_artist(AnchoredSizeBar(ax.transData, length, f"{length:g} world units", "lower right",
                                  pad=0.4, frameon=False, size_vertical=0, fontproperties={"size": 7}))


def _round_length(x: float) -> float:
    """The largest of 1, 2, 5 × 10^k not above `x` (`x` > 0)."""
    if not np.isfinite(x) or x <= 0:
        return 1.0
    k = np.floor(np.log10(x))
    return float(max(m for m in (1, 2, 5, 10) if m * 10**k <= x * (1 + 1e-12)) * 10**k)

