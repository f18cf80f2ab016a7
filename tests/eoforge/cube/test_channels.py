"""Multi-band assets (D-band embedding COGs) loaded through odc-stac as one cube variable with
D channels, written chunk by chunk and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eoforge.cube.build import verify_cube
from eoforge.cube.channels import (
    asset_channels,
    channel_variables,
    load_channels,
    open_channel_tile,
    write_channel_cube,
)
from eoforge.errors import InputError
from eoforge.testing.embeddings import embedding_item


def _values(d: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-127, 128, (d, h, w)).astype(np.int8)


def test_int8_asset_loads_as_one_variable_of_d_channels(tmp_path: Path) -> None:
    values = _values(6, 150, 170)
    values[:, :7, :9] = -128  # no data
    items = [
        embedding_item(tmp_path, "a-2023", values, datetime="2023-06-01T00:00:00Z"),
        embedding_item(tmp_path, "a-2024", values[::-1].copy(), datetime="2024-06-01T00:00:00Z"),
        embedding_item(tmp_path, "b-2024", _values(6, 40, 50, 1), tile="33TWM",
                       origin=(600000.0, 5000000.0)),
    ]  # fmt: skip
    lazy = load_channels(items[:2], "embedding", chunk=64)
    assert lazy.dims == ("time", "channel", "y", "x") and lazy.shape == (2, 6, 150, 170)
    assert lazy.chunks is not None and max(lazy.chunks[2]) == 64  # lazy, in chunks

    stats = write_channel_cube(items, "embedding", tmp_path / "cube.zarr", chunk=64)
    verify_cube(tmp_path / "cube.zarr", deep=True)
    assert sorted(stats) == ["33TWL", "33TWM"]
    assert stats["33TWL"]["shape"] == [2, 6, 150, 170] and stats["33TWL"]["dtype"] == "int8"
    assert stats["33TWL"]["coverage"] == pytest.approx(1 - 7 * 9 / (150 * 170))
    assert channel_variables(tmp_path / "cube.zarr", "33TWL") == ["embedding"]
    tile = open_channel_tile(tmp_path / "cube.zarr", "33TWL", "embedding")
    assert tile.item_ids == ["a-2023", "a-2024"] and tile.channels == 6 and tile.nodata == -128
    assert tile.array.chunks == (1, 6, 64, 64)
    np.testing.assert_array_equal(tile.read_rows(0, 150, 0), values)
    np.testing.assert_array_equal(tile.read_rows(30, 90, 1), values[::-1, 30:90])
    assert tile.grid.transform.c == 500000.0 and tile.grid.crs == "EPSG:32633"


def test_float_asset_keeps_nan_as_no_data(tmp_path: Path) -> None:
    values = np.random.default_rng(2).normal(size=(4, 30, 40)).astype(np.float32)
    values[:, 0, :] = np.nan
    item = embedding_item(tmp_path, "f", values, nodata=float("nan"))
    stats = write_channel_cube([item], "embedding", tmp_path / "f.zarr", chunk=16)
    assert stats["33TWL"]["dtype"] == "float32"
    assert stats["33TWL"]["coverage"] == pytest.approx(29 / 30)
    got = open_channel_tile(tmp_path / "f.zarr", "33TWL", "embedding").read_rows(0, 30, 0)
    np.testing.assert_array_equal(got, values)


def test_bad_collections_are_refused_with_what_to_do(tmp_path: Path) -> None:
    values = _values(3, 20, 20)
    no_bands = embedding_item(tmp_path, "x", values, bands=False)
    with pytest.raises(InputError, match=r"lists no 'raster:bands'.*one entry per band"):
        asset_channels([no_bands], "embedding")
    other = embedding_item(tmp_path, "y", _values(5, 20, 20))
    with pytest.raises(InputError, match="disagree on the bands of asset 'embedding'"):
        asset_channels([embedding_item(tmp_path, "z", values), other], "embedding")
    with pytest.raises(InputError, match="has no 'visual' asset"):
        asset_channels([other], "visual")
    with pytest.raises(InputError, match="no items"):
        write_channel_cube([], "embedding", tmp_path / "none.zarr")
    assert not (tmp_path / "none.zarr").exists()
    write_channel_cube([other], "embedding", tmp_path / "c.zarr")
    with pytest.raises(InputError, match="no multi-band variable 'scl'"):
        open_channel_tile(tmp_path / "c.zarr", "33TWL", "scl")
