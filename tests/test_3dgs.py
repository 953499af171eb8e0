"""3D Gaussian Splatting: `to-colmap --for 3dgs` read by 3DGS's own loading rules (FoV only, the
principal point at W/2, H/2), implemented here from the files, and the check by those rules."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
from test_readers import uncovered_pixels

from exporters import colmap
from fsconvert.cli import main
from fsconvert.imageplan import plan_views
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh
from fsconvert.options import from_dict
from fsconvert.protocol import read_manifest


@pytest.fixture(scope="module")
def capture(sample_tuple):
    return load_capture(sample_tuple)


@pytest.fixture(scope="module")
def exports(sample_tuple, tmp_path_factory):
    """border → a `to-colmap --for 3dgs` export of the sample (checked by the CLI: exit status 0)."""
    root, done = tmp_path_factory.mktemp("3dgs"), {}

    def get(border: str) -> Path:
        if border not in done:
            out = root / border
            extra = [] if border == "crop" else ["--border", border]
            assert main(["to-colmap", str(sample_tuple), "-o", str(out), "--for", "3dgs", "-q", "-j", "1",
                         "--points", "2000", "--no-overlays", *extra]) == 0
            done[border] = out
        return done[border]

    return get


def gaussian_projection(camera, image, X: np.ndarray) -> np.ndarray:
    """3DGS's camera from the model files: FovX = 2·atan(W/2fx), FovY = 2·atan(H/2fy), a symmetric
    frustum (getProjectionMatrix): corner-origin pixels W/2 + x/z · W/(2·tan(FovX/2)), likewise y."""
    assert camera.model.name in ("PINHOLE", "SIMPLE_PINHOLE")
    fx, fy = (camera.params[0], camera.params[0]) if camera.model.name == "SIMPLE_PINHOLE" else camera.params[:2]
    W, H = camera.width, camera.height
    fov_x, fov_y = 2 * np.arctan(W / (2 * fx)), 2 * np.arctan(H / (2 * fy))
    T = image.cam_from_world().matrix()
    Xc = X @ T[:3, :3].T + T[:3, 3]
    return np.column_stack([W / 2 + Xc[:, 0] / Xc[:, 2] * W / (2 * np.tan(fov_x / 2)),
                            H / 2 + Xc[:, 1] / Xc[:, 2] * H / (2 * np.tan(fov_y / 2))])


@pytest.mark.parametrize("border", ["crop", "keep", "cover"])
def test_3dgs_reads_the_preset_exactly_and_no_border_pixel_goes_unmasked(border, exports, capture):
    out = exports(border)
    report = json.loads((out / "check" / "check.json").read_text())
    assert report["passed"] and report["reader"] == "3dgs"
    manifest = read_manifest(out)
    plans = {p.view.id: p for p in plan_views(capture.views, from_dict(colmap.Options, manifest["options"]).image)}
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    images = {im.name: im for im in rec.images.values()}
    X = np.asarray(load_mesh(capture.mesh).vertices, dtype=np.float64)[::7]
    worst, uncovered_share = 0.0, []
    for entry in manifest["views"]:
        plan, image = plans[entry["id"]], images[Path(entry["name"]).name]
        camera = rec.cameras[image.camera_id]
        assert (camera.width, camera.height) == plan.camera.size
        src = plan.view
        Xc = src.to_camera(X)
        uv = src.camera.project(Xc[Xc[:, 2] > 0])
        inside = np.all((uv >= 0) & (uv <= np.array(src.camera.size) - 1), axis=1)
        expected = plan.src_to_out(uv[inside]) + 0.5  # corner origin, as 3DGS's rasteriser
        keep = np.all((expected >= 0) & (expected <= plan.camera.size), axis=1)
        got = gaussian_projection(camera, image, X[Xc[:, 2] > 0][inside][keep])
        worst = max(worst, float(np.abs(got - expected[keep]).max()))
        uncovered = uncovered_pixels(plan)
        uncovered_share.append(uncovered.mean())
        if border == "crop":
            assert not uncovered.any(), entry  # every pixel interpolated from source pixels only
            assert not (out / "masks").exists()
        else:
            mask = cv2.imread(str(out / "masks" / f"{Path(entry['name']).name}.png"), cv2.IMREAD_UNCHANGED)
            assert mask.shape == uncovered.shape and set(np.unique(mask)) <= {0, 255}
            assert not np.any(uncovered & (mask > 0)), entry  # no uncovered pixel left unmasked
            assert np.count_nonzero(~uncovered & (mask == 0)) <= 0.001 * mask.size  # and little data masked
    print(f"{border}: 3DGS reprojection max {worst:.2e} px; uncovered share per view {np.round(uncovered_share, 4)}")
    assert worst <= 0.01
    if border != "crop":
        assert max(uncovered_share) > 0.01  # the negative control: there is a border to mask


def test_3dgs_preset_has_the_splatting_point_cloud_with_tracks(exports):
    sparse = exports("crop") / "sparse" / "0"
    rec = pycolmap.Reconstruction(str(sparse))
    assert rec.num_points3D() > 100 and all(p.track.length() >= 2 for p in rec.points3D.values())
    assert {c.model.name for c in rec.cameras.values()} == {"PINHOLE"}
    with open(sparse / "points3D.ply", "rb") as f:
        header = f.read(400).split(b"end_header")[0].decode()
    assert [line.split()[-1] for line in header.splitlines() if line.startswith("property")] == \
        ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]
    assert f"element vertex {rec.num_points3D()}" in header


def test_3dgs_preset_refuses_what_3dgs_cannot_read(sample_tuple, tmp_path, capsys):
    for extra, why in ((["--distortion", "keep"], "principal_point 'center' needs undistortion"),
                       (["--principal-point", "keep", "--border", "keep"], "3D Gaussian Splatting ignores cx, cy")):
        assert main(["to-colmap", str(sample_tuple), "-o", str(tmp_path / "x"), "--for", "3dgs", "-q", *extra]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert why in line and not (tmp_path / "x").exists()


def test_check_by_3dgs_rules_fails_a_plain_colmap_export_and_names_the_error(sample_tuple, tmp_path, capsys):
    from fsconvert.cli import main

    out = tmp_path / "colmap"
    assert main(["to-colmap", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--points", "300",
                 "--no-overlays"]) == 0
    assert "warning: colmap: 3DGS ignores cx, cy" in capsys.readouterr().out
    assert main(["check", str(out), "--reader", "3dgs", "--no-overlays"]) == 1
    text = capsys.readouterr().out
    report = json.loads((out / "check" / "check.json").read_text())
    assert report["reader"] == "3dgs" and not report["passed"]
    assert report["warnings"] and report["warnings"][0].startswith("colmap: 3DGS ignores cx, cy")
    for view in report["views"]:
        # a pinhole camera read with its principal point moved shifts every pixel by that move
        cam = colmap.read(out)[[v.name for v in colmap.read(out)].index(view["name"])].camera
        shift = np.linalg.norm(cam.K[:2, 2] - (np.array(cam.size) - 1) / 2)
        assert view["camera_max_px"] == pytest.approx(shift, abs=1e-6) and shift > 1
        assert view["problems"][0].startswith(f"3dgs reads this view {view['camera_max_px']:.4g} px off (> 0.01 px): "
                                              "principal point ignored: read at the image centre")
        assert view["problems"][0] in text
    assert main(["check", str(out), "--no-overlays"]) == 0  # by COLMAP's own reader it is exact
