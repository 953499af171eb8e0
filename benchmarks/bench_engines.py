"""Engine overhead: the same tuples converted by the local pool, a Dask LocalCluster and a local Ray
instance, 2 worker processes each (one OpenCV and one render thread per process).

Per engine: the time to start it (a Dask or Ray cluster once; the local pool starts its processes in
every run), then `fsconvert.datasetrun.run_dataset` (export + check of every tuple, results streamed back) on a
few and on all tuples, after a warm-up run (workers' imports). The slope between the two gives the
wall time per tuple on 2 workers, free of fixed costs (pool start-up, first imports, the last
straggler); its inverse is the throughput. Ratios are against the local pool measured in the same
round; the overhead per tuple is (engine slope − local slope). Best of --repeat rounds.

Engine overhead apart from the conversion: the same converted tuples, hard-linked into 10 copies of
OUT, submitted again as tasks (each task takes the lock, fingerprints the tuple and finds its record
up to date: ~2 ms of work), 2 × tuples and 10 × tuples of them; the slope is the wall time per task
on 2 workers, i.e. what the engine adds per tuple, against the same tasks run one after another in
this process.

    .venv/bin/python benchmarks/bench_engines.py [--tuples 12] [--few 4] [--views 8] [--long-side 600] [--repeat 2]

Input: synthetic tuples (`fsconvert.synthetic.make_sample`), cached in $TMPDIR/fsconvert-bench-engines.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

os.environ.setdefault("LP_NUM_THREADS", "1")

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert.datasetrun import run_dataset
from fsconvert.engines import results
from fsconvert.job import TupleJob
from fsconvert.loader import iter_dataset

WORKERS = 2


def dataset(cache: Path, tuples: int, views: int, long_side: int) -> Path:
    root = cache / f"{tuples}x{views}-{long_side}px"
    if not (root / "images").is_dir():
        from fsconvert.synthetic import make_sample

        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        subjects = tuple(str(i + 1) for i in range((tuples + 1) // 2))
        make_sample(tmp, subjects=subjects, expressions=("1_neutral", "2_smile"), n_views=views, long_side=long_side)
        for extra in list(iter_dataset(tmp))[tuples:]:
            shutil.rmtree(extra.path)
        os.rename(tmp, root)
    return root


def jobs_for(root: Path, out: Path, tuples: int | None = None) -> list[TupleJob]:
    refs = list(iter_dataset(root))[:tuples]
    return [TupleJob(source=r.path, out_dir=out / r.subject / r.expression, fmt="facescape") for r in refs]


def convert(root: Path, out: Path, engine: str, address: str | None, tuples: int) -> float:
    """Wall seconds to convert the first `tuples` tuples of `root` into a fresh `out`."""
    jobs = jobs_for(root, out, tuples)
    start = time.perf_counter()
    done = run_dataset(jobs, workers=WORKERS, engine=engine, address=address)
    seconds = time.perf_counter() - start
    assert all(r.status == "converted" for r in done), [r.reason for r in done if r.status != "converted"]
    shutil.rmtree(out)
    return seconds


def dispatch(jobs: list[TupleJob], engine: str, address: str | None, tasks: int) -> float:
    """Wall seconds of `tasks` up-to-date jobs as engine tasks (no pre-check in this process)."""
    start = time.perf_counter()
    done = [r for _, r in results(engine, jobs[:tasks], workers=WORKERS, address=address)]
    assert all(r.status == "skipped" for r in done), [r.reason for r in done if r.status != "skipped"]
    return time.perf_counter() - start


def measure(root: Path, tmp: Path, engine: str, address: str | None, few: int, tuples: int,
            done: list[TupleJob]) -> dict[str, float]:
    """Seconds: a warm-up run of 2 tuples, then `few` and `tuples` tuples; the slope and the fixed part;
    then the dispatch slope of the up-to-date `done` jobs."""
    convert(root, tmp / "o", engine, address, 2)
    t_few, t_all = (convert(root, tmp / "o", engine, address, n) for n in (few, tuples))
    slope = (t_all - t_few) / (tuples - few)
    small, large = 2 * tuples, len(done)
    d_small, d_large = (dispatch(done, engine, address, n) for n in (small, large))
    return {"few": t_few, "all": t_all, "slope": slope, "fixed": t_all - slope * tuples,
            "task": (d_large - d_small) / (large - small)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuples", type=int, default=12)
    parser.add_argument("--few", type=int, default=4)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--long-side", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best counts")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fsconvert-bench-engines")
    args = parser.parse_args()
    root = dataset(args.cache, args.tuples, args.views, args.long_side)
    n = len(list(iter_dataset(root)))
    print(f"{args.few} and {n} tuples × {args.views} views of {args.long_side} px (facescape export + check), "
          f"{WORKERS} worker processes of 1 thread; {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    import distributed
    import ray

    local_cluster = cast("Callable[..., distributed.LocalCluster]", distributed.LocalCluster)  # untyped __init__

    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / "done"
        run_dataset(jobs_for(root, converted / "0"), workers=WORKERS)
        for k in range(1, 10):
            shutil.copytree(converted / "0", converted / str(k), copy_function=os.link)
        done = [job for k in range(10) for job in jobs_for(root, converted / str(k))]
        start = time.perf_counter()
        assert all(job.convert().status == "skipped" for job in done)
        serial = (time.perf_counter() - start) / len(done)
        for _ in range(args.repeat):  # each round measures every engine, so that others' load hits them alike
            this_round = {"local": {"start": 0.0, **measure(root, Path(tmp), "local", None, args.few, n, done)}}

            start = time.perf_counter()
            cluster = local_cluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.ERROR)
            this_round["dask"] = {"start": time.perf_counter() - start,
                                  **measure(root, Path(tmp), "dask", cluster.scheduler_address, args.few, n, done)}
            cluster.close()

            start = time.perf_counter()
            ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, logging_level=logging.WARNING)
            this_round["ray"] = {"start": time.perf_counter() - start,
                                 **measure(root, Path(tmp), "ray", None, args.few, n, done)}
            ray.shutdown()
            for engine, times in this_round.items():
                if engine not in best or times["all"] < best[engine]["all"]:
                    best[engine] = times

    local = best["local"]["slope"]
    print(f"\n{'engine':>6}  {'start s':>7}  {f'{args.few} tuples s':>11}  {f'{n} tuples s':>11}  {'s/tuple':>7}  "
          f"{'tuples/s':>8}  {'÷ local':>7}  {'overhead/tuple':>14}  {'fixed s':>7}  {'ms/task':>7}")
    for engine, t in best.items():
        print(f"{engine:>6}  {t['start']:>7.2f}  {t['few']:>11.2f}  {t['all']:>11.2f}  {t['slope']:>7.3f}  "
              f"{1 / t['slope']:>8.2f}  {local / t['slope']:>6.2f}×  {(t['slope'] - local) * 1e3:>11.0f} ms  "
              f"{t['fixed']:>7.2f}  {t['task'] * 1e3:>7.1f}")
    print(f"ms/task: wall per up-to-date task on {WORKERS} workers ({len(done)} tasks: lock, fingerprint, record "
          f"read); the same task in this process, one after another: {serial * 1e3:.1f} ms")
    print(f"(best of {args.repeat} rounds by the {n}-tuple run; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
