"""Beyond one machine: shards (partition, two real processes at once), the per-tuple lock, `fsconvert
status`, and the Dask and Ray engines on real local clusters started here (byte-identical to the local
pool; a worker killed mid-tuple is reported, or re-run by Dask, and a rerun completes identically)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_batch import clean, files, tuples  # noqa: F401  (the local reference run over `dataset`; helpers)

from fsconvert.cli import main
from fsconvert.datasetrun import run_dataset
from fsconvert.engines import LOST
from fsconvert.job import TupleJob, convert_tuple, lock_path, tuple_lock
from fsconvert.loader import iter_dataset
from fsconvert.settings import load_config
from fsconvert.shards import Shard, assignment, parse_shard, partition
from fsconvert.status import status

SUBJECTS = ("1", "2")
EXPRESSIONS = ("1_neutral", "2_smile", "3_mouth_stretch")
VIEWS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Six tuples; subject 2 has two views more, so that balancing by images differs from by count."""
    from fsconvert.synthetic import make_sample

    root = tmp_path_factory.mktemp("dataset")
    make_sample(root, subjects=SUBJECTS[:1], expressions=EXPRESSIONS, n_views=VIEWS, long_side=240)
    make_sample(root / "more", subjects=SUBJECTS[1:], expressions=EXPRESSIONS, n_views=VIEWS + 2, long_side=240)
    for sub in ("images", "models"):
        os.rename(root / "more" / sub / "2", root / sub / "2")
    shutil.rmtree(root / "more")
    return root


def weights(dataset: Path) -> list[tuple[str, int]]:
    return [(r.name, len(list(r.path.glob("*.jpg")))) for r in iter_dataset(dataset)]


# ---- shards ------------------------------------------------------------------------------------------


def test_partition_is_exact_balanced_and_independent_of_order(dataset: Path, capsys):
    rng = random.Random(3)
    # later subjects have more views (as if the rig grew): a split by list position is unbalanced
    uneven = [(f"{s}/{e}_x", 20 + 2 * s + rng.randint(0, 4)) for s in range(1, 31) for e in range(4)]
    for items in (weights(dataset), uneven):
        names = [n for n, _ in items]
        size = dict(items)
        for n in range(1, 6):
            shards = partition(items, n)
            assert sorted(sum(shards, [])) == sorted(names)  # the union is the selection, no tuple twice
            loads = [sum(size[t] for t in s) for s in shards]
            assert max(loads) - min(loads) <= max(size.values())  # greedy longest-first bound
            shuffled = items[:]
            rng.shuffle(shuffled)
            assert assignment(shuffled, n) == assignment(items, n)  # stable: names and counts only
    loads = [sum(dict(uneven)[t] for t in s) for s in partition(uneven, 4)]
    by_position = [sum(w for _, w in uneven[i * 30:(i + 1) * 30]) for i in range(4)]
    smallest = min(w for _, w in uneven)  # within less than one tuple of each other; by position: ~16 tuples
    assert max(loads) - min(loads) < smallest and max(by_position) - min(by_position) > 10 * smallest
    # the images, not the tuple count: 3 tuples of 6 views and 3 of 4 in two shards
    assert sorted(sum(dict(weights(dataset))[t] for t in s) for s in partition(weights(dataset), 2)) == [14, 16]

    assert main(["plan", str(dataset), "--shards", "4", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "6 tuples, 30 images in 4 shards; largest shard 1.333× the mean"
    listed = dict(reversed(line.split("\t")) for line in out if "\t" in line)
    assert {k: int(v) for k, v in listed.items()} == assignment(weights(dataset), 4)


@pytest.mark.parametrize("text, ok", [("0/1", Shard(0, 1)), ("3/8", Shard(3, 8)), (" 7 / 8 ", Shard(7, 8)),
                                      ("8/8", None), ("1/0", None), ("-1/4", None), ("2", None), ("a/b", None)])
def test_parse_shard(text: str, ok):
    if ok is None:
        with pytest.raises(Exception, match="I/N|0 to N-1"):
            parse_shard(text)
    else:
        assert parse_shard(text) == ok


def _fsconvert(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fsconvert.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_shards_two_at_once_then_the_last_equal_one_local_run(dataset: Path, clean: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    base = ["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "1"]
    first = [_fsconvert(*base, "--shard", s) for s in ("2/3", "0/3")]  # two real processes at the same time
    for proc in first:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    shard_of = assignment(weights(dataset), 3)
    assert tuples(out) == {n for n, i in shard_of.items() if i in (0, 2)}

    report, complete = status(out)
    missing = sorted(n for n, i in shard_of.items() if i == 1)
    assert not complete and report.splitlines()[0] == f"{out}: 6 tuples: done 4, running 0, failed 0, stale 0, missing 2"
    assert [line.split()[1] for line in report.splitlines() if line.startswith("  missing")] == missing
    assert all(f"missing  {n} (shard 1/3)" in report for n in missing)

    assert main(base + ["--shard", "1/3"]) == 0
    assert "shard 1/3: 2 tuples in" in capsys.readouterr().out
    assert files(out) == files(clean)  # byte for byte, and nothing else (no lock or staging left)
    assert sorted(p.name for p in (out / "fsconvert").iterdir()) == [f"summary-shard-{i}-of-3.json" for i in range(3)]
    summary = json.loads((out / "fsconvert" / "summary-shard-1-of-3.json").read_text())
    assert summary["selection"] == shard_of and sorted(summary["tuples"]) == missing
    assert summary["finished"] and summary["settings"]["format"] == "facescape"
    assert status(out) == (status(out)[0], True) and "done 6, running 0" in status(out)[0]

    # a rerun of every shard converts nothing
    assert main(base + ["--shard", "0/3"]) == 0
    assert "converted 0 (0 images), skipped" in capsys.readouterr().out


def test_status_tells_done_running_failed_stale_missing(dataset: Path, clean: Path, tmp_path: Path, capsys):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    (root / "images" / "1" / "2_smile" / "params.json").write_text("{")
    out = tmp_path / "out"
    assert main(["to-facescape", str(root), "-o", str(out), "-q", "-j", "1", "--exps", "1,2"]) == 2
    capsys.readouterr()
    image = root / "images" / "2" / "1_neutral" / "3.jpg"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    (out / "fsconvert" / "summary.json").write_text(  # as if the selection had been wider
        (out / "fsconvert" / "summary.json").read_text().replace('"2/2_smile": 0', '"2/2_smile": 0, "9/1_x": 0'))
    with tuple_lock(out / "1" / "1_neutral"):
        report, complete = status(out)
    assert not complete
    lines = report.splitlines()
    assert lines[0] == f"{out}: 5 tuples: done 1, running 1, failed 1, stale 1, missing 1"
    assert "  running  1/1_neutral" in lines
    assert f"  failed   1/2_smile: {root}/images/1/2_smile/params.json: invalid JSON" in report
    assert "  stale    2/1_neutral: images 3.jpg changed" in lines and "  missing  9/1_x" in lines
    assert main(["status", str(out)]) == 1 and "done 2, running 0, failed 1, stale 1, missing 1" in capsys.readouterr().out


def test_a_tuple_is_never_converted_twice_at_once(dataset: Path, clean: Path, tmp_path: Path, capsys):
    (ref,) = iter_dataset(dataset, ids={2}, exps=["2_smile"])
    out = tmp_path / "2" / "2_smile"
    result = []
    with tuple_lock(out):  # another run holds the tuple
        assert lock_path(out).exists()
        worker = threading.Thread(target=lambda: result.append(convert_tuple(ref.path, out, "facescape", overlays=2)))
        worker.start()
        time.sleep(1.5)
        assert worker.is_alive()
        assert sorted(p.name for p in out.parent.iterdir()) == [".2_smile.lock"]  # nothing started
        with tuple_lock(out, wait=False) as held:
            assert held is False
    worker.join(timeout=120)
    assert result[0].status == "converted" and files(out) == files(clean / "2" / "2_smile")
    assert sorted(p.name for p in out.parent.iterdir()) == ["2_smile"]  # the lock file is gone
    assert f"waiting for another fsconvert run converting {out}" in capsys.readouterr().err


def test_shard_engine_address_are_yaml_keys(dataset: Path, tmp_path: Path, capsys):
    from exporters import available

    config = tmp_path / "run.yaml"
    config.write_text(f"input: {dataset}\nout: o\nformat: facescape\nshard: 1/3\nengine: dask\n"
                      "address: tcp://127.0.0.1:1\n")
    (run_,) = load_config(config, available())
    c = run_.conversion
    assert (c.shard, c.engine, c.address) == (Shard(1, 3), "dask", "tcp://127.0.0.1:1")
    config.write_text(f"input: {dataset}\nout: o\nformat: facescape\nshard: 3/3\n")
    assert main(["batch", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == f"fsconvert: error: {config}: key 'shard': invalid value '3/3': shard index must be 0 to N-1 " \
                  "for I/N, got '3/3'\n"
    one = dataset / "images" / "1" / "1_neutral"
    assert main(["to-facescape", str(one), "-o", str(tmp_path / "x"), "--shard", "0/2"]) == 2
    assert "--shard splits the tuples of a dataset, but this is one tuple folder" in capsys.readouterr().err


@pytest.mark.parametrize("engine, module", [("dask", "distributed"), ("ray", "ray")])
def test_a_missing_engine_is_one_line(engine: str, module: str, dataset: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert main(["to-facescape", str(dataset), "-o", str(tmp_path / "o"), "-q", "--engine", engine]) == 2
    assert capsys.readouterr().err == (f"fsconvert: error: --engine {engine} needs {module}: "
                                       f"pip install 'fsconvert[{engine}]'\n")


# ---- real engines ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dask_cluster():
    import logging

    import distributed  # an optional extra, which requirements.txt pins: the tests run for real

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def ray_session():
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def _lock_holders(out: Path) -> dict[int, str]:
    """pid → the tuple whose lock it holds open (a process converting it), but this process."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(str(out)) and target.endswith(".lock"):
                    found[int(proc.name)] = target
        except OSError:
            continue
    return found


def _run_and_kill_one_worker(argv: list[str], out: Path) -> tuple[int, str]:
    """Run the command in a thread; SIGKILL a worker seen converting a tuple once another tuple is
    complete or also running; return the exit code and the killed tuple's lock file."""
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(main(argv)))
    thread.start()
    deadline, victim = time.monotonic() + 240, None
    while thread.is_alive() and time.monotonic() < deadline:
        holders = {pid: lock for pid, lock in _lock_holders(out).items()
                   if any(Path(lock).parent.glob(f"{Path(lock).stem}.*.partial"))}  # staging, not finished
        if holders and (tuples(out) or len(holders) > 1):
            victim = next(iter(holders.items()))
            os.kill(victim[0], signal.SIGKILL)
            break
        time.sleep(0.005)
    thread.join(timeout=240)
    assert victim is not None and code, "no worker was seen converting"
    return code[0], victim[1]


def _engine_run(engine: str, address: str | None, dataset: Path, out: Path) -> list[str]:
    return ["to-facescape", str(dataset), "-o", str(out), "-q", "-j", "2", "--engine", engine] + (
        ["--address", address] if address else [])


def _name(lock: str) -> str:
    path = Path(lock)
    return f"{path.parent.name}/{path.name[1:-len('.lock')]}"


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_engine_equals_local_and_survives_a_killed_worker(engine: str, dataset: Path, clean: Path, tmp_path: Path,
                                                          capsys, request):
    if engine == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        address = cluster.scheduler_address
        cluster.scheduler.allowed_failures = 0  # report a lost worker at once (dask's default re-runs it)
    else:
        request.getfixturevalue("ray_session")
        address = None  # the session this process started

    out = tmp_path / "out"
    argv = _engine_run(engine, address, dataset, out)
    assert main(argv) == 0
    assert "6 tuples in" in capsys.readouterr().out
    assert files(out) == files(clean)  # byte for byte like the local pool

    killed = tmp_path / "killed"
    argv = _engine_run(engine, address, dataset, killed)
    code, lock = _run_and_kill_one_worker(argv, killed)
    out = capsys.readouterr().out
    failed = {line.split()[1][:-1]: line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("  failed")}
    # the killed tuple, and with Dask the one queued behind it on the same worker (worker-saturation 1.1)
    assert code == 2 and _name(lock) in failed and len(failed) <= 2 and set(failed.values()) == {LOST}, out
    assert tuples(killed) >= tuples(clean) - failed.keys()  # (killed just after its rename: complete)
    for name in tuples(killed):  # every visible tuple is whole and the local run's
        assert files(killed / name) == files(clean / name)
    redo = tuples(clean) - tuples(killed)
    assert main(argv) == 0
    assert f"converted {len(redo)} (" in capsys.readouterr().out
    assert files(killed) == files(clean)  # and no staging folder or lock file left

    # a task that fails is reported by the engine like by the local pool
    jobs = [TupleJob(source=dataset / "images" / "7" / "1_neutral", out_dir=tmp_path / "none", fmt="facescape")]
    (result,) = run_dataset(jobs, engine=engine, address=address, workers=2)
    assert result.status == "failed" and "params.json: cannot read" in result.reason


def test_dask_reruns_a_task_whose_worker_died(dask_cluster, dataset: Path, clean: Path, tmp_path: Path, capsys):
    """Dask's default: the tuple of a lost worker runs again on another one; the lock and the staging
    make that safe (the new attempt removes the dead one's staging folder), and the result is exact."""
    dask_cluster.scheduler.allowed_failures = 3
    out = tmp_path / "out"
    code, lock = _run_and_kill_one_worker(_engine_run("dask", dask_cluster.scheduler_address, dataset, out), out)
    assert code == 0 and "failed 0" in capsys.readouterr().out
    assert files(out) == files(clean)
