"""The image stage on a pool of threads (`fsconvert.imagestage.run_plans` with `workers` > 1): the same bytes,
footprints and previews as one worker, the same first error, no more threads than `workers`, OpenCV single-threaded
inside the pool and put back after, and the per-thread scratch arrays freed at the end."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert import imagestage
from fsconvert.cli import main
from fsconvert.errors import InputError, OutputError
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.imagestage import keep_previews, stems, write_images
from fsconvert.loader import load_capture
from fsconvert.remapmaps import SCRATCH, Scratch

PLAN_SETS = {
    "shared-frame": ImageOptions(intrinsics="shared", upright=True),
    "shared-frame-alpha-png": ImageOptions(intrinsics="shared", border="crop", image_format="png", alpha="coverage",
                                           scale=0.5),
    "per-view": ImageOptions(),
    # PNGs from threads are encoded by helper processes: made in their shared memory (remapped), or copied there
    # (an upright view only turned)
    "per-view-png-scaled": ImageOptions(image_format="png", scale=0.5),
    "per-view-png-keep-upright": ImageOptions(undistort=False, upright=True, image_format="png"),
    "per-view-upright-scaled": ImageOptions(upright=True, scale=0.5),
    "per-view-keep-scaled": ImageOptions(undistort=False, scale=0.5),
    "per-view-originals": ImageOptions(undistort=False, link="copy"),
}


def run(plans, folder: Path, workers: int) -> tuple[dict[str, bytes], list[np.ndarray], dict[str, np.ndarray]]:
    """(file name → bytes, footprint masks, file name → preview) of one run of the stage."""
    names = [f"{s}{p.suffix}" for s, p in zip(stems([p.view for p in plans]), plans)]
    with keep_previews() as kept:
        footprints = write_images(plans, names, folder, workers=workers, footprints=True)
    assert footprints is not None and len(footprints) == len(plans)
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert sorted(files) == sorted(names)
    return files, [f.mask() for f in footprints], {p.name: img for p, img in kept.items()}


@pytest.mark.parametrize("case", sorted(PLAN_SETS))
def test_threads_write_the_same_bytes_footprints_and_previews(sample_tuple: Path, tmp_path: Path, case: str):
    plans = plan_views(load_capture(sample_tuple).views, PLAN_SETS[case])
    assert len(plans) == 7
    if case.startswith("shared"):
        assert len({p.camera.size for p in plans}) == 1 and any(p.turn for p in plans)
    if case == "per-view-originals":
        assert not any(p.resample for p in plans)
    one = run(plans, tmp_path / "j1", 1)
    for workers in (2, 3, 16):
        files, masks, previews = run(plans, tmp_path / f"j{workers}", workers)
        assert files == one[0], workers  # byte for byte, every file
        assert len(masks) == len(one[1]) and all(np.array_equal(a, b) for a, b in zip(masks, one[1]))
        assert previews.keys() == one[2].keys() and all(np.array_equal(previews[k], one[2][k]) for k in previews)
    if case == "shared-frame-alpha-png":  # the footprint is what the alpha holds, and some pixels are outside it
        img = cv2.imread(str(tmp_path / "j2" / sorted(one[0])[0]), cv2.IMREAD_UNCHANGED)
        assert img.shape[2] == 4 and np.array_equal(img[..., 3] == 255, one[1][0])


def test_command_writes_the_same_images_at_any_j(sample_tuple: Path, tmp_path: Path):
    images = {}
    for j in ("1", "2"):
        out = tmp_path / f"j{j}"
        assert main(["to-colmap", str(sample_tuple), "-o", str(out), "-q", "-j", j, "--no-check"]) == 0
        images[j] = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").rglob("*"))
                     if p.is_file()}
    assert len(images["1"]) == 7 and images["1"] == images["2"]


def corrupt_copy(sample_tuple: Path, folder: Path, bad: tuple[int, ...]) -> Path:
    """A copy of the tuple whose views `bad` have 4 KiB of noise written over the middle of their JPEG."""
    tuple_dir = folder / "images" / "1" / "1_neutral"
    shutil.copytree(sample_tuple, tuple_dir)
    for view in bad:
        path = tuple_dir / f"{view}.jpg"
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 4096] = np.random.default_rng(view).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    return tuple_dir


def test_corrupt_jpeg_fails_in_the_same_line_at_any_j(sample_root: Path, sample_tuple: Path, tmp_path: Path, capsys):
    """Views 3 and 5 corrupt: every -j reports view 3 (the first in view order) in the same one line, exit 2,
    and leaves no output."""
    tuple_dir = corrupt_copy(sample_tuple, tmp_path / "ds", (3, 5))
    lines = {}
    for j in ("1", "2", "3", "8"):
        out = tmp_path / f"out{j}"
        mesh = sample_root / "models" / "1" / "1_neutral.ply"
        assert main(["to-colmap", str(tuple_dir), "-o", str(out), "-q", "-j", j, "--no-check", "--mesh", str(mesh)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and not out.exists()
        lines[j] = err
    prefix = f"fsconvert: error: {tuple_dir / '3.jpg'}: view 3: corrupt JPEG data ("
    assert lines["1"].startswith(prefix) and set(lines.values()) == {lines["1"]}


def test_first_error_in_view_order_is_raised_and_the_rest_cancelled(sample_tuple: Path, tmp_path: Path, monkeypatch):
    """API level: view 3 of 7 corrupt and view 5's file unwritable (a folder in its place): InputError of view 3 at
    any workers; with view 3 fine, OutputError of view 5. Views not started when the error surfaces never run."""
    tuple_dir = corrupt_copy(sample_tuple, tmp_path / "ds", (3,))
    plans = plan_views(load_capture(tuple_dir, require_mesh=False).views, ImageOptions())
    names = [f"{p.view.id}.jpg" for p in plans]

    def raised(plans, error: type[Exception], name: str) -> set[str]:
        """The messages of the `error` that writing `plans` into `name`-w1, -w2, -w4 (5.jpg a folder there) raises
        at 1, 2 and 4 workers, the folder named OUT."""
        messages = set()
        for workers in (1, 2, 4):
            folder = tmp_path / f"{name}-w{workers}"
            (folder / "5.jpg").mkdir(parents=True)
            with pytest.raises(error) as info:
                write_images(plans, names, folder, workers=workers)
            messages.add(str(info.value).replace(str(folder), "OUT"))
        return messages

    (message,) = raised(plans, InputError, "corrupt")
    assert message.startswith(f"{tuple_dir / '3.jpg'}: view 3: corrupt JPEG data (")
    clean = plan_views(load_capture(sample_tuple).views, ImageOptions())
    assert raised(clean, OutputError, "clean") == {"OUT/5.jpg: cannot write: Is a directory"}

    # 4 copies of the 7 views; the 2nd fails at once: at most 2 × workers views are submitted ahead of it
    produce, started = imagestage._produce, []

    def failing(job, *fpng):
        started.append(job.dest.name)
        if job.dest.name == "1.jpg":
            raise OutputError("view 1 fails")
        return produce(job, *fpng)

    monkeypatch.setattr(imagestage, "_produce", failing)
    many, baseline = clean * 4, threading.active_count()
    for workers in (1, 2, 3):
        started.clear()
        folder = tmp_path / f"many-w{workers}"
        with pytest.raises(OutputError, match="view 1 fails"):
            write_images(many, [f"{k}.jpg" for k in range(len(many))], folder, workers=workers)
        assert started[:1] == ["0.jpg"] and "1.jpg" in started
        assert len(started) <= (2 if workers == 1 else 2 + imagestage._AHEAD * workers), (workers, started)
        assert threading.active_count() == baseline  # the pool's threads have ended


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_threads_never_exceed_workers(sample_tuple: Path, tmp_path: Path, monkeypatch, workers: int):
    """At most `workers` views at a time, on at most `workers` threads besides the caller (which only collects),
    OpenCV single-threaded inside the pool and its setting put back after; results in view order."""
    plans = plan_views(load_capture(sample_tuple).views, ImageOptions(scale=0.5)) * 2
    produce, lock = imagestage._produce, threading.Lock()
    seen = {"threads": set(), "running": 0, "most": 0, "active": 0, "cv2": set()}
    baseline = threading.active_count()

    def counting(job, *fpng):
        with lock:
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
            seen["threads"].add(threading.get_ident())
            seen["active"] = max(seen["active"], threading.active_count())
            seen["cv2"].add(cv2.getNumThreads())
        try:
            time.sleep(0.02)  # let every thread of the pool get views
            return produce(job, *fpng)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(imagestage, "_produce", counting)
    cv2.setNumThreads(2)
    try:
        write_images(plans, [f"{k}.jpg" for k in range(len(plans))], tmp_path, workers=workers)
        assert cv2.getNumThreads() == 2  # put back
    finally:
        cv2.setNumThreads(1)
    assert seen["most"] <= workers and len(seen["threads"]) <= workers
    assert seen["active"] - baseline <= (0 if workers == 1 else workers)
    assert seen["cv2"] == ({2} if workers == 1 else {1})
    if workers == 1:
        assert seen["threads"] == {threading.get_ident()}
    else:
        assert len(seen["threads"]) == workers and threading.get_ident() not in seen["threads"]
    assert threading.active_count() == baseline


def test_each_thread_has_its_own_scratch_freed_after(sample_tuple: Path, tmp_path: Path, monkeypatch):
    """The undistortion maps and remapped image live in per-thread arrays that no other thread is handed, and none
    outlives the run."""
    plans = plan_views(load_capture(sample_tuple).views, ImageOptions()) * 2
    array, lock = Scratch.array, threading.Lock()
    owners: dict[int, tuple[int, weakref.ref[np.ndarray]]] = {}
    buffers: list[weakref.ref[np.ndarray]] = []

    def tracked(self, name, shape, dtype):
        out = array(self, name, shape, dtype)
        base, me = self.buffers[name], threading.get_ident()
        with lock:
            owner, ref = owners.get(id(base), (me, None))
            if ref is not None and ref() is base:  # (an id of a freed buffer may come back for another)
                assert owner == me, f"{name} handed to two threads"
            owners[id(base)] = (me, weakref.ref(base))
            buffers.append(weakref.ref(base))
        return out

    produce, returned = imagestage._produce, []

    def checked(job, *fpng):
        footprint, preview = produce(job, *fpng)
        mine = list(SCRATCH.buffers.values())  # this thread's, at the end of the view
        assert not any(np.shares_memory(out, buf) for out in (footprint.bits, preview) for buf in mine)
        returned.append(preview)
        return footprint, preview

    monkeypatch.setattr(Scratch, "array", tracked)
    monkeypatch.setattr(imagestage, "_produce", checked)
    with keep_previews():
        write_images(plans, [f"{k}.jpg" for k in range(len(plans))], tmp_path, workers=2, footprints=True)
    assert len({owner for owner, _ in owners.values()}) == 2 and len(buffers) >= 4 * len(plans)  # decoded, maps, out
    assert len(returned) == len(plans)
    gc.collect()
    assert all(ref() is None for ref in buffers)
