"""fsconvert.depthproducts: depth read a band of rows at a time, silhouette masks drawn without depth and uint16 depth
maps made band by band equal those made from the whole depth maps."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import whole_depths

from fsconvert.depthproducts import (
    Pose,
    SilhouettesAhead,
    band_span,
    depth_bands,
    depth_map,
    depth_pngs,
    depth_range,
    render_masks,
    silhouettes,
    subjects_ahead,
)
from fsconvert.errors import InputError
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.imagestage import Footprint
from fsconvert.mesh import load_mesh, read_geometry
from fsconvert.render import Renderer


@pytest.mark.parametrize("options", [ImageOptions(intrinsics="shared"), ImageOptions(undistort=False, scale=0.5)])
def test_render_masks_equal_silhouettes_of_whole_depths(capture, options):
    """Pinhole views (undistorted, one shared frame: portrait views turned) and distorted ones (lens kept:
    thresholded resampled depth): `render_masks` gives the whole depth's foreground within the footprint, byte for
    byte."""
    mesh = load_mesh(capture.mesh)
    plans = plan_views(capture.views, options)
    assert any(p.camera.has_distortion for p in plans) == (not options.undistort)
    rng = np.random.default_rng(0)
    footprints = [Footprint.of(rng.random((p.camera.height, p.camera.width)) < 0.9) for p in plans]
    depths = dict(whole_depths(mesh, plans))
    masks = list(render_masks(mesh, plans, footprints))
    assert [i for i, _ in masks] == sorted(range(len(plans)), key=lambda i: plans[i].camera.is_portrait)
    for i, mask in masks:
        expected = np.where((depths[i] > 0) & footprints[i].mask(), 255, 0).astype(np.uint8)
        assert np.array_equal(mask, expected), i
        assert 0.05 < (expected > 0).mean() < 0.9  # the head is seen, and the footprint cuts it
    unmasked = dict(render_masks(mesh, plans))
    assert all(np.array_equal(unmasked[i], np.where(depths[i] > 0, 255, 0).astype(np.uint8)) for i in depths)


def test_footprint_mask_and_alpha():
    inside = np.random.default_rng(1).random((7, 13)) < 0.5
    fp = Footprint.of(inside)
    assert fp.mask().dtype == bool and np.array_equal(fp.mask(), inside)
    assert fp.alpha().dtype == np.uint8 and np.array_equal(fp.alpha(), np.where(inside, 255, 0))
    assert np.array_equal(Footprint.of(fp.alpha()).bits, fp.bits)


@pytest.mark.parametrize("options", [ImageOptions(intrinsics="shared"), ImageOptions(undistort=False, scale=0.5),
                                     ImageOptions(scale=0.4)])
def test_depth_pngs_equal_the_whole_maps_scaled(capture, options):
    """`depth_pngs` (pinhole views in bands of 256 rows: 724- and 1086-row views cut mid-way) gives
    round(depth·scale) as uint16 of the whole maps, value for value, and the nearest depth; a view that sees
    nothing gives zeros and inf."""
    mesh = load_mesh(capture.mesh)
    plans = plan_views(capture.views, options)
    scale = 2000.0 / float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]) + 30)
    depths = dict(whole_depths(mesh, plans))
    got = list(depth_pngs(mesh, plans, scale))
    assert [i for i, *_ in got] == sorted(range(len(plans)), key=lambda i: plans[i].camera.is_portrait)
    for i, png, near in got:
        expected = np.rint(depths[i] * np.float32(scale)).astype(np.uint16)
        assert png.dtype == np.uint16 and np.array_equal(png, expected), i
        assert near == float(depths[i][depths[i] > 0].min()) and (png > 0).mean() > 0.05
    turn = np.diag([-1.0, 1.0, -1.0, 1.0])  # half a turn about the camera's y axis, in place: the head behind it
    ((_, png, near),) = depth_pngs(mesh, [Pose(plans[0].camera, turn @ plans[0].world_to_cam)], scale)
    assert not png.any() and near == float("inf")


@pytest.mark.parametrize("options", [ImageOptions(intrinsics="shared"), ImageOptions(undistort=False, scale=0.5)])
def test_depth_bands_are_the_whole_maps_and_their_span(capture, options):
    """`depth_bands` (pinhole views in bands of 256 rows, a distorted view as one band) put together are the
    whole maps value for value, in the same order; `band_span` is the nearest and farthest foreground depth, and
    `depth_range` refuses a view that sees no mesh."""
    mesh = load_mesh(capture.mesh)
    plans = plan_views(capture.views, options)
    whole = whole_depths(mesh, plans)
    spans = []
    for (i, bands), (j, depth) in zip(depth_bands(mesh, plans), whole, strict=True):
        bands = [(top, band.copy()) for top, band in bands]  # a band is overwritten by the next
        assert i == j and len(bands) == (1 if plans[i].camera.has_distortion else -(-len(depth) // 256))
        assert np.array_equal(depth_map(bands, plans[i].camera.size), depth), i
        spans.append(band_span(bands))
        assert spans[-1] == (float(depth[depth > 0].min()), float(depth.max()))
    near, far = depth_range(spans[0], 0.1, 7)
    extent = spans[0][1] - spans[0][0]
    assert (near, far) == (spans[0][0] - 0.1 * extent, spans[0][1] + 0.1 * extent)
    turn = np.diag([-1.0, 1.0, -1.0, 1.0])  # the head behind the camera
    away = Pose(plans[0].camera, turn @ plans[0].world_to_cam)
    (behind,) = [band_span(bands) for _, bands in depth_bands(mesh, [away])]
    assert behind == (float("inf"), 0.0)
    with pytest.raises(InputError, match="not visible"):
        depth_range(behind, 0.1, 7)


def test_a_mesh_files_geometry_draws_the_same_masks_and_depth_as_its_trimesh(capture):
    """`read_geometry`'s vertices and faces (no trimesh) render the silhouettes and depth of the Trimesh, byte for
    byte (its colour renders: tests/test_render.py)."""
    plans = plan_views(capture.views, ImageOptions(intrinsics="shared"))
    mesh, geometry = load_mesh(capture.mesh), read_geometry(capture.mesh)
    for (i, a), (j, b) in zip(render_masks(mesh, plans), render_masks(geometry, plans), strict=True):
        assert i == j and np.array_equal(a, b) and a.any(), i
    for (i, a, near_a), (j, b, near_b) in zip(depth_pngs(mesh, plans, 100.0), depth_pngs(geometry, plans, 100.0),
                                              strict=True):
        assert i == j and near_a == near_b and np.array_equal(a, b), i


def test_a_views_depth_does_not_depend_on_what_was_drawn_before(capture):
    """Each depth pass draws into a buffer of its own view's size: a landscape view's depth is the same drawn
    alone, after a portrait view, and after a colour render of another size in the same renderer."""
    mesh = load_mesh(capture.mesh)
    plans = plan_views(capture.views, ImageOptions(orientation="keep"))
    landscape = next(p for p in plans if not p.camera.is_portrait)
    portrait = next(p for p in plans if p.camera.is_portrait)
    with Renderer(mesh) as renderer:
        alone = renderer.render(landscape.camera, landscape.world_to_cam, depth_only=True).depth
    with Renderer(mesh) as renderer:
        renderer.render(portrait.camera, portrait.world_to_cam, depth_only=True)
        after_portrait = renderer.render(landscape.camera, landscape.world_to_cam, depth_only=True).depth
        renderer.render(portrait.camera, portrait.world_to_cam)  # colour, in the context's own buffer
        after_colour = renderer.render(landscape.camera, landscape.world_to_cam, depth_only=True).depth
    assert (alone > 0).mean() > 0.05
    assert np.array_equal(alone, after_portrait) and np.array_equal(alone, after_colour)


# ---- silhouettes rendered ahead of the image stage ---------------------------------------------------------


def test_silhouettes_ahead_are_the_silhouettes_each_waited_for(capture):
    """A consumer that asks for view k before it is rendered waits for it; every view's is `silhouettes`'."""
    mesh, plans = read_geometry(capture.mesh), plan_views(capture.views, ImageOptions(scale=0.25))
    expected = [f.bits.tobytes() for f in silhouettes(mesh, plans)]
    ahead = SilhouettesAhead(len(plans))
    taken: list[bytes] = []
    consumer = threading.Thread(target=lambda: taken.extend(ahead[k].bits.tobytes() for k in range(len(plans))))
    consumer.start()  # asks for view 0 before anything is rendered
    ahead.render(mesh, plans)
    consumer.join(60)
    assert taken == expected
    assert len(ahead) == len(plans) and ahead[-1].bits.tobytes() == expected[-1]
    assert [f.bits.tobytes() for f in ahead[1:3]] == expected[1:3]
    with pytest.raises(IndexError):
        ahead[len(plans)]


def test_silhouettes_ahead_raise_what_ended_the_rendering(capture):
    plans = plan_views(capture.views, ImageOptions(scale=0.25))
    failed = SilhouettesAhead(len(plans))
    with pytest.raises(AttributeError) as raised:
        failed.render(None, plans)  # type: ignore[arg-type]  # no mesh: the renderer fails on its first view
    with pytest.raises(AttributeError) as taken:
        failed[0]
    assert taken.value is raised.value
    stopped = SilhouettesAhead(len(plans))
    stopped.stop.set()
    stopped.render(read_geometry(capture.mesh), plans)  # ends at its first view
    with pytest.raises(RuntimeError, match="stopped"):
        stopped[0]


def test_subjects_ahead_beside_the_block_only_on_a_second_core(capture):
    plans = plan_views(capture.views, ImageOptions(scale=0.25))
    expected = [f.bits.tobytes() for f in silhouettes(read_geometry(capture.mesh), plans)]
    with subjects_ahead(capture, "the test", plans, "subject", workers=2) as ahead:
        assert isinstance(ahead, SilhouettesAhead)
        assert [f.bits.tobytes() for f in ahead] == expected
    with subjects_ahead(capture, "the test", plans, "subject", workers=1) as serial:
        assert isinstance(serial, list) and [f.bits.tobytes() for f in serial] == expected
    with subjects_ahead(capture, "the test", plans, "coverage", workers=2) as none:
        assert none is None


def test_subjects_ahead_stop_when_the_block_fails(capture):
    plans = plan_views(capture.views, ImageOptions(scale=0.25))
    with pytest.raises(KeyError), subjects_ahead(capture, "the test", plans, "subject", workers=2) as ahead:
        assert isinstance(ahead, SilhouettesAhead)
        raise KeyError("the image stage failed")
    assert ahead.stop.is_set()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fsconvert-silhouettes")]
