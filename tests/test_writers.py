"""The file writers: output bytes that depend on the content alone."""

from __future__ import annotations

import hashlib
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fsconvert.errors import OutputError
from fsconvert.writers import npy_buffer, npy_bytes, npz_bytes, png_bytes, write_png

FPNG_CHUNK = b"fdEC"
"""fpng's private ancillary chunk: the PNGs fpng wrote carry it, OpenCV's do not."""


def _photo_like(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A gradient (per channel) with noise and a black band (what undistorted views hold), uint8."""
    h, w = shape[:2]
    ramp = np.add.outer(np.arange(h), np.arange(w)).reshape(h, w, *[1] * (len(shape) - 2))
    img = (ramp * np.arange(1, (shape[2] if len(shape) == 3 else 1) + 1) + rng.integers(0, 24, shape)) % 256
    img[: h // 8] = 0
    return img.reshape(shape).astype(np.uint8)


def _as_pil_reads(img: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) order as PIL gives it, RGB(A); grey as it is."""
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return img[..., [2, 1, 0, 3][: img.shape[2]]]
    return img.squeeze()


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    bgra = _photo_like(rng, (61, 83, 4))
    bgra[..., 3] = np.where(rng.random((61, 83)) < 0.3, 0, 255)
    bgra[bgra[..., 3] == 0] = 0  # the stage's RGBA: RGB 0 where alpha is 0
    depth = np.rint(np.linspace(0, 65535, 61 * 83)).astype(np.uint16).reshape(61, 83)
    depth[:, :20] = 0  # background
    return {
        "bgr": _photo_like(rng, (61, 83, 3)),
        "bgra": bgra,
        "grey": np.where(rng.random((61, 83)) < 0.5, 255, 0).astype(np.uint8),  # a mask
        "grey-hw1": _photo_like(rng, (61, 83, 1)),
        "uint16": depth,
        "uint16-bgr": rng.integers(0, 65536, (61, 83, 3)).astype(np.uint16),
    }


IMAGES = _images()
PIL_MODES = {"bgr": "RGB", "bgra": "RGBA", "grey": "L", "grey-hw1": "L", "uint16": "I;16", "uint16-bgr": "RGB"}
"""How PIL opens each (it reads 16-bit colour PNGs as 8-bit RGB: that one is checked through OpenCV only)."""


@pytest.mark.parametrize("key", IMAGES)
def test_png_round_trips_exactly_through_opencv_and_pil(key: str, tmp_path: Path) -> None:
    img = IMAGES[key]
    path = tmp_path / f"{key}.png"
    write_png(path, img)
    data = path.read_bytes()
    assert data == png_bytes(img) and data.startswith(b"\x89PNG\r\n\x1a\n")
    # fpng for 8-bit colour, OpenCV for grey and 16-bit
    assert (FPNG_CHUNK in data) == (img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4))
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == img.dtype and np.array_equal(decoded, img.squeeze())
    with Image.open(path) as pil:
        assert pil.mode == PIL_MODES[key]
        if key != "uint16-bgr":
            assert np.array_equal(np.asarray(pil), _as_pil_reads(img))


def test_png_bytes_are_fixed_by_the_pixels() -> None:
    # fpng's bytes in every run, thread and machine: it has no zlib and no threads of its own, and its SIMD paths
    # compute what its scalar ones do (digests written by fpng 0.1.0). OpenCV's (grey, 16-bit) depend on the
    # system's libz.so.1 too, so they are compared between runs and threads only.
    pinned = {
        "bgr": "ba8bfdafc81ea032139511b17fafbe284ce1d85a940b5d993db129ece813d350",
        "bgra": "28ea0f248aff520ec5600a81b7d430973b6dcaf5d1b7ef10ee4132bf080b17fa",
    }
    assert {key: hashlib.sha256(png_bytes(IMAGES[key])).hexdigest() for key in pinned} == pinned
    once = {key: png_bytes(img) for key, img in IMAGES.items()}
    keys = [key for key in IMAGES for _ in range(3)]
    with ThreadPoolExecutor(4) as pool:  # concurrent encodes of the same images: the same bytes
        again = list(pool.map(png_bytes, [IMAGES[key] for key in keys]))
    assert all(data == once[key] for key, data in zip(keys, again))
    # Negative control: one changed pixel changes the bytes.
    changed = IMAGES["bgr"].copy()
    changed[30, 40, 1] ^= 1
    assert png_bytes(changed) != once["bgr"]


@pytest.mark.parametrize("channels", [3, 4])
def test_png_of_rgb_pixels_is_the_png_of_their_bgr(channels: int) -> None:
    """Pixels in RGB(A) order given as such (`rgb`) make the PNG their BGR(A) order makes; neither array changes."""
    bgr = np.random.default_rng(channels).integers(0, 256, (600, 53, channels), np.uint8)
    rgb = np.ascontiguousarray(bgr[..., [2, 1, 0, 3][:channels]])
    kept = bgr.copy(), rgb.copy()
    assert png_bytes(rgb, rgb=True) == png_bytes(bgr)
    assert png_bytes(rgb, rgb=True) != png_bytes(rgb)  # the order matters: the test can fail
    assert np.array_equal(bgr, kept[0]) and np.array_equal(rgb, kept[1])


def test_png_write_errors_name_the_file(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "0.png"
    with pytest.raises(OutputError, match=r"missing/0\.png: cannot write"):
        write_png(target, IMAGES["bgr"])
    with pytest.raises(OutputError, match=r"1\.png: cannot encode a float64 image of shape \(4, 4, 2\) as \.png"):
        write_png(tmp_path / "1.png", np.zeros((4, 4, 2), np.float64))  # no PNG of two float channels


@pytest.mark.parametrize(("shape", "dtype"), [((724, 1086), "<f4"), ((3,), "<f8"), ((5, 17, 2), "<u2")])
def test_npy_buffer_filled_is_npy_bytes_of_its_array(shape, dtype):
    """The .npy made in place is byte for byte what `npy_bytes` (numpy's writer) makes of the same array, and
    numpy reads it back."""
    data, array = npy_buffer(shape, dtype)
    array[...] = np.random.default_rng(3).random(shape) * 1000
    assert bytes(data) == npy_bytes(array)
    assert np.array_equal(np.load(io.BytesIO(bytes(data))), array)


def test_npz_is_read_by_numpy_and_fixed_by_its_arrays():
    rng = np.random.default_rng(0)
    arrays = {"world_mat_0": rng.standard_normal((4, 4)), "scale_mat_0": np.eye(4, dtype=np.float32),
              "ids": np.arange(7)}
    data = npz_bytes(arrays)
    with np.load(io.BytesIO(data)) as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        for key, value in arrays.items():
            assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    for info in archive.infolist():  # what zipfile's own headers vary by Python release: fixed here
        assert (info.create_version, info.extract_version, info.date_time) == (20, 20, (1980, 1, 1, 0, 0, 0))
        assert info.compress_type == zipfile.ZIP_STORED and info.extra == b""
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arrays[info.filename[:-4]], allow_pickle=False)
        assert archive.read(info) == buf.getvalue()  # each member is what np.savez writes
    assert npz_bytes(dict(arrays)) == data  # the same arrays, the same bytes
