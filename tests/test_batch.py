"""Whole-dataset conversion: one command over 6 tuples, resume after SIGKILL (byte-identical), bad
tuples skipped with exit 2, selection, YAML config = command line, the per-tuple API, the workers' core budget."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import METRIC_ARGS

import fsconvert  # noqa: F401  (headless rendering set-up)
from exporters import available, facescape
from fsconvert import imagestage
from fsconvert.cli import main
from fsconvert.datasetrun import run_dataset
from fsconvert.imageplan import ImageOptions, plan_views
from fsconvert.imagestage import write_images
from fsconvert.job import TupleJob, convert_tuple, exit_code
from fsconvert.loader import iter_dataset, load_capture
from fsconvert.measure import Thresholds
from fsconvert.protocol import RECORD
from fsconvert.runpage import RUN_PAGE
from fsconvert.settings import DATASET_OVERLAYS
from fsconvert.threads import CoreBudget, beside, core, share_cores

SUBJECTS = ("1", "2", "3")
EXPRESSIONS = ("1_neutral", "2_smile")
TUPLES = {f"{s}/{e}" for s in SUBJECTS for e in EXPRESSIONS}
VIEWS = 4  # one of them valid=false


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from fsconvert.synthetic import make_sample

    root = tmp_path_factory.mktemp("dataset")
    make_sample(root, subjects=SUBJECTS, expressions=EXPRESSIONS, n_views=VIEWS, long_side=300)
    return root


@pytest.fixture(scope="module")
def clean(dataset: Path, tmp_path_factory) -> Path:
    """The reference: one uninterrupted in-process run over the whole dataset."""
    out = tmp_path_factory.mktemp("clean") / "out"
    assert main(["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "1"]) == 0
    return out


def _per_run(p: Path, root: Path) -> bool:
    """A file that describes the last run, not the exports: the run summaries (they hold times) and the run
    reports (`report.html`, a shard's `report-shard-I-of-N.html`: converted or skipped each tuple)."""
    return root / "fsconvert" in (p, p.parent) or (p.parent == root and p.match("report*.html"))


def files(root: Path) -> dict[str, bytes]:
    """Every file below `root` (hidden ones too), byte for byte, but those describing the last run."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not _per_run(p, root)}


def stamps(root: Path) -> dict[Path, int]:
    """mtime of everything below `root`, but what every run rewrites (see `_per_run`)."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if not _per_run(p, root)}


def tuples(out: Path) -> set[str]:
    """Visible tuple folders OUT/<id>/<exp>."""
    return {f"{p.parent.name}/{p.name}" for p in out.glob("*/*") if p.is_dir() and not p.name.startswith(".")}


def test_one_command_converts_every_tuple(clean: Path, dataset: Path):
    assert tuples(clean) == TUPLES
    for name in TUPLES:
        record = json.loads((clean / name / RECORD).read_text())
        result = record["result"]
        assert len(result["views"]) == VIEWS - 1 and sorted(result["views"] + result["excluded"]) == [0, 1, 2, 3]
        assert result["check_passed"] is True
        assert record["fingerprint"]["source"] == str((dataset / "images" / name).resolve())
        assert sorted(record["fingerprint"]["images"]) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
        check = json.loads((clean / name / "check" / "check.json").read_text())
        assert check["passed"] and max(v["camera_max_px"] for v in check["views"]) < 1e-9
    # a tuple folder keeps the old behaviour (output directly in OUT) and gives the same files (with the overlay
    # policy of dataset runs; a tuple's default is every view)
    single = clean.parent / "single"
    argv = ["to-facescape", str(dataset / "images" / "2" / "2_smile"), "-o", str(single), "-q", "-j", "1"]
    assert main(argv + ["--overlays", str(DATASET_OVERLAYS)]) == 0
    assert files(single) == files(clean / "2" / "2_smile")


def test_rerun_skips_up_to_date_and_redoes_changed_inputs(clean: Path, dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    before = stamps(out)
    assert main(["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "2"]) == 0
    assert "converted 0 (0 images), skipped 6 (up to date), failed 0" in capsys.readouterr().out
    assert stamps(out) == before  # nothing rewritten

    image = dataset / "images" / "3" / "1_neutral" / "2.jpg"
    st = image.stat()
    try:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # negative control: an input changed
        assert main(["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "1"]) == 2
        captured = capsys.readouterr()
        assert "already exists, out of date: images 2.jpg changed (use --overwrite" in captured.err
        assert "converted 0 (0 images), skipped 5 (up to date), failed 1" in captured.out
        assert main(["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "1", "--overwrite"]) == 0
        assert "converted 1 (3 images), skipped 5 (up to date), failed 0" in capsys.readouterr().out
        record = json.loads((out / "3" / "1_neutral" / RECORD).read_text())
        assert record["fingerprint"]["images"]["2.jpg"] == [st.st_size, st.st_mtime_ns + 10**9]
    finally:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))


def alive(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (the killed run's workers, if any survived)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _start_and_interrupt(dataset: Path, out: Path, delay: float, kill) -> tuple[subprocess.Popen, float]:
    """Run the command over the dataset with 2 workers; `kill(proc)` `delay` s after the first tuple
    completed; once none of its processes is alive any more, return it and its seconds to exit."""
    marker = f"FSCONVERT_TEST_{uuid.uuid4().hex}"
    cmd = [sys.executable, "-m", "fsconvert.cli", "to-facescape", str(dataset), "-o", str(out), "-q", "-j", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, marker: "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(f"*/*/{RECORD}")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    assert proc.poll() is None, proc.stderr.read().decode()
    killed = time.monotonic()
    kill(proc)
    proc.wait(timeout=60)
    seconds = time.monotonic() - killed
    time.sleep(1.0)
    assert alive(marker) == []  # no worker outlives the command
    return proc, seconds


@pytest.mark.parametrize("seed", [7])
def test_sigkill_mid_run_then_rerun_is_byte_identical(clean: Path, dataset: Path, tmp_path: Path, seed: int):
    out = tmp_path / "out"
    delay = random.Random(seed).uniform(0, 0.3)  # somewhere after the first tuple completed
    _start_and_interrupt(dataset, out, delay, lambda p: os.kill(p.pid, signal.SIGKILL))  # the parent only

    complete = tuples(out)
    assert 1 <= len(complete) < len(TUPLES)  # killed mid-way, not before or after
    for name in complete:  # every visible tuple is whole, and exactly the clean run's
        assert files(out / name) == files(clean / name)

    assert main(["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "2"]) == 0
    assert files(out) == files(clean)  # and no stale .partial / .old folder is left anywhere
    report = (out / RUN_PAGE).read_text()  # the resumed run: some tuples converted, the others skipped
    assert report.count('<td class="result">skipped</td>') == len(complete)
    assert report.count('<td class="result">converted</td>') == len(TUPLES) - len(complete)

    # negative control: the comparison sees a single changed byte
    victim = out / "1" / "2_smile" / "1.jpg"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    assert files(out) != files(clean)


def test_ctrl_c_stops_at_once_and_leaves_no_visible_partial(clean: Path, dataset: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc, seconds = _start_and_interrupt(dataset, out, 0.1, lambda p: os.killpg(p.pid, signal.SIGINT))  # a terminal's
    assert proc.returncode == 130 and proc.stderr.read().decode() == "fsconvert: interrupted\n"
    assert seconds < 5  # the running tuples are abandoned, not finished
    assert 1 <= len(tuples(out)) < len(TUPLES)
    for name in tuples(out):
        assert files(out / name) == files(clean / name)


def test_stale_partials_are_removed(clean: Path, dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    shutil.rmtree(out / "2" / "1_neutral")
    stale = [out / "2" / ".1_neutral.abc123.partial", out / "2" / ".1_neutral.4242.old",
             out / "2" / ".2_smile.4242.old"]  # beside a complete tuple (a replace killed before its clean-up)
    keep = [out / "3" / ".1_neutral.zz.partial",  # not selected
            out / "2" / ".2_smile_extra.zz.partial", out / "2" / "notes.partial"]  # not ours
    for d in stale + keep:
        (d / "fsconvert").mkdir(parents=True)
    assert main(["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "1", "--ids", "2"]) == 0
    assert "converted 1 (3 images), skipped 1 (up to date)" in capsys.readouterr().out
    assert [d.exists() for d in stale] == [False] * 3 and all(d.exists() for d in keep)
    for d in keep:
        shutil.rmtree(d)
    assert files(out) == files(clean)


def test_bad_tuples_are_reported_and_skipped(clean: Path, dataset: Path, tmp_path: Path, capsys):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    (root / "images" / "1" / "2_smile" / "params.json").write_text('{"0_K": [[1, 0, 0]')
    (used, *_), _ = _views(root / "images" / "3" / "1_neutral")
    jpg = root / "images" / "3" / "1_neutral" / f"{used}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated
    out = tmp_path / "out"
    assert main(["to-facescape", str(root), "-o", str(out), "-q", "-j", "2"]) == 2
    captured = capsys.readouterr()
    assert "converted 4 (12 images), skipped 0 (up to date), failed 2" in captured.out
    failed = [line for line in captured.out.splitlines() if line.startswith("  failed")]
    assert len(failed) == 2
    assert f"1/2_smile: {root}/images/1/2_smile/params.json: invalid JSON" in failed[0]
    assert f"3/1_neutral: {jpg}: view {used}: not a readable image" in failed[1]
    assert "Traceback" not in captured.err
    assert tuples(out) == TUPLES - {"1/2_smile", "3/1_neutral"}
    moved = str(root.resolve()).encode(), str(dataset.resolve()).encode()  # the source path is recorded
    for name in tuples(out):
        assert {k: v.replace(*moved) for k, v in files(out / name).items()} == files(clean / name)


def _views(tuple_dir: Path) -> tuple[list[int], list[int]]:
    """(used, excluded) view ids of a tuple."""
    capture = load_capture(tuple_dir)
    return [v.id for v in capture.views], [v.id for v in capture.excluded]


def test_selection_converts_exactly_the_chosen_tuples(clean: Path, dataset: Path, tmp_path: Path):
    for i, (ids, exps, expected) in enumerate([
        ("1,3", "2", {"1/2_smile", "3/2_smile"}),
        ("2-3", "1_neutral", {"2/1_neutral", "3/1_neutral"}),
        ("2", None, {"2/1_neutral", "2/2_smile"}),
    ]):
        out = tmp_path / f"out{i}"
        argv = ["to-facescape", str(dataset / "images"), "-o", str(out), "-q", "-j", "1", "--ids", ids]
        assert main(argv + (["--exps", exps] if exps else [])) == 0
        assert tuples(out) == expected
        for name in expected:
            assert files(out / name) == files(clean / name)
    assert main(["to-facescape", str(dataset), "-o", str(tmp_path / "none"), "--ids", "9"]) == 2


def test_yaml_config_gives_the_command_line_outputs(dataset: Path, tmp_path: Path, capsys):
    cli_out, cfg_out = tmp_path / "cli", tmp_path / "cfg"
    argv = ["to-facescape", str(dataset), "-o", str(cli_out), "-q", "-j", "1", "--ids", "1,3", "--exps", "1_neutral",
            "--scale", "0.5", "--principal-point", "center", "--jpeg-quality", "90", "--max-camera-error", "0.001"]
    assert main(argv) == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        f"input: {os.path.relpath(dataset, tmp_path)}   # relative to the config file\n"
        "out: cfg\n"
        "format: facescape\n"
        "ids: [1, 3]\n"
        "exps: 1_neutral\n"
        "jobs: 1\n"
        "image: {scale: 0.5, principal_point: center, jpeg_quality: 90}\n"
        "check: {max_camera_error: 0.001}\n"
    )
    assert main(["batch", str(config), "-q"]) == 0
    assert "converted 2 (6 images)" in capsys.readouterr().out
    assert tuples(cfg_out) == {"1/1_neutral", "3/1_neutral"}
    assert files(cfg_out) == files(cli_out)
    record = json.loads((cfg_out / "3" / "1_neutral" / RECORD).read_text())["fingerprint"]
    assert record["options"]["image"]["scale"] == 0.5 and record["check"]["thresholds"]["camera_px"] == 0.001
    # negative control: one option apart, the outputs differ
    config.write_text(config.read_text().replace("out: cfg", "out: cfg91").replace("quality: 90", "quality: 91"))
    assert main(["batch", str(config), "-q"]) == 0
    assert files(tmp_path / "cfg91").keys() == files(cli_out).keys() and files(tmp_path / "cfg91") != files(cli_out)

    # several formats: OUT/<format>/<id>/<exp>
    config.write_text(f"input: {dataset}\nout: multi\nformat: [facescape, nerf]\nids: 2\nexps: 2\njobs: 1\n"
                      "options: {nerf: {}}\ncheck: {no_overlays: true}\n")
    assert main(["batch", str(config), "-q"]) == 0
    assert tuples(tmp_path / "multi" / "facescape") == tuples(tmp_path / "multi" / "nerf") == {"2/2_smile"}


@pytest.mark.parametrize("text, message", [
    ("input: x\nout: y\nformat: facescape\nimage: {scal: 0.5}\n",
     "key 'image.scal': unknown key (expected one of: allow_corrupt_images, alpha, border, distortion, frame_focal, "
     "frame_size, image_format, intrinsics, jpeg_quality, link, max_size, orientation, principal_point, scale, "
     "size_multiple, upright)"),
    ("input: x\nout: y\nformat: facescape\njobz: 2\n", "key 'jobz': unknown key (expected one of:"),
    ("input: x\nout: y\nformat: facescape\njobs: 0\n", "key 'jobs': invalid value 0: must be at least 1, got 0"),
    ("input: x\nout: y\nformat: facescape\nimage: {scale: big}\n", "key 'image.scale': invalid value 'big'"),
    ("input: x\nout: y\nformat: facescape\nimage: {link: cp}\n",
     "key 'image.link': expected one of hardlink, symlink, copy, got 'cp'"),
    ("input: x\nout: y\nformat: facescape\nupright: yes\n", "key 'upright': unknown key"),
    ("input: x\nout: y\nformat: facescape\nimage: {upright: 1}\n", "key 'image.upright': expected true or false"),
    ("input: x\nout: y\nformat: fbx\n", "key 'format': unknown format 'fbx' (available: colmap"),
    ("input: x\nformat: facescape\n", "key 'out': missing key"),
    ("input: x\nout: y\nformat: facescape\noptions: {nerf: {}}\n",
     "key 'options.nerf': options for a format not in 'format' (facescape)"),
    ("input: x\nout: y\nformat: facescape\nimage: [1]\n", "key 'image': expected a mapping"),
    ("input: x\nout: y\nformat: facescape\nids: 1-x\n", "key 'ids': invalid value '1-x': bad id selection"),
    ("input: x\nout: [y\n", "invalid YAML: "),
    ("- input\n", "expected a mapping of settings"),
    ("input: x\nout: y\nformat: facescape\nimage: {scale: 0.5, max_size: 100}\n", "give scale or max_size, not both"),
])
def test_config_errors_are_one_line(tmp_path: Path, capsys, text: str, message: str):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["batch", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fsconvert: error: {config}: ") and message in err, err


def test_check_failure_exit_1_and_remembered(dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = ["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "1", "--ids", "1", "--min-silhouette-iou", "1.5"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "converted 2 (6 images), skipped 0 (up to date), failed 0" in captured.out
    assert captured.out.count("  check failed 1/") == 2 and "silhouette IoU 1.0000 < 1.5" in captured.err
    assert main(argv) == 1  # skipped as up to date, still a failed check
    assert "skipped 2 (up to date)" in capsys.readouterr().out
    assert main(argv[:-2]) == 2  # other thresholds: out of date, not replaced without --overwrite
    assert "out of date: check changed" in capsys.readouterr().err


def test_convert_tuple_is_a_pure_per_tuple_function(dataset: Path, clean: Path, tmp_path: Path):
    (ref,) = iter_dataset(dataset, ids={3}, exps=["2_smile"])
    out = tmp_path / ref.subject / ref.expression
    first = convert_tuple(ref.path, out, "facescape", facescape.Options(), thresholds=Thresholds(),
                          overlays=DATASET_OVERLAYS)
    used, excluded = _views(ref.path)
    assert (first.status, first.views, first.excluded, first.check_passed) == ("converted", 3, tuple(excluded), True)
    assert "PASS: 3/3 views" in first.check_text and ".partial" not in first.check_text
    assert files(out) == files(clean / "3" / "2_smile")
    again = convert_tuple(ref.path, out, "facescape", facescape.Options(), thresholds=Thresholds(),
                          overlays=DATASET_OVERLAYS)
    assert (again.status, again.views, again.check_passed, again.check_text) == ("skipped", 3, True, "")
    default = convert_tuple(ref.path, tmp_path / "default", "facescape")  # checked, as on the command line
    assert (default.status, default.check_passed) == ("converted", True)
    assert len(list((tmp_path / "default" / "check").glob("mv_result_*.jpg"))) == 3  # every view's overlay
    assert files(tmp_path / "default").keys() > files(out).keys()
    missing = convert_tuple(dataset / "images" / "9" / "1_neutral", tmp_path / "x", "facescape")
    assert missing.status == "failed" and "params.json: cannot read" in missing.reason


def test_a_bug_in_one_tuple_does_not_stop_the_others(dataset: Path, tmp_path: Path, capsys):
    def write(capture, folder, options, **kwargs):
        if capture.subject == "2":
            raise ZeroDivisionError("boom")
        return facescape.write(capture, folder, options, **kwargs)

    broken = SimpleNamespace(**{k: getattr(facescape, k) for k in ("NAME", "Options", "read")}, write=write)
    jobs = [TupleJob(source=ref.path, out_dir=tmp_path / ref.subject / ref.expression, fmt=broken)
            for ref in iter_dataset(dataset)]
    results = run_dataset(jobs, workers=1)
    assert [r.status for r in results] == ["converted"] * 2 + ["failed"] * 2 + ["converted"] * 2
    assert results[2].reason == "internal error: ZeroDivisionError: boom"
    assert "Traceback" in capsys.readouterr().err and exit_code(results) == 2


@pytest.mark.parametrize("fmt", sorted(set(available()) - {"facescape"}))
def test_every_exporter_in_parallel_is_deterministic_and_resumable(fmt: str, dataset: Path, tmp_path: Path, capsys):
    pooled, serial = tmp_path / "pooled", tmp_path / "serial"
    base = [f"to-{fmt}", str(dataset), "--ids", "1", "-q", *METRIC_ARGS.get(fmt, [])]
    assert main(base + ["-o", str(pooled), "-j", "2"]) == 0
    assert "converted 2 (6 images), skipped 0 (up to date), failed 0" in capsys.readouterr().out
    assert main(base + ["-o", str(serial), "-j", "1"]) == 0
    assert files(pooled) == files(serial)  # two processes, or one: the same bytes
    assert all(json.loads((pooled / n / RECORD).read_text())["result"]["check_passed"] is True
               for n in tuples(pooled))
    capsys.readouterr()
    assert main(base + ["-o", str(pooled), "-j", "2"]) == 0
    assert "converted 0 (0 images), skipped 2 (up to date), failed 0" in capsys.readouterr().out


def test_a_worker_runs_more_views_at_once_only_on_spare_cores(dataset: Path, tmp_path: Path, monkeypatch):
    """A dataset run's worker with -j 2 (`fsconvert.threads.share_cores`; its job holds one core) and the other
    worker's job: while that job holds the second core, the views run one at a time; once it is given back, two
    at once on two threads; when a job starts waiting for a core, the next view to finish hands it the borrowed
    one and the views run one at a time again. Every core back in the budget at the end; the bytes of one
    thread without a budget."""
    plans = plan_views(load_capture(dataset / "images" / "1" / "1_neutral").views, ImageOptions()) * 4
    names = [f"{k}.jpg" for k in range(len(plans))]
    write_images(plans, names, tmp_path / "alone", workers=1)
    budget = CoreBudget(multiprocessing.get_context("spawn"), 2)
    produce, lock, leave = imagestage._produce, threading.Lock(), threading.Event()
    seen = {"running": 0, "done": 0, "phase": "held", "held": 0, "freed": 0, "claimed": 0, "claimed at": 0,
            "threads": set()}

    def other_job() -> None:  # another worker's job starting: it waits for a core
        with core():
            with lock:
                seen["phase"], seen["claimed at"] = "claimed", seen["done"]
            leave.wait()

    waiter = threading.Thread(target=other_job)

    def counting(job, *fpng):
        with lock:
            seen["running"] += 1
            seen[seen["phase"]] = max(seen[seen["phase"]], seen["running"])
            seen["threads"].add(threading.get_ident())
        try:
            time.sleep(0.05)  # long enough for two views to overlap when two cores are there
            return produce(job, *fpng)
        finally:
            with lock:
                seen["running"] -= 1
                seen["done"] += 1
                if seen["done"] == 3:  # the other worker's tuple is done: its core is spare
                    seen["phase"] = "freed"
                    budget.permits.release()
                elif seen["done"] == 7:
                    waiter.start()

    monkeypatch.setattr(imagestage, "_produce", counting)
    share_cores(budget)
    try:
        budget.permits.acquire()  # the other worker's job
        with core():  # this worker's job
            write_images(plans, names, tmp_path / "shared", workers=2)
            assert budget.permits.get_value() == 0  # this job's core and the other job's
            leave.set()
            waiter.join()
        assert budget.permits.get_value() == 2 and budget.waiting.value == 0
    finally:
        leave.set()
        share_cores(None)
    assert seen["done"] == len(plans) == 12 and 7 <= seen["claimed at"] <= 9  # given back as a running view ended
    assert (seen["held"], seen["freed"], seen["claimed"]) == (1, 2, 1) and len(seen["threads"]) == 2
    alone = {p.name: p.read_bytes() for p in (tmp_path / "alone").iterdir()}
    assert len(alone) == 12 and {p.name: p.read_bytes() for p in (tmp_path / "shared").iterdir()} == alone


def test_work_beside_holds_a_spare_core_only_while_it_runs():
    """`threads.beside`: none at -j 1 or without a spare core of the budget; else the work runs on a thread of its
    own, its core given back when it ends (the block's image threads may take it), not when the block does."""
    with beside(1, lambda: 1, "t") as seen:
        assert seen is None
    with beside(2, lambda: threading.current_thread().name, "fsconvert-test") as seen:  # no budget: the caller's -j
        assert seen is not None and seen.result().startswith("fsconvert-test")
    budget = CoreBudget(multiprocessing.get_context("spawn"), 2)  # a dataset run's; this job holds one core
    budget.permits.acquire()
    share_cores(budget)
    try:
        release = threading.Event()
        with beside(2, release.wait, "t") as seen:
            assert seen is not None and not budget.permits.acquire(False)  # the spare core is the work's ...
            release.set()
            seen.result()
            assert budget.permits.acquire(False)  # ... until it ends, inside the block
            with beside(2, lambda: 1, "t") as none:
                assert none is None  # no spare core left: the caller works alone
            budget.permits.release()
    finally:
        share_cores(None)

