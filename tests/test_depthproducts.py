"""fsconvert.depthproducts: silhouette masks read without z equal those thresholded from the depth maps."""

from __future__ import annotations

import numpy as np
import pytest

from fsconvert.depthproducts import render_depths, render_masks, silhouette
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.imagestage import Footprint
from fsconvert.mesh import load_mesh


@pytest.mark.parametrize("options", [ImageOptions(intrinsics="shared"), ImageOptions(undistort=False, scale=0.5)])
def test_render_masks_equal_silhouettes_of_render_depths(capture, options):
    """Pinhole views (undistorted, one shared frame: portrait views turned) and distorted ones (lens kept:
    thresholded resampled depth): `render_masks` gives `silhouette(depth, footprint)` byte for byte."""
    mesh = load_mesh(capture.mesh)
    plans = plan_views(capture.views, options)
    assert any(p.camera.has_distortion for p in plans) == (not options.undistort)
    rng = np.random.default_rng(0)
    footprints = [Footprint.of(rng.random((p.camera.height, p.camera.width)) < 0.9) for p in plans]
    depths = dict(render_depths(mesh, plans))
    masks = list(render_masks(mesh, plans, footprints))
    assert [i for i, _ in masks] == sorted(range(len(plans)), key=lambda i: plans[i].camera.is_portrait)
    for i, mask in masks:
        expected = silhouette(depths[i], footprints[i])
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
