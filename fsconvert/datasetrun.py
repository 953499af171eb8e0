"""The dataset run: tuples spread over processes, skipped when up to date, summarised in one text.

`run_dataset` runs `TupleJob`s (`fsconvert.job`) on an engine (`fsconvert.engines`: a local pool, Dask
or Ray), one tuple per process at a time; on the local engine a tuple's views run on the cores the
others leave spare (one image in memory per busy core); the run page (`fsconvert.runpage`) shows the
results. A run stopped by an exception (Ctrl-C; SIGTERM, which the command line raises as one) ends its
workers first, then removes the staging folders and locks of the tuples it did not finish: what is
visible is whole tuples, each with its record, and the same command continues from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing

from tqdm import tqdm

from .engines import results as engine_results
from .errors import FsconvertError
from .export import leftovers, remove_leftovers
from .job import TupleJob, TupleResult, counts, lock_path, tuple_lock
from .protocol import CHECK_JSON
from .threads import check_stop


def run_dataset(
    jobs: Sequence[TupleJob],
    *,
    workers: int = 1,
    threads: int = 1,
    progress: bool = False,
    on_result: Callable[[TupleResult], None] | None = None,
    engine: str = "local",
    address: str | None = None,
) -> list[TupleResult]:
    """Run jobs, `workers` processes in parallel, one tuple per process; results in job order.

    `engine` is where the processes are (`fsconvert.engines`): "local" (this machine), "dask" or
    "ray", on the cluster at `address` or on a local one of `workers` processes. Local worker processes
    share `workers` cores: each runs its tuple's views on up to `workers` threads, as many at once as
    cores are spare, and uses `threads` threads in OpenCV, llvmpipe and Open3D unless the environment
    (LP_NUM_THREADS, OMP_NUM_THREADS) says otherwise (Dask and Ray tasks: one core each); jobs run in
    this process leave its settings alone (`fsconvert.threads.limit_threads` sets them). A single job
    on the local engine runs in this process with `workers` image threads and the exporter's own progress.
    A job that raises something other than an FsconvertError (a bug) or whose worker process dies is
    reported as failed, with the traceback on stderr; the others go on.
    """
    if len(jobs) == 1 and engine == "local":
        result = jobs[0].convert(workers=workers, progress=progress)
        if on_result:
            on_result(result)
        return [result]
    results: list[TupleResult | None] = [None] * len(jobs)
    counts = [j.images for j in jobs]
    bars = [tqdm(total=len(jobs), desc="tuples", unit="tuple", disable=not progress, position=0),
            tqdm(total=sum(counts), desc="images", unit="img", disable=not progress, position=1)]

    def done(i: int, result: TupleResult) -> None:
        results[i] = result
        bars[0].update()
        bars[1].update(counts[i])
        if on_result:
            on_result(result)

    try:
        todo = []
        for i, job in enumerate(jobs):  # skip up-to-date tuples here, without starting workers
            try:
                skipped = job.up_to_date()
            except FsconvertError:  # reported by the conversion
                skipped = None
            if skipped is None:
                todo.append(i)
                continue
            if leftovers(job.out_dir):  # e.g. the parked old version of a replace that was killed
                with tuple_lock(job.out_dir, wait=False) as held:
                    if held:
                        remove_leftovers(job.out_dir)
            done(i, skipped)
        if todo:
            stream = engine_results(engine, [jobs[i] for i in todo], workers=workers, threads=threads,
                                    address=address)
            try:
                with closing(stream):  # closing it ends the engine's workers
                    for k, result in stream:
                        done(todo[k], result)
                        check_stop()
            except BaseException:
                tidy([jobs[i] for i in todo if results[i] is None])  # the unfinished ones
                raise
    finally:
        for bar in bars:
            bar.close()
    return [r for r in results if r is not None]


def tidy(jobs: Sequence[TupleJob]) -> None:
    """Remove the staging folders and the lock files that stopped conversions of `jobs` left, where no other
    process holds the tuple's lock (a task still running on a remote cluster keeps its own)."""
    for job in jobs:
        if leftovers(job.out_dir) or lock_path(job.out_dir).exists():
            with tuple_lock(job.out_dir, wait=False) as held:
                if held:
                    remove_leftovers(job.out_dir)


def summary_text(results: Sequence[TupleResult], seconds: float) -> str:
    """Counts, then one line per failed tuple and per failed check."""
    n = counts(results)
    images = sum(r.views for r in results if r.status == "converted")
    excluded = sum(len(r.excluded) for r in results if r.status != "failed")
    lines = [
        f"{len(results)} tuple{'' if len(results) == 1 else 's'} in {seconds:.1f} s: "
        f"converted {n['converted']} ({images} images), skipped {n['skipped']} (up to date), "
        f"failed {n['failed']}" + (f"; {excluded} views left out as valid=false" if excluded else "")
    ]
    lines += [f"  failed       {r.name}: {r.reason}" for r in results if r.status == "failed"]
    lines += [f"  check failed {r.name}: see {r.out_dir / CHECK_JSON}" for r in results if r.check_passed is False]
    return "\n".join(lines)
