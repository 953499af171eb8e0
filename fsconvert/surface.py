"""Triangle-mesh arithmetic on arrays: face areas and unit normals, corner angles, barycentric coordinates and
angle-weighted vertex normals, each as trimesh 5.2 computes it, bit for bit (`trimesh.triangles.cross`, `area`,
`normals`, `angles`, `points_to_barycentric` by Cramer's rule, `trimesh.util.unitize` and
`trimesh.geometry.weighted_vertex_normals`: the same numpy operations in the same order; tests/test_surface.py
compares every one with trimesh's own).

Written out because trimesh's import (scipy, networkx: 0.6–0.9 s per process) cost more than the work wherever a
mesh file is read with numpy (`fsconvert.mesh.read_geometry`): the point clouds and meshes that COLMAP, nerfstudio
and NeRSemble exports write from a binary PLY keep their bytes without it.
"""

from __future__ import annotations

import numpy as np

ZERO = 1e-13
"""trimesh.util.TOL_ZERO: a vector this short or shorter has no direction."""
MERGE = 1e-8
"""trimesh.tol.merge: a triangle with a corner angle below it is degenerate (all its angles count as 0)."""


def cross(triangles: np.ndarray) -> np.ndarray:
    """Per triangle (n×3×3 float64), the cross product of its edges v1 − v0 and v2 − v1."""
    edges = triangles[:, 1:, :] - triangles[:, :2, :]
    product: np.ndarray = np.cross(edges[:, 0], edges[:, 1])
    return product


def areas(crosses: np.ndarray) -> np.ndarray:
    """Triangle areas from their `cross` products."""
    area: np.ndarray = np.sqrt((crosses**2).sum(axis=1)) / 2.0
    return area


def unitize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(every row scaled to unit length, where it is longer than ZERO: the others are left as they are; which
    rows were)."""
    norm = np.sqrt(np.dot(vectors * vectors, [1.0] * vectors.shape[1]))
    valid = norm > ZERO
    norm[valid] **= -1
    return vectors * norm.reshape((-1, 1)), valid


def normals(crosses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit normals of the triangles whose `cross` product has a direction, in order; which ones)."""
    unit, valid = unitize(crosses)
    return unit[valid], valid


def angles(triangles: np.ndarray) -> np.ndarray:
    """n×3 corner angles (radians) of triangles (n×3×3 float64); all 0 for a degenerate triangle."""
    u = unitize(triangles[:, 1] - triangles[:, 0])[0]
    v = unitize(triangles[:, 2] - triangles[:, 0])[0]
    w = unitize(triangles[:, 2] - triangles[:, 1])[0]
    result = np.zeros((len(triangles), 3), dtype=np.float64)
    result[:, 0] = np.arccos(np.clip(_row_dot(u, v), -1, 1))
    result[:, 1] = np.arccos(np.clip(_row_dot(-u, w), -1, 1))
    result[:, 2] = np.pi - result[:, 0] - result[:, 1]
    result[(result < MERGE).any(axis=1), :] = 0.0
    return result


def barycentric(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:
    """n×3 barycentric coordinates of points (n×3) in their triangles (n×3×3 float64), by Cramer's rule."""
    edges = triangles[:, 1:] - triangles[:, :1]
    w = points - triangles[:, 0].reshape((-1, 3))
    dot00 = _row_dot(edges[:, 0], edges[:, 0])
    dot01 = _row_dot(edges[:, 0], edges[:, 1])
    dot02 = _row_dot(edges[:, 0], w)
    dot11 = _row_dot(edges[:, 1], edges[:, 1])
    dot12 = _row_dot(edges[:, 1], w)
    inverse_denominator = 1.0 / (dot00 * dot11 - dot01 * dot01)
    result = np.zeros((len(triangles), 3), dtype=np.float64)
    result[:, 2] = (dot00 * dot12 - dot01 * dot02) * inverse_denominator
    result[:, 1] = (dot11 * dot02 - dot01 * dot12) * inverse_denominator
    result[:, 0] = 1 - result[:, 1] - result[:, 2]
    return result


def weighted_vertex_normals(vertex_count: int, faces: np.ndarray, face_normals: np.ndarray,
                            face_angles: np.ndarray) -> np.ndarray:
    """Unit vertex normals: per vertex, the sum over its faces (in face order) of each face's unit normal weighted
    by the face's angle at that vertex; faces without a unit normal (zero rows) are left out, a vertex on none
    of the others is 0."""
    ok = (face_normals**2).sum(axis=1) > 0.5
    faces, face_normals, face_angles = faces[ok], face_normals[ok], face_angles[ok]
    corners = faces.reshape(-1)
    weights = face_angles.reshape(-1)
    # trimesh multiplies a sparse vertex × face matrix of the angles by the normals: per vertex, each of its
    # entries in face order, angle × normal added to the sum; bincount adds in the same order
    summed = np.column_stack([np.bincount(corners, weights * np.repeat(face_normals[:, k], 3), minlength=vertex_count)
                              for k in range(3)])
    return unitize(summed)[0]


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products as trimesh.util.diagonal_dot computes them (a BLAS product with a vector of ones)."""
    product: np.ndarray = np.dot(a * b, [1.0] * a.shape[1])
    return product
