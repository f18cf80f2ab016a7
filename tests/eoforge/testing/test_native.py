"""Tests of eoforge.testing.native and of the cube built from it: native-resolution records,
areas of interest, bounded chunks and one encoding across processing baselines."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr

from eoforge.config import BUNDLED_CATALOG, CubeSpec, StacSpec
from eoforge.cube.build import open_tile, write_cube
from eoforge.stac.aoi import aoi_geometry
from eoforge.testing.native import write_native_catalog

TWL = "S2A_33TWL_20230815_0_L2A"
TWM = "S2B_33TWM_20230810_0_L2A"
VARS = ["blue", "green", "red", "nir", "scl"]


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two real items at 10 m / 20 m (a 12 x 12 km crop each), plus the first as two other
    processing baselines would have served it."""
    out = tmp_path_factory.mktemp("native")
    variants = {TWL: {"PB0301": "2021-08-15T09:58:11Z", "RAW": "2022-08-15T09:58:11Z"}}
    cat = write_native_catalog(BUNDLED_CATALOG, out, [TWL, TWM], (0, 0, 1200, 1200), variants)
    assert cat.item_ids == [TWL, f"{TWL}_PB0301", f"{TWL}_RAW", TWM]
    return [json.loads((out / i / f"{i}.json").read_text()) for i in cat.item_ids]


def test_records_describe_the_files_as_served(native: list[dict[str, Any]]) -> None:
    original = json.loads((BUNDLED_CATALOG / TWL / "original.json").read_text())
    item = native[0]
    for key, res in (("red", 10.0), ("scl", 20.0)):
        asset = item["assets"][key]
        with rasterio.open(asset["href"]) as src:
            assert [src.height, src.width] == asset["proj:shape"]
            assert src.res == (res, res) and src.transform.c == asset["proj:transform"][2]
        assert asset["raster:bands"] == original["assets"][key]["raster:bands"]
    assert item["assets"]["red"]["proj:shape"] == [1200, 1200]
    assert item["assets"]["scl"]["proj:shape"] == [600, 600]
    assert item["properties"] == original["properties"]
    raw = native[2]
    assert raw["properties"]["earthsearch:boa_offset_applied"] is False
    assert raw["assets"]["red"]["raster:bands"][0]["offset"] == -0.1
    assert native[1]["assets"]["red"]["raster:bands"][0]["offset"] == 0.0


def _aoi_box(item: dict[str, Any], f0: float, f1: float) -> tuple[float, float, float, float]:
    w, s, e, n = item["bbox"]
    return (w + (e - w) * f0, s + (n - s) * f0, w + (e - w) * f1, s + (n - s) * f1)


def test_aoi_bounds_the_load_and_baselines_agree(
    native: list[dict[str, Any]], tmp_path: Path
) -> None:
    box = _aoi_box(native[0], 0.25, 0.75)  # the middle quarter of the 33TWL crop
    aoi = aoi_geometry(StacSpec(bbox=box))
    out = tmp_path / "cube.zarr"
    grid = CubeSpec.model_validate({"chunk": 256})
    info = write_cube(native, VARS, out, grid, aoi, label_variables=("scl",))
    # 33TWM's crop is ~90 km north: it does not meet the AOI, and is left out
    assert list(info.tiles) == ["33TWL"]
    t, height, width = info.shape["33TWL"]
    assert t == 3 and 560 <= height <= 620 and 560 <= width <= 640  # ~600 x 600 px of 10 m
    ds = open_tile(out, "33TWL")
    assert ds.attrs["transform"][0] == 10.0
    assert zarr.open_array(str(out / "33TWL" / "red")).chunks == (1, 256, 256)
    red = ds["red"].values
    valid = red[2] > 0
    # the old baseline and the offset-not-applied variant land on the same numbers as served
    assert np.array_equal(red[0], red[2]) and np.array_equal(red[1], red[2])
    assert valid.mean() > 0.9
    scl = ds["scl"].values
    assert set(np.unique(scl)) <= set(range(12))  # nearest: no interpolated class codes
    units = zarr.open_group(str(out / "33TWL")).attrs["units"]
    assert units["red"] == {"scale": 1e-4, "offset": 0.0} and "scl" not in units


def test_without_harmonising_the_raw_baseline_differs(
    native: list[dict[str, Any]], tmp_path: Path
) -> None:
    aoi = aoi_geometry(StacSpec(bbox=_aoi_box(native[0], 0.4, 0.6)))
    grid = CubeSpec.model_validate({"harmonise": False})
    write_cube(native[:3], ["red"], tmp_path / "c.zarr", grid, aoi)
    red = open_tile(tmp_path / "c.zarr", "33TWL")["red"].values
    valid = red[2] > 0
    assert np.all(red[1][valid] == np.minimum(red[2][valid].astype(int) + 1000, 65535))


def test_an_item_outside_the_aoi_never_blocks(native: list[dict[str, Any]], tmp_path: Path) -> None:
    far = json.loads(json.dumps(native[3]))
    far["id"] = "S2B_01KAB_20230810_0_L2A"
    far["properties"]["grid:code"] = "MGRS-01KAB"
    far["bbox"] = [179.5, -17.0, -179.5, -16.0]  # across the antimeridian, far away
    far["geometry"] = None
    for asset in far["assets"].values():
        asset["href"] = (tmp_path / "gone.tif").as_uri()
    aoi = aoi_geometry(StacSpec(bbox=_aoi_box(native[0], 0.4, 0.6)))
    info = write_cube([native[0], far], ["red"], tmp_path / "c.zarr", None, aoi)
    assert list(info.tiles) == ["33TWL"]


def test_memory_is_bounded_by_the_chunk(native: list[dict[str, Any]], tmp_path: Path) -> None:
    """A whole 10 m slice of the crop is 2.9 MB per band; with 128 px chunks the write holds
    a few chunks at a time (numpy allocations, traced)."""
    items = [native[0]]
    slice_bytes = 1200 * 1200 * 2
    write_cube(items, ["red"], tmp_path / "warm.zarr", CubeSpec(chunk=256))  # imports, caches
    peaks = {}
    for chunk in (256, 2048):
        tracemalloc.start()
        write_cube(items, ["red"], tmp_path / f"c{chunk}.zarr", CubeSpec(chunk=chunk))
        peaks[chunk] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[2048] > slice_bytes  # one chunk is the whole slice
    assert peaks[256] < peaks[2048] / 2, peaks


def test_a_landsat_shaped_collection_lands_in_the_same_units(tmp_path: Path) -> None:
    """Landsat Collection 2 L2 records (other band names, 30 m, WRS-2 path/row, scale 2.75e-5
    offset -0.2) made from the same ground: the harmonised cube holds Sentinel-2's numbers."""
    from eoforge.config import CubeSpec
    from eoforge.testing.native import write_landsat_catalog

    landsat = write_landsat_catalog(BUNDLED_CATALOG, tmp_path / "lc", [TWL], (0, 0, 1200, 1200))
    assert landsat[0]["id"].startswith("LC08_L2SP_190")
    bands = ["blue", "green", "red", "nir08"]
    info = write_cube(landsat, [*bands, "qa_pixel"], tmp_path / "lc.zarr",
                      CubeSpec.model_validate({}), label_variables=("qa_pixel",))  # fmt: skip
    tile = next(iter(info.tiles))
    assert tile.startswith("WRS2-190")
    ds = open_tile(tmp_path / "lc.zarr", tile)
    assert ds.attrs["transform"][0] == 30.0
    red = ds["red"].values[0].astype(int)
    with rasterio.open(BUNDLED_CATALOG / TWL / "B04.tif") as src:
        s2 = src.read(1)[:100, :100].astype(int)  # the same 12 km at 120 m
    s2_at_30m = np.repeat(np.repeat(s2, 4, axis=0), 4, axis=1)
    valid = (s2_at_30m > 0) & (red > 0)
    assert valid.mean() > 0.9
    assert np.abs(red[valid] - s2_at_30m[valid]).max() <= 1  # 2.75e-5 quantisation
    units = zarr.open_group(str(tmp_path / "lc.zarr" / tile)).attrs["units"]
    assert units["nir08"] == {"scale": 1e-4, "offset": 0.0} and "qa_pixel" not in units


def test_tiles_in_two_utm_zones_share_one_grid(tmp_path: Path) -> None:
    """The same ground served by a tile of the neighbouring UTM zone (EPSG:32634): with no
    cube.crs, both tiles land on the UTM zone of the AOI's centre, on one pixel lattice."""
    from eoforge.cube.geobox import utm_epsg

    neighbours = {TWL: (32634, "34TBR")}
    cat = write_native_catalog(
        BUNDLED_CATALOG, tmp_path / "n", [TWL], (0, 0, 600, 600), neighbours=neighbours
    )
    items = [json.loads((cat.path / i / f"{i}.json").read_text()) for i in cat.item_ids]
    assert items[1]["properties"]["proj:epsg"] == 32634
    aoi = aoi_geometry(StacSpec(bbox=_aoi_box(items[0], 0.2, 0.8)))
    assert utm_epsg(aoi.centroid.x, aoi.centroid.y) == 32633
    grid = CubeSpec.model_validate({"resampling": {"*": "nearest"}})  # no new values
    info = write_cube(items, ["red", "scl"], tmp_path / "c.zarr", grid, aoi, ("scl",))
    assert sorted(info.tiles) == ["33TWL", "34TBR"]
    grids = [open_tile(tmp_path / "c.zarr", t) for t in ("33TWL", "34TBR")]
    for ds in grids:
        a, _, c, _, e, f = ds.attrs["transform"]
        assert ds.attrs["crs"] == "EPSG:32633" and (a, e) == (10.0, -10.0)
        assert c % 10 == 0 and f % 10 == 0  # one lattice
    # the same ground, warped there and back with nearest neighbour: mostly the same numbers
    dx = int((grids[1].attrs["transform"][2] - grids[0].attrs["transform"][2]) / 10)
    dy = int((grids[0].attrs["transform"][5] - grids[1].attrs["transform"][5]) / 10)
    a_red = grids[0]["red"].values[0]
    b_red = grids[1]["red"].values[0]
    h = min(a_red.shape[0] - max(dy, 0), b_red.shape[0] - max(-dy, 0))
    w = min(a_red.shape[1] - max(dx, 0), b_red.shape[1] - max(-dx, 0))
    a_win = a_red[max(dy, 0) : max(dy, 0) + h, max(dx, 0) : max(dx, 0) + w]
    b_win = b_red[max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w]
    both = (a_win > 0) & (b_win > 0)
    assert both.mean() > 0.5
    assert (a_win[both] == b_win[both]).mean() > 0.9
