"""Load and validate the tuple's mesh (SfM units, the cameras' world frame)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import trimesh

from . import conventions as cv
from .errors import InputError
from .model import Capture


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """The mesh at `path` as a Trimesh with faces and finite vertices, or a one-line InputError.

    The last file parsed is kept (keyed on path, size and mtime): loading, exporting and checking a
    tuple parse it once; each caller gets its own copy.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("mesh file not found", file=path)
    stat = path.stat()
    return _parse(path, stat.st_size, stat.st_mtime_ns).copy()


@functools.lru_cache(maxsize=1)
def _parse(path: Path, size: int, mtime_ns: int) -> trimesh.Trimesh:
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except (ValueError, OSError) as exc:  # trimesh's own checks ("Not a ply file!", "PLY is unexpected length!")
        raise InputError(f"not a readable mesh: {exc or type(exc).__name__}", file=path) from None
    except Exception as exc:  # a parser tripping over damaged content (IndexError, KeyError, ...)
        reason = f"damaged or unsupported content: {type(exc).__name__}"
        raise InputError(f"not a readable mesh ({reason})", file=path) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise InputError("mesh has no faces", file=path)
    if not np.isfinite(mesh.vertices).all():
        raise InputError("mesh has NaN or infinite vertices", file=path)
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise InputError(f"mesh faces index vertices outside 0..{len(mesh.vertices) - 1}", file=path)
    return mesh


def subsample(points: np.ndarray, n: int) -> np.ndarray:
    """At most `n` points, evenly spaced in vertex order (deterministic)."""
    if len(points) <= n:
        return points
    return points[np.unique(np.linspace(0, len(points) - 1, n).round().astype(np.intp))]


def vertex_colors(mesh: trimesh.Trimesh) -> np.ndarray:
    """N×3 uint8 vertex colours (mid grey where the mesh has none)."""
    visual = mesh.visual
    if getattr(visual, "kind", None) == "vertex":
        return np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8)
    if getattr(visual, "kind", None) == "texture":
        return np.asarray(visual.to_color().vertex_colors)[:, :3].astype(np.uint8)
    return np.full((len(mesh.vertices), 3), 128, np.uint8)


def capture_mesh(capture: Capture, needed_for: str) -> trimesh.Trimesh:
    """The capture's mesh in the capture's frame (`Capture.world` applied), or a one-line InputError
    saying what needs it. Every use of a capture's mesh goes through here."""
    if capture.mesh is None:
        raise InputError(f"{needed_for} needs the tuple's mesh: give --mesh or --mesh-root", file=capture.root)
    mesh = load_mesh(capture.mesh)
    if capture.world is not None:
        mesh.vertices = cv.apply_similarity(capture.world, mesh.vertices)
    return mesh
