"""nersemble (VHAP's NeRSemble layout), measured on the aligned sample (--align Rt_scale_dict.json --units m).

VHAP's own reading is re-implemented here, independently of exporters.nersemble, from ShenhanQian/VHAP:
`NeRSembleDataset.load_camera_params` (vhap/data/nersemble_dataset.py: K and world_2_cam as float32 tensors,
camera→world, `align_cameras_to_axes` and `convert_camera_convention("opencv->opengl")` of vhap/util/camera.py,
world→camera again), `projection_from_intrinsics` of vhap/util/render_nvdiffrast.py, nvdiffrast's pixel
centres (column i at NDC (2i + 1)/w − 1) and the tracker's row flip (`.flip(1)`), file names from
`VideoDataset.get_property_path` (vhap/data/video_dataset.py). Mesh vertices go through that pipeline and
land on the source camera's projections carried through the image plan (`expected_pixels`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import expected_pixels
from helpers import footprint, whole_depths
from PIL import Image

import exporters.nersemble as ex
from fsconvert import conventions as cv
from fsconvert.cli import main
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions, ViewPlan, plan_views
from fsconvert.loader import load_capture
from fsconvert.mesh import capture_mesh, load_mesh, subsample
from fsconvert.model import Capture
from fsconvert.protocol import CHECK_JSON, read_manifest
from fsconvert.synthetic import RT_SCALE_DICT

SUBJECT, SEQUENCE, TIMESTEP = "1", "1_neutral", "000000"
REL = 1e-6
"""Camera centres and mesh against FaceScape's alignment, relative to the largest coordinate."""
PIXEL_TOL = 0.01
NEAR, FAR = 0.1, 10.0
"""render_nvdiffrast.projection_from_intrinsics' defaults (they move no pixel)."""


# ---- VHAP, re-implemented -------------------------------------------------------------------------


def vhap_load(root: Path, subject: str = SUBJECT) -> dict:
    """What NeRSembleDataset holds after load_camera_params with DataConfig's defaults (align_cameras_to_axes,
    "opencv->opengl", target_extrinsic_type "w2c"), plus the world rotation it applied (bases_w2c)."""
    param = json.loads((root / "camera_params" / subject / "camera_params.json").read_text())
    K = np.array(param["intrinsics"], dtype=np.float32).astype(np.float64)  # torch.Tensor: float32
    H, W = param["height"], param["width"]
    ids = list(param["world_2_cam"].keys())
    w2c = np.array([param["world_2_cam"][k] for k in ids], dtype=np.float32).astype(np.float64)
    R, T = w2c[:, :3, :3], w2c[:, :3, 3]
    orientation = np.transpose(R, (0, 2, 1))
    location = orientation @ -T[..., None]
    # align_cameras_to_axes: the mean rotation's columns, made orthonormal pair by pair, y and z negated
    bases = orientation.mean(axis=0)
    for c in (1, 2):
        bases[:, c - 1] /= np.linalg.norm(bases[:, c - 1])
        bases[:, c] /= np.linalg.norm(bases[:, c])
        bases[:, c] -= bases[:, :c] @ (bases[:, :c].T @ bases[:, c])
    bases[:, 2] /= np.linalg.norm(bases[:, 2])
    bases[:, 1] *= -1
    bases[:, 2] *= -1
    bases_w2c = bases.T
    orientation = bases_w2c[None] @ orientation
    location = bases_w2c[None] @ location
    # convert_camera_convention("opencv->opengl")
    orientation[:, :, 1] *= -1
    orientation[:, :, 2] *= -1
    K[1, 2] = H - K[1, 2]
    RT = np.concatenate([np.transpose(orientation, (0, 2, 1)), np.transpose(orientation, (0, 2, 1)) @ -location],
                        axis=2)
    return {"ids": ids, "K": K, "RT": RT, "bases_w2c": bases_w2c, "H": H, "W": W}


def vhap_projection(K: np.ndarray, h: int, w: int) -> np.ndarray:
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = np.zeros((4, 4))
    P[0, 0], P[1, 1] = 2 * fx / w, 2 * fy / h
    P[0, 2], P[1, 2] = (w - 2 * cx) / w, (h - 2 * cy) / h
    P[2, 2], P[2, 3] = -(FAR + NEAR) / (FAR - NEAR), -2 * FAR * NEAR / (FAR - NEAR)
    P[3, 2] = -1
    return P


def vhap_pixels(cams: dict, k: int, X_file: np.ndarray, h: int, w: int) -> np.ndarray:
    """Where the tracker's render of camera k shows the world points X_file (the file's world): the world
    turned as load_camera_params turned the cameras, clip = P·[R|T]·X, NDC, nvdiffrast's pixel centres, rows
    flipped; returned as OpenCV pixel coordinates of the image file (top-left pixel centre at 0, 0)."""
    X = X_file @ cams["bases_w2c"].T
    mv = np.vstack([cams["RT"][k], [0, 0, 0, 1]])
    clip = np.column_stack([X, np.ones(len(X))]) @ (vhap_projection(cams["K"], h, w) @ mv).T
    ndc = clip[:, :3] / clip[:, 3:]
    col = (ndc[:, 0] + 1) * w / 2 - 0.5
    raster_row = (ndc[:, 1] + 1) * h / 2 - 0.5
    return np.column_stack([col, (h - 1) - raster_row])


def image_path(root: Path, camera_id: str, folder: str = "images") -> Path:
    return root / SUBJECT / SEQUENCE / folder / f"cam_{camera_id}_{TIMESTEP}.jpg"


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt_dict(sample_root: Path) -> Path:
    return sample_root / RT_SCALE_DICT


@pytest.fixture(scope="module")
def capture(sample_tuple: Path, rt_dict: Path) -> Capture:
    return load_capture(sample_tuple, align=rt_dict, units="m")


@pytest.fixture(scope="module")
def plans(capture: Capture) -> list[ViewPlan]:
    return plan_views(capture.views, ex.Options().image)


@pytest.fixture(scope="module")
def out(sample_tuple: Path, rt_dict: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The aligned sample exported from the command line (the check passing is its exit 0)."""
    folder = tmp_path_factory.mktemp("nersemble") / "out"
    assert main(["to-nersemble", str(sample_tuple), "-o", str(folder), "-q", "-j", "1", "--no-overlays",
                 "--align", str(rt_dict), "--units", "m"]) == 0
    return folder


@pytest.fixture(scope="module")
def off_centre(capture: Capture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared frame with its principal point half a pixel off the centre (cy ≠ H/2 in the file), where
    mirroring cy changes it."""
    options = ex.Options(image=ImageOptions(intrinsics="shared", upright=True, centre_rule="half-size"))
    done = export(capture, ex, tmp_path_factory.mktemp("nersemble-hs") / "out", options, overlays="none")
    assert done.check is not None and done.check.passed
    return done.out_dir


# ---- the layout -----------------------------------------------------------------------------------


def test_layout_is_the_one_vhap_opens(out: Path, plans: list[ViewPlan]):
    cams = vhap_load(out)
    ids = [f"{p.view.id:03d}" for p in plans]
    assert cams["ids"] == ids and len(ids) == 7
    manifest = read_manifest(out)
    assert [v["name"] for v in manifest["views"]] == [f"{SUBJECT}/{SEQUENCE}/images/cam_{i}_{TIMESTEP}.jpg"
                                                      for i in ids]
    # VideoDataset: timesteps = last "_" field of the images' stems; every camera's image and alpha map there
    names = sorted(p.name for p in (out / SUBJECT / SEQUENCE / "images").iterdir())
    assert {n.split(".")[0].split("_")[-1] for n in names if n.endswith("jpg")} == {TIMESTEP}
    for i in ids:
        with Image.open(image_path(out, i)) as rgb, Image.open(image_path(out, i, "alpha_maps")) as alpha:
            assert rgb.format == "JPEG" and rgb.mode == "RGB" and rgb.size == (cams["W"], cams["H"])
            assert alpha.format == "JPEG" and alpha.mode == "L" and alpha.size == rgb.size
        correction = np.load(out / "color_correction" / SUBJECT / f"{i}.npy")
        assert np.array_equal(correction, np.eye(4))  # load_color_correction: rgb @ M[:3, :3] + M[:3, 3]
    # one K, one size: the shared frame, principal point at the image centre (+0.5: edge origin)
    param = json.loads((out / "camera_params" / SUBJECT / "camera_params.json").read_text())
    K = np.array(param["intrinsics"])
    assert np.array_equal(K, cv.K_to_corner_origin(plans[0].camera.K))
    assert (K[0, 2], K[1, 2]) == (param["width"] / 2, param["height"] / 2)  # so cy → H − cy leaves it as it is
    assert all(np.array_equal(p.camera.K, plans[0].camera.K) and p.camera.size == plans[0].camera.size
               for p in plans)


# ---- cameras, as VHAP renders them ----------------------------------------------------------------


def test_mesh_reprojects_through_vhaps_pipeline(out: Path, capture: Capture, plans: list[ViewPlan]):
    """Every view (portrait ones turned landscape, the 180°-rolled one turned upright): mesh vertices through
    VHAP's camera land within 0.01 px of the source camera's projection carried into the exported image."""
    assert sum(p.turn != 0 for p in plans) == 2 and sum(p.rotated for p in plans) == 1
    cams = vhap_load(out)
    X_capture = np.asarray(capture_mesh(capture, "the test").vertices)
    X_file = np.asarray(trimesh.load(out / SUBJECT / SEQUENCE / "mesh.ply", process=False).vertices)
    pick = subsample(np.arange(len(X_capture)), 4000)
    worst = 0.0
    for k, plan in enumerate(plans):
        with Image.open(image_path(out, cams["ids"][k])) as im:
            w, h = im.size  # the tracker renders at the loaded images' size
        idx, expected = expected_pixels(plan, X_capture[pick])
        assert len(idx) > 1000
        err = np.abs(vhap_pixels(cams, k, X_file[pick][idx], h, w) - expected).max()
        worst = max(worst, float(err))
    assert worst <= PIXEL_TOL, worst  # measured ≈ 2e-4 px (float32 cameras)


def test_cameras_and_mesh_are_facescapes_metres(out: Path, sample_tuple: Path, rt_dict: Path):
    s, Rt = json.loads(rt_dict.read_text())[SUBJECT]["1"]
    S = cv.rt_scale_similarity(s, np.array(Rt), 1e-3)  # X_m = 1e-3·(R·(s·X) + t)
    sfm = load_capture(sample_tuple)
    param = json.loads((out / "camera_params" / SUBJECT / "camera_params.json").read_text())
    found = np.array([-np.array(m)[:3, :3].T @ np.array(m)[:3, 3] for m in param["world_2_cam"].values()])
    expected = cv.apply_similarity(S, np.array([v.centre for v in sfm.views]))
    assert np.abs(found - expected).max() <= REL * np.abs(expected).max()
    assert np.all((np.linalg.norm(found, axis=1) > 0.8) & (np.linalg.norm(found, axis=1) < 1.1))  # a rig ~1 m away
    X = np.asarray(trimesh.load(out / SUBJECT / SEQUENCE / "mesh.ply", process=False).vertices)
    X_expected = cv.apply_similarity(S, np.asarray(load_mesh(sfm.mesh).vertices))
    assert np.abs(X - X_expected).max() <= REL * np.abs(X_expected).max()
    assert 0.1 < float(np.ptp(X, axis=0).max()) < 0.3  # a head, in metres


def test_millimetre_alignment_is_written_in_metres(out: Path, sample_tuple: Path, rt_dict: Path, tmp_path: Path):
    assert main(["to-nersemble", str(sample_tuple), "-o", str(tmp_path / "mm"), "-q", "-j", "1", "--no-overlays",
                 "--align", str(rt_dict)]) == 0
    a, b = (json.loads((d / "camera_params" / SUBJECT / "camera_params.json").read_text())["world_2_cam"]
            for d in (out, tmp_path / "mm"))
    assert np.abs(np.array(list(a.values())) - np.array(list(b.values()))).max() <= 1e-12


def test_assumed_scale_moves_the_head_to_the_origin_in_metres(out: Path, sample_tuple: Path, rt_dict: Path,
                                                              tmp_path: Path):
    """`--assume-metric-scale` with the dict's own scale gives the aligned rig up to a rotation and a shift."""
    s = json.loads(rt_dict.read_text())[SUBJECT]["1"][0] * 1e-3
    folder = tmp_path / "assumed"
    assert main(["to-nersemble", str(sample_tuple), "-o", str(folder), "-q", "-j", "1", "--no-overlays",
                 "--assume-metric-scale", repr(s)]) == 0
    X = np.asarray(trimesh.load(folder / SUBJECT / SEQUENCE / "mesh.ply", process=False).vertices)
    assert np.abs(X.min(axis=0) + X.max(axis=0)).max() <= 1e-12  # its bounding box centred on the origin

    def distances(root: Path) -> np.ndarray:
        param = json.loads((root / "camera_params" / SUBJECT / "camera_params.json").read_text())
        C = np.array([-np.array(m)[:3, :3].T @ np.array(m)[:3, 3] for m in param["world_2_cam"].values()])
        return np.linalg.norm(C[:, None] - C[None], axis=2)

    assert np.abs(distances(folder) - distances(out)).max() <= 1e-9


# ---- alpha maps -----------------------------------------------------------------------------------


def test_alpha_maps_are_the_silhouette_where_the_image_has_data(out: Path, capture: Capture, plans: list[ViewPlan]):
    mesh = capture_mesh(capture, "the test")
    uncovered = 0
    for k, depth in whole_depths(mesh, plans):
        covered = footprint(plans[k])
        expected = (depth > 0) & covered
        alpha = np.array(Image.open(image_path(out, f"{plans[k].view.id:03d}", "alpha_maps")))  # as VHAP reads it
        assert np.array_equal(alpha >= 128, expected)
        assert np.abs(alpha.astype(int) - 255 * expected).max() <= 2  # JPEG at quality 100; measured 1
        assert 0.02 < expected.mean() < 0.9
        uncovered += int(((depth > 0) & ~covered).sum())
    assert uncovered > 0  # coverage matters: the mesh is seen where a turned view has no source data


# ---- negative controls: what VHAP would get wrong fails the check --------------------------------


def _edit(src: Path, dest: Path, change) -> Path:
    shutil.copytree(src, dest)
    path = dest / "camera_params" / SUBJECT / "camera_params.json"
    param = json.loads(path.read_text())
    change(param)
    path.write_text(json.dumps(param))
    return dest


def _vhap_error(root: Path, capture: Capture, plans: list[ViewPlan]) -> float:
    cams = vhap_load(root)
    X_capture = subsample(np.asarray(capture_mesh(capture, "the test").vertices), 2000)
    S = np.array(json.loads((root / "camera_params" / SUBJECT / "camera_params.json").read_text())
                 ["fsconvert_world"]["similarity"])
    worst = 0.0
    for k, plan in enumerate(plans):
        idx, expected = expected_pixels(plan, X_capture)
        found = vhap_pixels(cams, k, cv.apply_similarity(S, X_capture[idx]), *plan.camera.size[::-1])
        worst = max(worst, float(np.abs(found - expected).max()))
    return worst


def test_the_untouched_copy_passes(out: Path, capture: Capture, plans: list[ViewPlan], tmp_path: Path):
    copy = _edit(out, tmp_path / "same", lambda param: None)
    assert main(["check", str(copy), "--overlays", "none"]) == 0
    assert _vhap_error(copy, capture, plans) <= PIXEL_TOL


def test_missing_y_z_flip_fails(out: Path, capture: Capture, plans: list[ViewPlan], tmp_path: Path):
    """world_2_cam in OpenGL axes: VHAP's own flip then leaves the cameras unflipped."""
    def gl(param):
        for k, m in param["world_2_cam"].items():
            param["world_2_cam"][k] = (np.diag([1.0, -1.0, -1.0, 1.0]) @ np.array(m)).tolist()

    bad = _edit(out, tmp_path / "noflip", gl)
    assert main(["check", str(bad), "--overlays", "none"]) == 1
    assert _vhap_error(bad, capture, plans) > 100


def test_cy_not_mirrored_fails(off_centre: Path, capture: Capture, tmp_path: Path):
    """cy written as H − cy: VHAP's mirror then gives the unmirrored cy, a pixel off here (cy = H/2 + 0.5)."""
    plans = plan_views(capture.views, ImageOptions(intrinsics="shared", upright=True, centre_rule="half-size"))
    assert _vhap_error(off_centre, capture, plans) <= PIXEL_TOL

    def unmirrored(param):
        param["intrinsics"][1][2] = param["height"] - param["intrinsics"][1][2]

    bad = _edit(off_centre, tmp_path / "cy", unmirrored)
    assert main(["check", str(bad), "--overlays", "none"]) == 1
    assert 0.99 < _vhap_error(bad, capture, plans) < 1.01


def test_c2w_written_as_w2c_fails(out: Path, capture: Capture, plans: list[ViewPlan], tmp_path: Path):
    def inverted(param):
        for k, m in param["world_2_cam"].items():
            param["world_2_cam"][k] = np.linalg.inv(np.array(m)).tolist()

    bad = _edit(out, tmp_path / "c2w", inverted)
    assert main(["check", str(bad), "--overlays", "none"]) == 1
    assert _vhap_error(bad, capture, plans) > 100


def test_images_not_height_by_width_fail(out: Path, tmp_path: Path):
    def taller(param):
        param["height"] += 2

    bad = _edit(out, tmp_path / "size", taller)
    assert main(["check", str(bad), "--overlays", "none"]) == 1
    problems = json.loads((bad / CHECK_JSON).read_text())["problems"]
    assert any("camera_params.json says 1176×812" in p for p in problems), problems


def test_a_world_not_in_metres_fails(sample_tuple: Path, tmp_path: Path):
    folder = tmp_path / "sfm-units"
    assert main(["to-nersemble", str(sample_tuple), "-o", str(folder), "-q", "-j", "1", "--no-overlays",
                 "--assume-metric-scale", "1"]) == 1
    problems = json.loads((folder / CHECK_JSON).read_text())["problems"]
    assert len(problems) == 1 and "not a head-sized distance in metres" in problems[0], problems


# ---- bad input ------------------------------------------------------------------------------------


def test_no_metric_world_is_refused(sample_tuple: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    folder = tmp_path / "parent" / "out"
    capsys.readouterr()
    assert main(["to-nersemble", str(sample_tuple), "-o", str(folder), "-q", "-j", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fsconvert: error: "), err
    assert "--align" in err and "--assume-metric-scale" in err and "Traceback" not in err
    assert not folder.exists() and (not folder.parent.exists() or not any(folder.parent.iterdir()))


@pytest.mark.parametrize("image, message", [
    ({"intrinsics": "per-view"}, "keep --intrinsics shared"),
    ({"intrinsics": "shared", "image_format": "png"}, "drop --image-format png"),
])
def test_options_vhap_cannot_read_are_refused(image: dict, message: str):
    with pytest.raises(ex.InputError, match=message):
        ex.Options(image=ImageOptions(**image))
    with pytest.raises(ex.InputError, match="positive number"):
        ex.Options(assume_metric_scale=0.0)
