"""A source JPEG with bytes overwritten mid-file (complete, with its end marker, decoding silently into grey or
garbled blocks in OpenCV) is refused with one line naming the file and the view, and exported with a warning
under --allow-corrupt-images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert.cli import main
from fsconvert.errors import InputError
from fsconvert.imagestage import read_image
from fsconvert.loader import _jpeg_complete
from fsconvert.protocol import MANIFEST

BAD = 2
CORRUPTIONS = {
    "sector": np.random.default_rng(17).integers(0, 256, 4096, dtype=np.uint8).tobytes(),  # a bad disk block
    "marker": b"\xff\xd5",  # a stray restart marker: the rest of the scan decodes grey
    "zeros": bytes(512),  # no marker at all: the decoder ends out of step with the data
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from fsconvert.synthetic import make_sample

    root = tmp_path_factory.mktemp("clean")
    make_sample(root, n_views=4, long_side=400)
    return root


@pytest.fixture(params=sorted(CORRUPTIONS))
def corrupt(dataset: Path, tmp_path: Path, request) -> Path:
    """A copy of the dataset whose view BAD has `CORRUPTIONS[param]` written over the middle of its JPEG."""
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    path = root / "images" / "1" / "1_neutral" / f"{BAD}.jpg"
    data = bytearray(path.read_bytes())
    chunk = CORRUPTIONS[request.param]
    middle = len(data) // 2
    data[middle : middle + len(chunk)] = chunk
    path.write_bytes(bytes(data))
    clean = cv2.imread(str(dataset / "images" / "1" / "1_neutral" / f"{BAD}.jpg"))
    silent = cv2.imread(str(path))  # what decoders give: an image of the right size, wrong pixels
    assert silent is not None and silent.shape == clean.shape and _jpeg_complete(path, 0)
    assert np.mean(np.abs(silent.astype(int) - clean).max(axis=2) > 20) > 0.1
    return root


def test_corrupt_jpeg_is_refused_in_one_line(corrupt: Path, tmp_path: Path, capsys):
    tuple_dir = corrupt / "images" / "1" / "1_neutral"
    out = tmp_path / "out"
    assert main(["to-nerf", str(tuple_dir), "-o", str(out), "-q", "-j", "1"]) == 2
    err = capsys.readouterr().err
    prefix = f"fsconvert: error: {tuple_dir / f'{BAD}.jpg'}: view {BAD}: corrupt JPEG data ("
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert err.endswith("; not exported (--allow-corrupt-images exports it anyway)\n")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    # a dataset run fails that tuple (exit 2) and names it; originals placed unchanged are verified too
    for extra in ([], ["--distortion", "keep"]):
        assert main(["to-colmap", str(corrupt), "-o", str(tmp_path / "ds-out"), "-q", "-j", "1", *extra]) == 2
        captured = capsys.readouterr()
        assert f"fsconvert: 1/1_neutral: {tuple_dir / f'{BAD}.jpg'}: view {BAD}: corrupt JPEG data (" in captured.err
        assert "failed 1" in captured.out and not (tmp_path / "ds-out" / "1" / "1_neutral").exists()


def test_allow_corrupt_images_exports_with_a_warning_per_view(corrupt: Path, tmp_path: Path, capsys):
    tuple_dir = corrupt / "images" / "1" / "1_neutral"
    out = tmp_path / "out"
    assert main(["to-nerf", str(tuple_dir), "-o", str(out), "-q", "-j", "1", "--allow-corrupt-images"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"fsconvert: warning: {tuple_dir / f'{BAD}.jpg'}: view {BAD}: corrupt JPEG data (")
    assert warnings[0].endswith("; exported anyway")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["options"]["image"]["allow_corrupt_images"] is True
    assert len(manifest["views"]) == 3 and (out / "images" / f"{BAD:03d}.jpg").is_file()
    # the flag is part of the record: a run without it does not take the export as up to date
    assert main(["to-nerf", str(tuple_dir), "-o", str(out), "-q", "-j", "1"]) == 2


def test_clean_decode_equals_opencv_at_every_reduction(dataset: Path):
    """The strict decoder gives OpenCV's pixels exactly (the exports stay byte-identical), in RGB order the same
    values (as the image stage decodes sources for PNGs), for a PNG source (OpenCV's decode, reordered) too."""
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}
    for path in sorted((dataset / "images" / "1" / "1_neutral").glob("*.jpg")):
        for reduce, flag in flags.items():
            expected = cv2.imread(str(path), flag)
            assert np.array_equal(read_image(path, reduce), expected)
            assert np.array_equal(read_image(path, reduce, rgb=True), expected[..., ::-1])
    gray = Path(dataset / "gray.jpg")
    cv2.imwrite(str(gray), np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8))
    assert np.array_equal(read_image(gray, 2), cv2.imread(str(gray), cv2.IMREAD_REDUCED_COLOR_2))
    png = Path(dataset / "colour.png")
    cv2.imwrite(str(png), np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    assert np.array_equal(read_image(png, 2, rgb=True), cv2.imread(str(png), cv2.IMREAD_REDUCED_COLOR_2)[..., ::-1])


def test_read_image_api(corrupt: Path, capsys):
    path = corrupt / "images" / "1" / "1_neutral" / f"{BAD}.jpg"
    with pytest.raises(InputError, match=rf"view {BAD}: corrupt JPEG data"):
        read_image(path, 4, BAD)
    img = read_image(path, 4, BAD, allow_corrupt=True)
    assert img.shape[:2] == tuple(-(-s // 4) for s in cv2.imread(str(path)).shape[:2])
    assert "warning" in capsys.readouterr().err
