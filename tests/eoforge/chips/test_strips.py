"""Strip-by-strip reads of a cube tile give what whole-tile stacks give, with chunk rows that cut
through windows."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from eoforge.chips.strips import (
    gather_band_windows,
    gather_windows,
    iter_band_windows,
    nodata_mask,
    value_mask,
)
from eoforge.cube.tiles import open_cube_tile
from eoforge.errors import InputError

BANDS = ("blue", "green", "red")


def _cube(path: Path, chunk_rows: int, height: int = 45, width: int = 30) -> None:
    rng = np.random.default_rng(1)
    data = {
        b: (("time", "y", "x"), rng.integers(0, 4, (2, height, width), dtype=np.uint16))
        for b in BANDS
    }
    data["scl"] = (("time", "y", "x"), rng.integers(0, 12, (2, height, width), dtype=np.uint8))
    ds = xr.Dataset(
        data,
        coords={"time": np.arange(2).astype("datetime64[D]")},
        attrs={"crs": "EPSG:32633", "transform": [10.0, 0, 0, 0, -10.0, 0], "item_ids": ["a", "b"]},
    )
    enc = {v: {"chunks": (1, chunk_rows, width)} for v in ds.data_vars}
    ds.to_zarr(path, group="T1", mode="w-", zarr_format=3, consolidated=False, encoding=enc)


@pytest.mark.parametrize("chunk_rows", [4, 7, 45])
def test_strips_equal_whole_tile_stacks(tmp_path: Path, chunk_rows: int) -> None:
    _cube(tmp_path / "c.zarr", chunk_rows)
    tile = open_cube_tile(str(tmp_path / "c.zarr"), "T1")
    assert tile.strip_rows == chunk_rows
    strips = list(tile.strips())
    assert strips[0][0] == 0 and strips[-1][1] == 45
    assert all(a[1] == b[0] for a, b in itertools.pairwise(strips))
    stack = np.stack([np.asarray(tile.group[b][...]) for b in BANDS], axis=1)  # (t, c, h, w)
    assert np.array_equal(nodata_mask(tile, BANDS).to_array(), (stack == 0).any(axis=1))
    scl = np.asarray(tile.group["scl"][...])
    assert np.array_equal(value_mask(tile, "scl", [8, 9, 10]).to_array(), np.isin(scl, [8, 9, 10]))
    # every window position, so windows straddle every chunk-row boundary
    size = 6
    rows, cols = np.meshgrid(np.arange(45 - size + 1), np.arange(0, 30 - size + 1, 5))
    r = rows.ravel().astype(np.int64)
    c = cols.ravel().astype(np.int64)
    t = (r % 2).astype(np.int64)
    got = gather_band_windows(tile, BANDS, t, r, c, size)
    assert got.dtype == np.uint16
    assert np.array_equal(got, gather_windows(stack, t, r, c, size))
    # in batches of at most 5 windows: every window once, the same pixels
    seen = np.zeros(len(r), dtype=int)
    for sel, windows in iter_band_windows(tile, BANDS, t, r, c, size, batch=5):
        assert 0 < len(sel) <= 5 and windows.shape == (len(sel), len(BANDS), size, size)
        assert np.array_equal(windows, got[sel])
        seen[sel] += 1
    assert (seen == 1).all()
    assert not tile._arrays  # nothing was cached with the tile


def test_read_rows_names_a_missing_variable(tmp_path: Path) -> None:
    _cube(tmp_path / "c.zarr", 8)
    tile = open_cube_tile(str(tmp_path / "c.zarr"), "T1")
    assert tile.read_rows("red", 3, 9, t=1).shape == (6, 30)
    with pytest.raises(InputError, match="lacks variable 'swir16'"):
        tile.read_rows("swir16", 0, 8)
