"""Tests of eoforge.cube.geobox: the odc-stac load parameters of one tile."""

from __future__ import annotations

import pytest
import shapely.geometry

from eoforge.config import CubeSpec
from eoforge.cube.geobox import load_parameters, resampling_for, tile_area
from eoforge.errors import InputError


def _item(name: str, box: tuple[float, float, float, float]) -> dict[str, object]:
    return {"id": name, "geometry": shapely.geometry.mapping(shapely.geometry.box(*box))}


def test_tile_area_is_the_aoi_part_the_items_cover() -> None:
    items = [_item("a", (15.0, 45.0, 16.0, 46.0))]
    aoi = shapely.geometry.box(15.5, 45.5, 17.0, 47.0)
    assert tile_area(items, None) is None
    assert tile_area(items, aoi).bounds == (15.5, 45.5, 16.0, 46.0)
    with pytest.raises(InputError, match="do not meet"):
        tile_area(items, shapely.geometry.box(20, 20, 21, 21))


def test_resampling_defaults_class_rasters_to_nearest() -> None:
    grid = CubeSpec.model_validate({})
    assert resampling_for(grid, ["red", "scl", "lc"], ["scl", "lc"]) == {
        "red": "bilinear",
        "scl": "nearest",
        "lc": "nearest",
    }
    custom = CubeSpec.model_validate({"resampling": {"*": "average", "scl": "mode"}})
    assert resampling_for(custom, ["red", "scl"], ["scl"]) == {"red": "average", "scl": "mode"}


def test_load_parameters() -> None:
    assert load_parameters(None, ["red"], [], None) == {"chunks": {"x": 2048, "y": 2048}}
    grid = CubeSpec.model_validate({"resolution": 20, "crs": "EPSG:32633", "chunk": 512})
    area = shapely.geometry.box(15.5, 45.5, 16.0, 46.0)
    kw = load_parameters(grid, ["red", "scl"], ["scl"], area)
    assert kw["chunks"] == {"x": 512, "y": 512} and kw["resolution"] == 20
    assert kw["crs"] == "EPSG:32633" and kw["resampling"]["scl"] == "nearest"
    assert kw["geopolygon"].boundingbox.left == pytest.approx(15.5)


def test_crs_needs_resolution() -> None:
    with pytest.raises(ValueError, match=r"needs cube\.resolution"):
        CubeSpec.model_validate({"crs": "EPSG:32633"})


def test_common_grid_only_when_tiles_differ_in_crs() -> None:
    from eoforge.cube.geobox import common_grid, native_resolution, utm_epsg

    assert utm_epsg(15.4, 45.5) == 32633 and utm_epsg(18.1, 45.5) == 32634
    assert utm_epsg(-70.0, -33.0) == 32719
    items = [
        {
            "geometry": shapely.geometry.mapping(shapely.geometry.box(17.5, 45, 18.5, 46)),
            "assets": {
                "red": {"raster:bands": [{"spatial_resolution": 10}]},
                "scl": {"proj:transform": [20, 0, 0, 0, -20, 0]},
            },
        }
    ]
    assert native_resolution(items, ["red", "scl"]) == 10
    assert native_resolution(items, ["scl"]) == 20
    grid = CubeSpec.model_validate({})
    assert common_grid(grid, items, ["red"], [32633, 32633], None) is grid
    aoi = shapely.geometry.box(17.9, 45.2, 18.3, 45.8)  # its centre is in zone 34
    mixed = common_grid(grid, items, ["red", "scl"], [32633, 32634], aoi)
    assert (mixed.crs, mixed.resolution) == ("EPSG:32634", 10)
    chosen = CubeSpec.model_validate({"crs": "EPSG:3035", "resolution": 20})
    assert common_grid(chosen, items, ["red"], [32633, 32634], aoi) is chosen
