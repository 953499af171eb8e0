"""The pixel check: the exported image against the source image re-derived through the read-back camera.

Clean exports of several formats pass with sub-hundredth-pixel shifts and NCC ≈ 1 in check.json, the same
numbers whether the image stage measured them as it wrote the files or the check measures the files; originals
placed unchanged are their source, byte for byte; damaged
copies of a real export whose cameras still read back exactly (the camera check alone passes) fail with the
number that says why: the file shifted by half a pixel, turned 180°, two views' files swapped, red and blue
swapped, a block painted grey, a wrong crop offset, alpha marking pixels without source data. `fsconvert
check OUT` exits 1 with a line naming the view. Source JPEGs with an EXIF Orientation are read as stored
(params.json's grid), re-encoded without the tag, and pass.

The re-derivation here is the test's own: every exported pixel's ray through the read-back camera (OpenCV's
pixel rule), turned into the source camera and projected through its lens model (cv2.projectPoints), the
source sampled bilinearly; the exported file decoded by cv2.imread as the programs decode it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import colmap, facescape, nerf
from fsconvert import cli, loader
from fsconvert.check import check_export, format_check
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.loader import load_capture
from fsconvert.protocol import CHECK_JSON
from fsconvert.viewpixels import measured_as_written, view_pixels

CLEAN_SHIFT_PX = 0.02
"""What clean exports of the 1086-px sample measure at most (0.0070 px measured over every digest case)."""
CLEAN_NCC = 0.9995
"""Their lowest luma NCC (0.99983 measured: JPEG quality 95 at half size)."""


@pytest.fixture(scope="module")
def clean(capture, tmp_path_factory) -> dict[str, Path]:
    """Exports of the sample in several formats and image options, checked by the export itself."""
    root = tmp_path_factory.mktemp("pixels")
    cases = {
        "facescape": (facescape, facescape.Options()),
        "facescape-keep-half": (facescape, facescape.Options(image=ImageOptions(undistort=False, scale=0.5))),
        "colmap-upright-center": (colmap, colmap.Options(image=ImageOptions(upright=True, principal_point="center",
                                                                             max_size=600))),
        "nerf-blender-masks": (nerf, nerf.Options(variant="blender", masks=True)),
    }
    return {name: export(capture, module, root / name, options, overlays="none").out_dir
            for name, (module, options) in cases.items()}


def _rederived(export_dir: Path, view: dict, capture) -> tuple[np.ndarray, np.ndarray]:
    """The test's own re-derivation of one exported view: (image, where it has source data)."""
    manifest = json.loads((export_dir / "fsconvert" / "manifest.json").read_text())
    assert manifest["format"] == "facescape"
    params = json.loads((export_dir / "params.json").read_text())
    i = view["id"]
    K = np.array(params[f"{i}_K"], float)
    Rt = np.array(params[f"{i}_Rt"], float)
    dist = np.array(params[f"{i}_distortion"], float).ravel()
    W, H = params[f"{i}_width"], params[f"{i}_height"]
    src = capture.view(i)
    u, v = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    rays = cv2.undistortPoints(np.stack([u, v], -1).reshape(-1, 1, 2), K, dist,
                               criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)).reshape(-1, 2)
    X = np.column_stack([rays, np.ones(len(rays))]) @ (Rt[:3, :3] @ src.R.T)  # into the source camera
    uv, _ = cv2.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), src.camera.K, src.camera.dist)
    mx, my = (m.reshape(H, W).astype(np.float32) for m in uv.reshape(-1, 2).T)
    source = cv2.imread(str(src.image))
    image = cv2.remap(source, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    inside = (mx >= 1) & (mx <= source.shape[1] - 2) & (my >= 1) & (my <= source.shape[0] - 2)
    return image, inside


def test_clean_exports_pass_with_their_numbers(clean):
    for name, out in clean.items():
        saved = json.loads((out / CHECK_JSON).read_text())
        assert saved["passed"] is True, name
        for v in saved["views"]:
            assert v["pixel_tiles"] >= 6, (name, v)
            assert 0 <= v["pixel_shift_px"] <= CLEAN_SHIFT_PX, (name, v)
            assert v["pixel_ncc"] >= CLEAN_NCC, (name, v)
            assert v["pixel_diff"] <= 1.0 and v["block_diff"] <= 2.0, (name, v)
            assert v["swapped_diff"] > 5 * v["pixel_diff"], (name, v)  # red and blue exchanged fit far worse
            assert v["pixel_samples"] > 3_000 and v["pixels_identical"] is False, (name, v)
        alpha = [v["alpha_error"] for v in saved["views"]]
        assert alpha == ([0.0] * len(alpha) if name.startswith("nerf-blender") else [None] * len(alpha)), name
        assert saved["thresholds"]["pixel_shift_px"] == 0.05 and saved["thresholds"]["pixel_ncc"] == 0.99


def test_numbers_agree_with_an_independent_rederivation(clean, capture):
    """The exported pixels against the test's own full-resolution re-derivation: the same small shift (phase
    correlation of a large central window) and NCC as check.json reports."""
    out = clean["facescape"]
    saved = {v["id"]: v for v in json.loads((out / CHECK_JSON).read_text())["views"]}
    for view in json.loads((out / "fsconvert" / "manifest.json").read_text())["views"][:3]:
        exported = cv2.imread(str(out / view["name"]))
        image, inside = _rederived(out, view, capture)
        a, b = (cv2.cvtColor(x, cv2.COLOR_BGR2GRAY).astype(np.float64) for x in (exported, image))
        ncc = np.corrcoef(a[inside], b[inside])[0, 1]
        assert ncc >= CLEAN_NCC and abs(ncc - saved[view["id"]]["pixel_ncc"]) < 2e-4
        h, w = a.shape
        win = (slice(h // 2 - 128, h // 2 + 128), slice(w // 2 - 128, w // 2 + 128))
        assert inside[win].all()
        (dx, dy), _ = cv2.phaseCorrelate(b[win].copy(), a[win].copy(), cv2.createHanningWindow((256, 256), cv2.CV_64F))
        assert np.hypot(dx, dy) < 0.05 and saved[view["id"]]["pixel_shift_px"] < 0.02


def test_rerun_writes_the_same_bytes(clean):
    """The numbers the image stage measured as it wrote the export (check.json of the export) are the numbers
    measured from the files afterwards, to the last digit."""
    out = clean["facescape"]
    before = (out / CHECK_JSON).read_bytes()
    check_export(out, overlays="none")
    assert (out / CHECK_JSON).read_bytes() == before


def test_the_stage_measures_what_it_writes(capture, tmp_path):
    """While an export runs, each image is measured as it is written; the check takes that measurement only
    while the file is the one measured, and measures a changed file from the file (even one rewritten with its
    modification time set back)."""
    out = tmp_path / "staged"
    with measured_as_written() as measured:
        export(capture, facescape, out, facescape.Options(image=ImageOptions(scale=0.5)), thresholds=None)
    plans = {p.view.id: p for p in plan_views(capture.views, ImageOptions(scale=0.5))}
    staged = {Path(path).name: written for path, written in measured.items()}
    assert sorted(staged) == sorted(f"{v.id}.jpg" for v in capture.views)  # staging paths: the names survive
    keyed = {str(out / name): written for name, written in staged.items()}
    for v in capture.views:
        path, plan = out / f"{v.id}.jpg", plans[v.id]
        from_files = view_pixels(plan, plan.camera, plan.world_to_cam, path, {})
        assert from_files == staged[path.name].numbers  # every number, every sample
        assert view_pixels(plan, plan.camera, plan.world_to_cam, path, keyed) is keyed[str(path)].numbers
    path, plan = out / "0.jpg", plans[0]
    _reencode(path, cv2.imread(str(path)), quality=60)  # same pixels near enough, other bytes
    fresh = view_pixels(plan, plan.camera, plan.world_to_cam, path, keyed)
    assert fresh is not keyed[str(path)].numbers and fresh.diff > keyed[str(path)].numbers.diff
    path, plan = out / "1.jpg", plans[1]
    st = path.stat()
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    fresh = view_pixels(plan, plan.camera, plan.world_to_cam, path, keyed)
    assert fresh is not keyed[str(path)].numbers and fresh == keyed[str(path)].numbers


def test_originals_placed_unchanged_are_their_source(capture, tmp_path):
    """Originals placed unchanged (distortion kept, full size) and read with their own cameras: their pixels are
    the source's byte for byte, nothing to re-derive. Two of them exchanged are no longer, and fail."""
    out = tmp_path / "originals"
    done = export(capture, facescape, out, facescape.Options(image=ImageOptions(undistort=False)), overlays="none")
    assert done.check is not None and done.check.passed
    for v in done.check.views:
        assert v.pixels_identical and v.pixel_shift_px == 0.0 and v.pixel_ncc == 1.0 and v.pixel_diff == 0.0
        assert v.pixel_samples == 1086 * 724 and v.pixel_tiles == 0
    for name in ("0.jpg", "2.jpg"):  # hard links to the sources: copies, to exchange them
        data = (out / name).read_bytes()
        (out / name).unlink()
        (out / name).write_bytes(data)
    (out / "0.jpg").rename(out / "tmp.jpg")
    (out / "2.jpg").rename(out / "0.jpg")
    (out / "tmp.jpg").rename(out / "2.jpg")
    report = check_export(out, overlays="none")
    bad = {v.id: v for v in report.views if not v.passed}
    assert sorted(bad) == [0, 2]
    for v in bad.values():
        assert not v.pixels_identical and v.pixel_ncc < 0.9 and v.camera_max_px < 1e-6


# ---- negative controls --------------------------------------------------------------------------------


def _reencode(path: Path, img: np.ndarray, quality: int = 95) -> None:
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())


def _shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    M = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    return cv2.warpAffine(img, M, img.shape[1::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _damage(out: Path, kind: str) -> None:
    """Damage view 0 (0.jpg, landscape) of a facescape export in place."""
    first, other = out / "0.jpg", out / "2.jpg"  # both 1086×724
    img = cv2.imread(str(first))
    if kind == "swapped-files":
        first.rename(out / "tmp.jpg")
        other.rename(first)
        (out / "tmp.jpg").rename(other)
        return
    if kind == "half-pixel":
        img = _shift(img, 0.5, 0.0)
    elif kind == "turned-180":
        img = img[::-1, ::-1]
    elif kind == "bgr-rgb":
        img = img[..., ::-1]
    elif kind == "grey-block":
        img = img.copy()
        img[300:364, 400:464] = 128
    elif kind == "crop-offset":  # cropped 2 px right and 1 px down of where the camera says
        img = _shift(img, -2.0, -1.0)
    _reencode(first, img)


NEGATIVE = {
    # kind: (check.json key, test on the number, words of the reason)
    "half-pixel": ("pixel_shift_px", lambda x: abs(x - 0.5) < 0.03, "0.5"),
    "turned-180": ("pixel_ncc", lambda x: x < 0.5, "NCC"),
    "swapped-files": ("pixel_ncc", lambda x: x < 0.9, "NCC"),
    "bgr-rgb": ("swapped_diff", lambda x: x < 1.0, "red and blue swapped"),
    "grey-block": ("block_diff", lambda x: x > 10, "block"),
    "crop-offset": ("pixel_shift_px", lambda x: abs(x - np.hypot(2, 1)) < 0.03, "2.2"),
}


@pytest.mark.parametrize("kind", NEGATIVE)
def test_damaged_pixels_fail_with_their_number(clean, tmp_path, capsys, kind):
    out = tmp_path / kind
    shutil.copytree(clean["facescape"], out)
    _damage(out, kind)
    report = check_export(out, overlays="none")
    assert not report.passed
    v = report.views[0]
    assert v.id == 0 and v.camera_max_px is not None and v.camera_max_px < 1e-6  # the cameras still read exactly
    key, holds, words = NEGATIVE[kind]
    assert holds(getattr(v, key)), (key, getattr(v, key), v.problems)
    assert any(words in p for p in v.problems), v.problems
    assert all(w.passed for w in report.views[1:] if kind != "swapped-files")
    if kind == "bgr-rgb":
        assert v.pixel_diff is not None and v.pixel_diff > 5
    if kind == "half-pixel":
        assert v.pixel_ncc > 0.99 and any(p.startswith(f"pixels {v.pixel_shift_px:.3g} px off (> 0.05 px)")
                                          for p in v.problems)

    capsys.readouterr()
    assert cli.main(["check", str(out), "--overlays", "none"]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split()[:2] == ["0", "0.jpg"]]
    assert len(lines) == 1 and "FAIL" in lines[0] and words in lines[0]


def test_threshold_flags(clean, tmp_path, capsys):
    out = tmp_path / "shifted"
    shutil.copytree(clean["facescape"], out)
    _damage(out, "half-pixel")
    assert cli.main(["check", str(out), "--overlays", "none", "--max-pixel-shift", "0.6"]) == 0
    assert json.loads((out / CHECK_JSON).read_text())["thresholds"]["pixel_shift_px"] == 0.6
    capsys.readouterr()


def test_alpha_where_there_is_no_source_data_fails(clean, tmp_path):
    """nerf's blender variant: RGBA PNG, alpha 0 exactly where a pixel has no source data or is outside the
    mesh's silhouette. Opaque corners (the undistorted border holds no source data there) fail."""
    out = tmp_path / "alpha"
    shutil.copytree(clean["nerf-blender-masks"], out)
    manifest = json.loads((out / "fsconvert" / "manifest.json").read_text())
    assert manifest["options"]["image"]["alpha"] == "subject"
    first = out / manifest["views"][0]["name"]
    rgba = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    assert rgba.shape[2] == 4 and (rgba[..., 3] == 0).any() and (rgba[..., 3] == 255).any()
    assert not rgba[rgba[..., 3] == 0].any()  # alpha 0 with RGB 0
    rgba[..., 3] = 255  # everything opaque: the background and the border without data too
    cv2.imwrite(str(first), rgba)
    report = check_export(out, overlays="none")
    v = report.views[0]
    assert not v.passed and v.alpha_error > 0.2 and any("alpha wrong" in p for p in v.problems), v.problems
    assert report.views[1].passed


# ---- EXIF orientation ---------------------------------------------------------------------------------


def _with_orientation(data: bytes, orientation: int) -> bytes:
    """The same JPEG (entropy-coded data untouched) with an EXIF APP1 segment holding Orientation, after APP0."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    at = 4 + int.from_bytes(data[4:6], "big") if data[2:4] == b"\xff\xe0" else 2
    return data[:at] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[at:]


@pytest.fixture(scope="module")
def turned_tuple(sample_root: Path, tmp_path_factory) -> Path:
    """A copy of the sample whose JPEGs carry EXIF Orientation 6 ("rotate 90° clockwise to display")."""
    root = tmp_path_factory.mktemp("exif")
    shutil.copytree(sample_root / "images", root / "images")
    shutil.copytree(sample_root / "models", root / "models")
    (tuple_dir,) = sorted(root.glob("images/*/*"))
    for jpg in sorted(tuple_dir.glob("*.jpg")):
        stored = cv2.imread(str(jpg), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        jpg.write_bytes(_with_orientation(jpg.read_bytes(), 6))
        with Image.open(jpg) as im:
            assert im.getexif()[0x0112] == 6 and im.size == stored.shape[1::-1]
        assert np.array_equal(cv2.imread(str(jpg), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION), stored)
        assert cv2.imread(str(jpg)).shape == stored.shape[1::-1] + (3,)  # what OpenCV's default would do
    return tuple_dir


def _no_orientation(folder: Path, names: list[str]) -> None:
    for name in names:
        with Image.open(folder / name) as im:
            assert im.getexif().get(0x0112, 1) == 1, name


def test_exif_orientation_from_python(turned_tuple, tmp_path):
    capture = load_capture(turned_tuple)
    assert {v.exif_orientation for v in capture.views} == {6}
    for options in (ImageOptions(), ImageOptions(undistort=False)):  # undistorted, and "keep": never linked
        out = tmp_path / f"keep-{options.undistort}"
        result = export(capture, facescape, out, facescape.Options(image=options), overlays="none")
        assert result.check is not None and result.check.passed
        names = [v["name"] for v in result.manifest["views"]]
        _no_orientation(out, names)
        for v, name in zip(capture.views, names):
            assert not (out / name).samefile(v.image)
            view = next(r for r in result.check.views if r.name == name)
            assert view.pixel_shift_px < CLEAN_SHIFT_PX and view.pixel_ncc > CLEAN_NCC
            assert cv2.imread(str(out / name)).shape[1::-1] == v.camera.size  # OpenCV reads the grid as exported


def test_exif_orientation_from_the_cli(turned_tuple, tmp_path, capsys):
    out = tmp_path / "cli"
    capsys.readouterr()
    assert cli.main(["to-facescape", str(turned_tuple), "-o", str(out), "-q", "-j", "1", "--distortion", "keep",
                     "--overlays", "none"]) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "EXIF Orientation" in line]
    assert len(warned) <= 1  # once per tuple and process (the loader may have warned in an earlier test)
    saved = json.loads((out / CHECK_JSON).read_text())
    assert saved["passed"] and all(v["pixel_shift_px"] < CLEAN_SHIFT_PX for v in saved["views"])
    _no_orientation(out, [v["name"] for v in saved["views"]])
    assert cli.main(["check", str(out), "--overlays", "none"]) == 0
    capsys.readouterr()


def test_exif_orientation_warns_once_per_tuple(turned_tuple, capsys):
    loader._ORIENTATION_WARNED.clear()
    capsys.readouterr()
    load_capture(turned_tuple)
    load_capture(turned_tuple)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "EXIF Orientation 6" in lines[0] and turned_tuple.name in lines[0]


@pytest.mark.parametrize("tag", [0, 9])
def test_an_orientation_out_of_range_is_read_as_stored_everywhere(sample_root, tmp_path, tag):
    """A damaged Orientation (0, 9): OpenCV and PIL leave the pixels as stored, so the loader reads 1, the original
    is linked unchanged with --distortion keep, and the check (which reads the tag the same way) passes it."""
    root = tmp_path / "tagged"
    shutil.copytree(sample_root / "images", root / "images")
    shutil.copytree(sample_root / "models", root / "models")
    (tuple_dir,) = sorted(root.glob("images/*/*"))
    for jpg in sorted(tuple_dir.glob("*.jpg")):
        stored = cv2.imread(str(jpg))
        jpg.write_bytes(_with_orientation(jpg.read_bytes(), tag))
        assert np.array_equal(cv2.imread(str(jpg)), stored)  # OpenCV's default does not turn it
        with Image.open(jpg) as im:
            assert im.getexif()[0x0112] == tag and ImageOps.exif_transpose(im).size == im.size
    capture = load_capture(tuple_dir)
    assert {v.exif_orientation for v in capture.views} == {1}
    out = tmp_path / "keep"
    result = export(capture, facescape, out, facescape.Options(image=ImageOptions(undistort=False)),
                    overlays="none")
    assert result.check is not None and result.check.passed, format_check(result.check)
    for v, entry in zip(capture.views, result.manifest["views"]):
        assert (out / entry["name"]).samefile(v.image)


def test_an_exported_file_with_an_orientation_fails(clean, tmp_path):
    """A file a reader like OpenCV would turn: the check says so even though its stored pixels are right."""
    out = tmp_path / "tagged"
    shutil.copytree(clean["facescape"], out)
    (out / "0.jpg").write_bytes(_with_orientation((out / "0.jpg").read_bytes(), 6))
    report = check_export(out, overlays="none")
    v = report.views[0]
    assert not v.passed and v.pixel_shift_px < CLEAN_SHIFT_PX
    assert v.problems == ["the file carries EXIF Orientation 6: OpenCV's imread turns its pixels, PIL and most "
                          "loaders do not"]
