"""The framework around a format's `write`: one staging folder holding the format's files, the
manifest (names and extras as `write` returns them), the check and the record; nothing on failure;
and the footprints the image stage hands to masks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import facescape
from fsconvert.errors import OutputError
from fsconvert.export import export
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.imagestage import write_images
from fsconvert.loader import load_capture
from fsconvert.protocol import CHECK_JSON, MANIFEST, RECORD, missing


@pytest.fixture(scope="module")
def capture(sample_tuple: Path):
    return load_capture(sample_tuple)


def exporter(write) -> SimpleNamespace:
    return SimpleNamespace(NAME="facescape", SUMMARY="test", Options=facescape.Options, read=facescape.read,
                           write=write)


def test_one_folder_holds_the_files_manifest_check_and_record(capture, tmp_path: Path):
    seen = []

    def write(capture, folder, options, *, workers, progress):
        seen.append(folder)
        assert folder.parent == tmp_path and folder.name.startswith(".out.") and not any(folder.iterdir())
        return facescape.write(capture, folder, options, workers=workers, progress=progress) | {"extra": [1, 2]}

    options = facescape.Options(image=ImageOptions(scale=0.25))
    done = export(capture, exporter(write), tmp_path / "out", options, record={"fingerprint": "x"})
    out = tmp_path / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not seen[0].exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == done.manifest and list(manifest)[-2:] == ["excluded", "extra"] and manifest["extra"] == [1, 2]
    assert [v["name"] for v in manifest["views"]] == [f"{v.id}.jpg" for v in capture.views]
    assert done.views == tuple(v.id for v in capture.views) and done.excluded == tuple(v.id for v in capture.excluded)
    assert done.check.passed and done.check.export_dir == out and (out / CHECK_JSON).is_file()
    record = json.loads((out / RECORD).read_text())
    assert record == {"fingerprint": {"fingerprint": "x"},
                      "result": {"views": list(done.views), "excluded": list(done.excluded), "check_passed": True}}


def test_a_failing_write_leaves_nothing(capture, tmp_path: Path):
    def write(capture, folder, options, **_):
        (folder / "half.txt").write_text("half")
        raise OutputError("disk full")

    def wrong(capture, folder, options, **_):
        return {"images": ["0.jpg"]}

    with pytest.raises(OutputError, match="disk full"):
        export(capture, exporter(write), tmp_path / "a")
    with pytest.raises(TypeError, match="must return 'images': one image name per view"):
        export(capture, exporter(wrong), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_an_export(capture, tmp_path: Path):
    options = facescape.Options(image=ImageOptions(scale=0.25))
    export(capture, "facescape", tmp_path / "out", options, thresholds=None)
    with pytest.raises(OutputError, match="already exists"):
        export(capture, "facescape", tmp_path / "out", options, thresholds=None)
    assert export(capture, "facescape", tmp_path / "out", options, overwrite=True, thresholds=None).check is None
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not written by fsconvert"):
        export(capture, "facescape", tmp_path / "mine", options, overwrite=True, thresholds=None)


def test_the_protocol_check_names_what_is_missing():
    assert missing(facescape) == []
    incomplete = SimpleNamespace(NAME="x", Options=ImageOptions, write=print)
    assert missing(incomplete) == ["SUMMARY", "Options.image: ImageOptions (the first field)", "read"]


def test_footprints_are_where_the_remap_reads_source_pixels(capture, tmp_path: Path):
    """Against the maps computed afresh: inside the decoded source image, and 255 in the masks only there."""
    for options in (ImageOptions(scale=0.5), ImageOptions(undistort=False, scale=0.5), ImageOptions(undistort=False)):
        plans = plan_views(capture.views, options)
        names = [f"{p.view.id}{p.suffix}" for p in plans]
        footprints = write_images(plans, names, tmp_path / str(id(options)), footprints=True)
        for plan, footprint in zip(plans, footprints):
            mask = footprint.mask()
            assert mask.shape == plan.camera.size[::-1]
            if plan.resample:
                mx, my = plan.maps()
                W, H = (-(-n // plan.reduce) for n in plan.view.camera.size)
                assert np.array_equal(mask, (mx >= 0) & (mx <= W - 1) & (my >= 0) & (my <= H - 1))
            else:
                assert mask.all()
            if options.undistort:
                assert 0 < mask.mean() < 1  # undistortion leaves an empty border
            assert np.array_equal(footprint.alpha() == 255, mask)
        assert write_images(plans, names, tmp_path / f"again{id(options)}") is None
        assert cv2.imread(str(tmp_path / str(id(options)) / names[0])) is not None
