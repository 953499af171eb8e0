"""Shared fixtures: a synthetic FaceScape dataset generated once per test session."""

from __future__ import annotations

from pathlib import Path

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
