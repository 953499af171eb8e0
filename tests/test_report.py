"""The check reports people look at: `check/index.html` and `check/rig.png` after every export (every view
listed, check.json's numbers exactly, deterministic bytes), a broken export's failing view first and red,
the overlay policy, `report.html` of a dataset run, `fsconvert info --plot`, and the page in a real browser."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import METRIC_ARGS
from PIL import Image

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available, facescape
from fsconvert.check import check_export, overlay_policy, overlay_sample
from fsconvert.checkpage import NUMBERS
from fsconvert.cli import main
from fsconvert.datasetrun import run_dataset
from fsconvert.job import TupleJob
from fsconvert.loader import iter_dataset
from fsconvert.measure import Thresholds
from fsconvert.model import Camera, View
from fsconvert.protocol import CHECK_JSON, CHECK_PAGE, RIG
from fsconvert.rig import SIZE, Frustum, _frustum_lines, plot_rig
from fsconvert.runpage import RUN_PAGE, write_run_page
from fsconvert.synthetic import make_sample

FAIL_RED = np.array([0xD6, 0x27, 0x28])
"""The failing-row cell and failing-frustum colour."""


class Page(HTMLParser):
    """The rows of an HTML table page: for each <tr>, its attributes and its cells (attributes, text)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self._cell: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "tr":
            self.rows.append({"attrs": a, "cells": []})
        elif tag in ("td", "th") and self.rows:
            self._cell = {"attrs": a, "text": ""}
            self.rows[-1]["cells"].append(self._cell)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data

    def view_rows(self) -> list[dict]:
        return [r for r in self.rows if r["attrs"].get("id", "").startswith("view-")]


def page_of(export: Path) -> Page:
    return Page((export / CHECK_PAGE).read_text(encoding="utf-8"))


def assert_page_matches_check(export: Path) -> list[dict]:
    """Every view of the manifest is a row of index.html with check.json's numbers, exactly; failing rows first."""
    check = json.loads((export / CHECK_JSON).read_text())
    manifest = json.loads((export / "fsconvert" / "manifest.json").read_text())
    rows = page_of(export).view_rows()
    assert sorted(int(r["attrs"]["id"][5:]) for r in rows) == sorted(v["id"] for v in manifest["views"])
    by_id = {v["id"]: v for v in check["views"]}
    header = [c["text"] for c in page_of(export).rows[0]["cells"]]
    for row in rows:
        v = by_id[int(row["attrs"]["id"][5:])]
        cells = dict(zip(header, row["cells"]))
        assert row["attrs"]["class"] == ("pass" if v["passed"] else "fail")
        assert cells["result"]["text"] == ("PASS" if v["passed"] else "FAIL")
        assert cells["image"]["text"].startswith(v["name"])
        for key, title, fmt in NUMBERS:
            cell = cells[title]
            if v[key] is None:
                assert cell["text"] == "—" and "data-value" not in cell["attrs"]
            else:
                assert float(cell["attrs"]["data-value"]) == v[key]  # all the digits check.json holds
                assert cell["text"] == format(v[key], fmt)
        assert cells["points"]["text"] == str(v["points"])
        for problem in v["problems"]:
            assert problem in cells["problems"]["text"]
    passed = [by_id[int(r["attrs"]["id"][5:])]["passed"] for r in rows]
    assert passed == sorted(passed)  # failing views first
    return rows


def red_pixels(png: Path) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(np.count_nonzero(np.abs(rgb - FAIL_RED).sum(axis=2) < 40))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A 6-view tuple at 300 px (view 5 valid=false: 5 views exported unless --include-invalid), for fast exports."""
    root = tmp_path_factory.mktemp("small")
    (tuple_dir,) = make_sample(root, n_views=6, long_side=300)
    return tuple_dir


@pytest.fixture(scope="module")
def facescape_export(small: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fs") / "out"
    assert main(["to-facescape", str(small), "-o", str(out), "-q", "-j", "1"]) == 0
    return out


@pytest.mark.parametrize("fmt", sorted(available()))
def test_every_export_has_a_page_and_a_rig(fmt: str, small: Path, tmp_path: Path, capsys):
    out = tmp_path / fmt
    assert main([f"to-{fmt}", str(small), "-o", str(out), "-q", "-j", "1", "--include-invalid",
                 *METRIC_ARGS.get(fmt, [])]) == 0
    rows = assert_page_matches_check(out)
    assert len(rows) == 6 and all(r["attrs"]["class"] == "pass" for r in rows)
    assert sum("(valid=false)" in r["cells"][2]["text"] for r in rows) == 1  # the view exported with --include-invalid
    page = page_of(out)
    check = json.loads((out / CHECK_JSON).read_text())
    overlays = sorted(Path(v["overlay"]).name for v in check["views"])
    assert len(overlays) == 6 and sorted(i for i in page.images if i.startswith("mv_result_")) == overlays
    assert all((out / "check" / name).is_file() for name in overlays)  # relative links resolve
    text = (out / CHECK_PAGE).read_text(encoding="utf-8")
    assert "PASS — 6 of 6 views pass" in text and f"fsconvert {fsconvert.__version__}" in text
    assert str(small.resolve()) in text and "http" not in text and "<script" not in text  # self-contained
    assert f"rules of <b>{check['reader']}</b>" in text  # whose reader, and every export-time warning
    assert all(f"<li>warning: {escape(w)}</li>" in text for w in check["warnings"])
    rig = Image.open(out / RIG)
    assert rig.size == SIZE and "Software" not in rig.info
    assert "rig.png" in page.images
    before = {p: (out / p).read_bytes() for p in (CHECK_PAGE, RIG, CHECK_JSON)}
    capsys.readouterr()
    assert main(["check", str(out)]) == 0
    assert {p: (out / p).read_bytes() for p in (CHECK_PAGE, RIG, CHECK_JSON)} == before  # the same bytes again


def test_shifted_camera_is_first_in_red_with_its_numbers(facescape_export: Path, tmp_path: Path, capsys):
    out = tmp_path / "broken"
    shutil.copytree(facescape_export, out)
    clean_red = red_pixels(out / RIG)
    params = json.loads((out / "params.json").read_text())
    params["3_Rt"][0][3] += 0.2  # view 3 moved sideways by 0.2 world units (~1 % of its distance)
    (out / "params.json").write_text(json.dumps(params))
    assert main(["check", str(out), "--overlays", "failed"]) == 1
    capsys.readouterr()
    rows = assert_page_matches_check(out)
    first = rows[0]
    assert first["attrs"] == {"class": "fail", "id": "view-3"} and all(r["attrs"]["class"] == "pass" for r in rows[1:])
    check = {v["id"]: v for v in json.loads((out / CHECK_JSON).read_text())["views"]}
    assert check[3]["camera_max_px"] > 1  # pixels, not float noise
    cells = {c["attrs"].get("title"): c["text"] for c in first["cells"]}
    assert cells[json.dumps(check[3]["camera_max_px"])] == format(check[3]["camera_max_px"], ".2e")
    text = (out / CHECK_PAGE).read_text(encoding="utf-8")
    assert "FAIL — 4 of 5 views pass; failing: 3" in text and "px off" in first["cells"][-1]["text"]
    # --overlays failed: the failing view's overlay only; it is linked from its row
    assert sorted(p.name for p in (out / "check").glob("mv_result_*.jpg")) == ["mv_result_3.jpg"]
    assert "mv_result_3.jpg" in page_of(out).images
    assert red_pixels(out / RIG) > clean_red + 200  # its frustum is drawn in red


def test_a_view_failing_only_on_the_renders_gets_its_overlay(facescape_export: Path, tmp_path: Path):
    out = tmp_path / "broken"
    shutil.copytree(facescape_export, out)
    params = json.loads((out / "params.json").read_text())
    params["2_Rt"][1][3] += 1.0
    (out / "params.json").write_text(json.dumps(params))
    report = check_export(out, Thresholds(camera_px=1e6), overlays="failed")
    (bad,) = [v for v in report.views if not v.passed]
    assert bad.id == 2 and bad.camera_max_px < 1e6 and bad.iou < 0.99  # passed the camera limit, not the IoU
    assert bad.overlay == "check/mv_result_2.jpg" and (out / bad.overlay).is_file()
    assert [v.overlay for v in report.views if v.passed] == [None] * 4


def test_overlay_policy(facescape_export: Path, tmp_path: Path, capsys):
    assert [overlay_policy(v) for v in (True, False, "all", "none", "failed", "3", 2)] == \
        ["all", "none", "all", "none", 0, 3, 2]
    for bad in ("-1", "two", 1.5, None):
        with pytest.raises(argparse.ArgumentTypeError):
            overlay_policy(bad)
    assert overlay_sample(2, 6) == {0, 5} and overlay_sample(3, 6) == {0, 2, 5}  # evenly spaced, fixed
    assert overlay_sample(9, 4) == {0, 1, 2, 3} and overlay_sample("none", 4) == set() == overlay_sample(0, 4)
    out = tmp_path / "out"
    shutil.copytree(facescape_export, out)
    assert main(["check", str(out), "--overlays", "2"]) == 0
    check = json.loads((out / CHECK_JSON).read_text())
    assert [v["id"] for v in check["views"] if v["overlay"]] == [check["views"][0]["id"], check["views"][-1]["id"]]
    assert_page_matches_check(out)
    assert main(["check", str(out), "--no-overlays"]) == 0  # the old spelling of --overlays none
    assert not list((out / "check").glob("mv_result_*.jpg"))
    assert all(r["cells"][3]["text"] == "—" for r in assert_page_matches_check(out))
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(out), "--overlays", "some"])
    assert exit_.value.code == 2
    assert "expected all, none, failed or a number of views, got 'some'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    make_sample(root, subjects=("1", "2", "3"), n_views=4, long_side=240)
    return root


def links(report: Path) -> dict[str, str]:
    """Tuple name → the href of its row in report.html."""
    page = Page(report.read_text(encoding="utf-8"))
    out = {}
    for row in page.rows[1:]:
        href = [h for h in page.links if h.endswith(f"{row['cells'][0]['text']}/check/index.html")]
        out[row["cells"][0]["text"]] = href[0] if href else ""
    return out


def test_run_report_names_the_failed_tuple_and_links_every_tuple(dataset: Path, tmp_path: Path, capsys):
    """A dataset run of 3 tuples where one's check fails (a camera shifted on export): report.html lists it
    first with its numbers, and links the check page of every tuple."""
    def write(capture, folder, options, **kwargs):
        written = facescape.write(capture, folder, options, **kwargs)
        if capture.subject == "2":
            params = json.loads((folder / "params.json").read_text())
            params[f"{capture.views[0].id}_Rt"][0][3] += 0.2
            (folder / "params.json").write_text(json.dumps(params))
        return written

    shifted = SimpleNamespace(**{k: getattr(facescape, k) for k in ("NAME", "Options", "read")}, write=write)
    out = tmp_path / "out"
    jobs = [TupleJob(source=r.path, out_dir=out / r.subject / r.expression, fmt=shifted, overlays="failed")
            for r in iter_dataset(dataset)]
    results = run_dataset(jobs)
    assert [r.check_passed for r in results] == [True, False, True]
    report = write_run_page(out, results)
    assert report == out / RUN_PAGE
    page = Page(report.read_text(encoding="utf-8"))
    rows = page.rows[1:]
    assert [r["cells"][0]["text"] for r in rows] == ["2/1_neutral", "1/1_neutral", "3/1_neutral"]  # failure first
    bad = rows[0]
    assert bad["attrs"]["class"] == "fail" and [c["text"] for c in bad["cells"][1:3]] == ["converted", "FAIL"]
    check = json.loads((out / "2" / "1_neutral" / CHECK_JSON).read_text())
    worst_px = max(v["camera_max_px"] for v in check["views"])
    assert float(bad["cells"][4]["attrs"]["data-value"]) == worst_px > 1
    assert float(bad["cells"][5]["attrs"]["data-value"]) == min(v["iou"] for v in check["views"] if v["iou"] is not None)
    failing = [v for v in check["views"] if not v["passed"]]
    assert len(failing) == 1 and f"view {failing[0]['id']}: " in bad["cells"][6]["text"]
    assert "reads this view" in bad["cells"][6]["text"] and "px off" in bad["cells"][6]["text"]
    hrefs = links(report)
    assert sorted(hrefs) == ["1/1_neutral", "2/1_neutral", "3/1_neutral"]
    for name, href in hrefs.items():
        assert href == f"{name}/check/index.html" and (out / href).is_file()
    assert "FAIL — 3 tuples: converted 3, skipped 0 (up to date), failed 0; check failed for 1" in report.read_text()


def test_cli_run_report_with_a_broken_tuple_and_on_rerun(dataset: Path, tmp_path: Path, capsys):
    """From the command line: a tuple with a broken params.json is named with its reason; a rerun (every
    other tuple skipped as up to date) reports them from their check.json, as before."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "images" / "3" / "1_neutral" / "params.json").write_text("{not json")
    out = tmp_path / "out"
    assert main(["to-colmap", str(data), "-o", str(out), "-q", "-j", "1"]) == 2
    assert f"report: {out / RUN_PAGE}" in capsys.readouterr().out
    first = (out / RUN_PAGE).read_text(encoding="utf-8")
    rows = Page(first).rows[1:]
    assert [r["cells"][0]["text"] for r in rows] == ["3/1_neutral", "1/1_neutral", "2/1_neutral"]
    assert rows[0]["cells"][1]["text"] == "failed" and "params.json" in rows[0]["cells"][6]["text"]
    hrefs = links(out / RUN_PAGE)
    assert hrefs["3/1_neutral"] == "" and all((out / hrefs[n]).is_file() for n in ("1/1_neutral", "2/1_neutral"))
    for name in ("1/1_neutral", "2/1_neutral"):  # dataset default: failing views plus 2 others
        assert len(list((out / name / "check").glob("mv_result_*.jpg"))) == 2
    assert main(["to-colmap", str(data), "-o", str(out), "-q", "-j", "1"]) == 2
    again = (out / RUN_PAGE).read_text(encoding="utf-8")
    assert again == first.replace("<td class=\"result\">converted</td>", "<td class=\"result\">skipped</td>").replace(
        "converted 2, skipped 0", "converted 0, skipped 2")


def test_info_plot_draws_the_source_rig(small: Path, tmp_path: Path, capsys):
    png = tmp_path / "rig.png"
    assert main(["info", str(small), "--plot", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    first = png.read_bytes()
    assert Image.open(png).size == SIZE
    assert main(["info", str(small), "--plot", str(png)]) == 0 and png.read_bytes() == first  # deterministic
    assert main(["info", str(small.parent.parent), "--plot", str(png)]) == 2
    assert "--plot draws one tuple's camera rig" in capsys.readouterr().err


def test_frustum_corners_project_to_the_image_corners():
    """The frustum's far corners, projected through the camera, land on the outer pixel edges; the centre is C."""
    cam = Camera(640, 480, np.array([[500.0, 0, 300.2], [0, 510.0, 250.7], [0, 0, 1]]))
    angle = np.radians(30)
    R = np.array([[np.cos(angle), 0, -np.sin(angle)], [0, 1, 0], [np.sin(angle), 0, np.cos(angle)]])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, [0.3, -0.2, 4.0]
    view = View(0, Path("0.jpg"), cam, w2c)
    lines = _frustum_lines(Frustum("0", cam, w2c), view.cam_to_world, np.zeros(3))
    np.testing.assert_allclose(lines[0][0], view.centre, atol=1e-12)
    corners = np.array([line[1] for line in lines[:4]])
    np.testing.assert_allclose(view.project(corners), [[-0.5, -0.5], [639.5, -0.5], [639.5, 479.5], [-0.5, 479.5]],
                               atol=1e-9)
    assert view.project(lines[5][1:2])[0, 1] < -0.5  # the "up" tick is above the image


def test_rig_draws_each_style_where_its_cameras_are(tmp_path: Path):
    """Two cameras 1 unit left and right of a mesh, looking along +z with y down: in both views (front, top) the
    failed one's red lies right of the passing one's blue, the mesh's grey between them; dashed grey for
    valid=false; the same bytes twice."""
    cam = Camera(640, 480, np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]))

    def posed(x: float) -> np.ndarray:
        w2c = np.eye(4)
        w2c[:3, 3] = [-x, 0.0, 5.0]  # camera centre (x, 0, -5)
        return w2c

    frustums = [Frustum("0", cam, posed(-1.0)), Frustum("1", cam, posed(1.0), "failed"),
                Frustum("2", cam, posed(0.0), "invalid")]
    points = np.random.default_rng(0).normal(scale=0.2, size=(500, 3))
    png = tmp_path / "rig.png"
    plot_rig(png, frustums, points, "two cameras")
    first = png.read_bytes()
    plot_rig(png, frustums, points, "two cameras")
    assert png.read_bytes() == first
    bgr = cv2.imread(str(png))
    assert bgr.shape[1::-1] == SIZE
    for left, right in ((70, 580), (680, 1190)):  # the panels' columns
        panel = bgr[80:480, left + 1:right].astype(int)
        cols = {name: np.nonzero(np.all(np.abs(panel - colour) <= 8, axis=2))[1]
                for name, colour in (("ok", (168, 95, 31)), ("failed", (40, 39, 214)), ("grey", (153, 153, 153)),
                                     ("invalid", (140, 140, 140)))}
        assert all(len(c) > 20 for c in cols.values()), {k: len(c) for k, c in cols.items()}
        assert cols["ok"].mean() + 40 < cols["grey"].mean() < cols["failed"].mean() - 40


def test_page_in_a_real_browser(facescape_export: Path, tmp_path: Path):
    """Headless Chromium renders the broken export's page: not blank, every row in the DOM, the red failing cell."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the page was not opened in a browser")
    out = tmp_path / "broken"
    shutil.copytree(facescape_export, out)
    params = json.loads((out / "params.json").read_text())
    params["4_Rt"][0][3] += 0.2
    (out / "params.json").write_text(json.dumps(params))
    check_export(out)
    url = (out / CHECK_PAGE).resolve().as_uri()
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count('<tr class="pass" id="view-') == 4 and dom.count('<tr class="fail" id="view-4">') == 1
    shot = tmp_path / "page.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1280,900", url], capture_output=True,
                   timeout=120, check=True)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert rgb.shape[:2] == (900, 1280) and rgb.std() > 20  # not a blank page
    red = np.abs(rgb - FAIL_RED).sum(axis=2) < 12
    rows, cols = np.nonzero(red)
    assert red.sum() > 2000  # the verdict banner and the failing row's result cell
    assert rows.min() < 150 and cols.min() < 100  # ... at the top left, where they belong
    thumbs = rgb[:, 150:500]
    assert (np.abs(thumbs - rgb[5, 5]).sum(axis=2) > 60).sum() > 10000  # the overlay thumbnails were loaded
