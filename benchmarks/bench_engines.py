"""Engine overhead: the same tuples converted by the local pool, a Dask LocalCluster and a local Ray
instance, 2 worker processes each (one OpenCV and one render thread per process).

Per engine: the time to start it (a Dask or Ray cluster once; the local pool starts its processes in
every run), then `fsconvert.batch.run` (export + check of every tuple, results streamed back) on a
few and on all tuples, after a warm-up run (workers' imports). The slope between the two gives the
wall time per tuple on 2 workers, free of fixed costs (pool start-up, first imports, the last
straggler); its inverse is the throughput. Ratios are against the local pool measured in the same
round; the overhead per tuple is (engine slope − local slope). Best of --repeat rounds.

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
from pathlib import Path

os.environ.setdefault("LP_NUM_THREADS", "1")

import fsconvert  # noqa: F401  (headless rendering set-up)
from fsconvert.batch import TupleJob, run
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


def convert(root: Path, out: Path, engine: str, address: str | None, tuples: int) -> float:
    """Wall seconds to convert the first `tuples` tuples of `root` into a fresh `out`."""
    refs = list(iter_dataset(root))[:tuples]
    jobs = [TupleJob(source=r.path, out_dir=out / r.subject / r.expression, fmt="facescape") for r in refs]
    start = time.perf_counter()
    results = run(jobs, workers=WORKERS, engine=engine, address=address)
    seconds = time.perf_counter() - start
    assert all(r.status == "converted" for r in results), [r.reason for r in results if r.status != "converted"]
    shutil.rmtree(out)
    return seconds


def measure(root: Path, tmp: Path, engine: str, address: str | None, few: int, tuples: int) -> dict[str, float]:
    """Seconds: a warm-up run of 2 tuples, then `few` and `tuples` tuples; the slope and the fixed part."""
    convert(root, tmp / "o", engine, address, 2)
    t_few, t_all = (convert(root, tmp / "o", engine, address, n) for n in (few, tuples))
    slope = (t_all - t_few) / (tuples - few)
    return {"few": t_few, "all": t_all, "slope": slope, "fixed": t_all - slope * tuples}


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

    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):  # each round measures every engine, so that others' load hits them alike
            t = {"local": {"start": 0.0, **measure(root, Path(tmp), "local", None, args.few, n)}}

            start = time.perf_counter()
            cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=logging.ERROR)
            t["dask"] = {"start": time.perf_counter() - start,
                         **measure(root, Path(tmp), "dask", cluster.scheduler_address, args.few, n)}
            cluster.close()

            start = time.perf_counter()
            ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, logging_level=logging.WARNING)
            t["ray"] = {"start": time.perf_counter() - start, **measure(root, Path(tmp), "ray", None, args.few, n)}
            ray.shutdown()
            for engine, times in t.items():
                if engine not in best or times["all"] < best[engine]["all"]:
                    best[engine] = times

    local = best["local"]["slope"]
    print(f"\n{'engine':>6}  {'start s':>7}  {f'{args.few} tuples s':>11}  {f'{n} tuples s':>11}  {'s/tuple':>7}  "
          f"{'tuples/s':>8}  {'÷ local':>7}  {'overhead/tuple':>14}  {'fixed s':>7}")
    for engine, t in best.items():
        print(f"{engine:>6}  {t['start']:>7.2f}  {t['few']:>11.2f}  {t['all']:>11.2f}  {t['slope']:>7.3f}  "
              f"{1 / t['slope']:>8.2f}  {local / t['slope']:>6.2f}×  {(t['slope'] - local) * 1e3:>11.0f} ms  "
              f"{t['fixed']:>7.2f}")
    print(f"(best of {args.repeat} rounds by the {n}-tuple run; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
