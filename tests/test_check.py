"""The projection check on FaceScape-format exports of the synthetic sample: exact exports pass with
float-level numbers; corrupted ones (half-pixel cx, missing CV→GL flip, dropped view, extra view,
unreadable export) fail with a report that names the view and the reason. The CLI too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import facescape
from fsconvert import cli
from fsconvert.check import check_export, format_check
from fsconvert.errors import InputError
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions
from fsconvert.loader import load_capture
from fsconvert.measure import Thresholds
from fsconvert.protocol import CHECK_JSON

EXACT_PX = 1e-6
"""What an exact export measures (float round-off is ~1e-12 px); the default threshold is 0.01 px."""

CASES = {
    "keep-1": ImageOptions(),
    "center-1": ImageOptions(principal_point="center"),
    "keep-1/4": ImageOptions(scale=0.25),
    "center-1/4": ImageOptions(principal_point="center", scale=0.25),
    "distorted-1/2": ImageOptions(undistort=False, scale=0.5),
    "upright": ImageOptions(upright=True),
}


@pytest.fixture(scope="module")
def exports(capture, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("check")
    return {name: export(capture, facescape, root / name.replace("/", "_"), facescape.Options(image=options),
                         thresholds=None).out_dir
            for name, options in CASES.items()}


@pytest.fixture
def corrupt(exports, tmp_path):
    """A fresh copy of the exact 'keep-1' export, and its params.json as a dict, to damage."""
    out = tmp_path / "export"
    shutil.copytree(exports["keep-1"], out)
    return out, json.loads((out / "params.json").read_text())


def save(out: Path, params: dict) -> None:
    (out / "params.json").write_text(json.dumps(params))


@pytest.mark.parametrize("case", CASES)
def test_exact_exports_pass(exports, capture, case):
    report = check_export(exports[case])
    assert report.passed, format_check(report)
    assert [v.id for v in report.views] == [v.id for v in capture.views]  # 7 valid views, none skipped
    for v in report.views:
        assert v.points > 500  # most of the 1000 vertices compared lie in every view
        assert v.camera_max_px <= EXACT_PX and v.camera_mean_px <= v.camera_max_px
        assert v.iou == 1.0 and v.depth_rel == 0.0
        overlay = cv2.imread(str(exports[case] / v.overlay))
        assert overlay.shape[1::-1] == v.render_size and max(v.render_size) <= 800
    saved = json.loads((exports[case] / CHECK_JSON).read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["passed"] is True and len(saved["views"]) == 7


def test_render_size_and_scaled_overlays(exports):
    """Renders are at the export's size over 1, 2, 4 or 8 (the smallest giving ≤ 800 px, what a JPEG decodes to
    directly): the 1086-px views at 1/2 (rounded up, as libjpeg does), the 1/4 ones at their size."""
    sizes = {v.id: v.render_size for v in check_export(exports["keep-1"]).views}
    quarter = {v.id: v.render_size for v in check_export(exports["keep-1/4"]).views}
    assert set(sizes.values()) == {(543, 362), (362, 543)}
    assert set(quarter.values()) == {(272, 181), (181, 272)}


def test_without_overlays_identical_cameras_are_not_rendered(exports):
    report = check_export(exports["keep-1/4"], overlays=False)
    assert report.passed and not list((exports["keep-1/4"] / "check").glob("mv_result_*.jpg"))  # old ones cleared
    assert all(v.render_size is None and v.iou is None and v.camera_max_px <= EXACT_PX for v in report.views)
    assert "7 view(s) not rendered" in format_check(report)


def test_half_pixel_principal_point_fails(corrupt):
    out, params = corrupt
    params["3_K"][0][2] += 0.5
    save(out, params)
    report = check_export(out, overlays=False)
    assert not report.passed
    bad = {v.id: v for v in report.views if not v.passed}
    assert list(bad) == [3]
    assert bad[3].camera_max_px == pytest.approx(0.5, abs=1e-9)  # a pinhole shift moves every point by 0.5
    assert bad[3].camera_mean_px == pytest.approx(0.5, abs=1e-9)
    assert 0.99 < bad[3].iou < 1.0  # too small for the silhouette: the camera numbers catch it
    text = format_check(report)
    assert ("facescape reads this view 0.5 px off (> 0.01 px): principal point read at (574.0, 347.6), exported at "
            "(573.5, 347.6)") in text
    assert text.splitlines()[-1].startswith("FAIL: 6/7 views")
    # the image no longer shows what the camera read claims: the pixels are half a pixel off it too
    assert bad[3].pixel_shift_px == pytest.approx(0.5, abs=0.03) and bad[3].pixel_ncc > 0.99
    loose = check_export(out, Thresholds(camera_px=0.6, pixel_shift_px=0.6), overlays=False)
    assert loose.passed  # the thresholds are honoured
    assert not check_export(out, Thresholds(camera_px=0.6), overlays=False).passed  # the pixel threshold alone


def test_missing_gl_flip_fails(corrupt):
    """Rt rows 1 and 2 negated (a CV→GL flip applied once too often or not undone)."""
    out, params = corrupt
    params["5_Rt"][1] = [-x for x in params["5_Rt"][1]]
    params["5_Rt"][2] = [-x for x in params["5_Rt"][2]]
    save(out, params)
    report = check_export(out, overlays=False)
    (bad,) = [v for v in report.views if not v.passed]
    assert bad.id == 5
    assert any(f"{bad.points} of {bad.points} mesh vertices are behind the read-back camera" in p
               for p in bad.problems)
    assert bad.iou == 0.0 and bad.camera_max_px is None
    assert "silhouette IoU 0.0000 < 0.99" in format_check(report)


def test_leftover_distortion_fails(corrupt):
    """Undistorted images whose camera still claims a small k1 (rendered through the distorted path)."""
    out, params = corrupt
    params["2_distortion"] = [0.01, 0.0, 0.0, 0.0, 0.0]
    save(out, params)
    (bad,) = [v for v in check_export(out).views if not v.passed]
    print(f"k1 = 0.01 left over: camera max {bad.camera_max_px:.4f} px, IoU {bad.iou:.5f}")
    assert bad.id == 2 and 0.03 < bad.camera_max_px < 0.1 and bad.iou > 0.999
    assert bad.problems == [f"facescape reads this view {bad.camera_max_px:.4g} px off (> 0.01 px): k1 read differently"]


def test_dropped_view_fails(corrupt):
    out, params = corrupt
    save(out, {k: v for k, v in params.items() if not k.startswith("2_")})
    (out / "2.jpg").unlink()
    report = check_export(out)
    (bad,) = [v for v in report.views if not v.passed]
    assert (bad.id, bad.name, bad.problems) == (2, "2.jpg", ["missing from the read-back (dropped view)"])
    assert len(report.views) == 7 and not report.passed
    assert not (out / "check" / "mv_result_2.jpg").exists()
    assert "missing from the read-back (dropped view)" in format_check(report)


def test_extra_view_fails(corrupt):
    out, params = corrupt
    save(out, params | {k.replace("0_", "99_", 1): v for k, v in params.items() if k.startswith("0_")})
    shutil.copy(out / "0.jpg", out / "99.jpg")
    report = check_export(out, overlays=False)
    assert all(v.passed for v in report.views)
    assert report.problems == ["read-back has 1 view(s) not in the manifest: 99.jpg"] and not report.passed


def test_unreadable_export_fails_every_view(corrupt):
    out, _ = corrupt
    (out / "4.jpg").unlink()  # the FaceScape reader refuses a tuple with a missing image
    report = check_export(out, overlays=False)
    assert len(report.problems) == 1 and report.problems[0].startswith("read-back failed: ")
    assert "4.jpg: view 4: image missing" in report.problems[0]
    assert all(v.problems == ["not read back: the reader failed"] for v in report.views)


def test_wrong_image_size_fails(corrupt):
    """Resized by 1/2 outside fsconvert (K scaled naively): the camera no longer fits the export."""
    out, params = corrupt
    img = cv2.imread(str(out / "7.jpg"))
    cv2.imwrite(str(out / "7.jpg"), cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    params["7_width"], params["7_height"] = img.shape[1] // 2, img.shape[0] // 2
    params["7_K"] = (np.array(params["7_K"]) * [[0.5], [0.5], [1]]).tolist()
    save(out, params)
    (bad,) = [v for v in check_export(out, overlays=False).views if not v.passed]
    assert bad.id == 7 and bad.problems[0] == "camera is 543×362, expected 1086×724"
    assert bad.camera_max_px > 100


def test_naive_resize_fails(exports, tmp_path):
    """The FaceScape toolkit's resize (K[:2] ·= s) is off by (1 − s)/2 px against c' = (c + ½)s − ½."""
    out = tmp_path / "export"
    shutil.copytree(exports["keep-1/4"], out)
    params = json.loads((out / "params.json").read_text())
    source = load_capture(json.loads((out / "fsconvert" / "manifest.json").read_text())["source"]["tuple"])
    v0 = source.views[0]
    sx, sy = params["0_width"] / v0.camera.width, params["0_height"] / v0.camera.height
    params["0_K"] = (v0.camera.K * [[sx], [sy], [1]]).tolist()
    save(out, params)
    report = check_export(out, overlays=False)
    (bad,) = [v for v in report.views if not v.passed]
    shift = np.hypot((1 - sx) / 2, (1 - sy) / 2)  # 0.530 px
    assert bad.id == 0 and bad.camera_max_px == pytest.approx(shift, abs=1e-9)
    assert bad.camera_mean_px == pytest.approx(shift, abs=1e-9)


def test_not_an_export(tmp_path):
    with pytest.raises(InputError, match="not an fsconvert export"):
        check_export(tmp_path)


def test_cli_convert_and_check(sample_tuple, tmp_path, capsys):
    out = tmp_path / "fs"
    assert cli.main(["to-facescape", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--scale", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (facescape, 7 views)" in printed
    assert "PASS: 7/7 views of the facescape export of 1/1_neutral" in printed
    assert json.loads((out / CHECK_JSON).read_text())["passed"] is True
    assert len(list((out / "check").glob("mv_result_*.jpg"))) == 7

    assert cli.main(["check", str(out), "--no-overlays"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("PASS: 7/7")
    assert not list((out / "check").glob("mv_result_*.jpg"))

    params = json.loads((out / "params.json").read_text())
    params["0_K"][1][2] += 0.5
    save(out, params)
    assert cli.main(["check", str(out)]) == 1
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1].startswith("FAIL: 6/7")
    # the image is now half a pixel off what its camera says: its pixels fail too (in a 272-px view a half-pixel
    # shift also moves the levels by 5 on average), until their thresholds are loosened as well
    assert cli.main(["check", str(out), "--max-camera-error", "0.6"]) == 1
    assert "pixels 0.5" in capsys.readouterr().out
    assert cli.main(["check", str(out), "--max-camera-error", "0.6", "--max-pixel-shift", "0.7", "--max-pixel-diff",
                     "8", "--max-block-diff", "15"]) == 0

    assert cli.main(["check", str(tmp_path)]) == 2
    assert "not an fsconvert export" in capsys.readouterr().err


def test_overlay_shows_the_mesh_where_the_image_has_it(exports):
    """Overlay = exported image blended with the render: inside the silhouette it differs from the
    plain image; outside it, it is the image (only JPEG noise)."""
    out = exports["keep-1/4"]
    report = check_export(out)
    v = report.views[0]
    overlay = cv2.imread(str(out / v.overlay)).astype(np.float64)
    image = cv2.imread(str(out / v.name)).astype(np.float64)
    assert overlay.shape == image.shape
    diff = np.abs(overlay - image).mean(axis=2)
    mask = cv2.imread(str(out / v.name), cv2.IMREAD_GRAYSCALE) > 40  # the head, on a dark background
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    outer = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    assert diff[outer].mean() < 2 and diff[inner].mean() > 5


@pytest.mark.parametrize("case", ["keep-1", "keep-1/4", "upright"])
def test_overlays_from_the_stage_previews_match_decoded_ones(capture, exports, tmp_path, case):
    """Inside `export`, overlays are drawn on the stage's in-memory previews (`imagestage.shrink` of the
    written image): the same picture, at the same place, as decoding the exported JPEG at 1/r."""
    out = export(capture, facescape, tmp_path / "out", facescape.Options(image=CASES[case])).out_dir
    staged = {p.name: cv2.imread(str(p)).astype(np.float64) for p in (out / "check").glob("mv_result_*.jpg")}
    check_export(out)  # a later check decodes the exported images
    for name, a in staged.items():
        b = cv2.imread(str(out / "check" / name)).astype(np.float64)
        assert a.shape == b.shape
        diff = np.abs(a - b).mean(axis=2)
        assert diff.mean() < 4 and np.quantile(diff, 0.99) < 25  # JPEG noise (the export q95, overlays q90)
        # no shift: the image gradients correlate best at zero offset
        ga, gb = (cv2.Laplacian(cv2.cvtColor(x.astype(np.uint8), cv2.COLOR_BGR2GRAY).astype(np.float64), -1)
                  for x in (a, b))
        scores = {(dx, dy): np.sum(ga[2:-2, 2:-2] * np.roll(gb, (dy, dx), axis=(0, 1))[2:-2, 2:-2])
                  for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
        assert max(scores, key=scores.get) == (0, 0)
