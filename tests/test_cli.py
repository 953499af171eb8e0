"""The command line: help lists every exporter, `info`, a tuple folder's conversion and its rerun, and
user errors as one line with exit 2 and no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available
from fsconvert.cli import main
from fsconvert.loader import load_capture
from fsconvert.mesh import load_mesh
from fsconvert.protocol import RECORD

FSCONVERT = Path(sys.executable).with_name("fsconvert")


def test_help_lists_every_exporter():
    done = subprocess.run([FSCONVERT, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip().startswith("to-")}
    assert listed == {f"to-{name}" for name in available()} >= {"to-colmap", "to-nerf", "to-open3d", "to-facescape"}
    assert "batch" in done.stdout and "info" in done.stdout


def test_info_on_the_sample(sample_tuple: Path, sample_root: Path, capsys):
    capture = load_capture(sample_tuple)
    assert main(["info", str(sample_tuple)]) == 0
    out = capsys.readouterr().out
    excluded = [v.id for v in capture.excluded]
    assert f"tuple {capture.name}  ({sample_tuple})" in out
    assert f"views: {len(capture.views)} used, {len(excluded)} excluded (valid=false): {excluded}" in out
    portrait = sum(v.camera.is_portrait for v in capture.views)
    assert f"{len(capture.views) - portrait} × 1086×724 landscape, {portrait} × 724×1086 portrait" in out
    mesh = load_mesh(capture.mesh)
    assert f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces" in out
    assert main(["info", str(sample_root), "--ids", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"dataset {sample_root}: 1 tuples, 1 subjects\ntuple {capture.name}")


def test_tuple_folder_convert_rerun_overwrite_check(sample_tuple: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = ["to-facescape", str(sample_tuple), "-o", str(out), "-q", "-j", "1", "--scale", "0.5"]
    n = len(load_capture(sample_tuple).views)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out} (facescape, {n} views)\n")
    assert f"PASS: {n}/{n} views" in captured.out and "left out 1 view(s) marked valid=false" in captured.err
    record = json.loads((out / RECORD).read_text())
    assert record["fingerprint"]["options"]["image"]["scale"] == 0.5 and record["result"]["check_passed"] is True

    stamp = (out / RECORD).stat().st_mtime_ns
    assert main(argv) == 0
    assert f"{out}: up to date (facescape, {n} views, check passed); nothing to do" in capsys.readouterr().out
    assert (out / RECORD).stat().st_mtime_ns == stamp

    other = argv[:-1] + ["0.25"]
    assert main(other) == 2
    assert capsys.readouterr().err == (f"fsconvert: error: {out}: already exists, out of date: options changed "
                                       "(use --overwrite to replace it)\n")
    assert main(other + ["--overwrite"]) == 0
    assert json.loads((out / RECORD).read_text())["fingerprint"]["options"]["image"]["scale"] == 0.25
    capsys.readouterr()
    assert main(["check", str(out), "--no-overlays"]) == 0
    assert f"PASS: {n}/{n} views" in capsys.readouterr().out


def _user_error_cases(sample_tuple: Path, sample_root: Path, tmp: Path) -> list[tuple[list[str], str]]:
    foreign = tmp / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    return [
        (["to-facescape", str(tmp / "nowhere"), "-o", str(tmp / "o1")], f"{tmp / 'nowhere'}: no such folder"),
        (["to-facescape", str(sample_tuple), "-o", str(tmp / "o2"), "--ids", "1"],
         f"{sample_tuple}: --ids/--exps select tuples of a dataset, but this is one tuple folder"),
        (["to-facescape", str(sample_root), "-o", str(tmp / "o3"), "--mesh", str(tmp / "m.ply")],
         f"{sample_root}: --mesh is one tuple's mesh; for a dataset give --mesh-root"),
        (["to-facescape", str(sample_root), "-o", str(tmp / "o4"), "--ids", "3-1"], "bad id range '3-1'"),
        (["to-facescape", str(sample_root), "-o", str(tmp / "o5"), "--exps", "9_none"],
         f"{sample_root}: no tuple matches --ids/--exps"),
        (["to-facescape", str(sample_tuple), "-o", str(foreign), "-j", "1"],
         f"{foreign}: already exists, not written by fsconvert (use --overwrite to replace it)"),
        (["to-facescape", str(sample_tuple), "-o", str(tmp / "o6"), "--image-format", "png"],
         "the FaceScape layout holds .jpg images only"),
        (["check", str(foreign)], f"{foreign}: not an fsconvert export"),
        (["batch", str(tmp / "missing.yaml")], f"{tmp / 'missing.yaml'}: cannot read: No such file or directory"),
    ]


def test_user_errors_are_one_line_exit_2(sample_tuple: Path, sample_root: Path, tmp_path: Path, capsys):
    for argv, message in _user_error_cases(sample_tuple, sample_root, tmp_path):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err.startswith("fsconvert: error: ") and captured.err.count("\n") == 1, captured.err
        assert message in captured.err, (argv, captured.err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]  # no error left an output behind
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["notes.txt", "sub"]


@pytest.mark.parametrize("argv, message", [
    (["to-facescape", "x"], "the following arguments are required: -o/--out"),
    (["to-facescape", "x", "-o", "y", "-j", "0"], "argument -j/--jobs: must be at least 1, got 0"),
    (["to-facescape", "x", "-o", "y", "--scale", "0.5", "--max-size", "100"], "not allowed with argument"),
    (["to-fbx", "x"], "invalid choice: 'to-fbx'"),
])
def test_usage_errors_exit_2_without_traceback(argv: list[str], message: str):
    done = subprocess.run([FSCONVERT, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0].startswith("usage: fsconvert") and lines[-1].startswith("fsconvert") and message in lines[-1]
    assert "Traceback" not in done.stderr


def test_console_script_user_error_is_one_line(tmp_path: Path):
    done = subprocess.run([FSCONVERT, "to-colmap", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"fsconvert: error: {tmp_path / 'nowhere'}: no such folder\n"


def test_sample_command_writes_a_convertible_dataset(tmp_path: Path, capsys):
    out = tmp_path / "sample"
    argv = ["sample", str(out), "--subjects", "2", "--exps", "1_neutral", "--views", "3", "--long-side", "200"]
    assert main(argv) == 0
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.glob("images/*/*/params.json")) == [
        "images/1/1_neutral", "images/2/1_neutral"]
    assert main(["sample", str(out)]) == 2  # exists: not replaced
    assert "already exists (use --overwrite" in capsys.readouterr().err
    shutil.rmtree(out / "models" / "2")
    assert main(["to-facescape", str(out), "-o", str(tmp_path / "x"), "-q", "-j", "1", "--no-check"]) == 2
    summary = capsys.readouterr().out
    assert "converted 1 (2 images), skipped 0 (up to date), failed 1" in summary and "2/1_neutral" in summary
    assert "mesh not found" in summary


THREADS_PROBE = """
import os, sys, cv2
from pathlib import Path
from fsconvert.cli import main
code = main(sys.argv[1:])
names = [Path(t, "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()]
print(code, cv2.getNumThreads(), os.environ["OMP_NUM_THREADS"], sum(n.startswith("llvmpipe") for n in names))
"""


@pytest.mark.parametrize("threads", [None, 2])
def test_one_job_is_one_core_unless_threads_are_asked(sample_tuple: Path, tmp_path: Path, threads):
    """-j 1 (and each of -j N's workers) runs OpenCV, llvmpipe and Open3D on one thread (llvmpipe rasterises on
    the calling thread: no thread of its own); --threads T gives T."""
    argv = ["to-colmap", str(sample_tuple), "-o", str(tmp_path / "out"), "-q", "-j", "1", "--scale", "0.5"]
    argv += ["--threads", str(threads)] if threads else []
    env = {k: v for k, v in os.environ.items() if k not in ("LP_NUM_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", THREADS_PROBE, *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    want = threads or 1
    rasterisers = 0 if want == 1 else want
    assert done.stdout.splitlines()[-1].split() == ["0", str(want), str(want), str(rasterisers)], done.stderr
