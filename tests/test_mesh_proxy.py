"""The render proxy of a dense mesh: few faces, close to the mesh, the same silhouettes and depths; light meshes
are their own proxy; the Trimesh of a capture's proxy is its arrays; load_mesh parses each file version once; face
areas, vertex normals and surface samples of the numpy reader's arrays are trimesh's own."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert import conventions as cv
from fsconvert.loader import load_capture
from fsconvert.mesh import (
    PROXY_CELLS,
    PROXY_MAX_FACES,
    Geometry,
    capture_drawn,
    capture_proxy,
    face_areas,
    load_mesh,
    read_geometry,
    render_proxy,
    vertex_normals,
)
from fsconvert.model import Camera
from fsconvert.render import Renderer
from fsconvert.synthetic import RT_SCALE_DICT, dense_scan


@pytest.fixture(scope="module")
def dense(sample_root: Path, tmp_path_factory) -> Path:
    """The sample mesh subdivided twice (16× the faces, 327 680) with a fine relief, like a scan."""
    (ply,) = sample_root.glob("models/*/*.ply")
    mesh = dense_scan(trimesh.load(ply, process=False), 300_000)
    path = tmp_path_factory.mktemp("dense") / "dense.ply"
    path.write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary"))
    return path


def test_light_mesh_is_its_own_proxy(sample_root: Path, sample_tuple: Path, tmp_path: Path):
    (ply,) = sample_root.glob("models/*/*.ply")
    mesh = read_geometry(ply, colors=True)
    assert len(mesh.faces) <= PROXY_MAX_FACES
    assert render_proxy(mesh) is mesh
    capture = load_capture(sample_tuple)
    proxy, drawn = capture_proxy(capture, "the test"), capture_drawn(capture, "the test")
    assert np.array_equal(proxy.vertices, mesh.vertices) and np.array_equal(proxy.faces, mesh.faces)
    # a binary PLY's vertex colours are drawn from its arrays; any other file as trimesh loads it (a texture)
    assert isinstance(drawn, Geometry) and drawn.colors is not None and np.array_equal(drawn.colors, mesh.colors)
    text = tmp_path / "ascii.ply"
    text.write_bytes(trimesh.exchange.ply.export_ply(load_mesh(ply), encoding="ascii"))
    assert capture_drawn(replace(capture, mesh=text), "the test") is load_mesh(text)


def test_dense_proxy_is_small_and_close(dense: Path):
    mesh = read_geometry(dense, colors=True)
    proxy = render_proxy(mesh)
    assert len(mesh.faces) > PROXY_MAX_FACES >= len(proxy.faces) > 10_000
    extent = np.ptp(mesh.vertices, axis=0).max()
    cell = extent / PROXY_CELLS
    # every vertex of the mesh lies within one cell diagonal of the proxy's surface, and most much closer
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(proxy.vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(proxy.faces, np.uint32)))
    dist = scene.compute_distance(o3d.core.Tensor(np.asarray(mesh.vertices, np.float32))).numpy()
    assert dist.max() < np.sqrt(3) * cell * 1.2 and np.quantile(dist, 0.99) < 0.1 * cell
    # colours are the cluster means of the mesh's vertex colours
    assert np.abs(proxy.rgb().astype(int).mean(0) - mesh.rgb().astype(int).mean(0)).max() < 2


def test_a_dense_mesh_is_drawn_as_its_proxy(dense: Path, sample_root: Path, sample_tuple: Path):
    """What the check draws in colour (`capture_drawn`) is the proxy `capture_proxy` gives depth passes, with its
    colours, in the capture's frame."""
    capture = replace(load_capture(sample_tuple), mesh=dense)
    proxy, drawn = capture_proxy(capture, "the test"), capture_drawn(capture, "the test")
    assert len(proxy.faces) <= PROXY_MAX_FACES and proxy.colors is not None
    assert isinstance(drawn, Geometry) and drawn.colors is not None
    assert all(np.array_equal(a, b) for a, b in zip(drawn, proxy))
    moved = replace(load_capture(sample_tuple, align=sample_root / RT_SCALE_DICT), mesh=dense)
    assert moved.world is not None
    for arrays in (capture_proxy(moved, "the test"), capture_drawn(moved, "the test")):
        assert np.array_equal(arrays.vertices, cv.apply_similarity(moved.world, proxy.vertices))


def test_proxy_renders_agree_with_the_mesh(dense: Path, sample_tuple: Path):
    """At the check's render size the proxy's silhouette and depth match the full mesh's."""
    views = load_capture(sample_tuple, require_mesh=False).views
    with Renderer(load_mesh(dense)) as full, Renderer(render_proxy(read_geometry(dense))) as proxy:
        for view in views:
            cam = view.camera.pinhole()
            small = Camera(-(-cam.width // 2), -(-cam.height // 2), cv.resize_K(cam.K, 0.5, 0.5))
            a, b = (r.render(small, view.world_to_cam, depth_only=True) for r in (full, proxy))
            union = np.count_nonzero(a.mask | b.mask)
            both = a.mask & b.mask
            assert np.count_nonzero(both) / union > 0.995
            assert np.median(np.abs(a.depth[both] - b.depth[both]) / a.depth[both]) < 1e-4


def test_load_mesh_parses_each_file_version_once(dense: Path):
    a = load_mesh(dense)
    assert load_mesh(dense) is a  # kept: loading, exporting and checking a tuple parse it once
    stat = dense.stat()
    os.utime(dense, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    b = load_mesh(dense)
    assert b is not a and np.array_equal(a.vertices, b.vertices)


def test_lean_face_geometry_is_trimesh_bit_for_bit(dense: Path):
    """Face areas, vertex normals and surface samples of the numpy reader's arrays, computed in chunks, equal
    trimesh's own cached properties exactly (the exports that use them stay byte-identical), here over two
    chunks."""
    from exporters.colmap import SAMPLE_SEED, sample_surface

    mine = read_geometry(dense, colors=True)
    theirs = trimesh.load(dense, process=False)
    assert len(mine.faces) > 1 << 18
    assert np.array_equal(face_areas(mine), theirs.area_faces)
    assert np.array_equal(vertex_normals(mine), theirs.vertex_normals)
    xyz, normals, rgb = sample_surface(mine, 5000)
    samples, faces = trimesh.sample.sample_surface(theirs, 5000, seed=SAMPLE_SEED)
    assert np.array_equal(xyz, samples)
    assert np.array_equal(normals, theirs.face_normals[faces])
    bary = trimesh.triangles.points_to_barycentric(theirs.triangles[faces], samples)
    colours = np.einsum("ni,nic->nc", bary, theirs.visual.vertex_colors[theirs.faces[faces], :3].astype(float))
    assert np.array_equal(rgb, np.clip(np.rint(colours), 0, 255).astype(np.uint8))


def test_loading_keeps_the_file_and_its_colours(dense: Path):
    """A single-mesh file is taken as trimesh parses it (no scene round trip): same arrays as force="mesh"."""
    mine, forced = load_mesh(dense), trimesh.load(dense, force="mesh", process=False)
    assert np.array_equal(mine.vertices, forced.vertices) and np.array_equal(mine.faces, forced.faces)
    assert np.array_equal(mine.visual.vertex_colors, forced.visual.vertex_colors)
