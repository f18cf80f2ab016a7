"""Tests of eoforge.contracts.tables: cube statistics read chunk row by chunk row equal the
statistics of the whole slice."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from eoforge.contracts.tables import _slice_stats, _streamed_slice_stats


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_streamed_stats_equal_whole_slice_stats(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, np.iinfo(dtype).max, (3, 50, 41), dtype=dtype)
    data[data < np.iinfo(dtype).max // 4] = 0  # a quarter nodata
    data[1, :20] = 0  # whole chunk rows without a valid pixel
    data[2] = 0  # a slice without one
    arr = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(1, 7, 13), dtype=dtype)
    arr[:] = data
    whole = _slice_stats(data)
    streamed = [_streamed_slice_stats(arr, t) for t in range(3)]
    for w, s in zip(whole[:2], streamed[:2], strict=True):
        assert w == s
    assert streamed[2]["valid_fraction"] == 0.0 and math.isnan(streamed[2]["q999"])
