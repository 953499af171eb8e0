"""Writing the MVSNet / DTU layout (see the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fsconvert import conventions as cv
from fsconvert.depthproducts import depth_bands, depth_range, foreground_span, point_visibility
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, ViewPlan, frame_record, plan_views, size_warnings
from fsconvert.imagestage import write_images
from fsconvert.mesh import capture_geometry, capture_mesh_path
from fsconvert.model import Capture
from fsconvert.options import option
from fsconvert.writers import write_bytes

from .programs import CAMS, CASMVSNET_MAX_H, CASMVSNET_MAX_W, DEPTHS, IMAGES, PAIR, casmvsnet_offset

NAME = "mvsnet"
SUMMARY = "MVSNet / DTU cams/*_cam.txt + pair.txt (MVSNet, CasMVSNet, PatchmatchNet, TransMVSNet)"
SOURCES = 10
"""Source views listed per reference view (colmap2mvsnet)."""
THETA0, SIGMA1, SIGMA2 = 5.0, 1.0, 10.0
"""colmap2mvsnet's view-selection defaults (degrees)."""
VISIBILITY_TOLERANCE = 0.01
"""Relative depth tolerance of the visibility test of the view-selection points."""

Target = Literal["mvsnet", "patchmatchnet"]


@dataclass(frozen=True)
class Options:
    image: ImageOptions = field(default_factory=ImageOptions)
    target: Target = option(
        "mvsnet", "the depth line's form: mvsnet writes 'MIN INTERVAL NUM MAX' (read right by MVSNet, R-MVSNet, "
        "CasMVSNet, TransMVSNet's general_eval); patchmatchnet writes 'MIN MAX' (PatchmatchNet), which the others "
        "misread", name="for")
    """The programs the depth line is for, and the program the check reads the export by."""
    depth_num: int = option(192, "DEPTH_NUM: depth hypotheses per view (MVSNet's max_d; --for mvsnet only)")
    depth_margin: float = option(0.05, "widen each view's visible mesh depth range by this fraction of it, "
                                 "on both sides")
    depths: bool = option(False, "render z-depth maps into depths/<id>.pfm (float32, 0 = background)")

    def __post_init__(self) -> None:
        if self.depth_num < 2:
            raise InputError(f"depth_num must be at least 2, got {self.depth_num}")
        if not (np.isfinite(self.depth_margin) and self.depth_margin >= 0):
            raise InputError(f"depth_margin must be a number ≥ 0, got {self.depth_margin}")
        if not self.image.undistort:
            raise InputError("MVSNet cameras hold no lens distortion: use --distortion undistort")
        object.__setattr__(self, "image", replace(self.image, image_format="jpg"))  # loaders open images/%08d.jpg


def write(capture: Capture, folder: Path, options: Options, *, workers: int, progress: bool) -> dict[str, Any]:
    """Write the export (see the package docstring): depth ranges and view selection from the mesh's vertices and
    faces after the images (`capture_geometry`: depth passes and their visibility tests need no trimesh)."""
    needed_for = "the MVSNet export (depth ranges, view selection)"
    capture_mesh_path(capture, needed_for)  # refused before the images without one
    plans = plan_views(capture.views, options.image)
    stems = [f"{p.view.id:08d}" for p in plans]
    names = [f"{IMAGES}/{s}.jpg" for s in stems]
    write_images(plans, names, folder, workers=workers, progress=progress)
    mesh = capture_geometry(capture, needed_for)
    if options.depths:
        (folder / DEPTHS).mkdir()
    ranges: list[tuple[float, float]] = [(0.0, 0.0)] * len(plans)
    for i, bands in depth_bands(mesh, plans, progress=progress):
        pfm = Pfm(plans[i].camera.size) if options.depths else None
        span = (math.inf, 0.0)
        for top, z in bands:
            span = foreground_span(z, span)
            if pfm is not None:
                pfm.rows[top:top + len(z)] = z
        ranges[i] = depth_range(span, options.depth_margin, plans[i].view.id)
        if pfm is not None:
            write_bytes(folder / DEPTHS / f"{stems[i]}.pfm", pfm.data)
    (folder / CAMS).mkdir()
    for plan, stem, (lo, hi) in zip(plans, stems, ranges):
        text = cam_text(plan.world_to_cam, plan.camera.K, lo, hi, options.depth_num, options.target)
        write_bytes(folder / CAMS / f"{stem}_cam.txt", text.encode("ascii"))
    seen = [s for s, _ in point_visibility(mesh, plans, mesh.vertices, VISIBILITY_TOLERANCE,
                                                   progress=progress)]
    scores = view_scores(np.array([p.view.centre for p in plans]), mesh.vertices, seen)
    write_bytes(folder / PAIR, pair_text([p.view.id for p in plans], scores).encode("ascii"))
    warnings = size_warnings(plans, NAME, "MVSNet-family networks")
    if options.target == "mvsnet":
        warnings += casmvsnet_warnings(plans)
    return {"images": names, **frame_record(capture.views, options.image),
            **({"warnings": warnings} if warnings else {})}


def default_reader(options: Options) -> str:
    """The program the check reads an export by: MVSNet's load_cam for the 4-token line (it reads the images
    at their size; CasMVSNet's resize is the warning and `--reader casmvsnet`), PatchmatchNet for 'MIN MAX'."""
    return options.target


def cam_text(w2c: np.ndarray, K: np.ndarray, depth_min: float, depth_max: float, depth_num: int,
             target: Target = "mvsnet") -> str:
    """One `_cam.txt` (full float precision; colmap2mvsnet's layout), its depth line in `target`'s form."""
    if target == "patchmatchnet":
        depth = f"{_num(depth_min)} {_num(depth_max)}"
    else:
        interval = (depth_max - depth_min) / (depth_num - 1)
        depth = f"{_num(depth_min)} {_num(interval)} {depth_num} {_num(depth_max)}"
    rows = ["extrinsic", *(_row(r) for r in cv.homogeneous(w2c)), "", "intrinsic", *(_row(r) for r in K), "", depth]
    return "\n".join(rows) + "\n"


def casmvsnet_warnings(plans: list[ViewPlan]) -> list[str]:
    """One line when CasMVSNet would read some view off (an image size that its resize changes)."""
    offs = {size: casmvsnet_offset(*size) for size in sorted({p.camera.size for p in plans})}
    if max(offs.values()) <= 1e-9:
        return []
    sizes = ", ".join(f"{w}×{h}: {off:.2g} px" for (w, h), off in offs.items())
    return [f"{NAME}: CasMVSNet (and TransMVSNet's general_eval) resize every image to a multiple of 32 within "
            f"{CASMVSNET_MAX_W}×{CASMVSNET_MAX_H} (scale_mvs_input) and scale K without the half-pixel term: they "
            f"read these views off by {sizes} (fsconvert check --reader casmvsnet); exact: --intrinsics shared "
            f"--size-multiple 32 with the frame within {CASMVSNET_MAX_W}×{CASMVSNET_MAX_H} (--max-size or "
            "--frame-size), or CasMVSNet's --max_w/--max_h at least its size"]


def _row(values: np.ndarray) -> str:
    return " ".join(_num(v) for v in values)


def _num(x: float) -> str:
    return repr(float(x))


def view_scores(centres: np.ndarray, points: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """N×N symmetric colmap2mvsnet scores from the points both views see (zero diagonal)."""
    n = len(centres)
    scores = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            X = points[seen[i] & seen[j]]
            a, b = centres[i] - X, centres[j] - X
            cos = np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            theta = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
            sigma = np.where(theta <= THETA0, SIGMA1, SIGMA2)
            scores[i, j] = scores[j, i] = float(np.exp(-((theta - THETA0) ** 2) / (2 * sigma**2)).sum())
    return scores


def pair_text(ids: list[int], scores: np.ndarray) -> str:
    """pair.txt: per reference view its best min(10, N − 1) source views, best first (ties by id)."""
    lines = [str(len(ids))]
    for i, ref in enumerate(ids):
        order = sorted((j for j in range(len(ids)) if j != i), key=lambda j: (-scores[i, j], ids[j]))[:SOURCES]
        lines += [str(ref), " ".join([str(len(order)), *(f"{ids[j]} {scores[i, j]:.6f}" for j in order)])]
    return "\n".join(lines) + "\n"


class Pfm:
    """A greyscale little-endian PFM of a width×height map ("Pf", scale −1, rows stored bottom to top: MVSNet's
    write_pfm): `data`, the file's bytes, and `rows`, the map viewing them top row first, to fill (a 12.6 MP
    map is 50 MB, once)."""

    def __init__(self, size: tuple[int, int]) -> None:
        W, H = size
        header = f"Pf\n{W} {H}\n-1.000000\n".encode("ascii")
        self.data = bytearray(len(header) + 4 * W * H)
        self.data[:len(header)] = header
        self.rows: np.ndarray = np.frombuffer(self.data, "<f4", offset=len(header)).reshape(H, W)[::-1]



# ---- read ------------------------------------------------------------------------------------------
