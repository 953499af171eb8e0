"""Shared fixtures: a synthetic FaceScape dataset generated once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fsconvert  # noqa: F401  (headless rendering set-up before anything imports pyrender)

LOSSY_ON_SAMPLE = {"llff": ["--allow-lossy"]}
"""Formats that cannot hold every view of a synthetic tuple (LLFF holds one image size; the tuples have portrait
beside landscape views), with the flag that exports them anyway: their check then fails those views."""


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
