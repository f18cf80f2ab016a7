from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from eoforge.chips import build_chips, grid_origins, read_split
from eoforge.config import ChipSpec, LabelSpec
from eoforge.errors import InputError

BANDS = ("blue", "green", "red", "nir")


def _tiny_cube(path: Path, tiles: dict[str, int], size: int = 64, nodata_rows: int = 0) -> None:
    rng = np.random.default_rng(0)
    for tile, t in tiles.items():
        data = {
            b: (("time", "y", "x"), rng.integers(1, 5000, (t, size, size), dtype=np.uint16))
            for b in BANDS
        }
        scl = rng.choice(np.array([3, 4, 5, 6, 8, 9], np.uint8), (t, size, size))
        if nodata_rows:
            data["blue"][1][:, :nodata_rows, :] = 0
        data["scl"] = (("time", "y", "x"), scl)
        ds = xr.Dataset(
            data,
            coords={
                "time": np.arange(t).astype("datetime64[D]"),
                "y": np.arange(size),
                "x": np.arange(size),
            },
            attrs={
                "crs": "EPSG:32633",
                "transform": [120.0, 0.0, 0.0, 0.0, -120.0, 0.0],
                "item_ids": [f"S2A_{tile}_2023080{i}_0_L2A" for i in range(t)],
                "tile": tile,
            },
        )
        ds.to_zarr(path, group=tile, mode="w-", zarr_format=3, consolidated=False)


def test_grid_and_bad_sizes() -> None:
    assert grid_origins(64, 64, 32, 32) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert len(grid_origins(64, 64, 32, 16)) == 9
    with pytest.raises(InputError, match="larger than the scene"):
        grid_origins(64, 64, 65, 65)


def test_splits_by_tile_and_block(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 2, "BBB": 1})
    spec = ChipSpec(
        size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",), val_fraction=0.25
    )
    info = build_chips(cube, tmp_path / "chips.zarr", spec, LabelSpec(), BANDS)
    assert info.counts == {"train": 2 * 12, "val": 2 * 4, "test": 16}
    g = zarr.open_group(str(tmp_path / "chips.zarr"), mode="r")
    assert g.attrs["bands"] == list(BANDS) and len(g.attrs["band_mean"]) == 4
    assert g["train"].attrs["tiles"] == ["AAA"] and g["test"].attrs["tiles"] == ["BBB"]
    tr = np.asarray(g["train"]["origin"][...])
    va = np.asarray(g["val"]["origin"][...])
    assert tr[:, 2].max() + 16 <= va[:, 2].min()
    x, y = read_split(tmp_path / "chips.zarr", "test")
    assert x.shape == (16, 4, 16, 16) and y.shape == (16, 16, 16) and x.dtype == np.uint16


def test_nodata_filter_and_nothing_left(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 1, "BBB": 1}, nodata_rows=16)
    spec = ChipSpec(size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",))
    info = build_chips(cube, tmp_path / "c.zarr", spec, LabelSpec(), BANDS)
    assert info.rejected["nodata"] == 8  # the top chip row of both tiles
    with pytest.raises(InputError, match="no train chip survived"):
        build_chips(
            cube,
            tmp_path / "d.zarr",
            spec.model_copy(update={"min_labelled_fraction": 1.0}),
            LabelSpec(scl_groups={"vegetation": (4,)}),
            BANDS,
        )
    assert not (tmp_path / "d.zarr").exists()


def test_unknown_tile_named(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 1})
    with pytest.raises(InputError, match="ZZZ"):
        build_chips(
            cube,
            tmp_path / "c.zarr",
            ChipSpec(train_tiles=("AAA",), test_tiles=("ZZZ",)),
            LabelSpec(),
            BANDS,
        )


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(32, 200),
    size=st.integers(4, 32),
    stride_div=st.integers(1, 4),
    val_fraction=st.floats(0.05, 0.9),
)
def test_train_and_val_never_overlap(
    width: int, size: int, stride_div: int, val_fraction: float
) -> None:
    from eoforge.chips import _split_of

    spec = ChipSpec(
        size=size,
        stride=max(1, size // stride_div),
        train_tiles=("A",),
        test_tiles=("B",),
        val_fraction=val_fraction,
    )
    cols = {"train": [], "val": []}  # type: dict[str, list[int]]
    for _, c in grid_origins(size, width, size, spec.stride):
        s = _split_of("A", c, size, width, spec)
        if s:
            cols[s].append(c)
    if cols["train"] and cols["val"]:
        assert max(cols["train"]) + size <= min(cols["val"])
