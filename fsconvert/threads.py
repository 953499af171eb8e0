"""How many threads one process's native libraries use (OpenCV, llvmpipe for OSMesa renders, Open3D's OpenMP),
the cores a process shares with the other processes of a run (`share_cores`), and its stop on SIGINT / SIGTERM
(`stop_on_signals`).

The core budget: the local engine's worker processes (`fsconvert.engines`) share one semaphore of N permits for
`-j N` (`CoreBudget`). A tuple's job holds one permit for as long as it runs (its loading, check and record are
one core's work); its image stage (`fsconvert.imagestage`) runs one view on that permit and more views at once
only on permits that are spare at that moment (`spare_core`: never waits, and leaves a permit to a job waiting
for one), each given back after its view. So at most N views and jobs compute at once on the machine, and when
fewer tuples than processes remain, the last ones take the cores the finished ones gave back. Work a format runs
beside its images (NeuS's silhouettes, COLMAP's points3D: `beside`; open3d's depth maps: `second_core`) takes a
spare permit the same way. A process without a budget (one tuple, Dask and Ray tasks) uses the threads it is told
to.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from types import FrameType
from typing import TypeVar

import cv2

T = TypeVar("T")

RENDER_AND_OPENMP = ("LP_NUM_THREADS", "OMP_NUM_THREADS")
"""Read when llvmpipe creates its first context and when Open3D loads: set them before either."""


def limit_threads(threads: int, *, override: bool = True) -> None:
    """Use at most `threads` threads per library in this process (and in processes it spawns).

    `override=False` keeps values the environment already sets (a user's LP_NUM_THREADS, say).
    """
    cv2.setNumThreads(threads)
    for name in RENDER_AND_OPENMP:
        if override or name not in os.environ:
            # llvmpipe at 0 rasterises on the calling thread: one thread, and no second thread's tile buffers
            # (-140 MB at peak for a 12.6 MP render; the same pixels)
            os.environ[name] = str(0 if name == "LP_NUM_THREADS" and threads == 1 else threads)


@contextmanager
def opencv_threads(threads: int) -> Iterator[None]:
    """OpenCV's thread count set to `threads` while open, then put back as it was.

    The setting is process-wide (OpenCV holds one, `cv::setNumThreads`), not per calling thread: a pool of
    N Python threads each calling OpenCV opens this with 1 around the whole pool, so that N threads use N
    cores instead of each cv2 call also fanning out over every core (fsconvert.imagestage.run_plans).
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


class CoreBudget:
    """N cores shared by the processes of one run: a semaphore of N permits, and how many jobs wait for one (a
    spare core goes to them before another view). Made by the local engine with its multiprocessing context;
    handed to each worker as it starts (`share_cores`)."""

    def __init__(self, context: BaseContext, cores: int) -> None:
        self.permits = context.Semaphore(cores)
        self.waiting = context.Value("i", 0)


_budget: CoreBudget | None = None


def share_cores(budget: CoreBudget | None) -> None:
    """Make this process's jobs and image views draw on `budget` (None: no budget, threads are the caller's)."""
    global _budget
    _budget = budget


def shares_cores() -> bool:
    """Whether this process draws on a core budget (`share_cores`)."""
    return _budget is not None


@contextmanager
def core() -> Iterator[None]:
    """Hold one core of this process's budget while open (a job: waits for one, before any spare view takes it);
    without a budget, nothing."""
    budget = _budget
    if budget is None:
        yield
        return
    with budget.waiting.get_lock():
        budget.waiting.value += 1
    try:
        budget.permits.acquire()
    finally:
        with budget.waiting.get_lock():
            budget.waiting.value -= 1
    try:
        yield
    finally:
        budget.permits.release()


def spare_core() -> bool:
    """Take one more core of the budget if one is free now and no job waits for it (never waits); give it back
    with `give_back_core`."""
    return _budget is not None and _budget.waiting.value == 0 and _budget.permits.acquire(False)


def give_back_core() -> None:
    """Give back a core taken with `spare_core`."""
    assert _budget is not None  # only a spare_core that returned True is given back
    _budget.permits.release()


@contextmanager
def second_core(workers: int) -> Iterator[bool]:
    """Whether a second thread of work may run beside this one (held while open): with `workers` > 1, and in a
    process drawing on a core budget only on a spare core of it (`spare_core`, given back on leaving)."""
    if workers <= 1:
        yield False
    elif not shares_cores():
        yield True
    else:
        taken = spare_core()
        try:
            yield taken
        finally:
            if taken:
                give_back_core()


@contextmanager
def beside(workers: int, work: Callable[[], T], name: str) -> Iterator[Future[T] | None]:
    """`work()` on a thread of its own (named `name`) while the block runs, on a second core: with `workers` > 1,
    and in a process drawing on a core budget only on a spare core of it, taken for `work`'s run alone (given back
    as it ends, for the block's other threads to take). None where there is no second core: the caller does the work
    itself. Leaving the block waits for `work` to end (an error of the block propagates after it)."""
    if workers <= 1 or (shares_cores() and not spare_core()):
        yield None
        return
    taken = shares_cores()

    def run() -> T:
        try:
            return work()
        finally:
            if taken:
                give_back_core()

    with ThreadPoolExecutor(1, thread_name_prefix=name) as thread:
        yield thread.submit(run)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopped: list[int] = []  # the signals that came
_raised = False  # whether the stop has been raised (then the run is unwinding: a later signal must not cut it)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While open, SIGINT and SIGTERM (Slurm's time limit or preemption, `kill`) raise KeyboardInterrupt in the
    main thread, and `stop_signal` says which came: a run unwinds as from Ctrl-C (workers killed, staging folders
    and locks of unfinished tuples removed). It is raised once: again, it would cut that clean-up short. It
    does not raise inside an import (the module would stay half made for every later import; trimesh and the
    libraries it imports guard optional imports with `except BaseException`, which would swallow it), and a
    library that swallows it anyway does not keep the run going: `check_stop` raises it again where the run
    can stop. Opened outside the main thread (where no handler can be set), it does nothing."""
    global _raised
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        _stopped.append(signum)
        if not _raised and not _importing(frame):
            check_stop()

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        _stopped.clear()
        _raised = False


def _importing(frame: FrameType | None) -> bool:
    """Whether `frame` or one that called it is importing a module."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def stop_signal() -> int | None:
    """The signal that stopped this process since `stop_on_signals` opened, if any."""
    return _stopped[0] if _stopped else None


def check_stop() -> None:
    """Raise KeyboardInterrupt if a signal has stopped this process (`stop_on_signals`), again if it was raised
    before (a library may have swallowed it): where a run may stop (a view starts, a staging folder is made or
    moved into place, a tuple is done)."""
    global _raised
    if _stopped:
        _raised = True
        raise KeyboardInterrupt
