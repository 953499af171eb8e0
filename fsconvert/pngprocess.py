"""fpng in a helper process: the image stage's threads encode 8-bit PNGs there, in parallel.

fpng's binding holds the GIL for its whole encode (~0.1 s for a 12.6 MP view), so threads of one process
encode PNGs one at a time, and a thread whose GIL-free work (decode, remap) ends meanwhile waits for it too
(measured on 2 cores: `to-neus -j 2`'s image stage 1.35× its `-j 1`; a JPEG format's 1.9×). With `workers` > 1
each thread of the image stage gets a process of its own that runs this module: it imports numpy and fpng
alone (~0.1 s, started when the thread's first view starts decoding) and encodes what its thread sends, the
same fpng on the same pixels, so the same bytes. Its thread waits on a pipe meanwhile, without the GIL.

The pixels cross in memory both processes map (a memfd, grown to the largest image; the thread remaps a view
straight into it, `FpngProcess.pixels`), and so does the PNG on its way back, or on the pipe where it is larger
than the pixels were (noise). The pipe carries only a request (height, width, channels, the memory's size) and
a reply (the PNG's length, 0 where fpng cannot encode the pixels; where it is). Sending the pixels on the pipe
instead cost ~85 ms of kernel time per 12.6 MP view, as much as the encode. The helper ends at the end of its
requests: when its thread's stage closes it, and when the parent dies whatever killed it (the pipe closes with
the process). It runs in a process group of its own: a terminal's Ctrl-C, sent to the foreground group, would
otherwise interrupt a helper still starting up, which prints "Fatal Python error" (the signal test caught it);
the parent, which stops on it (`fsconvert.threads`), closes its pipe instead. It ignores SIGINT once started.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

import fpng
import numpy as np

from .errors import OutputError
from .threads import check_stop

_HUGE_PAGES = "glibc.malloc.hugetlb=1"
"""glibc (2.35 on) then asks for transparent huge pages where it maps memory: fpng's ~100 MB of buffers per 12.6 MP
view fault in ~100 times instead of ~20 000 times (measured: 62 ms instead of 89 per encode, 20 of them in the
kernel instead of 44). Older glibc ignores it."""
_REQUEST = struct.Struct("<IIIQ")
"""height, width, channels of the pixels at the start of the shared memory; the shared memory's size."""
_REPLY = struct.Struct("<Q?")
"""The PNG's length (0: fpng cannot encode the pixels); whether it is in the shared memory (else it follows)."""


class FpngProcess:
    """One helper process, its pipes and the shared memory the pixels and the PNG cross in; `encode` is called by
    one thread at a time."""

    def __init__(self) -> None:
        self._shared = os.memfd_create("fsconvert-fpng")
        self._memory: mmap.mmap | None = None
        tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), _HUGE_PAGES]))
        # the helper runs the copy of this package its parent imported (which a script may have found on sys.path alone)
        found_in = str(Path(__file__).resolve().parent.parent)
        python_path = os.pathsep.join(filter(None, [found_in, os.environ.get("PYTHONPATH")]))
        self._process = subprocess.Popen([sys.executable, "-m", __name__, str(self._shared)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, pass_fds=(self._shared,), process_group=0,
                                         env={**os.environ, "GLIBC_TUNABLES": tunables, "PYTHONPATH": python_path})
        assert self._process.stdin is not None and self._process.stdout is not None  # both are pipes
        self._to, self._from = self._process.stdin, self._process.stdout

    def pixels(self, shape: tuple[int, ...]) -> np.ndarray:
        """A uint8 array of `shape` in the shared memory (valid until the next call): pixels made there are encoded
        without a copy. A 12.6 MP view's own array beside the shared memory would be 38 MB more per thread."""
        size = math.prod(shape)
        return np.frombuffer(self._room(size), np.uint8, size).reshape(shape)

    def encode(self, rgb: np.ndarray, path: Path | None = None) -> bytes:
        """fpng's PNG of C-contiguous H×W×3 RGB or H×W×4 RGBA uint8 pixels (`fpng_ext.encode_ndarray`), or b""
        where fpng cannot encode them, copied into the shared memory first unless they are `pixels`' array;
        `path` names the file in errors."""
        memory = self._room(rgb.nbytes)
        shared = np.frombuffer(memory, np.uint8, rgb.nbytes).reshape(rgb.shape)
        if rgb.__array_interface__["data"][0] != shared.__array_interface__["data"][0]:
            np.copyto(shared, rgb)
        del shared  # the memory may be replaced before the next call
        try:
            self._to.write(_REQUEST.pack(*rgb.shape, len(memory)))
            self._to.flush()
            reply = self._from.read(_REPLY.size)
            if len(reply) == _REPLY.size:
                size, in_memory = _REPLY.unpack(reply)
                return bytes(memory[:size]) if in_memory else self._from.read(size)
        except (OSError, ValueError):
            pass
        try:
            code: int | None = self._process.wait(1)
        except subprocess.TimeoutExpired:
            code = None
        check_stop()  # killed with this process (Slurm signals every process of a job step): the run stops, not fails
        raise OutputError(f"{path or 'PNG'}: the PNG encoder process ended"
                          + ("" if code is None else f" (exit status {code})"))

    def _room(self, size: int) -> mmap.mmap:
        """The shared memory, grown to at least `size` bytes (a smaller mapping is left to the arrays still on it,
        unmapped with the last of them)."""
        if self._memory is None or len(self._memory) < size:
            os.ftruncate(self._shared, size)
            self._memory = mmap.mmap(self._shared, size)
        return self._memory

    def end_input(self) -> None:
        """Close the helper's input: it exits when its current encode is done."""
        with contextlib.suppress(OSError):  # it ended already
            self._to.close()

    def close(self) -> None:
        """End the helper: the end of its input, then (if it is still encoding after 10 s) a kill."""
        self.end_input()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._from.close()
        self._memory = None  # unmapped with the last array on it
        os.close(self._shared)


class FpngProcesses:
    """An `FpngProcess` per thread that asks for one (`for_this_thread`), until `close`."""

    def __init__(self) -> None:
        self._started: dict[int, FpngProcess] = {}
        self._lock = threading.Lock()

    def for_this_thread(self) -> FpngProcess:
        """The calling thread's helper, started on its first call."""
        with self._lock:
            found = self._started.get(threading.get_ident())
            if found is None:
                found = self._started[threading.get_ident()] = FpngProcess()
            return found

    def close(self) -> None:
        """End every helper (once their threads are done with them)."""
        with self._lock:
            started, self._started = list(self._started.values()), {}
        for process in started:  # they exit at once (~60 ms each: numpy's and fpng's teardown), not one by one
            process.end_input()
        for process in started:
            process.close()


def _serve(shared: int, requests: BinaryIO, replies: BinaryIO) -> None:
    """The helper's loop: per request, encode the pixels in the shared memory and put the PNG in their place,
    or, larger than that memory, on the pipe; until the end of `requests`."""
    memory: mmap.mmap | None = None
    while len(request := requests.read(_REQUEST.size)) == _REQUEST.size:
        height, width, channels, size = _REQUEST.unpack(request)
        if memory is None or len(memory) != size:
            if memory is not None:
                memory.close()
            memory = mmap.mmap(shared, size)
        pixels = np.frombuffer(memory, np.uint8, height * width * channels).reshape(height, width, channels)
        data: bytes = fpng.fpng_ext.encode_ndarray(pixels)
        del pixels  # the memory is written next
        fits = len(data) <= size
        if fits:
            memory[:len(data)] = data
        replies.write(_REPLY.pack(len(data), fits))
        if not fits:
            replies.write(data)
        replies.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
