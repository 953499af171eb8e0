"""The pixel check's tiles: which tiles are measured, and how precisely their shift is.

The precision `fsconvert.tileshift` states is measured here on the sample's own images moved by exact (Fourier)
sub-pixel shifts: every tile's measured shift against the true one. Tile selection counts only texture whose
gradients lie wholly where the image has source data: the black beyond the data's edge (an alpha-less shared
frame's border) is not texture — a flat dark tile at such an edge once measured 96.8 px in a clean 4344-px
VHAP export.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from fsconvert.pixelcheck import textured_tiles
from fsconvert.tileshift import TileSource, tile_shifts, tile_side


def fourier_shift(img: np.ndarray, d: tuple[float, float]) -> np.ndarray:
    """img(x − d), exact for a band-limited periodic image (the sample's interior: tiles stay clear of the wrap)."""
    fy, fx = np.fft.fftfreq(img.shape[0])[:, None], np.fft.fftfreq(img.shape[1])[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (fx * d[0] + fy * d[1]))))


def cropping(img: np.ndarray) -> TileSource:
    """A TileSource whose 're-derivation' is `img` itself (whole-pixel corners: what the measurement asks for)."""

    def windows(corners: Sequence[tuple[float, float]], n: int) -> tuple[np.ndarray, np.ndarray]:
        assert all(float(c).is_integer() for corner in corners for c in corner)
        crops = [img[int(y):int(y) + n, int(x):int(x) + n] for x, y in corners]
        return np.concatenate(crops).astype(np.float32), np.ones((len(crops) * n, n), bool)

    return TileSource(windows, img, None)


@pytest.fixture(scope="module")
def luma(sample_tuple: Path) -> np.ndarray:
    """A 1086×724 view's luma, its outer 64 px faded to its mean (so that the Fourier shift does not wrap an edge
    into the tiles)."""
    img = cv2.imread(str(sample_tuple / "0.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    h, w = img.shape
    ramp = np.minimum.outer(np.minimum(np.arange(h), np.arange(h)[::-1]), np.minimum(np.arange(w), np.arange(w)[::-1]))
    fade = np.clip(ramp / 64, 0, 1)
    return img * fade + img.mean() * (1 - fade)


def precision(true: float) -> float:
    """What `fsconvert.tileshift` states: 0.002 px or 8 % of the shift up to 0.25 px, 0.02 px beyond."""
    return max(0.002, 0.08 * true) if true <= 0.25 else 0.02


@pytest.mark.parametrize("true", [0.01, 0.05, 0.2, 0.25, 0.5, 1.0, 2.24])
def test_shift_precision_on_exact_shifts(luma, true):
    h, w = luma.shape
    side = tile_side((w, h))
    used = np.zeros((h, w), bool)
    used[96:-96, 96:-96] = True  # away from the faded border
    k, o = 7, 3
    tiles = textured_tiles(luma[o::k, o::k].astype(np.float32), used[o::k, o::k], k, o, side, w, h)
    assert len(tiles) >= 6
    allowed = precision(true)
    for angle in (0.3, 2.0, 4.4):
        d = (true * np.cos(angle), true * np.sin(angle))
        measured = tile_shifts(TileSource(cropping(luma).rederive, fourier_shift(luma, d), None), tiles, side)
        assert len(measured) == len(tiles)
        assert max(abs(m - true) for m in measured) <= allowed, (true, angle, measured)


def test_no_shift_measures_zero(luma):
    h, w = luma.shape
    side = tile_side((w, h))
    tiles = [(200, 200), (600, 300), (400, 500)]
    assert tile_shifts(cropping(luma), tiles, side) == [0.0, 0.0, 0.0]


def test_the_edge_of_the_data_is_not_texture():
    """A flat dark image with a hole in its source data (black, no alpha: what undistortion and a shared frame
    leave where the source has no pixels), within a tile's worth of data: no tile there, though the hole's edges
    would look like texture in every direction. A textured patch elsewhere is the one tile chosen."""
    W, H, k, o = 1086, 724, 7, 3
    side = tile_side((W, H))
    luma = np.full((H, W), 30.0)
    used = np.ones((H, W), bool)
    used[330:354, 620:644] = False  # 24 × 24 px without data: over 75 % of any tile around it has data
    luma[~used] = 0.0
    rng = np.random.default_rng(0)
    patch = cv2.GaussianBlur(rng.uniform(0, 255, (96, 96)), (0, 0), 1.5)
    luma[300:396, 100:196] = patch  # within one of the 3 × 3 regions
    tiles = textured_tiles(luma[o::k, o::k].astype(np.float32), used[o::k, o::k], k, o, side, W, H)
    assert len(tiles) == 1
    x, y = tiles[0]
    assert 100 - side < x < 196 and 300 - side < y < 396  # on the patch
    luma[300:396, 100:196] = 30.0
    assert textured_tiles(luma[o::k, o::k].astype(np.float32), used[o::k, o::k], k, o, side, W, H) == []
