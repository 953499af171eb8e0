"""`fsconvert info`: a readable summary of a tuple or a dataset.

It reads the mesh's vertices and faces alone (`mesh.capture_geometry`: no trimesh for a binary PLY): a summary
answers within a few tenths of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import conventions as cv
from .alignment import DEFAULT_UNITS, UNITS
from .errors import InputError
from .imageplan import capture_up, is_rolled
from .loader import is_tuple_dir, iter_dataset, load_capture
from .mesh import capture_geometry
from .model import Capture
from .rig import Frustum, plot_rig

HEAD_MM = (100.0, 400.0)
"""Bounding-box sizes beyond which an aligned mesh is flagged as not head-sized (a face is ~150–250 mm)."""


def describe_capture(capture: Capture, with_mesh: bool = True) -> str:
    """Views (valid/excluded), image sizes and orientations, focal and distortion ranges, mesh and distance."""
    views = capture.views
    cams = [v.camera for v in views]
    sizes: dict[str, int] = {}
    for c in cams:
        key = f"{c.width}×{c.height} {'portrait' if c.is_portrait else 'landscape'}"
        sizes[key] = sizes.get(key, 0) + 1
    f = np.array([[c.fx, c.fy] for c in cams])
    long_side = np.array([max(c.size) for c in cams])
    pp = np.array([c.K[:2, 2] - cv.image_centre(*c.size) for c in cams])
    dist = np.array([c.dist for c in cams])
    up = capture_up(views)
    rolled = [v.id for v in views if is_rolled(v, up)]
    lines = [
        f"tuple {capture.name}  ({capture.root})",
        f"  views: {len(views)} used"
        + (f", {len(capture.excluded)} excluded (valid=false): {[v.id for v in capture.excluded]}"
           if capture.excluded else ""),
        "  images: " + ", ".join(f"{n} × {s}" for s, n in sorted(sizes.items())),
        f"  focal: fx {f[:, 0].min():.1f}…{f[:, 0].max():.1f} px, fy {f[:, 1].min():.1f}…{f[:, 1].max():.1f} px"
        f" ({(f[:, 0] / long_side).min():.2f}…{(f[:, 0] / long_side).max():.2f} × long side)",
        f"  principal point offset from centre: x {pp[:, 0].min():+.1f}…{pp[:, 0].max():+.1f} px,"
        f" y {pp[:, 1].min():+.1f}…{pp[:, 1].max():+.1f} px",
        "  distortion: "
        + ", ".join(f"{n} {dist[:, i].min():+.3g}…{dist[:, i].max():+.3g}"
                    for i, n in enumerate(("k1", "k2", "p1", "p2", "k3"))),
        f"  rolled ~180° (image up against the majority): {rolled if rolled else 'none'}",
    ]
    a = capture.alignment
    unit = "SfM units" if a is None else a.units
    if a is not None:
        lines.append(f"  alignment: {a.path} entry '{a.subject}.{a.expression}': scale {a.scale:.6g} SfM units → mm,"
                     f" output in {a.units}")
    if capture.mesh is None:
        lines.append("  mesh: not found")
    elif with_mesh:
        mesh = capture_geometry(capture, "the mesh summary")
        bounds = mesh.bounds
        centre = bounds.mean(axis=0)
        radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max())
        d = np.array([np.linalg.norm(v.centre - centre) for v in views])
        lines += [
            f"  mesh: {capture.mesh}  {len(mesh.vertices)} vertices, {len(mesh.faces)} faces,"
            f" bounding radius {radius:.4g} ({unit})",
            f"  camera distance to mesh centre: {d.min():.4g}…{d.max():.4g} {unit}"
            f" ({d.min() / radius:.1f}…{d.max() / radius:.1f} × radius)",
        ]
        if a is not None:
            size = np.ptp(bounds, axis=0) / UNITS[a.units]
            lines.append(f"  head size: {' × '.join(f'{x:.0f}' for x in size)} mm "
                         "(bounding box; a face is ~150–250 mm)")
            if not HEAD_MM[0] <= size.max() <= HEAD_MM[1]:
                lines.append(f"  warning: {size.max():.4g} mm is not the size of a head: check the entry and the units")
    else:
        lines.append(f"  mesh: {capture.mesh}")
    return "\n".join(lines)


def plot_tuple(path: str | Path, png: str | Path, *, mesh_root: str | Path | None = None,
               align: str | Path | None = None, units: str = DEFAULT_UNITS) -> None:
    """Draw the camera rig of the tuple folder `path` (every view, valid=false ones dashed) into `png`."""
    path = Path(path)
    if not is_tuple_dir(path):
        raise InputError("--plot draws one tuple's camera rig: give a tuple folder (with params.json)", file=path)
    capture = load_capture(path, mesh_root=mesh_root, require_mesh=False, include_invalid=True, align=align,
                           units=units)
    frustums = [Frustum(str(v.id), v.camera, v.world_to_cam, "ok" if v.valid else "invalid")
                for v in sorted(capture.views, key=lambda v: not v.valid)]
    points = None if capture.mesh is None else capture_geometry(capture, "the rig plot").vertices
    invalid = len(frustums) - sum(v.valid for v in capture.views)
    plot_rig(png, frustums, points, f"tuple {capture.name}: {len(frustums)} source cameras"
             + (f", {invalid} marked valid=false" if invalid else "") + ("" if points is not None else ", no mesh"))


def describe(path: str | Path, *, mesh_root: str | Path | None = None, ids: set[int] | None = None,
             exps: list[str] | None = None, align: str | Path | None = None, units: str = DEFAULT_UNITS) -> str:
    """Summary of a tuple folder, or of every selected tuple of a dataset (aligned with `align`)."""
    path = Path(path)
    load: dict[str, Any] = {"mesh_root": mesh_root, "require_mesh": False, "align": align, "units": units}
    if is_tuple_dir(path):
        return describe_capture(load_capture(path, **load))
    refs = list(iter_dataset(path, ids=ids, exps=exps))
    if not refs:
        return f"dataset {path}: no tuples found (expected IMGS_ROOT/<id>/<exp>/params.json)"
    subjects = sorted({r.subject for r in refs}, key=lambda s: (len(s), s))
    out = [f"dataset {path}: {len(refs)} tuples, {len(subjects)} subjects"]
    for ref in refs:
        try:
            capture = load_capture(ref.path, **load)
        except InputError as exc:
            if align is None or exc.file != Path(align):
                raise
            out.append(f"tuple {ref.name}: {exc}")  # a tuple without an alignment entry; the others go on
            continue
        out.append(describe_capture(capture, with_mesh=False))
    return "\n".join(out)
