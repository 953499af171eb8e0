"""Bad input and failure behaviour: a corpus of malformed tuples, options and output locations.

Every corpus case damages a copy of a small valid synthetic tuple (3 views, one valid=false), runs the
CLI in-process (any exception other than FsconvertError escapes and fails the test) and requires: exit
code 2, exactly one stderr line `fsconvert: error: ...` naming the file, view and key where they apply,
and no output left behind (neither OUT nor a `.OUT.*.partial` / `.OUT.*.old` folder). A handful run as
real subprocesses of the venv's `fsconvert` script to prove no traceback reaches the terminal.
Outputs are atomic for every exporter: a failed `--overwrite` run leaves the previous export intact.
Paths with spaces and non-ASCII characters must work. The case count is printed in the terminal summary.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import METRIC_ARGS

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available
from fsconvert import cli
from fsconvert.protocol import CHECK_JSON, MANIFEST, read_manifest
from fsconvert.synthetic import RT_SCALE_DICT, make_sample

SUBJECT, EXP = "1", "1_neutral"
FORMATS = sorted(available())
FSCONVERT = Path(sys.executable).with_name("fsconvert")
KINDS = ("in-process", "subprocess", "atomic", "must-work")


class _CorpusSummary:
    """A plugin registered by this module: counts corpus tests by outcome, prints them in the summary."""

    def __init__(self) -> None:
        self.kind: dict[str, str] = {}
        """Test id → kind of corpus case."""
        self.outcomes: Counter = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid in self.kind and (report.when == "call" or report.outcome != "passed"):
            self.outcomes[report.outcome] += 1
            self.outcomes[(self.kind[report.nodeid], report.outcome)] += 1

    def pytest_terminal_summary(self, terminalreporter) -> None:
        kinds = ", ".join(f"{k} {self.outcomes[(k, 'passed')]}" for k in KINDS)
        terminalreporter.write_line(
            f"bad-input corpus: {len(self.kind)} cases, {self.outcomes['passed']} passed ({kinds}), "
            f"{self.outcomes['failed']} failed"
        )


SUMMARY = _CorpusSummary()


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.is_registered(SUMMARY):
        request.config.pluginmanager.register(SUMMARY, "fsconvert-bad-input-corpus")


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Mark this test as a corpus case of a kind (for the count in the terminal summary)."""

    def mark(kind: str) -> None:
        assert kind in KINDS
        SUMMARY.kind[request.node.nodeid] = kind

    return mark


# ---- the valid tuple every case starts from ---------------------------------------------------------


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input-base")
    make_sample(root, subjects=(SUBJECT,), expressions=(EXP,), n_views=3, long_side=200)
    return root


@dataclass
class Data:
    """A fresh copy of the valid dataset, where a case damages things, and the output path."""

    root: Path
    out: Path
    monkeypatch: pytest.MonkeyPatch
    args: list[str] = field(default_factory=list)
    """Extra command-line arguments the case adds."""
    fmt: str = "facescape"

    @property
    def tuple(self) -> Path:
        return self.root / "images" / SUBJECT / EXP

    @property
    def params(self) -> Path:
        return self.tuple / "params.json"

    @property
    def rt_scale_dict(self) -> Path:
        return self.root / RT_SCALE_DICT

    @property
    def mesh(self) -> Path:
        return self.root / "models" / SUBJECT / f"{EXP}.ply"

    def image(self, view: int) -> Path:
        return self.tuple / f"{view}.jpg"

    def load(self) -> dict:
        return json.loads(self.params.read_text())

    def save(self, params: dict) -> None:
        self.params.write_text(json.dumps(params, indent=1))

    def set(self, key: str, value: object) -> None:
        self.save(self.load() | {key: value})

    def argv(self) -> list[str]:
        return [f"to-{self.fmt}", str(self.tuple), "-o", str(self.out), "-q", "-j", "1",
                *METRIC_ARGS.get(self.fmt, []), *self.args]


@pytest.fixture
def data(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Data:
    shutil.copytree(base, tmp_path / "data")
    return Data(tmp_path / "data", tmp_path / "out", monkeypatch)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Entries beside the output that the run may have left (everything but the input copy)."""
    return sorted(p.name for p in folder.iterdir() if p.name != "data")


# ---- the corpus --------------------------------------------------------------------------------------

Case = Callable[[Data], list[str]]
"""Damages `data` and returns the fragments the one error line must contain (file, view, key, reason)."""
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


def params_case(name: str, key: str, value: object, reason: str, view: int | None = 1, shown: str = "") -> None:
    """One key of params.json set to `value` (view 1 is valid, view 0 is valid=false); `shown`: the key as
    the message must print it, when that differs."""

    def damage(d: Data) -> list[str]:
        d.set(key, value)
        where = f"view {view}: " if view is not None else ""
        return [f"{d.params}: {where}key '{shown or key}': {reason}"]

    case(name)(damage)


ROT = [[0.0, -1.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.25], [0.0, 0.0, 1.0, 30.0]]
K_OK = [[800.0, 0.0, 100.0], [0.0, 800.0, 60.0], [0.0, 0.0, 1.0]]

params_case("K 2×3", "1_K", K_OK[:2], "expected 4×4 or 3×3 numbers, got 2×3")
params_case("K 4×4 with a bad last row and column", "1_K", [r + [5.0] for r in K_OK] + [[0, 0, 1, 1]],
            "a 4×4 K must have a last row or column of (0, 0, 0, 1)")
params_case("K with strings", "1_K", [["800", 0, 100], [0, 800, 60], [0, 0, 1]], "expected 4×4 or 3×3 numbers, got")
params_case("K with an integer beyond float range", "1_K", [[10**400, 0, 100], [0, 800, 60], [0, 0, 1]],
            "contains an integer too large for a float")
params_case("K ragged", "1_K", [[800, 0, 100], [0, 800], [0, 0, 1]],
            "expected 4×4 or 3×3 numbers, got rows of different lengths")
params_case("K NaN", "1_K", [[float("nan"), 0, 100], [0, 800, 60], [0, 0, 1]], "contains NaN or infinity")
params_case("K zero focal", "1_K", [[0.0, 0, 100], [0, 800, 60], [0, 0, 1]], "focal length must be positive (fx=0")
params_case("K negative focal", "1_K", [[800.0, 0, 100], [0, -800, 60], [0, 0, 1]], "focal length must be positive")
params_case("K skew", "1_K", [[800.0, 3.0, 100], [0, 800, 60], [0, 0, 1]], "non-zero skew is not supported")
params_case("principal point outside", "1_K", [[800.0, 0, 250], [0, 800, 60], [0, 0, 1]],
            "principal point (250, 60) outside the 200×133 image")
params_case("Rt 3×3", "1_Rt", [r[:3] for r in ROT], "expected 4×4 or 3×4 numbers, got 3×3")
params_case("Rt infinity", "1_Rt", [ROT[0], ROT[1], ROT[2][:3] + [float("inf")]], "contains NaN or infinity")
params_case("Rt not a rotation", "1_Rt", [[2 * x for x in r[:3]] + r[3:] for r in ROT], "R is not a rotation")
params_case("Rt determinant −1", "1_Rt", [ROT[0], ROT[1], [0.0, 0.0, -1.0, 30.0]], "R has determinant −1")
params_case("Rt null", "1_Rt", None, "expected 4×4 or 3×4 numbers, got None")
params_case("distortion of length 3", "1_distortion", [0.1, 0.0, 0.0], "expected 5 or 4 or 1×5 or 1×4 numbers, got 3")
params_case("distortion with a string", "1_distortion", [0.1, "0", 0, 0, 0], "expected 5 or 4 or 1×5")
params_case("width zero", "1_width", 0, "expected a positive integer, got 0")
params_case("height negative", "1_height", -133, "expected a positive integer, got -133")
params_case("width fractional", "1_width", 200.5, "expected a positive integer, got 200.5")
params_case("width as a string", "1_width", "200", "expected a positive integer, got '200'")
params_case("width beyond JPEG", "1_width", 10**9, "1000000000 pixels is beyond JPEG's limit of 65535")
params_case("valid as a string", "1_valid", "yes", "expected true or false, got 'yes'")
params_case("matches fractional", "1_matches", 1.5, "expected an integer, got 1.5")
params_case("extra key", "1_focal", 800, "unknown key (expected '<view>_<K|Rt|", view=None)
params_case("non-numeric view id", "a_K", K_OK, "view id is not a non-negative integer", view=None)
params_case("key with a newline", "1_K\n2", K_OK, "unknown key", view=None, shown="1_K\\n2")
params_case("key with a trailing newline", "1_K\n", K_OK, "unknown key", view=None, shown="1_K\\n")
params_case("key with a terminal escape", "\x1b[2J_K", K_OK, "view id is not", view=None, shown="\\x1b[2J_K")


@case("missing key")
def _(d: Data) -> list[str]:
    params = d.load()
    del params["2_Rt"]
    d.save(params)
    return [f"{d.params}: view 2: key '2_Rt': missing key"]


@case("duplicate view id")
def _(d: Data) -> list[str]:
    d.set("01_sn", "123")
    return [f"{d.params}: key '01_sn': duplicate view id 1 (also spelled '1')"]


@case("duplicate key")
def _(d: Data) -> list[str]:
    d.params.write_text(d.params.read_text().rstrip()[:-1] + ', "2_width": 200}')
    return [f"{d.params}: key '2_width': duplicate key"]


@case("invalid JSON")
def _(d: Data) -> list[str]:
    text = d.params.read_text()
    d.params.write_text(text[: len(text) // 2])
    return [f"{d.params}: invalid JSON: "]


@case("empty params.json")
def _(d: Data) -> list[str]:
    d.params.write_text("")
    return [f"{d.params}: invalid JSON: Expecting value at line 1 column 1"]


@case("params.json not UTF-8")
def _(d: Data) -> list[str]:
    d.params.write_bytes(d.params.read_bytes().replace(b'"1_sn": "', b'"1_sn": "\xe9'))
    return [f"{d.params}: cannot read: 'utf-8' codec can't decode byte 0xe9"]


@case("params.json a list")
def _(d: Data) -> list[str]:
    d.params.write_text("[1, 2, 3]")
    return [f"{d.params}: expected a JSON object of '<view>_<key>' entries"]


@case("params.json with no views")
def _(d: Data) -> list[str]:
    d.params.write_text("{}")
    return [f"{d.params}: no views"]


@case("integer longer than 4300 digits")
def _(d: Data) -> list[str]:
    d.params.write_text(re.sub(r'"1_matches": \d+', '"1_matches": ' + "9" * 5000, d.params.read_text()))
    return [f"{d.params}: invalid JSON: Exceeds the limit (4300 digits)"]


@case("every view invalid")
def _(d: Data) -> list[str]:
    params = d.load()
    d.save(params | {f"{v}_valid": False for v in (0, 1, 2)})
    return [f"{d.params}: no valid view (every view has valid=false)"]


@case("no params.json")
def _(d: Data) -> list[str]:
    d.params.unlink()
    return [f"{d.tuple}: no tuples here (expected IMGS_ROOT/<id>/<exp>/params.json)"]


@case("input folder missing")
def _(d: Data) -> list[str]:
    shutil.rmtree(d.tuple)
    return [f"{d.tuple}: no such folder"]


@case("image missing")
def _(d: Data) -> list[str]:
    d.image(2).unlink()
    return [f"{d.image(2)}: view 2: image missing"]


@case("image truncated")
def _(d: Data) -> list[str]:
    data = d.image(1).read_bytes()
    d.image(1).write_bytes(data[: len(data) // 2])
    return [f"{d.image(1)}: view 1: truncated JPEG (no end marker after the image data)"]


@case("image truncated just before its end marker")
def _(d: Data) -> list[str]:
    d.image(2).write_bytes(d.image(2).read_bytes()[:-2])
    return [f"{d.image(2)}: view 2: truncated JPEG"]


@case("image corrupt")
def _(d: Data) -> list[str]:
    d.image(1).write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return [f"{d.image(1)}: view 1: not a readable image: cannot identify image file"]


@case("image empty")
def _(d: Data) -> list[str]:
    d.image(1).write_bytes(b"")
    return [f"{d.image(1)}: view 1: not a readable image"]


@case("image size differs from params")
def _(d: Data) -> list[str]:
    d.set("2_height", 134)
    return [f"{d.image(2)}: view 2: image is 133×200 but {d.params} says 133×134"]


@case("mesh missing")
def _(d: Data) -> list[str]:
    d.mesh.unlink()
    return [f"{d.tuple}: mesh not found: expected MESH_ROOT/<id>/<exp>.ply"]


@case("mesh given but missing")
def _(d: Data) -> list[str]:
    d.args += ["--mesh", str(d.root / "nope.ply")]
    return [f"{d.root / 'nope.ply'}: mesh file not found"]


@case("mesh empty")
def _(d: Data) -> list[str]:
    d.mesh.write_bytes(b"")
    return [f"{d.mesh}: not a readable mesh"]


def align_case(name: str, table: object, key: str | None, reason: str, text: str | None = None) -> None:
    """--align with the dict replaced by `table` (or raw `text`): one error naming the dict and `key`."""

    def damage(d: Data) -> list[str]:
        d.rt_scale_dict.write_text(text if text is not None else json.dumps(table))
        d.args += ["--align", str(d.rt_scale_dict)]
        where = f"key '{key}': " if key is not None else ""
        return [f"{d.rt_scale_dict}: {where}{reason}"]

    case(name)(damage)


EYE = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
align_case("align: not a JSON object", [1, 2], None, "expected a JSON object {id: {expression: [scale, Rt 3×4]}}")
align_case("align: invalid JSON", None, None, "invalid JSON: ", text='{"1": {"1": [2.0, ')
align_case("align: subject not an object", {"1": [2.0, EYE]}, "1", "expected an object {expression: [scale, Rt 3×4]}")
align_case("align: entry not a pair", {"1": {"1": [2.0]}}, "1.1", "expected [scale, Rt 3×4], got [2.0]")
align_case("align: Rt 3×3", {"1": {"1": [2.0, [r[:3] for r in EYE]]}}, "1.1",
           "Rt: expected 4×4 or 3×4 numbers, got 3×3")
align_case("align: Rt not a rotation", {"1": {"1": [2.0, [[2 * x for x in r] for r in EYE]]}}, "1.1",
           "Rt: R is not a rotation")
align_case("align: Rt a reflection", {"1": {"1": [2.0, [EYE[0], EYE[1], [0.0, 0.0, -1.0, 0.0]]]}}, "1.1",
           "Rt: R has determinant −1")
align_case("align: Rt with a string", {"1": {"1": [2.0, [EYE[0], EYE[1], [0, 0, "1", 0]]]}}, "1.1",
           "Rt: expected 4×4 or 3×4 numbers")
align_case("align: scale zero", {"1": {"1": [0, EYE]}}, "1.1", "scale must be a positive finite number, got 0")
align_case("align: scale negative", {"1": {"1": [-40.0, EYE]}}, "1.1", "scale must be a positive finite number")
align_case("align: scale NaN", None, "1.1", "scale must be a positive finite number, got nan",
           text='{"1": {"1": [NaN, ' + json.dumps(EYE) + "]}}")
align_case("align: scale infinite", None, "1.1", "scale must be a positive finite number, got inf",
           text='{"1": {"1": [Infinity, ' + json.dumps(EYE) + "]}}")
align_case("align: scale a string", {"1": {"1": ["40", EYE]}}, "1.1", "scale must be a positive finite number")
align_case("align: scale beyond float", None, "1.1", "scale must be a positive finite number",
           text='{"1": {"1": [' + "9" * 400 + ", " + json.dumps(EYE) + "]}}")
align_case("align: subject missing", {"2": {"1": [2.0, EYE]}}, "1", "no entry for subject 1 (tuple 1/1_neutral)")
align_case("align: expression missing", {"1": {"4": [2.0, EYE]}}, "1.1",
           "no entry for expression 1 (tuple 1/1_neutral)")


@case("align: file missing")
def _(d: Data) -> list[str]:
    d.args += ["--align", str(d.root / "nowhere.json")]
    return [f"{d.root / 'nowhere.json'}: alignment file not found"]


@case("units without align")
def _(d: Data) -> list[str]:
    d.args += ["--units", "m"]
    return ["--units sets the unit of the aligned frame: give --align RT_SCALE_DICT too"]


@case("mesh is a text file")
def _(d: Data) -> list[str]:
    d.mesh.write_text("these are not the vertices you are looking for\n")
    return [f"{d.mesh}: not a readable mesh: Not a ply file"]


@case("mesh truncated")
def _(d: Data) -> list[str]:
    data = d.mesh.read_bytes()
    d.mesh.write_bytes(data[: len(data) // 2])
    return [f"{d.mesh}: not a readable mesh"]


@case("mesh with vertices but no faces")
def _(d: Data) -> list[str]:
    d.mesh.write_bytes(trimesh.PointCloud(np.random.default_rng(0).random((50, 3))).export(file_type="ply"))
    return [f"{d.mesh}: mesh has no faces"]


@case("mesh with NaN vertices")
def _(d: Data) -> list[str]:
    box = trimesh.creation.box()
    vertices = box.vertices.copy()
    vertices[3, 1] = np.nan
    d.mesh.write_bytes(trimesh.Trimesh(vertices, box.faces, process=False).export(file_type="ply"))
    return [f"{d.mesh}: mesh has NaN or infinite vertices"]


@case("mesh faces out of range")
def _(d: Data) -> list[str]:
    box = trimesh.creation.box()
    faces = box.faces.copy()
    faces[5, 2] = 99
    d.mesh.write_bytes(trimesh.Trimesh(box.vertices, faces, process=False).export(file_type="ply"))
    return [f"{d.mesh}: mesh faces index vertices outside 0..7"]


@case("principal point centred with the distortion kept")
def _(d: Data) -> list[str]:
    d.args += ["--principal-point", "center", "--distortion", "keep"]
    return ["principal_point 'center' needs undistortion"]


@case("scale above 1")
def _(d: Data) -> list[str]:
    d.args += ["--scale", "1.5"]
    return ["scale must be in (0, 1], got 1.5"]


@case("JPEG quality 0")
def _(d: Data) -> list[str]:
    d.args += ["--jpeg-quality", "0"]
    return ["jpeg_quality must be in 1..100, got 0"]


@case("Open3D with the distortion kept")
def _(d: Data) -> list[str]:
    d.fmt = "open3d"
    d.args += ["--distortion", "keep"]
    return ["Open3D has no lens distortion model"]


@case("--ids on one tuple")
def _(d: Data) -> list[str]:
    d.args += ["--ids", "1"]
    return [f"{d.tuple}: --ids/--exps select tuples of a dataset"]


@case("output exists")
def _(d: Data) -> list[str]:
    (d.out / "mine").mkdir(parents=True)
    return [f"{d.out}: already exists, not written by fsconvert (use --overwrite to replace it)"]


@case("output not written by fsconvert, with --overwrite")
def _(d: Data) -> list[str]:
    (d.out / "thesis").mkdir(parents=True)
    (d.out / "thesis" / "chapter1.tex").write_text("months of work\n")
    d.args += ["--overwrite"]
    return [f"{d.out}: not written by fsconvert (no {MANIFEST}); refusing to replace it"]


@case("output is a file")
def _(d: Data) -> list[str]:
    d.out.write_text("a file\n")
    d.args += ["--overwrite"]
    return [f"{d.out}: exists and is not a folder"]


@case("output under a file (read-only location)")
def _(d: Data) -> list[str]:
    blocker = d.out.parent / "blocker"
    blocker.write_text("a file where a folder should be\n")
    d.out = blocker / "out"
    return [f"{blocker}: cannot create output: "]


@case("output folder cannot be created (EACCES)")
def _(d: Data) -> list[str]:
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

    d.monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    return [f"{d.out}: cannot create output: Permission denied"]


@case("read-only file system at the final rename (EROFS)")
def _(d: Data) -> list[str]:
    rename = os.rename

    def refuse(src, dst):
        if Path(dst) == d.out:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), str(dst))
        rename(src, dst)

    d.monkeypatch.setattr(os, "rename", refuse)
    return [f"{d.out}: cannot move the finished export into place: Read-only file system"]


@case("disk full while writing an image (ENOSPC)")
def _(d: Data) -> list[str]:
    disk_full(d.monkeypatch, "write_bytes", after=1)
    return [f"{d.out}/2.jpg: cannot write: No space left on device"]


@case("disk full while writing params.json (ENOSPC)")
def _(d: Data) -> list[str]:
    disk_full(d.monkeypatch, "write_bytes", after=0, name="params.json")
    return [f"{d.out}/params.json: cannot write: No space left on device"]


def disk_full(monkeypatch: pytest.MonkeyPatch, method: str, after: int, name: str | None = None) -> None:
    """`Path.<method>` works `after` times (on files called `name`, or any), then fails like a full disk
    (the write, not the open, fails)."""
    original = getattr(pathlib.Path, method)
    calls = Counter()

    def write(self, *args, **kwargs):
        calls["n"] += name is None or self.name == name
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, method, write)


@pytest.mark.parametrize("name", list(CASES))
def test_corpus(name: str, data: Data, capsys: pytest.CaptureFixture, tally) -> None:
    tally("in-process")
    needles = CASES[name](data)
    work = data.root.parent
    entries = leftovers(work)
    before = snapshot(data.out) if data.out.is_dir() else None
    code, out, err = run_cli(data.argv(), capsys)
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("fsconvert: error: "), err
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    assert out == ""
    assert leftovers(work) == entries  # no OUT, no .OUT.*.partial or .old beside it
    if before is not None:
        assert snapshot(data.out) == before


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_negative_control_a_valid_tuple_converts(data: Data, capsys: pytest.CaptureFixture) -> None:
    """The same harness on the undamaged copy: exit 0, the export and its passing check exist.
    Proves the corpus failures come from the damage, not from the harness."""
    code, out, err = run_cli(data.argv(), capsys)
    assert code == 0, err
    assert f"wrote {data.out} (facescape, 2 views)" in out
    assert err.splitlines() == ["1/1_neutral: left out 1 view(s) marked valid=false: [0]"]
    assert json.loads((data.out / CHECK_JSON).read_text())["passed"] is True
    assert read_manifest(data.out)["format"] == "facescape"


def test_negative_control_the_check_catches_a_wrong_expectation(data: Data, capsys: pytest.CaptureFixture) -> None:
    """The corpus assertions fail when the message lacks what a case promises (here: another view)."""
    needles = CASES["image missing"](data)
    _, _, err = run_cli(data.argv(), capsys)
    assert all(n in err for n in needles)
    assert not all(n.replace("view 2", "view 1") in err for n in needles)


def test_interrupt_leaves_nothing(data: Data, capsys: pytest.CaptureFixture, tally) -> None:
    """Ctrl-C during the image writes: exit 130, one line, no output or temporary folder."""
    tally("in-process")

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    data.monkeypatch.setattr(pathlib.Path, "write_bytes", interrupted)
    code, out, err = run_cli(data.argv(), capsys)
    assert code == 130 and err.splitlines() == ["fsconvert: interrupted"]
    assert leftovers(data.out.parent) == []


# ---- as a real process: nothing but the one line reaches the terminal -------------------------------

SUBPROCESS_CASES = ["invalid JSON", "image truncated", "mesh is a text file", "output exists",
                    "key with a newline", "scale above 1"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_subprocess(name: str, data: Data, tally) -> None:
    tally("subprocess")
    needles = CASES[name](data)
    proc = subprocess.run([str(FSCONVERT), *data.argv()], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("fsconvert: error: "), proc.stderr
    assert all(n in lines[0] for n in needles) and "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ---- atomic outputs and --overwrite, for every exporter ------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_is_atomic(fmt: str, data: Data, capsys: pytest.CaptureFixture, tally) -> None:
    """Export; a changed rerun needs --overwrite; failed --overwrite runs (disk full mid-export, a
    read-only rename, a corrupt image) leave the previous export byte-identical; a good one replaces it."""
    data.fmt = fmt
    data.args = ["--no-check"]
    assert run_cli(data.argv(), capsys)[0] == 0
    first = snapshot(data.out)
    assert read_manifest(data.out)["format"] == fmt and first

    tally("atomic")
    data.args = ["--no-check", "--jpeg-quality", "80"]
    code, _, err = run_cli(data.argv(), capsys)
    assert code == 2 and f"{data.out}: already exists, out of date: options changed (use --overwrite" in err

    data.args.append("--overwrite")
    failures = {
        "disk full": lambda mp: disk_full(mp, "write_bytes", after=1),
        "read-only rename": lambda mp: mp.setattr(os, "rename", _refuse_rename_onto(data.out)),
    }
    for label, inject in failures.items():
        tally("atomic")
        with pytest.MonkeyPatch.context() as mp:
            inject(mp)
            code, _, err = run_cli(data.argv(), capsys)
        assert code == 2 and len(err.splitlines()) == 1 and str(data.out) in err, (label, err)
        assert snapshot(data.out) == first, label
        assert leftovers(data.out.parent) == ["out"], (label, leftovers(data.out.parent))

    tally("atomic")
    good = data.image(1).read_bytes()
    data.image(1).write_bytes(good[: len(good) // 2])
    code, _, err = run_cli(data.argv(), capsys)
    assert code == 2 and f"{data.image(1)}: view 1: truncated JPEG" in err
    assert snapshot(data.out) == first
    data.image(1).write_bytes(good)

    tally("atomic")
    assert run_cli(data.argv(), capsys)[0] == 0
    second = snapshot(data.out)
    assert second != first and read_manifest(data.out)["options"]["image"]["jpeg_quality"] == 80
    assert leftovers(data.out.parent) == ["out"]


def _refuse_rename_onto(target: Path) -> Callable[[str, str], None]:
    """os.rename failing to move a finished temporary folder onto `target` (the restore still works)."""
    rename = os.rename

    def refuse(src, dst) -> None:
        if Path(dst) == target and str(src).endswith(".partial"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), str(dst))
        rename(src, dst)

    return refuse


# ---- what must work -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_unicode_and_spaces_in_paths_work(fmt: str, base: Path, tmp_path: Path, capsys, tally) -> None:
    """Input root, tuple folder, mesh and output with spaces and non-ASCII characters: converts, the check
    passes, and no exported name holds a space (fsconvert names the images itself)."""
    tally("must-work")
    root = tmp_path / "Dätä sét ü"
    exp = "1 neütral façe"
    shutil.copytree(base, root)
    (root / "images" / SUBJECT / EXP).rename(root / "images" / SUBJECT / exp)
    (root / "models" / SUBJECT / f"{EXP}.ply").rename(root / "models" / SUBJECT / f"{exp}.ply")
    out = tmp_path / "out pût" / "résultat 1"
    code, stdout, err = run_cli([f"to-{fmt}", str(root / "images" / SUBJECT / exp), "-o", str(out), "-q", "-j", "1",
                                 *METRIC_ARGS.get(fmt, [])], capsys)
    assert code == 0, err
    assert json.loads((out / CHECK_JSON).read_text())["passed"] is True
    manifest = read_manifest(out)
    assert manifest["source"]["expression"] == exp and len(manifest["views"]) == 2
    assert all(" " not in v["name"] for v in manifest["views"])


def test_missing_image_of_an_invalid_view_works(data: Data, capsys: pytest.CaptureFixture, tally) -> None:
    """View 0 is valid=false: its image is never needed."""
    tally("must-work")
    data.image(0).unlink()
    code, out, err = run_cli(data.argv(), capsys)
    assert code == 0, err
    assert [v["id"] for v in read_manifest(data.out)["views"]] == [1, 2]
