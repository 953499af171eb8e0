"""fpng in helper processes: the same bytes as fpng here, whatever crosses where, and no helper left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fpng
import numpy as np
import pytest

from fsconvert.errors import OutputError
from fsconvert.pngprocess import FpngProcess, FpngProcesses


def _helpers_of(pid: int) -> list[int]:
    """Live processes running fsconvert.pngprocess whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(status.split("PPid:")[1].split()[0])
        zombie = "State:\tZ" in status
        if parent == pid and b"fsconvert.pngprocess" in cmdline and not zombie:
            found.append(int(entry.name))
    return found


def _photo(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    ramp = np.add.outer(np.arange(h), 2 * np.arange(w))[..., None] * np.arange(1, channels + 1)
    return ((ramp + rng.integers(0, 16, (h, w, channels))) % 256).astype(np.uint8)


def test_helper_encodes_the_bytes_fpng_encodes_here() -> None:
    rng = np.random.default_rng(3)
    images = [_photo(rng, 61, 83, 3), _photo(rng, 300, 401, 4), _photo(rng, 17, 9, 3),  # grows, then is roomy
              rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)]  # noise: its PNG outgrows the shared memory
    helper = FpngProcess()
    try:
        for img in images:
            assert helper.encode(img) == fpng.fpng_ext.encode_ndarray(img)
    finally:
        helper.close()
    # the noise really took the other path: fpng's PNG of it is larger than its pixels
    assert len(fpng.fpng_ext.encode_ndarray(images[-1])) > images[-1].nbytes


def test_a_helper_that_died_is_an_error_naming_the_file() -> None:
    helper = FpngProcess()
    try:
        [pid] = _helpers_of(os.getpid())
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(OutputError, match=r"image/007\.png: the PNG encoder process ended \(exit status -9\)"):
            helper.encode(np.zeros((40, 50, 3), np.uint8), Path("image/007.png"))
    finally:
        helper.close()


def test_each_thread_has_its_own_helper_and_close_ends_them_all() -> None:
    helpers = FpngProcesses()
    img = _photo(np.random.default_rng(5), 120, 90, 3)
    together = threading.Barrier(3)  # three threads at once: three helpers

    def ask(_: int) -> tuple[int, FpngProcess, FpngProcess]:
        together.wait()
        return threading.get_ident(), helpers.for_this_thread(), helpers.for_this_thread()

    try:
        with ThreadPoolExecutor(3) as pool:
            asked = list(pool.map(ask, range(3)))
        assert len({ident for ident, _, _ in asked}) == len({id(first) for _, first, _ in asked}) == 3
        assert all(first is again for _, first, again in asked)  # a thread keeps its helper
        assert all(first.encode(img) == fpng.fpng_ext.encode_ndarray(img) for _, first, _ in asked)
        assert len(_helpers_of(os.getpid())) == 3
    finally:
        helpers.close()
    assert _helpers_of(os.getpid()) == []


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_a_helper_ends_with_its_parent() -> None:
    # a parent killed outright (SIGKILL: no clean-up runs) closes the pipe, and its helper ends on it
    script = ("import numpy as np, time; from fsconvert.pngprocess import FpngProcess; h = FpngProcess(); "
              "h.encode(np.zeros((8, 8, 3), np.uint8)); print(h._process.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    helper = int(parent.stdout.readline())
    assert helper in _helpers_of(parent.pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(helper):
        assert time.monotonic() < deadline, "the helper outlived its parent"
        time.sleep(0.05)
