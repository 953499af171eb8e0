"""SIGTERM (Slurm's time limit or preemption) and SIGINT, sent for real to a running `fsconvert to-colmap`: the
command exits at once with 128 + the signal's number and one line on stderr, no process of the run survives it,
no staging folder, lock or half-written file is left, and a rerun finishes with a clean run's bytes. For a
dataset run on the local pool (`-j 2`), for one tuple (its views on 2 threads of one process), and for the
Dask and Ray clusters a run starts itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_batch import alive, files, tuples

from fsconvert.cli import main

TUPLES = {"1/1_neutral", "2/1_neutral", "3/1_neutral"}
STOPPED = {signal.SIGINT: "fsconvert: interrupted", signal.SIGTERM: "fsconvert: terminated"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three tuples of 6 views (one valid=false) of 1000 px: about a second of image work each on one core,
    so that a signal sent when the first staging folder appears finds the run mid-tuple."""
    from fsconvert.synthetic import make_sample

    root = tmp_path_factory.mktemp("dataset")
    make_sample(root, subjects=("1", "2", "3"), n_views=6, long_side=1000)
    return root


@pytest.fixture(scope="module")
def clean(dataset: Path, tmp_path_factory) -> Path:
    """The reference: an uninterrupted run over the dataset, in this process."""
    out = tmp_path_factory.mktemp("clean") / "out"
    assert main(["to-colmap", str(dataset), "-o", str(out), "-q", "-j", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def clean_tuple(dataset: Path, tmp_path_factory) -> Path:
    """The reference of one tuple exported alone (it draws every view's overlay, a dataset run a few)."""
    out = tmp_path_factory.mktemp("clean-tuple") / "out"
    assert main(["to-colmap", str(dataset / "images" / "2" / "1_neutral"), "-o", str(out), "-q", "-j", "1"]) == 0
    return out


def every_file(root: Path) -> dict[str, bytes]:
    """Every file below `root`, hidden ones too, byte for byte."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _command_line(pid: int) -> str:
    """A process's command line (what an orphan was), or why it cannot be read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError as exc:
        return f"{pid}: {exc.strerror}"


def run_and_signal(argv: list[str], watched: Path, signum: int, group: bool | str,
                   least: int) -> tuple[subprocess.CompletedProcess, float]:
    """Run `fsconvert ARGV` (its own process group), send `signum` once a staging folder appears below
    `watched` (to the command; `group` True: to its whole group, as a terminal's Ctrl-C does; "every": to every
    process of the run at once, as Slurm signals a job step), while at least `least` processes of the run are alive;
    return its exit and its seconds from the signal to its exit, once no process of the run is left (processes
    carry a marker in their environment: orphans too)."""
    marker = f"FSCONVERT_TEST_{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-m", "fsconvert.cli", *argv, "-q"], env={**os.environ, marker: "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while (not list(watched.rglob(".*.partial")) or len(alive(marker)) < least) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.005)
    assert proc.poll() is None and list(watched.rglob(".*.partial")) and len(alive(marker)) >= least
    sent = time.monotonic()
    for pid in alive(marker) if group == "every" else [proc.pid]:
        (os.killpg if group is True else os.kill)(pid, signum)
    _, stderr = proc.communicate(timeout=120)
    seconds = time.monotonic() - sent
    end = time.monotonic() + 10
    while alive(marker) and time.monotonic() < end:  # a process that outlives the command by more is an orphan
        time.sleep(0.1)
    assert alive(marker) == [], [_command_line(pid) for pid in alive(marker)]
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), seconds


def hidden(root: Path) -> list[Path]:
    """Staging folders, parked old outputs and lock files: every name starting with a dot."""
    return sorted(root.rglob(".*"))


@pytest.mark.parametrize("signum, group", [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGTERM-group", "SIGINT-group"])
def test_a_signal_stops_a_dataset_run_and_a_rerun_completes_it(dataset: Path, clean: Path, tmp_path: Path,
                                                                signum: int, group: bool):
    out = tmp_path / "out"
    argv = ["to-colmap", str(dataset), "-o", str(out), "-j", "2"]
    stopped, seconds = run_and_signal(argv, out, signum, group, least=3)  # the command and its 2 workers
    assert stopped.returncode == 128 + signum and stopped.stderr == STOPPED[signum] + "\n"
    assert seconds < 5  # the running tuples are abandoned, not finished
    assert hidden(out) == []  # no staging folder or lock left
    complete = tuples(out)
    assert len(complete) < len(TUPLES)  # stopped mid-run
    whole = {k: v for k, v in files(clean).items() if "/".join(k.split("/")[:2]) in complete}
    assert files(out) == whole  # nothing visible but whole tuples, each byte for byte the clean run's

    assert main(argv + ["-q"]) == 0  # the same command continues
    assert files(out) == files(clean) and hidden(out) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_one_tuple_on_threads_and_a_rerun_completes_it(dataset: Path, clean_tuple: Path,
                                                                      tmp_path: Path, signum: int):
    out = tmp_path / "one" / "out"
    argv = ["to-colmap", str(dataset / "images" / "2" / "1_neutral"), "-o", str(out), "-j", "2"]
    stopped, seconds = run_and_signal(argv, out.parent, signum, False, least=1)
    assert stopped.returncode == 128 + signum and stopped.stderr == STOPPED[signum] + "\n"
    assert seconds < 10  # at most an import that was under way (one is never interrupted) and a view
    assert list(out.parent.iterdir()) == []  # no output, no staging folder, no lock

    assert main(argv + ["-q"]) == 0
    assert every_file(out) == every_file(clean_tuple) and list(out.parent.iterdir()) == [out]


@pytest.mark.parametrize("signum, group", [(signal.SIGTERM, False), (signal.SIGINT, True), (signal.SIGTERM, "every")],
                         ids=["SIGTERM", "SIGINT-group", "SIGTERM-every-process"])
def test_a_signal_ends_the_png_encoder_processes_too(dataset: Path, tmp_path: Path, signum: int, group: bool | str):
    # -j 2 PNGs: each image thread's fpng runs in a child process (`fsconvert.pngprocess`, a process group of its
    # own); the signal reaches the command alone or its group (the children see their pipe close), or every process
    # (an encoder killed under a view: the run still stops, it does not fail)
    out = tmp_path / "png" / "out"
    argv = ["to-colmap", str(dataset / "images" / "2" / "1_neutral"), "-o", str(out), "-j", "2", "--image-format",
            "png", "--points", "0"]
    stopped, seconds = run_and_signal(argv, out.parent, signum, group, least=3)  # the command and its 2 encoders
    assert stopped.returncode == 128 + signum and stopped.stderr == STOPPED[signum] + "\n"
    assert seconds < 10
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_sigterm_ends_the_cluster_a_run_started(dataset: Path, clean: Path, tmp_path: Path, engine: str):
    """The local Dask or Ray cluster the run started goes with it: no scheduler, nanny, raylet or worker left."""
    pytest.importorskip("distributed" if engine == "dask" else "ray")
    out = tmp_path / "out"
    argv = ["to-colmap", str(dataset), "-o", str(out), "-j", "2", "--engine", engine]
    stopped, seconds = run_and_signal(argv, out, signal.SIGTERM, False, least=3)
    assert stopped.returncode == 143 and stopped.stderr.splitlines()[-1] == STOPPED[signal.SIGTERM]
    assert "Traceback" not in stopped.stderr and seconds < 30  # closing a cluster takes a few seconds
    assert hidden(out) == [] and len(tuples(out)) < len(TUPLES)

    assert main(["to-colmap", str(dataset), "-o", str(out), "-q", "-j", "2"]) == 0
    assert files(out) == files(clean)
