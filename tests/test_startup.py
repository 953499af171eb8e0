"""Start-up: which libraries a command imports before it works (never a timing), and the mesh reader that
lets loading a tuple and `info` go without trimesh.

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
    # points3D: sampled by trimesh, tested for visibility on depth passes (OpenGL without pyrender)
    assert {"trimesh", "pycolmap", "OpenGL"} <= modules and "pyrender" not in modules
    printed, modules = imported("to-neus", *common, "-o", str(tmp_path / "neus"))
    assert printed.startswith(f"wrote {tmp_path / 'neus'} (neus, 7 views)")
    # its masks are depth passes: OpenGL on an OSMesa context of the renderer's own, without pyrender
    assert modules & HEAVY == {"OpenGL"}
    printed, modules = imported("to-mvsnet", *common, "-o", str(tmp_path / "mvsnet"))
    assert printed.startswith(f"wrote {tmp_path / 'mvsnet'} (mvsnet, 7 views)")
    # depth ranges and view selection: depth passes on the mesh file's vertices and faces, without trimesh
    assert modules & HEAVY == {"OpenGL"}


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, *, endian: str = "<", vertex_type: str = "float",
              count_type: str = "uchar", index_type: str = "int", colors: bool = True) -> bytes:
    """A binary PLY written field by field (trimesh writes only one kind)."""
    types = {"float": "f4", "double": "f8", "uchar": "u1", "ushort": "u2", "int": "i4", "uint": "u4"}
    fields = [(axis, endian + types[vertex_type]) for axis in "xyz"] + ([(c, "u1") for c in "rgb"] if colors else [])
    vertex = np.zeros(len(vertices), fields)
    for k, axis in enumerate("xyz"):
        vertex[axis] = vertices[:, k]
    face = np.zeros(len(faces), [("n", endian + types[count_type]), ("i", endian + types[index_type], 3)])
    face["n"], face["i"] = 3, faces
    header = ["ply", f"format binary_{'little' if endian == '<' else 'big'}_endian 1.0", "comment made by a test",
              f"element vertex {len(vertices)}", *[f"property {vertex_type} {a}" for a in "xyz"],
              *([f"property uchar {c}" for c in ("red", "green", "blue")] if colors else []),
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
    fast = _binary_triangle_ply(path)
    assert fast is not None  # read by numpy, not by the trimesh fallback
    mesh = load_mesh(path)
    geometry = read_geometry(path)
    assert geometry.vertices.dtype == np.float64 and np.array_equal(geometry.vertices, mesh.vertices)
    assert np.array_equal(geometry.faces, mesh.faces) and np.array_equal(geometry.bounds, mesh.bounds)
    tolerance = 1e-6 if VARIANTS[variant].get("vertex_type") != "double" else 0  # float32 in the file
    assert np.allclose(geometry.vertices, SPHERE.vertices, rtol=0, atol=tolerance)


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
        assert _binary_triangle_ply(path) is None
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
    assert _binary_triangle_ply(path) is not None
    for read in (read_geometry, load_mesh):
        with pytest.raises(InputError) as exc:
            read(path)
        assert str(exc.value) == f"{path}: {message}"
