"""Properties: random valid cameras survive every exporter exactly; damaged params.json only ever
gives a one-line InputError naming the file.

1. Hypothesis draws tuples of valid FaceScape cameras (fx ≈ fy, off-centre principal points, realistic
   k1 k2 p1 p2 k3, any rotation incl. ~180° rolls, portrait and landscape, K 3×3 or 4×4, Rt 3×4 or 4×4,
   sizes as ints or floats), writes params.json + tiny images + a small mesh, loads them, exports to
   every format (keeping the lens model where the format holds it, so the comparison is exact) and
   reads the export back through the format's reader: cameras and poses equal the image stage's plan
   to 1e-9.
2. A seeded byte-level fuzzer damages a real params.json thousands of times (flips, insertions of
   random bytes and JSON tokens, deletions, truncations): `load_capture` raises nothing but InputError,
   always one line naming the params.json file, and anything it accepts is a valid camera.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available
from fsconvert import cli, jsonvalues, loader
from fsconvert import conventions as cv
from fsconvert.errors import InputError
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.loader import load_capture
from fsconvert.model import Camera, Capture
from fsconvert.options import from_dict
from fsconvert.protocol import read_manifest
from fsconvert.synthetic import make_sample

EXACT = 1e-9
HOLDS_DISTORTION = {"facescape", "colmap", "nerf"}
"""Formats that store k1 k2 p1 p2 k3 (exported with the distortion kept); the others undistort."""
FORMAT_OPTIONS = {"colmap": {"points": 0}, "nerf": {"normalize": "sphere"}, "nersemble": {"assume_metric_scale": 0.04}}
"""No COLMAP points3D (not a camera property, and they need renders); NeRF moves the world into the
mesh's bounding sphere (its reader must undo that: poses come back in the source frame); VHAP needs a metric
world. Every format keeps its own default image options (one shared frame for those whose readers stack
images) but for the distortion."""
PRECISION = {"neus": 1e-3, "neus2": 1e-3, "sdfstudio": 1e-3, "nersemble": 1e-3}
"""Formats whose reader loses precision: NeuS's loader decomposes world_mat @ scale_mat in float32."""
MESH = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
"""The scene: a box at the origin, which every drawn camera looks at from 4–8 units away."""


# ---- 1. random valid cameras round-trip exactly through every exporter ----------------------------------


@st.composite
def camera_params(draw: st.DrawFn, vid: int) -> dict:
    """One view's params.json entries, drawn within what real FaceScape rigs hold."""
    long_side = draw(st.integers(24, 64))
    short_side = draw(st.integers(16, long_side))
    w, h = (short_side, long_side) if draw(st.booleans()) else (long_side, short_side)
    f = draw(st.floats(0.8, 5.0)) * long_side
    fy = f * (1 + draw(st.floats(-1e-3, 1e-3)))
    cx, cy = draw(st.floats(0.3, 0.7)) * (w - 1), draw(st.floats(0.3, 0.7)) * (h - 1)
    k3 = draw(st.one_of(st.just(0.0), st.floats(-0.3, 0.3)))
    dist = [draw(st.floats(-0.3, 0.5)), draw(st.floats(-0.3, 0.3)), draw(st.floats(-2e-3, 2e-3)),
            draw(st.floats(-2e-3, 2e-3)), k3]
    q = draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda v: np.linalg.norm(v) > 0.1))
    R = cv.quat_wxyz_to_rotation(q)
    roll = draw(st.sampled_from([None, 0.0, 1e-3, -1e-3]))  # None: no roll; else 180° + this
    if roll is not None:
        a = np.pi + roll
        R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ R
    t = [draw(st.floats(-0.3, 0.3)), draw(st.floats(-0.3, 0.3)), draw(st.floats(4.0, 8.0))]
    K = cv.K_matrix(f, fy, cx, cy)
    Rt = np.hstack([R, np.array(t)[:, None]])
    if draw(st.booleans()):
        K = np.block([[K, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])
    if draw(st.booleans()):
        Rt = np.vstack([Rt, [0, 0, 0, 1]])
    as_float = draw(st.booleans())
    return {
        f"{vid}_K": K.tolist(), f"{vid}_Rt": Rt.tolist(), f"{vid}_distortion": dist,
        f"{vid}_width": float(w) if as_float else w, f"{vid}_height": float(h) if as_float else h,
        f"{vid}_valid": True, f"{vid}_matches": 100, f"{vid}_sn": f"SN{vid}", f"{vid}_ori": f"IMG_{vid}.JPG",
    }


@st.composite
def tuples(draw: st.DrawFn) -> dict:
    ids = draw(st.lists(st.integers(0, 70), min_size=1, max_size=3, unique=True))
    params: dict = {}
    for vid in ids:
        params |= draw(camera_params(vid))
    return params


def write_tuple(root: Path, params: dict) -> Path:
    """params.json, a grey JPEG of the right size per view, and the mesh, in the FaceScape layout."""
    tuple_dir = root / "images" / "7" / "2_smile"
    tuple_dir.mkdir(parents=True)
    (tuple_dir / "params.json").write_text(json.dumps(params))
    for key, width in params.items():
        if key.endswith("_width"):
            vid = key.split("_")[0]
            img = np.full((int(params[f"{vid}_height"]), int(width), 3), 128, np.uint8)
            cv2.imwrite(str(tuple_dir / f"{vid}.jpg"), img)
    mesh = root / "models" / "7" / "2_smile.ply"
    mesh.parent.mkdir(parents=True)
    mesh.write_bytes(MESH.export(file_type="ply"))
    return tuple_dir


def max_difference(a: Camera, a_w2c: np.ndarray, b: Camera, b_w2c: np.ndarray) -> float:
    """Largest absolute difference of K, distortion and pose (inf when the sizes differ)."""
    if a.size != b.size:
        return float("inf")
    return float(max(np.abs(a.K - b.K).max(), np.abs(a.dist - b.dist).max(), np.abs(a_w2c - b_w2c).max()))


def vhap_turn_undefined(capture: Capture, image: ImageOptions) -> bool:
    """Whether the exported cameras' (the plans': portrait views turned, rolled ones upright) mean rotation has a
    Gram–Schmidt column shorter than 0.05 (|diag R| of its QR), where VHAP's `align_cameras_to_axes` turns the
    world by rounding: the NeRSemble export refuses such a rig."""
    mean = np.mean([cv.w2c_to_c2w(p.world_to_cam)[:3, :3] for p in plan_views(capture.views, image)], axis=0)
    return bool(np.abs(np.linalg.qr(mean)[1].diagonal()).min() < 0.05)


def round_trip_errors(tuple_dir: Path, out_root: Path) -> dict[str, float]:
    """Per format: the largest difference between a read-back camera and its plan camera (NeRSemble: none when
    it refuses a rig whose mean axes VHAP cannot take, `vhap_turn_undefined`)."""
    capture = load_capture(tuple_dir)
    errors = {}
    for name, module in available().items():
        default = next(f for f in dataclasses.fields(module.Options) if f.name == "image").default_factory()
        image = replace(default, undistort=name not in HOLDS_DISTORTION)
        options = module.Options(image=image, **FORMAT_OPTIONS.get(name, {}))
        out = out_root / name
        if name == "nersemble" and vhap_turn_undefined(capture, image):
            with pytest.raises(InputError, match="cameras' mean axes"):
                export(capture, module, out, options, thresholds=None)
            continue
        export(capture, module, out, options, thresholds=None)
        manifest = read_manifest(out)
        names = [v["name"] for v in manifest["views"]]
        plans = dict(zip(names, plan_views(capture.views, from_dict(module.Options, manifest["options"]).image)))
        back = module.read(out)
        assert sorted(v.name for v in back) == sorted(plans), name
        errors[name] = max(max_difference(v.camera, v.world_to_cam, plans[v.name].camera, plans[v.name].world_to_cam)
                           for v in back)
    return errors


@settings(max_examples=25, deadline=None)
@given(params=tuples())
def test_random_valid_cameras_round_trip_exactly(params: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("prop")
    tuple_dir = write_tuple(root, params)
    capture = load_capture(tuple_dir)
    for v in capture.views:  # the loader keeps exactly what was written
        assert np.array_equal(v.camera.K, np.asarray(params[f"{v.id}_K"])[:3, :3])
        assert np.array_equal(v.world_to_cam, cv.homogeneous(params[f"{v.id}_Rt"]))
        assert np.array_equal(v.camera.dist, params[f"{v.id}_distortion"])
        assert v.camera.size == (int(params[f"{v.id}_width"]), int(params[f"{v.id}_height"]))
    errors = round_trip_errors(tuple_dir, root / "out")
    assert set(errors) >= {"colmap", "facescape", "nerf", "open3d"}
    assert all(e <= PRECISION.get(name, EXACT) for name, e in errors.items()), errors
    shutil.rmtree(root)


NERSEMBLE_IMAGE = available()["nersemble"].Options().image


def test_nersemble_refuses_cameras_whose_mean_axes_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hypothesis found it: two cameras facing opposite ways (the second turned 180° about y) leave VHAP's mean
    x axis ~1e-16 long, and VHAP's world turn garbage (read back 1.6 off). The export says so, exit 2, nothing
    written; turned 150° instead, the mean axes hold and it round-trips."""
    K = cv.K_matrix(24.0, 24.0, 11.5, 7.5).tolist()
    opposite = {"0_Rt": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 4.0]],
                "1_Rt": [[-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, -1.0, 4.0]]}
    params = {f"{v}_{key}": value for v in (0, 1)
              for key, value in (("K", K), ("width", 24), ("height", 16), ("distortion", [0.0] * 5))}
    tuple_dir = write_tuple(tmp_path / "opposite", params | opposite)
    assert vhap_turn_undefined(load_capture(tuple_dir), NERSEMBLE_IMAGE)
    out = tmp_path / "out"
    assert cli.main(["to-nersemble", str(tuple_dir), "-o", str(out), "--assume-metric-scale", "0.04", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cameras' x axes cancel" in err[0] and str(tuple_dir) in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    a = np.radians(150)
    turned = {"1_Rt": [[np.cos(a), 0, np.sin(a), 0], [0, 1.0, 0, 0], [-np.sin(a), 0, np.cos(a), 4.0]]}
    tuple_dir = write_tuple(tmp_path / "turned", params | opposite | turned)
    assert not vhap_turn_undefined(load_capture(tuple_dir), NERSEMBLE_IMAGE)
    assert round_trip_errors(tuple_dir, tmp_path / "turned-out")["nersemble"] <= PRECISION["nersemble"]


def test_round_trip_negative_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same harness on one fixed tuple: exact as is; a reader that forgets the −0.5 pixel-centre
    shift measures 0.5 in the corner-origin formats and nothing elsewhere; a dropped roll is seen."""
    rng = np.random.default_rng(3)
    params: dict = {}
    for vid in (0, 1):
        R = cv.quat_wxyz_to_rotation(rng.standard_normal(4))
        params |= {f"{vid}_K": cv.K_matrix(90.0, 90.05, 20.3, 13.7).tolist(),
                   f"{vid}_Rt": np.hstack([R, [[0.1], [-0.2], [5.0]]]).tolist(),
                   f"{vid}_distortion": [0.2, -0.05, 1e-3, -5e-4, 0.03], f"{vid}_width": 40, f"{vid}_height": 30}
    tuple_dir = write_tuple(tmp_path, params)
    assert all(e <= PRECISION.get(name, EXACT) for name, e in round_trip_errors(tuple_dir, tmp_path / "good").items())
    with monkeypatch.context() as m:
        m.setattr(cv, "K_from_corner_origin", lambda K: np.array(K, dtype=np.float64))
        errors = round_trip_errors(tuple_dir, tmp_path / "half-pixel")
    assert errors["colmap"] == pytest.approx(0.5) and errors["nerf"] == pytest.approx(0.5), errors
    assert errors["facescape"] <= EXACT and errors["open3d"] <= EXACT, errors
    v = load_capture(tuple_dir).views[0]
    assert max_difference(v.camera, cv.rotate180_w2c(v.world_to_cam), v.camera, v.world_to_cam) > 1


# ---- 2. byte-level corruption of params.json --------------------------------------------------------------

FUZZ_CASES = 5000
FUZZ_SEED = 20261124
TOKENS = [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-0", b"0", b"1" + b"0" * 400, b"9" * 4400, b"true",
          b"false", b"null", b"[]", b"{}", b'""', b'"\\n"', b'"\\ud800"', b'"\\u001b[2J"', b"[[1,2],[3]]",
          b'"1"', b"1.5", b"-3", b"65536", b'"0_K": 1,', b'"00_K": 1,', b'"x_K": 1,', b"\xff\xfe", b"\x00"]
"""JSON fragments a random mutation would rarely produce (AFL-style dictionary)."""
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1–8 random edits: flip a byte, insert a byte or a token, replace a whole number by a token,
    delete 1–16 bytes, truncate."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        at = rng.randrange(len(b) + 1)
        op = rng.random()
        if op < 0.25 and at < len(b):
            b[at] = rng.randrange(256)
        elif op < 0.35:
            b[at:at] = bytes([rng.randrange(256)])
        elif op < 0.5:
            b[at:at] = rng.choice(TOKENS)
        elif op < 0.75:
            numbers = list(NUMBER.finditer(b))
            if numbers:
                m = rng.choice(numbers)
                b[m.start() : m.end()] = rng.choice(TOKENS)
        elif op < 0.95:
            del b[at : at + rng.randint(1, 16)]
        else:
            del b[at:]
    return bytes(b)


@pytest.fixture(scope="module")
def fuzz_tuple(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic tuple (FaceScape's own params.json layout) with a tiny mesh, so loading is fast."""
    root = tmp_path_factory.mktemp("fuzz")
    (tuple_dir,) = make_sample(root, n_views=3, long_side=200)
    (root / "models" / tuple_dir.parent.name / f"{tuple_dir.name}.ply").write_bytes(MESH.export(file_type="ply"))
    return tuple_dir


def loaded_problem(capture) -> str:
    """Why an accepted params.json is not a valid set of cameras ("" when it is)."""
    for v in capture.views:
        c = v.camera
        if not (c.width > 0 and c.height > 0 and c.fx > 0 and c.fy > 0):
            return f"view {v.id}: non-positive size or focal"
        if not (np.isfinite(c.K).all() and np.isfinite(c.dist).all() and np.isfinite(v.world_to_cam).all()):
            return f"view {v.id}: non-finite camera"
        if not (np.allclose(v.R @ v.R.T, np.eye(3), atol=1e-5) and np.linalg.det(v.R) > 0):
            return f"view {v.id}: pose is not a rotation"
    return ""


def fuzz(tuple_dir: Path, cases: int, seed: int) -> tuple[Counter, Counter, list[str]]:
    """(outcomes, error reasons, failures) of `cases` mutations of the tuple's params.json."""
    params = tuple_dir / "params.json"
    original = params.read_bytes()
    rng = random.Random(seed)
    outcomes: Counter = Counter()
    reasons: Counter = Counter()
    failures: list[str] = []
    try:
        for _ in range(cases):
            params.write_bytes(mutate(original, rng))
            try:
                capture = load_capture(tuple_dir)
            except InputError as exc:
                outcomes["InputError"] += 1
                reasons[re.split(r"[:(,]", exc.reason)[0].strip()[:40]] += 1
                text = str(exc)
                if "\n" in text or not text.isprintable() or str(params) not in text or len(text) > 500:
                    failures.append(f"bad message: {text!r}")
            except Exception as exc:  # the property: nothing else may escape
                failures.append(f"{type(exc).__name__}: {exc}")
            else:
                outcomes["loaded"] += 1
                if problem := loaded_problem(capture):
                    failures.append(f"accepted an invalid camera: {problem}")
    finally:
        params.write_bytes(original)
    return outcomes, reasons, failures


def test_fuzzed_params_json_only_gives_one_line_input_errors(fuzz_tuple: Path, capsys: pytest.CaptureFixture) -> None:
    outcomes, reasons, failures = fuzz(fuzz_tuple, FUZZ_CASES, FUZZ_SEED)
    assert failures == []
    assert sum(outcomes.values()) == FUZZ_CASES
    assert outcomes["loaded"] > 50 and outcomes["InputError"] > 1500, outcomes  # both paths exercised
    assert len(reasons) >= 15, reasons  # errors from many different checks, not just JSON syntax
    assert capsys.readouterr().err == ""  # nothing printed (no numpy warnings) while loading
    print(f"fuzz: {FUZZ_CASES} mutated params.json, {dict(outcomes)}, {len(reasons)} distinct reasons")


def test_fuzzer_negative_control(fuzz_tuple: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzzer finds the bugs of a naive loader that takes matrices as numpy reads them."""
    naive = lambda value, shapes, where: np.array(value, dtype=np.float64)  # noqa: E731
    monkeypatch.setattr(loader, "matrix", naive)
    monkeypatch.setattr(jsonvalues, "matrix", naive)  # Rt, through jsonvalues.rigid
    _, _, failures = fuzz(fuzz_tuple, 300, FUZZ_SEED)
    assert len(failures) > 10, failures
