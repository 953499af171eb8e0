"""Shared fixtures: a synthetic FaceScape dataset generated once per test session."""

from __future__ import annotations

import os
import platform

# The same floating-point kernels on every x86-64 machine, before numpy loads them: OpenBLAS and numpy
# pick theirs by CPU, and an AVX-512 machine's matrix products differ from an AVX2 one's in the last
# bits, which tests/test_export_digests.py compares byte for byte (transforms.json, PLY vertices, ...).
if platform.machine() in ("x86_64", "AMD64"):
    os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
    os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", "X86_V4 AVX512_ICL AVX512_SPR")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fsconvert  # noqa: F401, E402  (headless rendering set-up before anything imports pyrender)
from fsconvert.loader import load_capture  # noqa: E402
from fsconvert.mesh import load_mesh  # noqa: E402
from fsconvert.model import Capture  # noqa: E402

METRIC_ARGS = {"nersemble": ["--assume-metric-scale", "0.04"]}
"""What formats that need a metric world (VHAP: FLAME works in metres) are given to export the sample's SfM
units: metres per SfM unit (the sample's heads are ~5 units across)."""


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset root holding images/ and models/ (one tuple, default sample settings)."""
    from fsconvert.synthetic import make_sample

    root = tmp_path_factory.mktemp("sample")
    make_sample(root)
    return root


@pytest.fixture(scope="session")
def sample_tuple(sample_root: Path) -> Path:
    """The tuple folder images/<id>/<exp>/ of `sample_root`."""
    (params,) = sorted(sample_root.glob("images/*/*/params.json"))
    return params.parent


def expected_pixels(plan, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the points kept, their source projection carried into a ViewPlan's output image): in front
    of the camera and inside the source image with and without distortion (where the lens model is
    invertible)."""
    src = plan.view
    Xc = src.to_camera(X)
    idx = np.flatnonzero(Xc[:, 2] > 0)
    uv, uv_pin = src.camera.project(Xc[idx]), src.camera.pinhole().project(Xc[idx])
    W, H = src.camera.size
    inside = np.all((uv >= 0) & (uv <= [W - 1, H - 1]) & (uv_pin >= 0) & (uv_pin <= [W - 1, H - 1]), axis=1)
    return idx[inside], plan.src_to_out(uv[inside])


@pytest.fixture(scope="session")
def capture(sample_tuple: Path) -> Capture:
    """The sample tuple loaded (modules that need another capture define their own)."""
    return load_capture(sample_tuple)


@pytest.fixture(scope="session")
def vertices(capture) -> np.ndarray:
    """The sample mesh's vertices, float64."""
    return np.asarray(load_mesh(capture.mesh).vertices, dtype=np.float64)
