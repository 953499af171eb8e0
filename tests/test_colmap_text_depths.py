"""COLMAP's text model (`--model-format txt|both`, `--text`) read by COLMAP's documented text rules, COLMAP 3.8
and OpenMVS's rules; 3D Gaussian Splatting's depth priors (`--for 3dgs --depths`) read as 3DGS reads them and
compared with the mesh's inverse depth pixel by pixel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pycolmap
import pytest

from exporters import colmap, program
from exporters.colmap.depths import encode, spread_scales, write_depth_priors
from exporters.colmap.layout import MODEL_FILES
from fsconvert import conventions as cv
from fsconvert.check import check_export
from fsconvert.cli import main
from fsconvert.errors import InputError
from fsconvert.export import export as export_to
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.loader import load_capture
from fsconvert.mesh import capture_mesh
from fsconvert.options import from_dict
from fsconvert.protocol import read_manifest
from fsconvert.render import Renderer

CASES = {
    "bin": ["--distortion", "keep"],  # OPENCV and FULL_OPENCV cameras: every parameter through the text
    "txt": ["--distortion", "keep", "--model-format", "txt"],
    "both": ["--distortion", "keep", "--model-format", "both"],
    "text": ["--distortion", "keep", "--text"],
    "3dgs-depths": ["--for", "3dgs", "--depths", "--model-format", "both"],  # PINHOLE: OpenMVS reads it too
}
STEPS = 2**16
"""3DGS: `cv2.imread(png, -1).astype(np.float32) / float(2**16)` (utils/camera_utils.py loadCam)."""
HALF_STEP = 0.51
"""The largest |prior − 1/z| in 16-bit steps: 0.5 from rounding to the step, and float32 (3DGS decodes in float32:
~65535 × 6e-8 = 0.004 of a step)."""


@pytest.fixture(scope="module")
def capture(sample_tuple):
    return load_capture(sample_tuple)


@pytest.fixture(scope="module")
def exports(sample_tuple, tmp_path_factory):
    """case → an export of the sample, written once by the command line (its check passed: exit status 0)."""
    root, done = tmp_path_factory.mktemp("colmap_text_depths"), {}

    def get(case: str) -> Path:
        if case not in done:
            out = root / case
            assert main(["to-colmap", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--points", "2000",
                         "--no-overlays", *CASES[case]]) == 0
            done[case] = out
        return done[case]

    return get


# ---- COLMAP's text model by its documented rules (formats.md §1.2, src/colmap/scene/reconstruction_io_text.cc) ----


def text_model(sparse: Path) -> tuple[dict, dict, dict]:
    """(cameras, images, points3D) of a text model: lines trimmed, blank and `#` lines skipped, except the
    second line of an image record, read by a plain getline right after the first (blank: no keypoints)."""
    def records(path: Path) -> list[list[str]]:
        return [ln.strip().split() for ln in path.read_text().split("\n") if ln.strip() and ln.strip()[0] != "#"]

    cameras = {}
    for cid, model, w, h, *params in records(sparse / "cameras.txt"):
        cameras[int(cid)] = SimpleNamespace(model=model, width=int(w), height=int(h),
                                            params=np.array(params, np.float64))
    text = (sparse / "images.txt").read_text()
    assert text.endswith("\n")  # every record, the last one too, ends with its (possibly empty) second line
    lines, images, i = text.split("\n")[:-1], {}, 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        assert len(tokens) == 10, line  # IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME: no whitespace in NAME
        assert i < len(lines), f"image {tokens[0]} has no second line: COLMAP would drop it"
        keypoints = np.array(lines[i].split(), np.float64).reshape(-1, 3)
        i += 1
        images[int(tokens[0])] = SimpleNamespace(
            q=np.array(tokens[1:5], np.float64), t=np.array(tokens[5:8], np.float64), camera_id=int(tokens[8]),
            name=tokens[9], xy=keypoints[:, :2], point3D_ids=keypoints[:, 2].astype(np.int64))
    points = {}
    for pid, x, y, z, r, g, b, err, *track in records(sparse / "points3D.txt"):
        points[int(pid)] = SimpleNamespace(xyz=np.array([x, y, z], np.float64), rgb=(int(r), int(g), int(b)),
                                           error=float(err), track=np.array(track, np.int64).reshape(-1, 2))
    return cameras, images, points


def assert_same_model(text: tuple[dict, dict, dict], rec: pycolmap.Reconstruction) -> None:
    """The text model is the binary one pycolmap reads: cameras identical, poses to 1e-12, keypoints, points."""
    cameras, images, points = text
    assert sorted(cameras) == sorted(rec.cameras) and sorted(images) == sorted(rec.images)
    for cid, cam in cameras.items():
        ref = rec.cameras[cid]
        assert (cam.model, cam.width, cam.height) == (ref.model.name, ref.width, ref.height)
        assert np.array_equal(cam.params, np.asarray(ref.params))  # 17 significant digits: every bit
    for iid, im in images.items():
        ref = rec.images[iid]
        assert (im.name, im.camera_id) == (ref.name, ref.camera_id)
        T = ref.cam_from_world().matrix()
        assert np.abs(cv.quat_wxyz_to_rotation(im.q) - T[:3, :3]).max() <= 1e-12
        assert np.abs(im.t - T[:3, 3]).max() <= 1e-12
        assert np.array_equal(im.xy, np.array([p.xy for p in ref.points2D]).reshape(-1, 2))
        assert np.array_equal(im.point3D_ids >= 0, [p.has_point3D() for p in ref.points2D])
        assert all(i == p.point3D_id for i, p in zip(im.point3D_ids, ref.points2D) if i >= 0)
    assert sorted(points) == sorted(rec.points3D) and len(points) > 0
    for pid, pt in points.items():
        ref = rec.points3D[pid]
        assert np.array_equal(pt.xyz, ref.xyz) and pt.rgb == tuple(int(c) for c in ref.color)
        assert pt.error == ref.error
        assert pt.track.tolist() == [[e.image_id, e.point2D_idx] for e in ref.track.elements]


def pycolmap_reads(sparse: Path, fmt: str) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    (rec.read_text if fmt == "txt" else rec.read_binary)(str(sparse))
    return rec


@pytest.mark.parametrize("case", ["txt", "both", "text"])
def test_text_model_is_the_binary_model(exports, case):
    binary = exports("bin") / "sparse" / "0"
    sparse = exports(case) / "sparse" / "0"
    want = {"txt": {"txt"}, "text": {"txt"}, "both": {"txt", "bin"}}[case]
    assert {p.suffix[1:] for p in sparse.glob("*") if p.stem in MODEL_FILES and p.suffix != ".ply"} == want
    assert not any(sparse.glob("rigs.*")) and not any(sparse.glob("frames.*"))
    assert_same_model(text_model(sparse), pycolmap.Reconstruction(str(binary)))
    if case == "both":  # the same bytes as the single-format exports, and pycolmap reads either
        for stem in MODEL_FILES:
            assert (sparse / f"{stem}.bin").read_bytes() == (binary / f"{stem}.bin").read_bytes()
            assert (sparse / f"{stem}.txt").read_bytes() == (exports("txt") / "sparse/0" / f"{stem}.txt").read_bytes()
        assert_same_model(text_model(sparse), pycolmap_reads(sparse, "txt"))
        assert_same_model(text_model(sparse), pycolmap_reads(sparse, "bin"))
    if case == "text":  # --text as before: the txt model, recorded as such
        for stem in MODEL_FILES:
            assert (sparse / f"{stem}.txt").read_bytes() == (exports("txt") / "sparse/0" / f"{stem}.txt").read_bytes()
        options = read_manifest(exports(case))["options"]
        assert options["text"] is True and options["model_format"] == "txt"


def test_text_flag_and_model_format(capsys):
    assert colmap.Options(text=True).model_format == "txt"
    assert colmap.Options(text=True, model_format="txt").model_format == "txt"
    assert colmap.Options().model_format == "bin" and colmap.Options(model_format="both").text is False
    with pytest.raises(InputError, match="text means model_format txt"):
        colmap.Options(text=True, model_format="both")
    for fmt in ("bin", "txt", "both"):  # the flags exclude each other on the command line
        with pytest.raises(SystemExit) as stop:
            main(["to-colmap", "x", "-o", "y", "--text", "--model-format", fmt])
        assert stop.value.code == 2
        assert "not allowed with argument --text" in capsys.readouterr().err


def test_colmap_3_8_reads_the_text_model(exports, capture):
    if shutil.which("colmap") is None:
        print("skipped: no `colmap` on PATH (Debian's colmap 3.8 CLI)")
        pytest.skip("no `colmap` on PATH (Debian's colmap 3.8 CLI)")
    sparse = exports("txt") / "sparse" / "0"
    run = subprocess.run(["colmap", "model_analyzer", "--path", str(sparse)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout + run.stderr
    stats = {k: float(v) for k, v in re.findall(r"^(?:I\S+ \S+ +\d+ \S+\] )?([A-Za-z ]+): ([\d.]+)", out, re.M)}
    rec = pycolmap.Reconstruction(str(exports("bin") / "sparse" / "0"))
    assert stats["Cameras"] == stats["Registered images"] == rec.num_reg_images() == len(capture.views)
    assert stats["Points"] == rec.num_points3D() > 0
    assert stats["Observations"] == rec.compute_num_observations()


def test_openmvs_reads_pinhole_text_and_stops_on_other_models(exports, tmp_path):
    report = check_export(exports("3dgs-depths"), reader="openmvs", overlays="none")
    assert report.passed, report.problems
    assert report.views and all(v.camera_max_px is not None and v.camera_max_px < 1e-6 for v in report.views)
    # OPENCV / FULL_OPENCV cameras: OpenMVS imports PINHOLE only
    report = check_export(exports("txt"), reader="openmvs", overlays="none")
    assert not report.passed and any("OpenMVS reads PINHOLE cameras only" in p for p in report.problems)
    # a PINHOLE model whose second camera is OPENCV: OpenMVS stops reading cameras there
    out = tmp_path / "mixed"
    shutil.copytree(exports("3dgs-depths"), out)
    cameras = out / "sparse/0/cameras.txt"
    lines = cameras.read_text().split("\n")
    k = next(i for i, ln in enumerate(lines) if ln.startswith("2 PINHOLE"))
    lines[k] = lines[k].replace("PINHOLE", "OPENCV") + " 0 0 0 0"
    cameras.write_text("\n".join(lines))
    reading = program(colmap, "openmvs").read(out)
    assert [v.name for v in reading.views] == ["images/000.jpg"] and len(reading.unread) == 6
    assert reading.problems[0].startswith("camera 2 is OPENCV: OpenMVS reads PINHOLE cameras only")


# ---- 3DGS's depth priors -----------------------------------------------------------------------------------


def gs_depth_priors(out: Path) -> dict[str, SimpleNamespace]:
    """How graphdeco-inria/gaussian-splatting reads `-d depths` (scene/dataset_readers.py readColmapSceneInfo and
    readColmapCameras, utils/camera_utils.py loadCam at `-r 1`, scene/cameras.py Camera): image name → prior."""
    params = json.loads((out / "sparse/0/depth_params.json").read_text())
    scales = np.array([params[k]["scale"] for k in params])
    med = np.median(scales[scales > 0]) if (scales > 0).sum() else 0
    for key in params:
        params[key]["med_scale"] = med
    rec = pycolmap.Reconstruction(str(out / "sparse/0"))
    priors = {}
    for image in rec.images.values():
        name = image.name
        n_remove = len(name.split(".")[-1]) + 1
        depth_params = params.get(name[:-n_remove])
        invdepthmap = cv2.imread(str(out / "depths" / f"{name[:-n_remove]}.png"), -1).astype(np.float32) / float(STEPS)
        camera = rec.cameras[image.camera_id]
        resolution = (round(camera.width / 1), round(camera.height / 1))  # -r 1 (the image's own size)
        invdepthmap = cv2.resize(invdepthmap, resolution)
        invdepthmap[invdepthmap < 0] = 0
        reliable = True
        assert depth_params is not None, f"{name} not found in depths_params"
        if depth_params["scale"] < 0.2 * depth_params["med_scale"] or depth_params["scale"] > 5 * depth_params["med_scale"]:
            reliable = False
        if depth_params["scale"] > 0:
            invdepthmap = invdepthmap * depth_params["scale"] + depth_params["offset"]
        priors[name] = SimpleNamespace(inv=invdepthmap, reliable=reliable, scale=depth_params["scale"],
                                       offset=depth_params["offset"], med=med)
    return priors


def mesh_inverse_depth(out: Path, capture) -> dict[str, np.ndarray]:
    """Image name → the mesh's z-depth rendered through the export's output camera (the plan's).

    Each view drawn through its own depth buffer, as the export's renders are (its depth does not depend on the
    views drawn before it)."""
    manifest = read_manifest(out)
    options = from_dict(colmap.Options, manifest["options"])
    plans = {p.view.id: p for p in plan_views(capture.views, options.image)}
    entries = sorted(manifest["views"], key=lambda e: plans[e["id"]].camera.is_portrait)
    depths = {}
    with Renderer(capture_mesh(capture, "the test")) as renderer:
        for entry in entries:
            plan = plans[entry["id"]]
            depths[Path(entry["name"]).name] = renderer.render(plan.camera, plan.world_to_cam, depth_only=True).depth
    return depths


def prior_errors(priors: dict[str, SimpleNamespace], z: dict[str, np.ndarray]) -> dict[str, float]:
    """Per image: the largest |prior − 1/z| over the covered pixels, in 16-bit steps of its scale."""
    out = {}
    for name, prior in priors.items():
        covered = z[name] > 0
        err = np.abs(prior.inv[covered].astype(np.float64) - 1.0 / z[name][covered].astype(np.float64))
        out[name] = float(err.max() / (prior.scale / STEPS))
    return out


def test_depth_priors_are_the_mesh_inverse_depth_as_3dgs_reads_them(exports, capture):
    out = exports("3dgs-depths")
    assert sorted(p.name for p in (out / "depths").iterdir()) == [f"{i:03d}.png" for i in (0, 1, 2, 3, 4, 5, 7)]
    priors, z = gs_depth_priors(out), mesh_inverse_depth(out, capture)
    assert sorted(priors) == sorted(z) == [f"{i:03d}.jpg" for i in (0, 1, 2, 3, 4, 5, 7)]
    for name, prior in priors.items():
        png = cv2.imread(str(out / "depths" / name.replace(".jpg", ".png")), -1)
        assert png.dtype == np.uint16 and png.shape == z[name].shape and png.max() == 65535  # the whole range
        assert prior.reliable and prior.scale > 0 and prior.offset == 0  # med_scale keeps every image
        assert 0.2 * prior.med <= prior.scale <= 5 * prior.med
        covered = z[name] > 0
        assert covered.sum() > 1000 and np.array_equal(png > 0, covered)  # 0 exactly where no mesh is seen
        assert np.all(prior.inv[~covered] == 0)  # inverse depth 0: nothing, as the rasteriser renders it
    errors = prior_errors(priors, z)
    # within one 16-bit step of 1/z at every covered pixel: half a step (rounding) and 3DGS's float32 arithmetic
    assert max(errors.values()) <= HALF_STEP, errors
    manifest = read_manifest(out)
    assert manifest["depths"]["med_scale"] == pytest.approx(next(iter(priors.values())).med, rel=1e-15)
    assert any("depth loss has no per-pixel mask" in w for w in manifest["warnings"])


def test_check_fails_depth_priors_3dgs_misreads(exports, capture, tmp_path):
    out = exports("3dgs-depths")
    assert check_export(out, overlays="none").passed
    # scale × 2: every image still inside 3DGS's range (the median doubles too), but the priors are wrong
    doubled = tmp_path / "doubled"
    shutil.copytree(out, doubled)
    params_path = doubled / "sparse/0/depth_params.json"
    params = json.loads(params_path.read_text())
    params_path.write_text(json.dumps({k: {**v, "scale": 2 * v["scale"]} for k, v in params.items()}))
    report = check_export(doubled, overlays="none")
    assert not report.passed
    (line,) = report.problems
    assert line.startswith("3dgs: the depth prior of '000', '001', '002' and 4 more") and "off 1/z" in line
    assert main(["check", str(doubled), "--overlays", "none"]) == 1
    errors = prior_errors(gs_depth_priors(doubled), mesh_inverse_depth(doubled, capture))
    assert min(errors.values()) > 10_000  # the test's own comparison: far beyond one step
    # one image's entry missing, and one entry naming no image
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    params = json.loads((broken / "sparse/0/depth_params.json").read_text())
    params["extra"] = params.pop("003")
    (broken / "sparse/0/depth_params.json").write_text(json.dumps(params))
    problems = check_export(broken, overlays="none").problems
    assert any("has no entry for '003'" in p for p in problems)
    assert any("names 'extra', no image's" in p for p in problems)
    # one image's scale far below the others: 3DGS drops its prior
    dropped = tmp_path / "dropped"
    shutil.copytree(out, dropped)
    params = json.loads((dropped / "sparse/0/depth_params.json").read_text())
    params["005"]["scale"] /= 10
    (dropped / "sparse/0/depth_params.json").write_text(json.dumps(params))
    problems = check_export(dropped, overlays="none").problems
    assert any("3DGS drops the depth prior of '005'" in p for p in problems), problems


def test_scale_rule_keeps_every_view_and_decodes_to_half_a_step():
    nearest = np.array([0.0, 1.0, 0.9, 0.05, 0.3])
    scales = spread_scales(nearest)
    assert scales[0] == 0 and scales[3] == pytest.approx(scales.max() / 4)  # far view raised to a quarter
    assert scales[1] * 65535 / 65536 == pytest.approx(1.0, rel=1e-15)  # nearest at PNG value 65535
    med = np.median(scales[scales > 0])
    assert np.all((scales[1:] >= 0.2 * med) & (scales[1:] <= 5 * med))
    rng = np.random.default_rng(0)
    for n, s in zip(nearest[1:], scales[1:]):  # each view's inverse depths up to its nearest surface point
        inv = rng.uniform(0, n, (64, 64))
        png = encode(inv, s)
        decoded = png.astype(np.float32) / np.float32(STEPS) * s
        assert np.abs(decoded - inv).max() <= s / STEPS / 2 * 1.001


def turned_away(view):
    """The view's camera turned 180° about its own y axis: it looks away from the mesh."""
    return replace(view, world_to_cam=np.diag([-1.0, 1.0, -1.0, 1.0]) @ view.world_to_cam)


def moved_back(view, capture, factor: float):
    """The view's camera moved back along its optical axis until the mesh centre is `factor` times as far."""
    centre = np.asarray(capture_mesh(capture, "the test").vertices).mean(axis=0)
    z = (view.world_to_cam @ np.append(centre, 1.0))[2]
    w2c = view.world_to_cam.copy()
    w2c[2, 3] += (factor - 1) * z
    return replace(view, world_to_cam=w2c)


def test_view_without_mesh_warns_and_far_view_is_raised(capture, tmp_path):
    views = list(capture.views)
    views[0], views[1] = turned_away(views[0]), moved_back(views[1], capture, 8.0)
    changed = replace(capture, views=views)
    image = ImageOptions(principal_point="center", border="crop", image_format="png", alpha="subject")
    options = colmap.Options(image=image, target="3dgs", depths=True, points=2000)
    out = export_to(changed, colmap, tmp_path / "out", options, thresholds=None).out_dir
    manifest = read_manifest(out)
    (line,) = [w for w in manifest["warnings"] if "see no mesh" in w]
    assert line.startswith(f"colmap: views [{views[0].id}] see no mesh")
    assert not any("no per-pixel mask" in w for w in manifest["warnings"])  # --alpha subject
    assert manifest["depths"]["no_mesh"] == [views[0].id] and manifest["depths"]["raised"] == [views[1].id]
    priors = gs_depth_priors(out)
    turned, far = priors["000.png"], priors["001.png"]
    assert turned.scale == 0 and not turned.reliable and not cv2.imread(str(out / "depths/000.png"), -1).any()
    assert far.reliable and far.scale == pytest.approx(max(p.scale for p in priors.values()) / 4, rel=1e-15)
    assert all(p.reliable for name, p in priors.items() if name != "000.png")
    z = {name: depth for name, depth in mesh_inverse_depth(out, changed).items() if name != "000.png"}
    errors = prior_errors({n: priors[n] for n in z}, z)
    assert max(errors.values()) <= HALF_STEP, errors
    assert program(colmap, "3dgs").read(out).problems == []  # the dropped prior is the intended one
    # no view sees the mesh: an error (3DGS's median would be 0 and it would keep every all-zero prior)
    plans = plan_views([turned_away(v) for v in capture.views[:2]], ImageOptions(principal_point="center"))
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no view sees the mesh"):
        write_depth_priors(capture_mesh(capture, "the test"), plans, ["a.jpg", "b.jpg"], [0, 1], tmp_path / "none",
                           progress=False)
