"""Where tuples are converted: a local process pool, a Dask cluster or a Ray cluster.

Each engine runs `TupleJob.convert` (the same per-tuple unit of work: export, check, record, under the
tuple's lock) as one task per tuple, and yields the results as they finish. Tasks are never started
twice speculatively. A worker that dies gives a "failed" result for its tuple (Dask first re-runs it
elsewhere, up to its `allowed-failures`): its staging folder stays hidden, and the next attempt (or the
dataset run, when it is stopped) removes it and converts the tuple again.

Threads. The local engine's N processes (`-j N`) share a budget of N cores (`fsconvert.threads`): a job
holds one core, and its image stage runs up to N views at once on N threads, on its own core and on the
ones that are spare at that moment. So each worker process has its main thread and up to N image
threads (plus `threads` OpenCV / llvmpipe / OpenMP threads outside the image stage), at most N of them
busy machine-wide, and the last tuple of a run gets every core the finished ones gave back. Dask and
Ray tasks use one core each, with their views in sequence: their schedulers place tasks by declared
cores (`num_cpus=1`, one thread per Dask worker), and a task taking more than it declared would slow
the tasks placed beside it; a cluster fills its cores with more tasks instead.

Stopping. An exception in the consumer (KeyboardInterrupt: the command line turns SIGINT and SIGTERM
into one) kills the local workers at once (both signals are blocked in them: the main process decides)
and waits for them to end, cancels Dask and Ray tasks and closes the clusters started here.

Dask and Ray are optional (`pip install 'fsconvert[dask]'` / `'fsconvert[ray]'`), imported only here.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
import uuid
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from types import ModuleType
from typing import Literal, get_args

from tqdm import tqdm

from .errors import FsconvertError
from .job import TupleJob, TupleResult
from .threads import STOP_SIGNALS, CoreBudget, core, limit_threads, share_cores

Engine = Literal["local", "dask", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)
LOST = "not converted: a worker process died (killed, or out of memory)"


class EngineError(FsconvertError):
    """The engine is not installed, or its cluster cannot be reached or used."""


def results(engine: str, jobs: Sequence[TupleJob], *, workers: int = 1, threads: int = 1,
            address: str | None = None) -> Generator[tuple[int, TupleResult], None, None]:
    """(index in `jobs`, result) of every job, in the order they finish.

    "local": `workers` processes of this machine sharing `workers` cores, each running its tuple's views
    on up to `workers` threads, with `threads` OpenCV, llvmpipe and OpenMP threads (`address` must be
    None); Dask and Ray tasks use one core each. "dask": the scheduler at
    `address` (tcp://host:port), or a LocalCluster of `workers` processes. "ray": the cluster at
    `address` ("auto", host:port or ray://host:port), or a new local one with `workers` CPUs.
    """
    module = require(engine, address)
    if engine == "local":
        return _local(jobs, workers, threads)
    assert module is not None  # require imports the module of dask and of ray
    return (_dask if engine == "dask" else _ray)(module, jobs, workers, address)


def require(engine: str, address: str | None = None) -> ModuleType | None:
    """The engine's module (None for "local"), or an EngineError saying what to install or change."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine '{engine}' (available: {', '.join(ENGINES)})")
    if engine == "local":
        if address is not None:
            raise EngineError("--address is for --engine dask or ray")
        return None
    module = "distributed" if engine == "dask" else "ray"
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EngineError(f"--engine {engine} needs {module}: pip install 'fsconvert[{engine}]'") from None


# ---- local -----------------------------------------------------------------------------------------


def _local(jobs: Sequence[TupleJob], workers: int, threads: int) -> Generator[tuple[int, TupleResult], None, None]:
    if workers <= 1 or len(jobs) <= 1:  # in this process, its views on `workers` threads
        for k, job in enumerate(jobs):
            yield k, guarded(job, workers)
        return
    # spawn: workers start clean (no inherited locks, threads or GL state of the parent).
    context = multiprocessing.get_context("spawn")
    budget = CoreBudget(context, workers)
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_worker,
                               initargs=(os.getpid(), threads, budget))
    try:
        with _stops_blocked():  # the workers are spawned by submit
            futures: dict[Future[TupleResult], int] = {pool.submit(guarded, job, workers): k
                                                       for k, job in enumerate(jobs)}
        for future in as_completed(futures):
            k = futures[future]
            try:
                result = future.result()
            except BrokenProcessPool:
                result = failed(jobs[k], LOST)
            yield k, result
    except BaseException:
        # Ctrl-C, SIGTERM: stop now, not after the running tuples (the dataset run then removes their staging
        # folders). shutdown() alone would wait for them, even without `wait`; Python 3.14 has kill_workers().
        # shutdown() returns once the killed processes have ended (their tuples' locks are free).
        for process in list((pool._processes or {}).values()):
            process.kill()
        pool.shutdown(cancel_futures=True)
        raise
    pool.shutdown()


@contextmanager
def _stops_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread meanwhile (then delivered): processes spawned now inherit them
    blocked, in every thread they start, whatever handler a library they load installs (pycolmap's glog answers
    SIGTERM with a stack dump). A terminal or Slurm signals every process of the run: the parent alone acts
    on it, killing the workers and removing their staging folders."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_PR_SET_PDEATHSIG = 1


def _init_worker(parent: int, threads: int, budget: CoreBudget) -> None:
    """A local pool worker: `threads` library threads; its jobs and views on the run's core `budget`; die
    with the parent (SIGINT and SIGTERM it inherits blocked: `_stops_blocked`)."""
    _worker_threads(threads)
    share_cores(budget)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


@functools.cache
def _worker_threads(threads: int) -> None:
    """`threads` OpenCV, render and OpenMP threads per worker process (the workers fill the cores), unless
    the environment sets LP_NUM_THREADS / OMP_NUM_THREADS."""
    limit_threads(threads, override=False)
    # The workers' (silent) bars would otherwise each make a multiprocessing lock, which a killed worker
    # leaves to the resource tracker's "leaked semaphore" warning.
    tqdm.set_lock(threading.RLock())


def guarded(job: TupleJob, workers: int = 1) -> TupleResult:
    """`job.convert(workers)` on one core of this process's budget (`fsconvert.threads.core`), with a bug
    (any other exception than an FsconvertError) made a failed result."""
    try:
        with core():
            return job.convert(workers)
    except Exception as exc:  # a bug: report it with its traceback, keep converting the others
        traceback.print_exc()
        return failed(job, f"internal error: {type(exc).__name__}: {exc}")


def failed(job: TupleJob, reason: str) -> TupleResult:
    return TupleResult(job.name, job.out_dir, "failed", reason=reason)


def _task(job: TupleJob) -> TupleResult:
    """One tuple on a Dask or Ray worker process (one core)."""
    _worker_threads(1)
    return guarded(job)


def _lost(job: TupleJob, exc: BaseException) -> TupleResult:
    """The result of a task the engine could not run or finish."""
    first = str(exc).strip().splitlines()
    return failed(job, f"not converted: {type(exc).__name__}" + (f": {first[0]}" if first else ""))


# ---- dask ------------------------------------------------------------------------------------------


def _dask(distributed: ModuleType, jobs: Sequence[TupleJob], workers: int,
          address: str | None) -> Generator[tuple[int, TupleResult], None, None]:
    cluster = None
    try:
        if address is None:
            with _sigint_ignored():  # by the workers, which inherit it: Ctrl-C is for this process
                cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                   dashboard_address=None, silence_logs=logging.ERROR)
        client = distributed.Client(cluster or address)
    except (OSError, ValueError) as exc:
        if cluster is not None:
            cluster.close()
        raise EngineError(f"dask: cannot connect to the scheduler at {address}: {exc}") from None
    try:
        threaded = {w: n for w, n in client.nthreads().items() if n != 1}
        if threaded:
            worker, n = next(iter(threaded.items()))
            raise EngineError(f"dask: worker {worker} runs {n} threads; fsconvert needs one task per worker "
                              "process (start the workers with --nthreads 1)")
        run = uuid.uuid4().hex[:8]
        futures = {client.submit(_task, job, key=f"fsconvert-{run}-{k}", pure=False): k
                   for k, job in enumerate(jobs)}
        try:
            for future in distributed.as_completed(futures):
                k = futures.pop(future)
                try:
                    result = future.result()
                except distributed.KilledWorker:
                    result = failed(jobs[k], LOST)
                except Exception as exc:  # e.g. fsconvert missing on a worker
                    result = _lost(jobs[k], exc)
                yield k, result
        except BaseException:
            client.cancel(list(futures), force=True)
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile (in the main thread), so that processes started now ignore it too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- ray -------------------------------------------------------------------------------------------


def _ray(ray: ModuleType, jobs: Sequence[TupleJob], workers: int,
         address: str | None) -> Generator[tuple[int, TupleResult], None, None]:
    started = not ray.is_initialized()  # else use the caller's session, and leave it open
    if started:
        local = {"address": "local", "num_cpus": workers} if address is None else {"address": address}
        before = _children()
        try:
            with _sigterm_kept():
                ray.init(**local, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise EngineError(f"ray: cannot connect to the cluster at {address}: {exc}") from None
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_task)
        refs = {task.remote(job): k for k, job in enumerate(jobs)}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                k = refs.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.OutOfMemoryError):
                    result = failed(jobs[k], LOST)
                except ray.exceptions.RayError as exc:
                    result = _lost(jobs[k], exc)
                yield k, result
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            _shut_down_local_ray(ray, before)


RAY_EXIT_SECONDS = 10
"""How long the local Ray cluster's processes may take to end after `ray.shutdown()` before they are killed."""


def _children() -> set[int]:
    """The process ids of this process's descendants (psutil: Ray's own dependency, vendored in its package)."""
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _shut_down_local_ray(ray: ModuleType, before: set[int]) -> None:
    """`ray.shutdown()` of the cluster this run started, and every process started since `before` (`_children`)
    ended: shutdown stops Ray's daemons, but their workers, idle ones included, only notice later (under load one
    outlived the command by more than 10 s); what is left after RAY_EXIT_SECONDS is killed."""
    import psutil

    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=RAY_EXIT_SECONDS)
    for process in alive:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=RAY_EXIT_SECONDS)


@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """The caller's SIGTERM handler kept (ray.init replaces it with one exiting the process by SystemExit), when
    the caller has one of its own, like the command line's (which stops the run and exits 143); else Ray's,
    which still lets this module shut down the local cluster."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)
