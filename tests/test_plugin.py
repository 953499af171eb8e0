"""A third-party exporter: the README's "Writing an exporter" module, installed as a distribution on
sys.path (a package plus a `.dist-info` with its `fsconvert.exporters` entry point), converts the
sample with its check on from the command line and from Python; an incomplete plugin is named in
one warning line and left out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available
from fsconvert.cli import main
from fsconvert.export import export
from fsconvert.loader import load_capture
from fsconvert.protocol import read_manifest

REPO = Path(__file__).resolve().parent.parent
FSCONVERT = Path(sys.executable).with_name("fsconvert")


def readme_exporter() -> str:
    """The first Python block of the README's "Writing an exporter" section."""
    section = (REPO / "README.md").read_text().split("## Writing an exporter", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def install(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """What `pip install` leaves in site-packages: the modules and `<dist>-0.1.dist-info`."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[fsconvert.exporters]\n{lines}")
    for name, text in modules.items():
        (site / f"{name}.py").write_text(text)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site folder holding the README's plugin and a broken one, on sys.path and PYTHONPATH."""
    site = tmp_path / "site"
    install(site, "fsconvert_pinhole", {"pinhole": "fsconvert_pinhole"}, {"fsconvert_pinhole": readme_exporter()})
    broken = readme_exporter().replace("def read(", "def _read(").replace('NAME = "pinhole"', 'NAME = "halfdone"')
    install(site, "fsconvert_halfdone", {"halfdone": "fsconvert_halfdone"}, {"fsconvert_halfdone": broken})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    available.cache_clear()  # the registry looks for plugins once per process
    yield site
    for name in ("fsconvert_pinhole", "fsconvert_halfdone"):
        sys.modules.pop(name, None)
    available.cache_clear()


def test_readme_exporter_is_about_30_lines():
    code = [line for line in readme_exporter().splitlines() if line.strip()]
    assert 25 <= len(code) <= 40


def test_plugin_from_the_command_line(site: Path, sample_tuple: Path, tmp_path: Path):
    out = tmp_path / "cli"
    done = subprocess.run([FSCONVERT, "to-pinhole", str(sample_tuple), "-o", str(out), "-j", "1", "-q",
                           "--indent", "2", "--scale", "0.5"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    n = len(load_capture(sample_tuple).views)
    assert f"wrote {out} (pinhole, {n} views)" in done.stdout and f"PASS: {n}/{n} views" in done.stdout
    warning = [line for line in done.stderr.splitlines() if "halfdone" in line]
    assert warning == ["fsconvert: warning: exporter 'halfdone' is unusable (fsconvert_halfdone): missing read"]
    assert (out / "cameras.json").read_text().startswith('{\n  "images/')  # --indent 2 reached the plugin
    manifest = read_manifest(out)
    assert manifest["format"] == "pinhole" and manifest["options"] == {"image": manifest["options"]["image"],
                                                                       "indent": 2}
    assert manifest["options"]["image"]["scale"] == 0.5
    assert sorted(p.name for p in (out / "images").iterdir()) == [Path(v["name"]).name for v in manifest["views"]]
    assert json.loads((out / "check" / "check.json").read_text())["passed"] is True

    listed = subprocess.run([FSCONVERT, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "to-pinhole" in listed and "to-halfdone" not in listed

    # its program, from its PROGRAMS, is one the check knows: listed by `check --reader` and used by it
    readers = subprocess.run([FSCONVERT, "check", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "pinhole" in readers.split("--reader {", 1)[1].split("}", 1)[0].split(",")
    again = subprocess.run([FSCONVERT, "check", str(out), "--reader", "pinhole", "--overlays", "none"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"PASS: {n}/{n} views of the pinhole export" in again.stdout, again.stdout
    other = subprocess.run([FSCONVERT, "check", str(out), "--reader", "colmap", "--overlays", "none"],
                           capture_output=True, text=True, timeout=600)
    assert other.returncode == 1
    assert "FAIL: read-back failed: colmap does not read the pinhole layout (its readers: pinhole)" in other.stdout


def test_plugin_from_python_and_a_batch_config(site: Path, sample_tuple: Path, tmp_path: Path, capsys):
    assert "pinhole" in available() and "halfdone" not in available()
    assert "exporter 'halfdone' is unusable" in capsys.readouterr().err
    done = export(load_capture(sample_tuple), "pinhole", tmp_path / "py")
    assert done.check is not None and done.check.passed and done.check.export_dir == tmp_path / "py"
    assert done.format == "pinhole" and len(done.views) == len(done.manifest["views"])

    config = tmp_path / "run.yaml"
    config.write_text(f"input: {sample_tuple}\nout: cfg\nformat: pinhole\njobs: 1\n"
                      "options: {pinhole: {indent: 4}}\n")
    assert main(["batch", str(config), "-q"]) == 0
    assert (tmp_path / "cfg" / "cameras.json").read_text().startswith('{\n    "images/')
    config.write_text(f"input: {sample_tuple}\nout: cfg2\nformat: pinhole\noptions: {{pinhole: {{indnt: 4}}}}\n")
    assert main(["batch", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"{config}: key 'options.pinhole.indnt': unknown key (expected one of: indent)\n"), err
