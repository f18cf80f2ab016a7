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
