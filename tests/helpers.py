"""Test-side helpers: computations the product does not need, kept out of it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
from conftest import expected_pixels

import exporters
from fsconvert import conventions as cv
from fsconvert.export import Exported, export
from fsconvert.imageplan import ViewPlan, plan_views
from fsconvert.imagestage import write_images
from fsconvert.model import Capture
from fsconvert.options import from_dict
from fsconvert.protocol import Reading, read_manifest
from fsconvert.render import Renderer, _pixels, _sample, distorted_render, undistortion_map


def rotation_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z), w ≥ 0, Hamilton convention, of a rotation matrix (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0] * 4
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    out = np.array(q) / np.linalg.norm(q)
    return -out if out[0] < 0 else out


def whole_depths(mesh, views) -> list[tuple[int, np.ndarray]]:
    """Each view's whole z-depth map in one piece (`distorted_render`, depth only): what
    `depthproducts.depth_bands` gives band by band, in its order (landscape views first)."""
    order = sorted(range(len(views)), key=lambda i: views[i].camera.is_portrait)
    with Renderer(mesh) as renderer:
        return [(i, distorted_render(renderer, views[i].camera, views[i].world_to_cam, depth_only=True).depth)
                for i in order]


def run_plan(plan: ViewPlan, dest: Path) -> Path:
    """Produce one output image at `dest` through the image stage."""
    write_images([plan], [dest.name], dest.parent)
    return dest


def footprint(plan: ViewPlan) -> np.ndarray:
    """H×W bool: the output pixels the plan's maps interpolate from source pixels only."""
    if not plan.resample:
        return np.ones(plan.camera.size[::-1], bool)
    w, h = cv.reduced_size(plan.view.camera.size, plan.reduce)
    mx, my = plan.maps()
    return (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)


def distort_image(pinhole_img: np.ndarray, pinhole_K: np.ndarray, camera, interpolation: int = cv2.INTER_LINEAR
                  ) -> np.ndarray:
    """A pinhole image (intrinsics `pinhole_K`, same pose) resampled into the distorted `camera`, through the
    renderer's own sampling (what `render.distorted_render` does to its pinhole canvas)."""
    return _sample(pinhole_img, _pixels(undistortion_map(camera), pinhole_K), interpolation)


def read_as(program: str, folder: Path) -> Reading:
    """A hand-written export folder read by `program`'s rules: a COLMAP layout if it has sparse/, else NeRF's."""
    fmt = "colmap" if (folder / "sparse").is_dir() else "nerf"
    return exporters.program(exporters.get(fmt), program).read(folder)


def plans_by_name(out: Path, capture: Capture, module: ModuleType) -> dict[str, ViewPlan]:
    """Manifest name → the image plan rebuilt from the manifest's options, as the check does."""
    manifest = read_manifest(out)
    options = from_dict(module.Options, manifest["options"])
    plans = {p.view.id: p for p in plan_views(capture.views, options.image)}
    return {v["name"]: plans[v["id"]] for v in manifest["views"]}


def output_pixels(plan: ViewPlan, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`expected_pixels` (the source projection carried through the plan) kept inside the exported image."""
    idx, out = expected_pixels(plan, X)
    w, h = plan.camera.size
    keep = np.all((out >= 0) & (out <= [w - 1, h - 1]), axis=1)
    assert keep.sum() > 100
    return idx[keep], out[keep]


def exported_once(capture: Capture, root: Path, cases: Mapping[str, tuple[str, Any]]) -> Callable[[str], Exported]:
    """case → the export of `capture` by `cases[case]` (format, options) into root/case, written and checked on
    first use only."""
    done: dict[str, Exported] = {}

    def get(case: str) -> Exported:
        if case not in done:
            fmt, options = cases[case]
            done[case] = export(capture, fmt, root / case, options, overlays=False)
        return done[case]

    return get


def visible_depths(renderer: Renderer, plan: ViewPlan, X: np.ndarray) -> np.ndarray:
    """z of the vertices the exported camera sees: at their nearest pixel centre, the rendered surface is within
    0.2 % of their depth (an occluded vertex is farther: the near side of a head is > 2 % of its distance away)."""
    depth = renderer.render(plan.camera, plan.world_to_cam, depth_only=True).depth
    Xc = X @ plan.world_to_cam[:3, :3].T + plan.world_to_cam[:3, 3]
    uv = np.rint(plan.camera.project(Xc)).astype(int)
    w, h = plan.camera.size
    inside = (Xc[:, 2] > 0) & np.all((uv >= 0) & (uv < [w, h]), axis=1)
    z, d = Xc[inside, 2], depth[uv[inside, 1], uv[inside, 0]]
    seen: np.ndarray = z[(d > 0) & (np.abs(z - d) < 0.002 * d)]
    assert len(seen) > 100  # a depth test on a handful of vertices proves nothing
    return seen


def format_files(out: Path) -> dict[str, bytes]:
    """An export's own files by relative path (not the manifest, nor the check)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parts[len(out.parts)] not in ("fsconvert", "check")}
