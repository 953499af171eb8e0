"""The MVSNet layout read back by the three programs it is for, each by an independent re-implementation of its own
loading code (not the exporter's readers): MVSNet's token-based `load_cam` (YoYo000/MVSNet `mvsnet/preprocess.py`),
CasMVSNet's line-indexed float32 `read_cam_file` and `scale_mvs_input` (alibaba/cascade-stereo
`CasMVSNet/datasets/general_eval.py`) and PatchmatchNet's `read_cam_file` (FangjinhuaWang/PatchmatchNet
`datasets/data_io.py`). Each program's camera reprojects the sample's mesh against the source camera carried through
the image plan, and each program's depth hypotheses must hold the mesh its view sees; the programs that misread a
form of the depth line (PatchmatchNet the 4-token line, CasMVSNet and MVSNet the 2-token one) and CasMVSNet's
resize of a size that is not a multiple of 32 must fail the check."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import output_pixels, plans_by_name, visible_depths

from exporters import mvsnet
from fsconvert.check import check_export
from fsconvert.cli import main
from fsconvert.mesh import load_mesh
from fsconvert.protocol import read_manifest
from fsconvert.render import Renderer

PX_TOL = 0.01
"""The check's camera threshold (exported pixels)."""
F32_PX = 2e-4
"""Bound on the reprojection error of cameras parsed in float32 (measured ≤ 6e-5 px on the sample)."""
SLACK = 10.0
"""The check's bound on a depth range's extent over the visible mesh's (measure.Thresholds.depth_range_slack)."""
MAX_POINTS = 4000

# The programs' constants, from their sources (not from the exporter).
CAS_NDEPTHS, CAS_INTERVAL_SCALE = 192, 1.06  # CasMVSNet test.py --numdepth default; README runs --interval_scale 1.06
CAS_MAX_W, CAS_MAX_H = 1152, 864  # CasMVSNet test.py --max_w, --max_h defaults

EXPORTS = {
    "default": [],
    "pmnet": ["--for", "patchmatchnet"],
    "shared32": ["--intrinsics", "shared", "--size-multiple", "32"],
    "shared32-1152": ["--intrinsics", "shared", "--size-multiple", "32", "--max-size", "1152"],
}




@pytest.fixture(scope="module")
def vertices(capture) -> np.ndarray:
    X = np.asarray(load_mesh(capture.mesh).vertices, dtype=np.float64)
    return X[np.linspace(0, len(X) - 1, min(MAX_POINTS, len(X))).astype(int)]


@pytest.fixture(scope="module")
def exported(sample_tuple, tmp_path_factory):
    """case → export folder, written by the command line once per module on first use."""
    root, done = tmp_path_factory.mktemp("mvsnet-programs"), {}

    def get(case: str) -> Path:
        if case not in done:
            out = root / case
            assert main(["to-mvsnet", str(sample_tuple), "-o", str(out), "-q", "-j", "2", "--no-overlays",
                         *EXPORTS[case]]) == 0
            done[case] = out
        return done[case]

    return get


@pytest.fixture(scope="module")
def renderer(capture):
    with Renderer(load_mesh(capture.mesh)) as r:
        yield r


# ---- the programs' loading code, re-implemented -------------------------------------------------------------


def load_cam(path: Path, max_d: int = 256) -> dict:
    """MVSNet preprocess.py load_cam (interval_scale 1): whitespace tokens into float64; 29 tokens: max_d
    hypotheses; 30: num; 31: num and max. The hypotheses run from min to depth_end (test.py: max for the 4-token
    line, else min + (num − 1)·interval)."""
    words = path.read_text().split()
    cam = np.zeros((2, 4, 4))
    for i in range(4):
        for j in range(4):
            cam[0][i][j] = words[4 * i + j + 1]
    for i in range(3):
        for j in range(3):
            cam[1][i][j] = words[3 * i + j + 18]
    cam[1][3][0], cam[1][3][1] = words[27], words[28]
    cam[1][3][2] = words[29] if len(words) >= 30 else max_d
    end = float(words[30]) if len(words) == 31 else cam[1][3][0] + (cam[1][3][2] - 1) * cam[1][3][1]
    return {"E": cam[0], "K": cam[1][:3, :3], "range": (cam[1][3][0], end), "tokens": len(words)}


def _lines(path: Path) -> list[str]:
    with open(path) as f:
        return [line.rstrip() for line in f.readlines()]


def pmnet_read_cam_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PatchmatchNet datasets/data_io.py read_cam_file: (intrinsics, extrinsics, depth_params)."""
    lines = _lines(path)
    extrinsics = np.fromstring(" ".join(lines[1:5]), dtype=np.float32, sep=" ").reshape((4, 4))
    intrinsics = np.fromstring(" ".join(lines[7:10]), dtype=np.float32, sep=" ").reshape((3, 3))
    depth_params = np.fromstring(lines[11], dtype=np.float32, sep=" ") if len(lines) >= 12 else np.empty(0)
    return intrinsics, extrinsics, depth_params


def cas_read_cam_file(path: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    """CasMVSNet general_eval.py read_cam_file: (intrinsics / 4, extrinsics, depth_min, depth_interval)."""
    lines = _lines(path)
    extrinsics = np.fromstring(" ".join(lines[1:5]), dtype=np.float32, sep=" ").reshape((4, 4))
    intrinsics = np.fromstring(" ".join(lines[7:10]), dtype=np.float32, sep=" ").reshape((3, 3))
    intrinsics[:2, :] /= 4.0
    depth_min = float(lines[11].split()[0])
    depth_interval = float(lines[11].split()[1])
    if len(lines[11].split()) >= 3:
        num_depth = lines[11].split()[2]
        depth_max = depth_min + int(float(num_depth)) * depth_interval
        depth_interval = (depth_max - depth_min) / CAS_NDEPTHS
    depth_interval *= CAS_INTERVAL_SCALE
    return intrinsics, extrinsics, depth_min, depth_interval


def cas_scale_mvs_input(h: int, w: int, intrinsics: np.ndarray, max_w: int = CAS_MAX_W, max_h: int = CAS_MAX_H,
                        base: int = 32) -> tuple[float, float, np.ndarray]:
    """CasMVSNet general_eval.py scale_mvs_input, without the image: (new_w, new_h, intrinsics scaled in place)."""
    if h > max_h or w > max_w:
        scale = 1.0 * max_h / h
        if scale * w > max_w:
            scale = 1.0 * max_w / w
        new_w, new_h = scale * w // base * base, scale * h // base * base
    else:
        new_w, new_h = 1.0 * w // base * base, 1.0 * h // base * base
    intrinsics[0, :] *= 1.0 * new_w / w
    intrinsics[1, :] *= 1.0 * new_h / h
    return new_w, new_h, intrinsics


def cas_read(out: Path, name: str, size: tuple[int, int]) -> dict:
    """CasMVSNet's view: its stage-3 (full resolution) K in the resized image of new_w × new_h, E, and the
    `np.arange` depth hypotheses of __getitem__."""
    intrinsics, extrinsics, depth_min, depth_interval = cas_read_cam_file(cam_path(out, name))
    w, h = size
    new_w, new_h, intrinsics = cas_scale_mvs_input(h, w, intrinsics)
    stage3 = intrinsics.copy()
    stage3[:2, :] = intrinsics[:2, :] * 4
    depth_values = np.arange(depth_min, depth_interval * (CAS_NDEPTHS - 0.5) + depth_min, depth_interval,
                             dtype=np.float32)
    return {"K": stage3.astype(np.float64), "E": extrinsics.astype(np.float64), "scale": (new_w / w, new_h / h),
            "size": (new_w, new_h), "range": (float(depth_values[0]), float(depth_values[-1]))}


# ---- measuring -------------------------------------------------------------------------------------------


def cam_path(out: Path, name: str) -> Path:
    return out / "cams" / f"{Path(name).stem}_cam.txt"






def project(K: np.ndarray, E: np.ndarray, X: np.ndarray) -> np.ndarray:
    uvw = (X @ E[:3, :3].T + E[:3, 3]) @ K.T
    return uvw[:, :2] / uvw[:, 2:]




def holds(depth_range: tuple[float, float], z: np.ndarray) -> bool:
    """The range holds the visible depths and is not > SLACK× wider (the check's rule)."""
    near, far = depth_range
    return near <= z.min() and far >= z.max() and far - near <= SLACK * (z.max() - z.min())


def casmvsnet_shift(size: tuple[int, int]) -> float:
    """The exported-pixel offset of CasMVSNet's camera: it maps c to c·s where the resize maps it to (c + 0.5)·s
    − 0.5, i.e. (0.5 − 0.5·s)/s exported pixels on each axis."""
    new_w, new_h, _ = cas_scale_mvs_input(size[1], size[0], np.eye(3))
    s = np.array([new_w / size[0], new_h / size[1]])
    return float(np.linalg.norm((0.5 - 0.5 * s) / s))


def check_cli(out: Path, reader: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["check", str(out), "--reader", reader, "--no-overlays"])
    return code, capsys.readouterr().out


# ---- each program on the form written for it -----------------------------------------------------------


def test_mvsnet_load_cam_reads_the_default_export_exactly(exported, capture, vertices, renderer, capsys):
    out = exported("default")
    worst = 0.0
    for name, plan in plans_by_name(out, capture, mvsnet).items():
        cam = load_cam(cam_path(out, name))
        assert cam["tokens"] == 31
        idx, want = output_pixels(plan, vertices)
        worst = max(worst, float(np.abs(project(cam["K"], cam["E"], vertices[idx]) - want).max()))
        assert holds(cam["range"], visible_depths(renderer, plan, vertices)), name
    assert worst < 1e-6  # float64 from repr-precision text
    assert check_cli(out, "mvsnet", capsys)[0] == 0
    assert check_export(out, overlays="none").reader == "mvsnet"  # the default program of --for mvsnet


def test_casmvsnet_depth_hypotheses_hold_the_mesh_of_the_default_export(exported, capture, vertices, renderer):
    out = exported("default")
    for name, plan in plans_by_name(out, capture, mvsnet).items():
        cas = cas_read(out, name, plan.camera.size)
        z = visible_depths(renderer, plan, vertices)
        assert holds(cas["range"], z), (name, cas["range"], z.min(), z.max())


def test_patchmatchnet_reads_its_form_right(exported, capture, vertices, renderer, capsys):
    out = exported("pmnet")
    worst = 0.0
    for name, plan in plans_by_name(out, capture, mvsnet).items():
        K, E, depth_params = pmnet_read_cam_file(cam_path(out, name))
        assert len(depth_params) == 2 and len(_lines(cam_path(out, name))[11].split()) == 2
        idx, want = output_pixels(plan, vertices)
        worst = max(worst, float(np.linalg.norm(project(K.astype(float), E.astype(float), vertices[idx]) - want,
                                                axis=1).max()))
        z = visible_depths(renderer, plan, vertices)
        assert holds((float(depth_params[0]), float(depth_params[1])), z), name
    assert worst < F32_PX
    code, text = check_cli(out, "patchmatchnet", capsys)
    assert code == 0, text
    assert check_export(out, overlays="none").reader == "patchmatchnet"  # the default program of --for patchmatchnet


def test_casmvsnet_reads_a_multiple_of_32_within_its_limits_exactly(exported, capture, vertices, renderer, capsys):
    out = exported("shared32-1152")
    worst = 0.0
    for name, plan in plans_by_name(out, capture, mvsnet).items():
        cas = cas_read(out, name, plan.camera.size)
        assert cas["scale"] == (1.0, 1.0) and cas["size"][0] <= CAS_MAX_W and cas["size"][1] <= CAS_MAX_H
        idx, want = output_pixels(plan, vertices)
        worst = max(worst, float(np.linalg.norm(project(cas["K"], cas["E"], vertices[idx]) - want, axis=1).max()))
        assert holds(cas["range"], visible_depths(renderer, plan, vertices)), name
    assert worst < F32_PX
    code, text = check_cli(out, "casmvsnet", capsys)
    assert code == 0, text
    assert not any("CasMVSNet" in w for w in read_manifest(out).get("warnings", []))


# ---- negative controls: a program that misreads the export fails its check ----------------------------------


def test_casmvsnet_reads_the_default_sizes_off_by_its_resize(exported, capture, vertices, capsys):
    """1086×724 and 724×1086 are no multiples of 32: CasMVSNet resizes them (1056×704; 576×864 after its
    864-pixel limit) and scales K without the half-pixel term. Measured in exported pixels, as the check does."""
    out = exported("default")
    measured = {}
    for name, plan in plans_by_name(out, capture, mvsnet).items():
        cas = cas_read(out, name, plan.camera.size)
        s = np.array(cas["scale"])
        idx, want = output_pixels(plan, vertices)
        want_resized = (want + 0.5) * s - 0.5  # where cv2.resize puts the exported pixels
        err = np.linalg.norm((project(cas["K"], cas["E"], vertices[idx]) - want_resized) / s, axis=1)
        measured[name] = float(err.max())
        assert err.max() == pytest.approx(casmvsnet_shift(plan.camera.size), abs=F32_PX)
        assert err.min() == pytest.approx(casmvsnet_shift(plan.camera.size), abs=F32_PX)  # a constant shift
    sizes = {plans_by_name(out, capture, mvsnet)[n].camera.size: e for n, e in measured.items()}
    assert sizes[(1086, 724)] == pytest.approx(0.0201, abs=2e-4) and sizes[(724, 1086)] == pytest.approx(0.1817, abs=2e-4)
    warning = next(w for w in read_manifest(out)["warnings"] if "CasMVSNet" in w)
    assert "1086×724: 0.02 px" in warning and "724×1086: 0.18 px" in warning

    code, text = check_cli(out, "casmvsnet", capsys)
    assert code == 1
    report = check_export(out, overlays="none", reader="casmvsnet")
    for v in report.views:
        assert v.camera_max_px == pytest.approx(measured[v.name], abs=F32_PX)  # the exporter's rules agree
        assert PX_TOL < v.camera_max_px < 1 and any("casmvsnet reads this view" in p for p in v.problems)
    assert any("resizes each source view to its reference view's size" in p for p in report.problems)


def test_a_multiple_of_32_beyond_casmvsnets_limits_is_read_off(exported, capture, capsys):
    """--intrinsics shared --size-multiple 32 alone gives the sample a 1184×832 frame, wider than test.py's
    1152: CasMVSNet scales it down to 1152×800 (floor to 32), and the camera is off again."""
    out = exported("shared32")
    (size,) = {p.camera.size for p in plans_by_name(out, capture, mvsnet).values()}
    assert size[0] % 32 == 0 and size[1] % 32 == 0 and size[0] > CAS_MAX_W
    assert check_cli(out, "casmvsnet", capsys)[0] == 1
    for v in check_export(out, overlays="none", reader="casmvsnet").views:
        assert v.camera_max_px == pytest.approx(casmvsnet_shift(size), abs=F32_PX) and v.camera_max_px > PX_TOL


def test_patchmatchnet_misreads_the_4_token_line(exported, capture, vertices, renderer, capsys):
    out = exported("default")
    for name, plan in plans_by_name(out, capture, mvsnet).items():
        _, _, depth_params = pmnet_read_cam_file(cam_path(out, name))
        assert len(depth_params) == 4 and depth_params[1] < depth_params[0]  # depth_max = the interval
        assert not holds((float(depth_params[0]), float(depth_params[1])), visible_depths(renderer, plan, vertices))
    code, text = check_cli(out, "patchmatchnet", capsys)
    assert code == 1
    rows = [line for line in text.splitlines() if re.match(r"\s*\d+\s+images/\d{8}\.jpg\s", line)]
    assert len(rows) == len(read_manifest(out)["views"])
    for line in rows:  # one line per view: its id, its name, the range read and why it fails
        assert re.search(r"FAIL  patchmatchnet reads the depth range [\d.]+…[\d.e-]+, the mesh it sees spans "
                         r"[\d.]+…[\d.]+: it does not hold it", line), line


@pytest.mark.parametrize("reader", ["casmvsnet", "mvsnet"])
def test_the_2_token_line_is_misread_by_the_4_token_readers(reader, exported, capture, vertices, renderer, capsys):
    out = exported("pmnet")
    for name, plan in plans_by_name(out, capture, mvsnet).items():
        z = visible_depths(renderer, plan, vertices)
        read = cas_read(out, name, plan.camera.size) if reader == "casmvsnet" else load_cam(cam_path(out, name))
        assert read["range"][1] - read["range"][0] > SLACK * (z.max() - z.min())  # MAX read as the interval
    code, text = check_cli(out, reader, capsys)
    assert code == 1 and f"{reader} reads the depth range" in text and "wider (> 10×)" in text


def test_a_cam_file_without_its_depth_line(exported, tmp_path, capsys):
    """The line-indexed readers stop (IndexError on line 11): one line naming the file. MVSNet's load_cam reads
    the 27 tokens with depth min, interval, num and max 0: the view's range holds nothing."""
    out = Path(shutil.copytree(exported("default"), tmp_path / "broken"))
    path = out / "cams" / "00000000_cam.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:10]) + "\n")
    for reader in ("casmvsnet", "patchmatchnet"):
        code, text = check_cli(out, reader, capsys)
        (line,) = [x for x in text.splitlines() if x.startswith("FAIL: read-back failed")]
        assert code == 1 and str(path) in line and "line 11" in line, (reader, text)
    code, text = check_cli(out, "mvsnet", capsys)
    (row,) = [x for x in text.splitlines() if "images/00000000.jpg" in x]
    assert code == 1 and "mvsnet reads the depth range 0…0" in row and "does not hold it" in row
