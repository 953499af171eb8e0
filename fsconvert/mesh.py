"""Load and validate the tuple's mesh (SfM units, the cameras' world frame), and its light render proxy.

trimesh takes ~1 s to import (scipy, networkx): the functions that parse or build a Trimesh import it.
`read_geometry` reads a binary PLY of triangles (FaceScape's meshes) with numpy alone, its vertex colours
too, so that loading a tuple (which proves its mesh readable), `fsconvert info` and the formats that write
point clouds and meshes from it (`fsconvert.surface` holds trimesh's arithmetic) and the check's colour renders of
it (`capture_drawn`) go without it; only other files (OBJ, textures, which pyrender draws) need it.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import conventions as cv
from . import surface
from .errors import InputError
from .model import Capture

if TYPE_CHECKING:
    import trimesh


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """The mesh at `path` as a Trimesh with faces and finite vertices, or a one-line InputError.

    The last file parsed is kept (keyed on path, size and mtime): loading, exporting and checking a
    tuple parse it once. Callers get the kept mesh itself and must not change it (a dense scan's copy
    is ~50 MB per million faces).
    """
    return _parse(*_key(path))


class Geometry(NamedTuple):
    """A mesh file's vertices (N×3 float64, as trimesh holds them) and triangles (M×3 vertex indices), and,
    where asked for (`read_geometry`), its vertex colours."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    """N×3 uint8 RGB as trimesh gives them (a texture's sampled at the vertices), None where the mesh has none
    or they were not read."""

    def rgb(self) -> np.ndarray:
        """N×3 uint8 vertex colours, mid grey where the mesh has none."""
        if self.colors is None:
            return np.full((len(self.vertices), 3), 128, np.uint8)
        return self.colors

    @property
    def bounds(self) -> np.ndarray:
        """[min, max] corners of the vertices that faces use: `Trimesh.bounds`, bit for bit."""
        used = np.zeros(len(self.vertices), bool)
        used[self.faces] = True
        return np.array([self.vertices[used].min(axis=0), self.vertices[used].max(axis=0)])


def read_geometry(path: str | Path, *, colors: bool = False) -> Geometry:
    """The vertices and faces `load_mesh` gives for the file at `path`, validated alike (the same one-line
    InputErrors), with `colors` also its vertex colours. A binary PLY whose elements are vertex and face and
    whose faces are all triangles is read with numpy (~25 ms for a 1.3 M-face scan): hand-written so that
    loading a tuple and `info` do not import trimesh (~1 s, see the module docstring); its colours too where
    they are uchar red, green, blue (alpha ignored, as here everywhere) and no texture coordinates. Any other
    file, or one that does not match its own header, goes through `load_mesh`, whose messages then say what is
    wrong."""
    key = _key(path)
    read = _numpy_geometry(key[0], colors)
    if read is None:
        mesh = _parse(*key)
        return Geometry(np.asarray(mesh.vertices), np.asarray(mesh.faces), _colors(mesh) if colors else None)
    return read


def _numpy_geometry(path: Path, colors: bool) -> Geometry | None:
    """`read_geometry`'s numpy path, validated; None where the file is for trimesh to read."""
    read = _binary_triangle_ply(path, colors) if path.suffix.lower() == ".ply" else None
    if read is not None:
        _validate(read.vertices, read.faces, path)
    return read


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_PLY_ENDIAN = {"binary_little_endian": "<", "binary_big_endian": ">"}
_PLY_MAX_HEADER_LINES = 1000
_PLY_COLORS = ("red", "green", "blue", "alpha")
_PLY_TEXTURE_COORDINATES = {"texture_u", "texture_v", "u", "v", "s", "t"}
"""Vertex properties trimesh reads as texture coordinates (its colours then come from a texture)."""


def _binary_triangle_ply(path: Path, colors: bool) -> Geometry | None:
    """`read_geometry`'s numpy path (not validated); None where the file is not such a PLY or cannot be read
    (trimesh's reader then says why), or, with `colors`, where trimesh would make its colours otherwise."""
    header: list[list[str]] = []
    try:
        with path.open("rb") as file:
            if file.readline().rstrip() != b"ply":
                return None
            while (line := file.readline()).rstrip() != b"end_header":
                if not line or len(header) == _PLY_MAX_HEADER_LINES:
                    return None
                header.append(line.decode("ascii", "replace").split())
            data = file.read()
        vertex, n_vertices, face, n_faces = _ply_layout(header)
    except (OSError, KeyError, ValueError):
        return None
    if len(data) != vertex.itemsize * n_vertices + face.itemsize * n_faces:
        return None
    v = np.frombuffer(data, vertex, count=n_vertices)
    f = np.frombuffer(data, face, count=n_faces, offset=vertex.itemsize * n_vertices)
    if not (f["n"] == 3).all():
        return None
    rgb = None
    if colors:
        assert vertex.names is not None  # _ply_layout found x, y, z
        named = [name for name in _PLY_COLORS if name in vertex.names]
        if _PLY_TEXTURE_COORDINATES & set(vertex.names) or any(vertex[name] != np.uint8 for name in named):
            return None
        if len(named) >= 3:  # trimesh's rule: three or more of them are colours
            if named[:3] != ["red", "green", "blue"]:
                return None
            rgb = np.column_stack([v["red"], v["green"], v["blue"]])
    return Geometry(np.column_stack([v["x"], v["y"], v["z"]]).astype(np.float64), f["i"], rgb)


def _ply_layout(header: list[list[str]]) -> tuple[np.dtype, int, np.dtype, int]:
    """The record type and count of the vertex and of the face element of a binary PLY header with exactly
    these two elements, the faces one list of vertex indices; KeyError or ValueError for any other."""
    endian = ""
    elements: list[tuple[str, int, list[list[str]]]] = []  # name, count, properties
    for words in header:
        match words:
            case ["format", name, _]:
                endian = _PLY_ENDIAN[name]
            case ["element", name, count]:
                elements.append((name, int(count), []))
            case ["property", *prop] if elements:
                elements[-1][2].append(prop)
            case ["comment" | "obj_info", *_] | []:
                pass
            case _:
                raise ValueError(words)
    if not endian or [name for name, _, _ in elements] != ["vertex", "face"]:
        raise ValueError("not a binary PLY of vertices and faces")
    (_, n_vertices, vertex_props), (_, n_faces, face_props) = elements
    vertex = np.dtype([(name, endian + _PLY_TYPES[kind]) for kind, name in vertex_props])
    match face_props:
        case [["list", count, index, "vertex_indices" | "vertex_index"]]:
            face = np.dtype([("n", endian + _PLY_TYPES[count]), ("i", endian + _PLY_TYPES[index], 3)])
        case _:
            raise ValueError(face_props)
    if vertex.names is None or not {"x", "y", "z"} <= set(vertex.names):
        raise ValueError("vertices without x, y, z")
    return vertex, n_vertices, face, n_faces


PROXY_MAX_FACES = 100_000
"""Meshes up to this many faces are their own render proxy (llvmpipe: ~5 ms per 20 000 triangles per render)."""
PROXY_CELLS = 112
"""Clustering cells along the longest side of the bounding box (a head: ~90 000 faces)."""


def render_proxy(mesh: Geometry) -> Geometry:
    """A vertex-clustered copy of `mesh` of at most PROXY_MAX_FACES faces (a dense scan's 1–3 M become
    ~90 000), or `mesh` itself when it is that small already.

    Vertices in one grid cell (PROXY_CELLS along the longest side, fewer if the result would still be
    too large) merge into their mean position and colour; faces that collapse are dropped. The surface
    moves by at most a cell's diagonal, ~1e-3 of the mesh's size on a dense scan. Quadric decimation
    keeps the shape better but takes seconds per million faces; this takes ~0.2 s.
    """
    cells = PROXY_CELLS
    proxy = mesh
    while len(proxy.faces) > PROXY_MAX_FACES:
        proxy = _cluster(mesh, cells)
        cells = int(cells * 0.95 * np.sqrt(PROXY_MAX_FACES / len(proxy.faces)))
    return proxy


def _cluster(mesh: Geometry, cells: int) -> Geometry:
    v = np.asarray(mesh.vertices, np.float64)
    lo = v.min(axis=0)
    cell = float(np.ptp(v, axis=0).max()) / cells or 1.0
    ijk = np.minimum(((v - lo) / cell).astype(np.int64), cells)
    key = (ijk[:, 0] * (cells + 1) + ijk[:, 1]) * (cells + 1) + ijk[:, 2]
    _, cluster = np.unique(key, return_inverse=True)
    sums = [np.bincount(cluster, weights=c) for c in (*v.T, *mesh.rgb().T.astype(np.float64))]
    mean = np.column_stack(sums) / np.bincount(cluster)[:, None]
    faces = cluster[mesh.faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    return Geometry(mean[:, :3], faces, np.rint(mean[:, 3:]).astype(np.uint8))


def _key(path: str | Path) -> tuple[Path, int, int]:
    path = Path(path)
    if not path.is_file():
        raise InputError("mesh file not found", file=path)
    stat = path.stat()
    return path, stat.st_size, stat.st_mtime_ns


def _copy(mesh: trimesh.Trimesh, vertices: np.ndarray | None = None) -> trimesh.Trimesh:
    """A copy whose arrays the caller may change, with `vertices` instead of the mesh's if given
    (trimesh's own copy derives face colours: ~0.8 s at 1 M faces)."""
    import trimesh

    visual = mesh.visual
    assert visual is not None  # trimesh gives every Trimesh one (ColorVisuals when none is set)
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.array(visual.vertex_colors))
    else:
        visual = visual.copy()
    vertices = np.array(mesh.vertices) if vertices is None else vertices
    return trimesh.Trimesh(vertices, np.array(mesh.faces), visual=visual, process=False)


@functools.lru_cache(maxsize=1)
def _proxy(path: Path, size: int, mtime_ns: int) -> Geometry | None:
    """The file's render proxy with its colours, None where the mesh is its own."""
    mesh = read_geometry(path, colors=True)
    proxy = render_proxy(mesh)
    return None if proxy is mesh else proxy


def _parse(path: Path, size: int, mtime_ns: int) -> trimesh.Trimesh:
    """The parsed mesh of this file version, kept until another one is asked for; the previous mesh is dropped
    before parsing the next (a worker holds one dense scan at a time; `_proxy` keeps one file's proxy alike)."""
    global _kept
    key = (path, size, mtime_ns)
    if _kept is None or _kept[0] != key:
        _kept = None
        gc.collect()  # trimesh meshes hold reference cycles (their caches)
        _kept = key, _read(path)
    return _kept[1]


_kept: tuple[tuple[Path, int, int], trimesh.Trimesh] | None = None


def _read(path: Path) -> trimesh.Trimesh:
    import trimesh

    try:
        mesh = trimesh.load(path, process=False)
        if isinstance(mesh, trimesh.Scene):  # several geometries; a single one comes as itself (force="mesh"
            mesh = mesh.to_mesh()           # would copy it twice and derive face colours: ~0.7 s at 1.3 M faces)
    except (ValueError, OSError) as exc:  # trimesh's own checks ("Not a ply file!", "PLY is unexpected length!")
        raise InputError(f"not a readable mesh: {exc or type(exc).__name__}", file=path) from None
    except Exception as exc:  # a parser tripping over damaged content (IndexError, KeyError, ...)
        reason = f"damaged or unsupported content: {type(exc).__name__}"
        raise InputError(f"not a readable mesh ({reason})", file=path) from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise InputError("mesh has no faces", file=path)
    _validate(mesh.vertices, mesh.faces, path)
    return mesh


def _validate(vertices: np.ndarray, faces: np.ndarray, path: Path) -> None:
    if len(faces) == 0 or len(vertices) == 0:
        raise InputError("mesh has no faces", file=path)
    if not np.isfinite(vertices).all():
        raise InputError("mesh has NaN or infinite vertices", file=path)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(f"mesh faces index vertices outside 0..{len(vertices) - 1}", file=path)


def subsample(points: np.ndarray, n: int) -> np.ndarray:
    """At most `n` points, evenly spaced in vertex order (deterministic)."""
    if len(points) <= n:
        return points
    return points[np.unique(np.linspace(0, len(points) - 1, n).round().astype(np.intp))]


def _colors(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """`Geometry.colors` of a Trimesh: N×3 uint8 vertex colours, a texture's sampled at the vertices, or None."""
    import trimesh

    visual = mesh.visual
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        return np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8)
    if isinstance(visual, trimesh.visual.TextureVisuals):  # kind "texture"
        # TextureVisuals.to_color has no annotations
        return np.asarray(visual.to_color().vertex_colors)[:, :3].astype(np.uint8)
    return None


def face_areas(mesh: Geometry) -> np.ndarray:
    """trimesh's `area_faces`, bit for bit, computed in chunks."""
    return np.concatenate([surface.areas(surface.cross(t)) for t in _triangles(mesh)])


def vertex_normals(mesh: Geometry) -> np.ndarray:
    """trimesh's `vertex_normals` (angle-weighted), bit for bit, from face normals and angles computed in chunks:
    trimesh's properties build and cache the triangles, cross products, normals and angles of every face (~1.5 s
    and ~300 MB at 1.3 M faces)."""
    normals, angles = [], []
    for t in _triangles(mesh):
        unit, valid = surface.normals(surface.cross(t))
        padded = np.zeros((len(t), 3))
        padded[valid] = unit
        normals.append(padded)
        angles.append(surface.angles(t))
    return surface.weighted_vertex_normals(len(mesh.vertices), np.asarray(mesh.faces), np.concatenate(normals),
                                           np.concatenate(angles))


def _triangles(mesh: Geometry, chunk: int = 1 << 18) -> Iterator[np.ndarray]:
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces)
    for i in range(0, len(f), chunk):
        yield v[f[i:i + chunk]]


def capture_mesh(capture: Capture, needed_for: str) -> trimesh.Trimesh:
    """The capture's mesh as a Trimesh in the capture's frame (`Capture.world` applied), or a one-line InputError
    saying what needs it. Every use of a capture's mesh goes through here or, as arrays, through `capture_geometry`
    (and `capture_proxy`, `capture_drawn` for renders).

    Without a `Capture.world` it is the process's kept mesh itself (no ~50 MB copy per million faces
    and per use): callers read it and must not change it.
    """
    mesh = load_mesh(capture_mesh_path(capture, needed_for))
    if capture.world is None:
        return mesh
    return _copy(mesh, vertices=cv.apply_similarity(capture.world, mesh.vertices))


def capture_geometry(capture: Capture, needed_for: str, *, colors: bool = False) -> Geometry:
    """The vertices (in the capture's frame) and faces of `capture_mesh(capture, needed_for)`, with `colors`
    also its vertex colours, by `read_geometry` (no trimesh for a binary PLY)."""
    return _in_capture_frame(capture, read_geometry(capture_mesh_path(capture, needed_for), colors=colors))


def capture_proxy(capture: Capture, needed_for: str) -> Geometry:
    """The mesh's render proxy as arrays in the capture's frame: the clustered copy `render_proxy` makes of a dense
    mesh (once per file version, colours and all), else `capture_geometry`; for renders that test cameras or
    visibility, not for products."""
    path = capture_mesh_path(capture, needed_for)
    found = _proxy(*_key(path))
    if found is None:
        return capture_geometry(capture, needed_for)
    return _in_capture_frame(capture, found)


def _in_capture_frame(capture: Capture, geometry: Geometry) -> Geometry:
    """`geometry` of the capture's mesh file with `Capture.world` applied to its vertices (itself without one)."""
    if capture.world is None:
        return geometry
    return geometry._replace(vertices=cv.apply_similarity(capture.world, geometry.vertices))


def capture_drawn(capture: Capture, needed_for: str) -> trimesh.Trimesh | Geometry:
    """The render proxy as colour renders draw it (`fsconvert.render.Renderer`): its arrays, vertex colours and all
    (drawn without pyrender), where those are a dense mesh's cluster means or a binary PLY's own; else the Trimesh,
    whose texture pyrender draws."""
    path = capture_mesh_path(capture, needed_for)
    proxy = _proxy(*_key(path))
    if proxy is not None:
        return _in_capture_frame(capture, proxy)
    read = _numpy_geometry(path, True)
    return capture_mesh(capture, needed_for) if read is None else _in_capture_frame(capture, read)


def capture_mesh_path(capture: Capture, needed_for: str) -> Path:
    """The capture's mesh file, or a one-line InputError saying what needs it (formats that read the mesh
    after their images ask first, so that a capture without one is refused before any image is made)."""
    if capture.mesh is None:
        raise InputError(f"{needed_for} needs the tuple's mesh: give --mesh or --mesh-root", file=capture.root)
    return capture.mesh
