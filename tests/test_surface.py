"""`fsconvert.surface` against trimesh itself: every quantity bit for bit (the exports that use them keep their
bytes), on a sphere, a random soup with degenerate triangles (repeated and coincident vertices) and the sample
scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from fsconvert import surface


def _soup() -> trimesh.Trimesh:
    rng = np.random.default_rng(1)
    vertices, faces = rng.random((60, 3)), rng.integers(0, 60, (300, 3))
    faces[:10, 1] = faces[:10, 0]  # a repeated vertex: no area, no normal
    vertices[5] = vertices[6]  # two vertices in one place
    faces[10] = [5, 6, 7]
    return trimesh.Trimesh(vertices, faces, process=False)


@pytest.fixture(params=["sphere", "soup", "sample scan"])
def mesh(request: pytest.FixtureRequest, sample_root: Path) -> trimesh.Trimesh:
    if request.param == "sphere":
        return trimesh.creation.icosphere(subdivisions=3)
    if request.param == "soup":
        return _soup()
    (ply,) = sample_root.glob("models/*/*.ply")
    return trimesh.load(ply, process=False)


def test_face_quantities_are_trimesh_s(mesh: trimesh.Trimesh):
    triangles = np.asarray(mesh.vertices, np.float64)[mesh.faces]
    crosses = surface.cross(triangles)
    assert np.array_equal(crosses, trimesh.triangles.cross(triangles))
    assert np.array_equal(surface.areas(crosses), mesh.area_faces)
    unit, valid = surface.normals(crosses)
    expected_unit, expected_valid = trimesh.triangles.normals(crosses=crosses)
    assert np.array_equal(valid, expected_valid) and np.array_equal(unit, expected_unit)
    assert np.array_equal(surface.angles(triangles), mesh.face_angles)


def test_barycentric_coordinates_are_trimesh_s(mesh: trimesh.Trimesh):
    triangles = np.asarray(mesh.vertices, np.float64)[mesh.faces]
    weights = np.random.default_rng(2).random((len(triangles), 3))
    points = np.einsum("ni,nij->nj", weights / weights.sum(axis=1, keepdims=True), triangles)
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate triangles have none (NaN, as trimesh's)
        mine, theirs = surface.barycentric(triangles, points), trimesh.triangles.points_to_barycentric(triangles, points)
    assert np.array_equal(mine, theirs, equal_nan=True)


def test_vertex_normals_are_trimesh_s(mesh: trimesh.Trimesh):
    triangles = np.asarray(mesh.vertices, np.float64)[mesh.faces]
    unit, valid = surface.normals(surface.cross(triangles))
    face_normals = np.zeros((len(triangles), 3))
    face_normals[valid] = unit
    normals = surface.weighted_vertex_normals(len(mesh.vertices), np.asarray(mesh.faces), face_normals,
                                              surface.angles(triangles))
    assert np.array_equal(normals, mesh.vertex_normals)
    assert np.abs(np.linalg.norm(normals[np.linalg.norm(normals, axis=1) > 0], axis=1) - 1).max() < 1e-12
