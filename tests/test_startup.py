"""Start-up: which libraries a command imports before it works (never a timing), and the mesh reader that
lets loading a tuple, `info` and the exports that draw depth or write point clouds and meshes from a binary PLY
go without trimesh.

`--help`, `info` and an export before its first mesh use must not import trimesh (with scipy and networkx
~1 s), the renderer's pyrender and PyOpenGL, matplotlib, open3d, pycolmap, Dask or Ray. numpy, OpenCV,
Pillow, simplejpeg and tqdm load with the image stage and the file writers every format module imports
(~0.05 s together after numpy's ~0.1 s; benchmarks/bench_startup.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from fsconvert.errors import InputError
from fsconvert.mesh import _binary_triangle_ply, load_mesh, read_geometry

REPO = Path(__file__).resolve().parent.parent
TUPLE = REPO / "samples" / "facescape_sample" / "images" / "1" / "1_neutral"
HEAVY = {"trimesh", "scipy", "networkx", "pyrender", "OpenGL", "pyglet", "matplotlib", "open3d", "pycolmap",
         "dask", "distributed", "ray"}
PROBE = """\
import json, sys
from fsconvert.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("\\n" + json.dumps({"code": code, "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def imported(*argv: str) -> tuple[str, set[str]]:
    """What `fsconvert ARGV` printed, and the top-level packages in its process when it ended."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    *printed, last = done.stdout.rstrip("\n").split("\n")
    result = json.loads(last)
    assert result["code"] == 0, done.stderr
    return "\n".join(printed), set(result["modules"])


def test_help_imports_no_heavy_library():
    printed, modules = imported("--help")
    assert "to-colmap" in printed and "to-open3d" in printed
    assert {"exporters", "numpy"} <= modules  # every format module was imported to list its command
    assert modules & HEAVY == set()


def test_info_reads_the_mesh_without_trimesh():
    printed, modules = imported("info", str(TUPLE))
    assert "10242 vertices, 20480 faces, bounding radius 2.748 (SfM units)" in printed
    assert modules & HEAVY == set()


def test_an_export_imports_the_mesh_libraries_only_where_it_uses_the_mesh(tmp_path: Path):
    common = [str(TUPLE), "--no-check", "-q", "-j", "1", "--scale", "0.25"]
    printed, modules = imported("to-facescape", *common, "-o", str(tmp_path / "facescape"))
    assert printed.startswith(f"wrote {tmp_path / 'facescape'} (facescape, 7 views)")  # loaded and checked the mesh
    assert modules & HEAVY == set()
    printed, modules = imported("to-colmap", *common, "-o", str(tmp_path / "colmap"))
    assert printed.startswith(f"wrote {tmp_path / 'colmap'} (colmap, 7 views)")
    # points3D: sampled with trimesh's arithmetic (fsconvert.surface), tested for visibility on depth passes
    # (OpenGL without pyrender)
    assert modules & HEAVY == {"pycolmap", "OpenGL"}
    printed, modules = imported("to-colmap", str(TUPLE), "-q", "-j", "1", "--scale", "0.25", "-o",
                                str(tmp_path / "checked"))
    assert "PASS: 7/7 views" in printed
    # the check: its overlays are colour renders of the PLY's arrays, drawn with pyrender's shaders without pyrender
    assert modules & HEAVY == {"pycolmap", "OpenGL"}
    printed, modules = imported("to-nerf", *common, "--masks", "-o", str(tmp_path / "nerf"))
    assert printed.startswith(f"wrote {tmp_path / 'nerf'} (nerf, 7 views)")
    # mesh.ply and points3d.ply (vertex normals, colours) from the numpy reader's arrays; masks on depth passes
    assert modules & HEAVY == {"OpenGL"}
    printed, modules = imported("to-neus", *common, "-o", str(tmp_path / "neus"))
    assert printed.startswith(f"wrote {tmp_path / 'neus'} (neus, 7 views)")
    # its masks are depth passes: OpenGL on an OSMesa context of the renderer's own, without pyrender
    assert modules & HEAVY == {"OpenGL"}
    printed, modules = imported("to-mvsnet", *common, "-o", str(tmp_path / "mvsnet"))
    assert printed.startswith(f"wrote {tmp_path / 'mvsnet'} (mvsnet, 7 views)")
    # depth ranges and view selection: depth passes on the mesh file's vertices and faces, without trimesh
    assert modules & HEAVY == {"OpenGL"}
    printed, modules = imported("to-open3d", *common, "-o", str(tmp_path / "open3d"))
    assert printed.startswith(f"wrote {tmp_path / 'open3d'} (open3d, 7 views)")
    # depth maps on depth passes; the camera files as Open3D writes them, without Open3D
    assert modules & HEAVY == {"OpenGL"}


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, *, endian: str = "<", vertex_type: str = "float",
              count_type: str = "uchar", index_type: str = "int", colors: bool = True, rgb: np.ndarray | None = None,
              color_type: str = "uchar", alpha: bool = False, uv: bool = False) -> bytes:
    """A binary PLY written field by field (trimesh writes only one kind): vertex colours `rgb` (zeros if not
    given) of `color_type`, with an alpha of 255 and texture coordinates u, v where asked."""
    types = {"float": "f4", "double": "f8", "uchar": "u1", "ushort": "u2", "int": "i4", "uint": "u4"}
    names = [*("red", "green", "blue")[:3 if colors else 0], *(["alpha"] if alpha else [])]
    fields = ([(axis, endian + types[vertex_type]) for axis in "xyz"] + [(c, endian + types[color_type]) for c in names]
              + ([(c, endian + "f4") for c in "uv"] if uv else []))
    vertex = np.zeros(len(vertices), fields)
    for k, axis in enumerate("xyz"):
        vertex[axis] = vertices[:, k]
    if colors and rgb is not None:
        for k, c in enumerate(("red", "green", "blue")):
            vertex[c] = rgb[:, k]
    if alpha:
        vertex["alpha"] = 255
    face = np.zeros(len(faces), [("n", endian + types[count_type]), ("i", endian + types[index_type], 3)])
    face["n"], face["i"] = 3, faces
    header = ["ply", f"format binary_{'little' if endian == '<' else 'big'}_endian 1.0", "comment made by a test",
              f"element vertex {len(vertices)}", *[f"property {vertex_type} {a}" for a in "xyz"],
              *[f"property {color_type} {c}" for c in names], *(["property float u", "property float v"] if uv else []),
              f"element face {len(faces)}", f"property list {count_type} {index_type} vertex_indices", "end_header"]
    return ("\n".join(header) + "\n").encode() + vertex.tobytes() + face.tobytes()


SPHERE = trimesh.creation.icosphere(subdivisions=2)
VARIANTS = {
    "trimesh's own": {},
    "big-endian doubles, uint indices": {"endian": ">", "vertex_type": "double", "index_type": "uint"},
    "ushort counts, no colours": {"count_type": "ushort", "colors": False},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_read_geometry_reads_what_trimesh_reads(variant: str, tmp_path: Path):
    path = tmp_path / "m.ply"
    if VARIANTS[variant]:
        path.write_bytes(ply_bytes(SPHERE.vertices, SPHERE.faces, **VARIANTS[variant]))
    else:
        SPHERE.export(path)
    fast = _binary_triangle_ply(path, False)
    assert fast is not None  # read by numpy, not by the trimesh fallback
    mesh = load_mesh(path)
    geometry = read_geometry(path)
    assert geometry.vertices.dtype == np.float64 and np.array_equal(geometry.vertices, mesh.vertices)
    assert np.array_equal(geometry.faces, mesh.faces) and np.array_equal(geometry.bounds, mesh.bounds)
    tolerance = 1e-6 if VARIANTS[variant].get("vertex_type") != "double" else 0  # float32 in the file
    assert np.allclose(geometry.vertices, SPHERE.vertices, rtol=0, atol=tolerance)


RGB = np.random.default_rng(0).integers(0, 256, (len(SPHERE.vertices), 3)).astype(np.uint8)
COLOURED = {  # how the file holds colours; whether numpy reads them
    "uchar rgb": ({"rgb": RGB}, True),
    "uchar rgba": ({"rgb": RGB, "alpha": True}, True),
    "none": ({"colors": False}, True),
    "one grey": ({"rgb": np.full_like(RGB, 77)}, True),
    "float colours": ({"rgb": RGB, "color_type": "float"}, False),
    "texture coordinates": ({"rgb": RGB, "uv": True}, False),
}


@pytest.mark.parametrize("variant", COLOURED)
def test_read_geometry_reads_the_colours_trimesh_makes(variant: str, tmp_path: Path):
    """`Geometry.colors` equal the vertex colours trimesh makes of the file (None where it has none), read by
    numpy where the file holds uchar colours and no texture coordinates, else through trimesh."""
    path = tmp_path / "m.ply"
    layout, by_numpy = COLOURED[variant]
    path.write_bytes(ply_bytes(SPHERE.vertices, SPHERE.faces, **layout))
    assert _binary_triangle_ply(path, False) is not None  # the geometry alone is numpy's either way
    assert (_binary_triangle_ply(path, True) is not None) == by_numpy
    mesh, geometry = trimesh.load(path, process=False), read_geometry(path, colors=True)
    if mesh.visual.kind is None:
        assert variant == "none" and geometry.colors is None
        assert np.array_equal(geometry.rgb(), np.full((len(SPHERE.vertices), 3), 128))
    else:
        colours = mesh.visual.vertex_colors if mesh.visual.kind == "vertex" else mesh.visual.to_color().vertex_colors
        assert geometry.colors is not None and geometry.colors.dtype == np.uint8
        assert np.array_equal(geometry.colors, np.asarray(colours)[:, :3])
    if by_numpy and variant != "none":
        assert np.array_equal(geometry.colors, RGB if variant != "one grey" else np.full_like(RGB, 77))
    assert read_geometry(path).colors is None  # not asked for


def test_read_geometry_leaves_other_files_to_trimesh(tmp_path: Path):
    quads = tmp_path / "quads.ply"
    data = ply_bytes(SPHERE.vertices, SPHERE.faces)
    first_face = len(data) - len(SPHERE.faces) * 13  # a face: its count (uchar) and 3 int32 indices
    quads.write_bytes(data[:first_face] + b"\x04" + data[first_face + 1:])
    ascii_ply = tmp_path / "ascii.ply"
    SPHERE.export(ascii_ply, encoding="ascii")
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(data[:-7])
    for path in (quads, ascii_ply, truncated):
        assert _binary_triangle_ply(path, False) is None
    assert np.array_equal(read_geometry(ascii_ply).faces, SPHERE.faces)  # through trimesh
    with pytest.raises(InputError, match="not a readable mesh") as exc:
        read_geometry(truncated)
    with pytest.raises(InputError) as expected:
        load_mesh(truncated)
    assert str(exc.value) == str(expected.value)


@pytest.mark.parametrize("damage, message", [
    ("nan", "mesh has NaN or infinite vertices"),
    ("index", "mesh faces index vertices outside 0..161"),
    ("no faces", "mesh has no faces"),
])
def test_read_geometry_rejects_what_load_mesh_rejects(damage: str, message: str, tmp_path: Path):
    vertices, faces = SPHERE.vertices.copy(), SPHERE.faces.copy()
    if damage == "nan":
        vertices[5, 1] = np.nan
    elif damage == "index":
        faces[7, 2] = len(vertices)
    else:
        faces = faces[:0]
    path = tmp_path / "m.ply"
    path.write_bytes(ply_bytes(vertices, faces))
    assert _binary_triangle_ply(path, False) is not None
    for read in (read_geometry, load_mesh):
        with pytest.raises(InputError) as exc:
            read(path)
        assert str(exc.value) == f"{path}: {message}"
