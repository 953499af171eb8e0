"""FaceScape's Rt_scale_dict alignment: conventions, the dict, and every exporter read back in TU units.

Expected values are computed here from the dict's numbers as FaceScape states them, X_tu = R·(s·X) + t
(TU in millimetres), independently of fsconvert.conventions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available, colmap, get, nerf, open3d
from exporters.nerf import layout
from fsconvert import conventions as cv
from fsconvert.alignment import align_tuple, expression_number, read_rt_scale_dict
from fsconvert.cli import main
from fsconvert.errors import InputError
from fsconvert.job import convert_tuple
from fsconvert.loader import load_capture
from fsconvert.mesh import capture_mesh, load_mesh
from fsconvert.protocol import read_manifest
from fsconvert.synthetic import HEAD_AXES_MM, RT_SCALE_DICT, make_sample

FORMATS = sorted(available())
"""Every registered format: a new one is held to the same alignment."""
REL = 1e-9
READ_PRECISION = {"neus": 1e-6, "nersemble": 1e-6, "sdfstudio": 1e-6}
"""Formats whose reader cannot give REL: NeuS's loader decomposes K·[R|t] (cv2.decomposeProjectionMatrix),
~1e-7 relative on camera centres in the SfM frame as in the aligned one."""


def dict_entry(root: Path, subject: str = "1", exp: str = "1") -> tuple[float, np.ndarray, np.ndarray]:
    s, Rt = json.loads((root / RT_SCALE_DICT).read_text())[subject][exp]
    Rt = np.array(Rt)
    return s, Rt[:, :3], Rt[:, 3]


def to_tu(points: np.ndarray, s: float, R: np.ndarray, t: np.ndarray, unit: float = 1.0) -> np.ndarray:
    """FaceScape's formula, point by point."""
    return np.array([unit * (R @ (s * np.asarray(x)) + t) for x in points])


def assert_close(found: np.ndarray, expected: np.ndarray, rel: float = REL) -> None:
    """Equal to `rel` relative to the size of the expected coordinates."""
    err = np.abs(np.asarray(found) - expected).max() / np.abs(expected).max()
    assert err <= rel, err


def source_centres(sample_tuple: Path) -> dict[int, np.ndarray]:
    capture = load_capture(sample_tuple)
    return {v.id: v.centre for v in capture.views}


# ---- the dict -------------------------------------------------------------------------------------


def test_the_sample_dict_matches_the_head_in_millimetres(sample_root: Path, sample_tuple: Path):
    mesh = capture_mesh(load_capture(sample_tuple, align=sample_root / RT_SCALE_DICT), "the test")
    size = mesh.extents
    assert np.all(np.abs(size / (2 * HEAD_AXES_MM) - 1) < 0.15), size  # the head's own ~150×210×190 mm
    assert np.abs(mesh.bounds.mean(axis=0)).max() < 30  # centred in its TU frame
    s, R, t = dict_entry(sample_root)
    assert 5 < s < 200 and np.abs(R - np.eye(3)).max() > 0.5 and np.linalg.norm(t) > 10  # a real similarity


def test_bundled_sample_ships_the_dict_make_sample_writes(sample_root: Path):
    bundled = Path(__file__).resolve().parent.parent / "samples" / "facescape_sample" / RT_SCALE_DICT
    mine, theirs = (read_rt_scale_dict(p)["1"]["1"] for p in (sample_root / RT_SCALE_DICT, bundled))
    assert abs(mine[0] - theirs[0]) <= 1e-12 * mine[0] and np.abs(mine[1] - theirs[1]).max() < 1e-12


def test_entry_by_subject_and_expression_number(tmp_path: Path):
    path = tmp_path / RT_SCALE_DICT
    entry = [2.0, np.eye(4).tolist()]
    path.write_text(json.dumps({"212": {"4": entry, "1": entry}}))
    assert expression_number("4_anger") == "4"
    a = align_tuple(path, "212", "4_anger", "m")
    assert (a.subject, a.expression, a.scale, a.units) == ("212", "4", 2.0, "m")
    assert np.array_equal(a.similarity, np.diag([2e-3, 2e-3, 2e-3, 1.0]))
    with pytest.raises(InputError, match=r"key '212\.3': no entry for expression 3 \(tuple 212/3_mouth_stretch\)"):
        align_tuple(path, "212", "3_mouth_stretch")
    with pytest.raises(InputError, match=r"key '7': no entry for subject 7"):
        align_tuple(path, "7", "4_anger")


# ---- every exporter, read back through its own reader -------------------------------------------------


class AlignedExports(dict):
    """Format → the sample exported with the sample's dict (check on: exit 0 is its pass), made on first use."""

    EXTRA = {"nerf": ["--depth", "--masks"], "colmap": ["--points", "2000"]}

    def __init__(self, sample_tuple: Path, rt_scale_dict: Path, out: Path) -> None:
        super().__init__()
        self.sample_tuple, self.rt_scale_dict, self.out = sample_tuple, rt_scale_dict, out

    def __missing__(self, fmt: str) -> Path:
        argv = [f"to-{fmt}", str(self.sample_tuple), "-o", str(self.out / fmt), "-q", "-j", "1", "--no-overlays",
                "--align", str(self.rt_scale_dict), *self.EXTRA.get(fmt, [])]
        assert main(argv) == 0, argv
        self[fmt] = self.out / fmt
        return self[fmt]


@pytest.fixture(scope="module")
def aligned(sample_root: Path, sample_tuple: Path, tmp_path_factory: pytest.TempPathFactory) -> AlignedExports:
    return AlignedExports(sample_tuple, sample_root / RT_SCALE_DICT, tmp_path_factory.mktemp("aligned"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_camera_centres_are_facescapes_tu_millimetres(fmt: str, aligned, sample_root: Path, sample_tuple: Path):
    manifest = read_manifest(aligned[fmt])
    names = {entry["name"]: entry["id"] for entry in manifest["views"]}
    views = get(fmt).read(aligned[fmt])
    assert sorted(v.name for v in views) == sorted(names)
    centres = source_centres(sample_tuple)
    found = np.array([cv.camera_centre(v.world_to_cam) for v in views])
    assert_close(found, to_tu([centres[names[v.name]] for v in views], *dict_entry(sample_root)),
                 READ_PRECISION.get(fmt, REL))
    recorded = manifest["alignment"]
    assert recorded["units"] == "mm" and recorded["entry"] == ["1", "1"]
    assert recorded["scale"] == dict_entry(sample_root)[0] and recorded["rt_scale_dict"] == str(sample_root / RT_SCALE_DICT)


def test_nerf_mesh_and_points_are_in_tu_millimetres(aligned, sample_root: Path, sample_tuple: Path):
    X = load_mesh(sample_root / "models/1/1_neutral.ply").vertices
    expected = to_tu(X, *dict_entry(sample_root))
    for name in (layout.MESH, layout.POINTS):
        assert_close(trimesh.load(aligned["nerf"] / name, process=False).vertices, expected)
    meta = json.loads((aligned["nerf"] / layout.TRANSFORMS).read_text())
    assert meta["applied_transform"] == np.eye(4)[:3].tolist() and meta["applied_scale"] == 1.0
    assert meta[layout.ALIGNMENT_KEY]["entry"] == ["1", "1"] and meta["depth_unit_scale_factor"] == 1.0


def test_colmap_points_are_the_unaligned_points_in_tu(aligned, sample_root: Path, sample_tuple: Path, tmp_path):
    assert main(["to-colmap", str(sample_tuple), "-o", str(tmp_path / "sfm"), "-q", "-j", "1", "--no-check",
                 "--points", "2000"]) == 0
    import pycolmap

    def points(folder: Path) -> np.ndarray:
        rec = pycolmap.Reconstruction(str(folder / colmap.SPARSE))
        return np.array([p.xyz for p in rec.points3D.values()])

    tu, sfm = points(aligned["colmap"]), to_tu(points(tmp_path / "sfm"), *dict_entry(sample_root))
    nearest = np.linalg.norm(tu[:, None] - sfm[None], axis=2).min(axis=1)
    assert len(tu) > 1000 and abs(len(tu) - len(sfm)) <= 0.01 * len(sfm)
    assert np.mean(nearest <= REL * np.abs(sfm).max()) >= 0.99  # the same samples (visibility ties aside)


def nose_tip(view, X_tu: np.ndarray) -> tuple[tuple[int, int], float]:
    """Pixel and z-depth of the mesh vertex nearest the camera: visible, on a fronto-parallel patch."""
    cam = X_tu @ view.world_to_cam[:3, :3].T + view.world_to_cam[:3, 3]
    i = int(np.argmin(cam[:, 2]))
    u, v = np.rint(view.camera.project(cam[i:i + 1])[0]).astype(int)
    return (u, v), float(cam[i, 2])


def test_depth_pngs_hold_millimetres(aligned, sample_root: Path):
    X_tu = to_tu(load_mesh(sample_root / "models/1/1_neutral.ply").vertices, *dict_entry(sample_root))
    for v in nerf.read(aligned["nerf"]):
        (u, y), z_mm = nose_tip(v, X_tu)
        png = cv2.imread(str(aligned["nerf"] / layout.DEPTHS / f"{Path(v.name).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert 500 < z_mm < 1500 and abs(int(png[y, u]) - z_mm) <= 1.0, (v.name, png[y, u], z_mm)
    rgbd = open3d.read_rgbd_json(aligned["open3d"])
    assert json.loads((aligned["open3d"] / open3d.RGBD).read_text())["unit"] == "mm"
    for v in open3d.read(aligned["open3d"]):
        (u, y), z_mm = nose_tip(v, X_tu)
        raw = cv2.imread(str(aligned["open3d"] / open3d.DEPTH / f"{Path(v.name).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert abs(raw[y, u] / rgbd["depth_scale"] - z_mm) <= 0.5, (v.name, raw[y, u], z_mm)


def test_metres_scale_cameras_and_keep_depth_pngs_in_millimetres(aligned, sample_root, sample_tuple, tmp_path):
    out = tmp_path / "m"
    assert main(["to-nerf", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--no-overlays", "--depth",
                 "--align", str(sample_root / RT_SCALE_DICT), "--units", "m", "--normalize", "sphere"]) == 0
    meta = json.loads((out / layout.TRANSFORMS).read_text())
    assert meta["depth_unit_scale_factor"] == 0.001 and meta["applied_scale"] != 1.0  # normalization on top
    centres = source_centres(sample_tuple)
    views = nerf.read(out)  # normalization undone: the aligned frame, in metres
    names = {e["name"]: e["id"] for e in read_manifest(out)["views"]}
    found = np.array([cv.camera_centre(v.world_to_cam) for v in views])
    assert_close(found, to_tu([centres[names[v.name]] for v in views], *dict_entry(sample_root), unit=1e-3))
    for name in names:
        stem = Path(name).stem
        m, mm = (cv2.imread(str(d / layout.DEPTHS / f"{stem}.png"), cv2.IMREAD_UNCHANGED) for d in (out, aligned["nerf"]))
        both = (m > 0) & (mm > 0)
        assert both.sum() > 1000 and np.abs(m[both].astype(int) - mm[both]).max() <= 1


def test_open3d_fusion_in_millimetres(sample_root: Path, sample_tuple: Path, tmp_path: Path):
    out = tmp_path / "fused"
    assert main(["to-open3d", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--no-check", "--fuse",
                 "--scale", "0.5", "--align", str(sample_root / RT_SCALE_DICT)]) == 0
    fused = trimesh.load(out / open3d.FUSED, process=False)
    truth = capture_mesh(load_capture(sample_tuple, align=sample_root / RT_SCALE_DICT), "the test")
    assert np.abs(fused.bounds - truth.bounds)[:, :2].max() < 5  # mm (the back of the head is unseen)


# ---- what the check can and cannot see -------------------------------------------------------------


def test_a_consistently_wrong_scale_passes_the_check(sample_root: Path, sample_tuple: Path, tmp_path: Path):
    wrong = tmp_path / RT_SCALE_DICT
    table = json.loads((sample_root / RT_SCALE_DICT).read_text())
    table["1"]["1"][0] *= 1.1
    wrong.write_text(json.dumps(table))
    out = tmp_path / "out"
    assert main(["to-facescape", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--align", str(wrong)]) == 0
    s, R, t = dict_entry(sample_root)
    found = np.array([cv.camera_centre(v.world_to_cam) for v in load_capture(out, require_mesh=False).views])
    centres = source_centres(sample_tuple)
    assert_close(found, to_tu([centres[i] for i in sorted(centres)], 1.1 * s, R, t))  # 10 % too large, unnoticed


def test_a_dict_changed_after_the_export_fails_the_check(sample_root: Path, sample_tuple: Path, tmp_path: Path, capsys):
    path = tmp_path / RT_SCALE_DICT
    shutil.copy(sample_root / RT_SCALE_DICT, path)
    out = tmp_path / "out"
    assert main(["to-colmap", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--points", "0",
                 "--no-overlays", "--align", str(path)]) == 0
    table = json.loads(path.read_text())
    table["1"]["1"][0] *= 1.1
    path.write_text(json.dumps(table))
    capsys.readouterr()
    assert main(["check", str(out), "--no-overlays"]) == 1
    report = capsys.readouterr().out
    assert "is not the one the export recorded" in report and "px off" in report


# ---- datasets, configs, the library, info ------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two subjects, small views; subject 2 has no entry in the dict."""
    root = tmp_path_factory.mktemp("dataset")
    make_sample(root, subjects=("1", "2"), n_views=3, long_side=200)
    table = json.loads((root / RT_SCALE_DICT).read_text())
    del table["2"]
    (root / RT_SCALE_DICT).write_text(json.dumps(table))
    return root


def test_a_dataset_tuple_without_an_entry_fails_alone(small_dataset: Path, tmp_path: Path, capsys):
    out, path = tmp_path / "out", small_dataset / RT_SCALE_DICT
    assert main(["to-facescape", str(small_dataset), "-o", str(out), "-q", "-j", "1", "--align", str(path)]) == 2
    captured = capsys.readouterr()
    assert f"2/1_neutral: {path}: key '2': no entry for subject 2 (tuple 2/1_neutral)" in captured.err
    assert "converted 1" in captured.out and "failed 1" in captured.out
    assert read_manifest(out / "1" / "1_neutral")["alignment"]["entry"] == ["1", "1"]
    assert not (out / "2" / "1_neutral").exists() and not any((out / "2").iterdir())  # nothing of it is left


def test_yaml_config_and_library_call(small_dataset: Path, tmp_path: Path, capsys):
    config = tmp_path / "run.yaml"
    shutil.copy(small_dataset / RT_SCALE_DICT, tmp_path / "tu.json")
    config.write_text(f"input: {small_dataset}\nout: out\nformat: nerf\nids: '1'\nalign: tu.json\nunits: m\n"
                      "jobs: 1\n")
    assert main(["batch", str(config), "-q"]) == 0
    recorded = read_manifest(tmp_path / "out" / "1" / "1_neutral")["alignment"]
    assert recorded["units"] == "m" and recorded["rt_scale_dict"] == str((tmp_path / "tu.json").resolve())

    result = convert_tuple(small_dataset / "images/1/1_neutral", tmp_path / "lib", "open3d", overlays=False,
                           align=small_dataset / RT_SCALE_DICT, units="m")
    assert result.status == "converted" and result.check_passed
    assert json.loads((tmp_path / "lib" / open3d.RGBD).read_text())["unit"] == "m"
    again = convert_tuple(small_dataset / "images/1/1_neutral", tmp_path / "lib", "open3d", overlays=False,
                          align=small_dataset / RT_SCALE_DICT, units="mm", overwrite=True)
    assert again.status == "converted"  # the units are part of what the record says is up to date


def test_info_on_a_dataset_names_the_tuple_without_an_entry(small_dataset: Path, capsys):
    path = small_dataset / RT_SCALE_DICT
    assert main(["info", str(small_dataset), "--align", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"tuple 2/1_neutral: {path}: key '2': no entry for subject 2" in out and "tuple 1/1_neutral  (" in out


def test_info_prints_scale_units_and_head_size(sample_root: Path, sample_tuple: Path, capsys):
    assert main(["info", str(sample_tuple), "--align", str(sample_root / RT_SCALE_DICT), "--units", "m"]) == 0
    out = capsys.readouterr().out
    s = dict_entry(sample_root)[0]
    assert f"entry '1.1': scale {s:.6g} SfM units → mm, output in m" in out
    size = [float(x) for x in out.split("head size: ")[1].split(" mm")[0].split(" × ")]
    assert all(140 <= x <= 250 for x in size) and "warning" not in out
