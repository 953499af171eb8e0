"""Datasets assembled from symbolic links (root, subject, tuple, image and mesh levels) convert with the ids,
expressions and paths of their own layout, never those of the link targets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert.cli import main
from fsconvert.loader import find_mesh, layout_path, load_capture
from fsconvert.protocol import MANIFEST, RECORD

SUBJECT, EXPRESSION = "7", "3_mouth_stretch"
VIEWS = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One tuple's files on 'shared storage', under names that say nothing of its id or expression."""
    from fsconvert.synthetic import make_sample

    sample = tmp_path_factory.mktemp("sample")
    (tuple_dir,) = make_sample(sample, subjects=(SUBJECT,), expressions=(EXPRESSION,), n_views=VIEWS, long_side=300)
    store = tmp_path_factory.mktemp("store")
    (store / "shots-0042").mkdir()
    (store / "blobs").mkdir()
    for f in tuple_dir.iterdir():
        os.link(f, store / "shots-0042" / f.name)
        os.link(f, store / "blobs" / f"blob-{f.stem}{f.suffix}")
    os.link(sample / "models" / SUBJECT / f"{EXPRESSION}.ply", store / "scan-0042.ply")
    return store


def _tuple(store: Path, at: Path, how: str) -> None:
    """`at` = IMGS_ROOT/<id>/<exp>: a link to the stored folder, or a folder of (linked) files."""
    at.parent.mkdir(parents=True, exist_ok=True)
    if how == "tuple":
        at.symlink_to(store / "shots-0042", target_is_directory=True)
        return
    at.mkdir()
    for f in (store / "shots-0042").iterdir():
        if how == "images" and f.suffix == ".jpg":
            (at / f.name).symlink_to(store / "blobs" / f"blob-{f.stem}.jpg")
        else:
            os.link(f, at / f.name)


def _mesh(store: Path, at: Path, how: str) -> None:
    """`at` = MESH_ROOT/<id>/<exp>.ply: a link to the stored scan, or a copy of it."""
    at.parent.mkdir(parents=True, exist_ok=True)
    if how == "mesh":
        at.symlink_to(store / "scan-0042.ply")
    else:
        os.link(store / "scan-0042.ply", at)


def _elsewhere(tmp: Path, name: str, link: Path) -> Path:
    """A real folder `tmp/elsewhere/<name>` that `link` points to (so the layout sees `link`'s name)."""
    target = tmp / "elsewhere" / name
    target.mkdir(parents=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return target


LEVELS = ("root", "images_root", "subject", "tuple", "images", "mesh", "mesh_root", "mesh_subject", "every")


def make_dataset(store: Path, tmp: Path, level: str) -> Path:
    """A dataset `tmp/ds` with `images/<id>/<exp>/` and `models/<id>/<exp>.ply`, linked at `level`."""
    ds = tmp / "ds"
    every = level == "every"
    base = _elsewhere(tmp, "dataset-copy", ds) if level in ("root", "every") else ds
    images = _elsewhere(tmp, "all-images", base / "images") if level == "images_root" else base / "images"
    models = _elsewhere(tmp, "all-scans", base / "models") if level in ("mesh_root", "every") else base / "models"
    subject = _elsewhere(tmp, "person-x", images / SUBJECT) if level in ("subject", "every") else images / SUBJECT
    mesh_subject = (_elsewhere(tmp, "person-x-scans", models / SUBJECT) if level in ("mesh_subject", "every")
                    else models / SUBJECT)
    _tuple(store, subject / EXPRESSION, "tuple" if every else level)
    _mesh(store, mesh_subject / f"{EXPRESSION}.ply", "mesh" if every else level)
    if every:  # the linked tuple folder's images are links too
        for f in (store / "shots-0042").glob("*.jpg"):
            f.unlink()
            f.symlink_to(store / "blobs" / f"blob-{f.stem}.jpg")
    return ds


@pytest.fixture
def linked(store: Path, tmp_path: Path, request) -> Path:
    ds = make_dataset(store, tmp_path, request.param)
    yield ds
    if request.param == "every":  # restore the shared store's files
        for f in (store / "shots-0042").glob("*.jpg"):
            f.unlink()
            os.link(store / "blobs" / f"blob-{f.stem}.jpg", f)


def assert_export(out: Path, tuple_dir: Path, mesh: Path) -> None:
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["source"]["tuple"] == str(tuple_dir)
    assert manifest["source"]["mesh"] == str(mesh)
    assert (manifest["source"]["subject"], manifest["source"]["expression"]) == (SUBJECT, EXPRESSION)
    record = json.loads((out / RECORD).read_text())
    assert record["fingerprint"]["source"] == str(tuple_dir)
    assert record["fingerprint"]["mesh"]["path"] == str(mesh)
    assert record["result"]["check_passed"] is True
    assert sorted(record["fingerprint"]["images"]) == [f"{i}.jpg" for i in range(VIEWS)]
    check = json.loads((out / "check" / "check.json").read_text())
    assert check["passed"] and check["source"] == f"{SUBJECT}/{EXPRESSION}"


@pytest.mark.parametrize("linked", LEVELS, indirect=True)
def test_linked_dataset_converts_with_its_own_ids_and_paths(linked: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["to-colmap", str(linked), "-o", str(out), "-q", "-j", "1", "--scale", "0.5"]) == 0
    assert "converted 1 (3 images)" in capsys.readouterr().out
    tuples = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*") if p.parent.name != "fsconvert")
    assert tuples == [f"{SUBJECT}/{EXPRESSION}"]  # beside the run's summary (fsconvert/) and report.html
    tuple_dir = linked / "images" / SUBJECT / EXPRESSION
    assert_export(out / SUBJECT / EXPRESSION, tuple_dir, linked / "models" / SUBJECT / f"{EXPRESSION}.ply")
    # a rerun finds the record up to date (the fingerprint reads the same through the links)
    assert main(["to-colmap", str(linked), "-o", str(out), "-q", "-j", "1", "--scale", "0.5"]) == 0
    assert "skipped 1 (up to date)" in capsys.readouterr().out


@pytest.mark.parametrize("linked", ["every"], indirect=True)
def test_one_linked_tuple_from_a_relative_path(linked: Path, tmp_path: Path, monkeypatch, capsys):
    """`cd ds/images/7/3_mouth_stretch && fsconvert to-nerf . -o out`: the shell's $PWD keeps the links."""
    tuple_dir = linked / "images" / SUBJECT / EXPRESSION
    monkeypatch.chdir(tuple_dir)  # the process's cwd is the link target (os.getcwd() resolves links)
    monkeypatch.setenv("PWD", str(tuple_dir))
    assert Path.cwd() != tuple_dir
    assert layout_path(".") == tuple_dir and layout_path("../x") == tuple_dir.parent / "x"
    out = tmp_path / "one"
    assert main(["to-nerf", ".", "-o", str(out), "-q", "-j", "1", "--scale", "0.5"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (nerf, 3 views)")
    assert_export(out, tuple_dir, linked / "models" / SUBJECT / f"{EXPRESSION}.ply")
    capture = load_capture(".")
    assert capture.name == f"{SUBJECT}/{EXPRESSION}"
    assert capture.mesh == linked / "models" / SUBJECT / f"{EXPRESSION}.ply"
    monkeypatch.setenv("PWD", "/")  # a stale $PWD (not the current folder) is not used
    assert layout_path(".") == Path.cwd() and find_mesh(Path(".")) is None


@pytest.mark.parametrize("linked", ["tuple"], indirect=True)
def test_messages_name_the_layout_path(linked: Path, tmp_path: Path, store: Path, capsys):
    tuple_dir = linked / "images" / SUBJECT / EXPRESSION
    (store / "shots-0042" / "2.jpg").rename(store / "shots-0042" / "2.moved")
    try:
        assert main(["to-colmap", str(tuple_dir), "-o", str(tmp_path / "out"), "-q"]) == 2
    finally:
        (store / "shots-0042" / "2.moved").rename(store / "shots-0042" / "2.jpg")
    err = capsys.readouterr().err.strip()
    assert err == f"fsconvert: error: {tuple_dir / '2.jpg'}: view 2: image missing"
    assert not (tmp_path / "out").exists()
