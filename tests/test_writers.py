"""The file writers: output bytes that depend on the content alone."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from fsconvert.writers import npz_bytes


def test_npz_is_read_by_numpy_and_fixed_by_its_arrays():
    rng = np.random.default_rng(0)
    arrays = {"world_mat_0": rng.standard_normal((4, 4)), "scale_mat_0": np.eye(4, dtype=np.float32),
              "ids": np.arange(7)}
    data = npz_bytes(arrays)
    with np.load(io.BytesIO(data)) as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        for key, value in arrays.items():
            assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    for info in archive.infolist():  # what zipfile's own headers vary by Python release: fixed here
        assert (info.create_version, info.extract_version, info.date_time) == (20, 20, (1980, 1, 1, 0, 0, 0))
        assert info.compress_type == zipfile.ZIP_STORED and info.extra == b""
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arrays[info.filename[:-4]], allow_pickle=False)
        assert archive.read(info) == buf.getvalue()  # each member is what np.savez writes
    assert npz_bytes(dict(arrays)) == data  # the same arrays, the same bytes
