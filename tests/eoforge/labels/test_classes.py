from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import calculate_default_transform

from eoforge.config import LabelSpec
from eoforge.cube.grid import TileGrid
from eoforge.errors import InputError
from eoforge.labels.classes import (
    ClassMapping,
    CubeClassMap,
    LabelSource,
    RasterFileLabels,
    TileLabelContext,
    scl_to_classes,
)

GRID = TileGrid("33TWL", "EPSG:32633", Affine(120.0, 0, 500_000.0, 0, -120.0, 5_000_040.0), 40, 50)


def _ctx(variables: dict[str, np.ndarray], schema: LabelSpec, n_time: int = 2) -> TileLabelContext:
    def read(name: str) -> np.ndarray:
        if name not in variables:
            raise InputError(f"no variable {name}")
        return variables[name]

    return TileLabelContext(GRID, [f"item{t}" for t in range(n_time)], schema, read)


def test_default_grouping() -> None:
    scl = np.arange(12, dtype=np.uint8)
    got = scl_to_classes(scl, LabelSpec())
    #           0    1    2    3  4  5  6  7    8  9 10  11
    expected = [255, 255, 255, 4, 0, 1, 2, 255, 3, 3, 3, 255]
    assert got.tolist() == expected


def test_class_mapping_file_yaml_and_json(tmp_path: Path) -> None:
    schema = LabelSpec(classes=("tree", "crop", "water"), scl_groups={})
    (tmp_path / "m.yaml").write_text(
        "classes: [tree, crop, water]\ncodes: {tree: [10], water: [80, 81]}\n"
    )
    (tmp_path / "m.json").write_text(json.dumps({"codes": {"crop": [40], "water": [80]}}))
    yml = ClassMapping.from_file(tmp_path / "m.yaml")
    yml.check(schema)
    lut = yml.lookup(256, schema)
    assert (lut[10], lut[80], lut[81], lut[40]) == (0, 2, 2, 255)
    js = ClassMapping.from_file(tmp_path / "m.json")
    js.check(schema)
    assert js.lookup(65536, schema)[40] == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("codes: {tree: [10], lake: [80]}", "not in the schema"),
        ("codes: {tree: [10], crop: [10]}", "in both"),
        ("classes: [crop, tree, water]\ncodes: {tree: [10]}", "declares classes"),
        ("codes: {tree: [-1]}", "integer codes"),
        ("codes: [1, 2]", "integer codes"),
        ("codes: {tree: [1]", "cannot be parsed"),
    ],
)
def test_class_mapping_errors(tmp_path: Path, text: str, match: str) -> None:
    schema = LabelSpec(classes=("tree", "crop", "water"), scl_groups={})
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        ClassMapping.from_file(path).check(schema)


def test_class_mapping_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        ClassMapping.from_file(tmp_path / "nope.yaml")


def test_cube_class_map_reads_a_chunk_row_at_a_time() -> None:
    scl = np.random.default_rng(1).integers(0, 12, (2, 40, 50), dtype=np.uint16)
    read: list[tuple[int, int]] = []

    def rows(name: str, top: int, bottom: int) -> np.ndarray:
        if name != "scl":
            raise InputError(f"no variable {name}")
        read.append((top, bottom))
        return scl[:, top:bottom]

    def whole(name: str) -> np.ndarray:
        raise AssertionError("the whole variable was read")

    def strips() -> list[tuple[int, int]]:
        return [(0, 16), (16, 32), (32, 40)]

    ctx = TileLabelContext(GRID, ["a", "b"], LabelSpec(), whole, rows=rows, strips=strips)
    y = CubeClassMap("scl").label_tile(ctx)
    assert np.array_equal(y, scl_to_classes(scl, LabelSpec())) and y.dtype == np.uint8
    assert read == strips()
    with pytest.raises(InputError, match="no variable landcover"):
        CubeClassMap("landcover").label_tile(ctx)


def test_cube_class_map_is_a_label_source() -> None:
    scl = np.random.default_rng(0).integers(0, 12, (2, 40, 50), dtype=np.uint8)
    source = CubeClassMap("scl")
    assert isinstance(source, LabelSource)
    y = source.label_tile(_ctx({"scl": scl}, LabelSpec()))
    assert np.array_equal(y, scl_to_classes(scl, LabelSpec()))
    with pytest.raises(InputError, match="no variable"):
        CubeClassMap("landcover").label_tile(_ctx({"scl": scl}, LabelSpec()))
    with pytest.raises(InputError, match="integer codes"):
        CubeClassMap("scl").label_tile(_ctx({"scl": scl.astype(np.float32)}, LabelSpec()))


def _write_tif(
    path: Path, data: np.ndarray, crs: str | None, transform: Affine, nodata: int | None
) -> None:
    profile = {
        "driver": "GTiff",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": str(data.dtype),
        "transform": transform,
        "nodata": nodata,
    }
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def test_raster_file_in_another_crs_is_warped_with_nearest(tmp_path: Path) -> None:
    """A class map in EPSG:4326 lands on the UTM grid with exact codes (no averaging)."""
    schema = LabelSpec(classes=("tree", "crop", "water"), scl_groups={})
    mapping = ClassMapping({"tree": (10,), "crop": (40,), "water": (80,)})
    # left half tree, right half water, in UTM; then warp that raster into lon/lat
    utm = np.full((GRID.height, GRID.width), 10, np.uint8)
    utm[:, GRID.width // 2 :] = 80
    utm[:2, :2] = 0  # nodata corner
    src_path, geo_path = tmp_path / "utm.tif", tmp_path / "geo.tif"
    _write_tif(src_path, utm, GRID.crs, GRID.transform, 0)
    with rasterio.open(src_path) as src:
        transform, w, h = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds, resolution=0.0004
        )
        geo = np.zeros((h, w), np.uint8)
        rasterio.warp.reproject(
            rasterio.band(src, 1), geo, dst_transform=transform, dst_crs="EPSG:4326",
            dst_nodata=0, resampling=rasterio.warp.Resampling.nearest,
        )  # fmt: skip
    _write_tif(geo_path, geo, "EPSG:4326", transform, 0)
    y = RasterFileLabels(str(geo_path), mapping).label_tile(_ctx({}, schema, n_time=3))
    assert y.shape == (3, GRID.height, GRID.width) and y.dtype == np.uint8
    assert set(np.unique(y)) <= {0, 2, 255}  # only mapped classes or ignore: never a blend
    inner = y[0, 5:-5, 5:-5]
    assert (inner[:, : GRID.width // 2 - 8] == 0).mean() > 0.98
    assert (inner[:, GRID.width // 2 : -5] == 2).mean() > 0.98
    assert np.array_equal(y[0], y[2])  # static labels: every slice alike


def test_raster_file_rows_are_the_rows_of_the_whole_warp(tmp_path: Path) -> None:
    """Warped onto a band of rows at a time (chipping): the same codes as the whole tile, on a
    noisy lon/lat raster where any shift of the warp would show."""
    schema = LabelSpec(classes=("tree", "crop", "water"), scl_groups={})
    mapping = ClassMapping({"tree": (10,), "crop": (40,), "water": (80,)})
    (x0, y1), (x1, y0) = GRID.transform * (0, 0), GRID.transform * (GRID.width, GRID.height)
    lon0, lat1 = rasterio.warp.transform(GRID.crs, "EPSG:4326", [x0 - 500], [y1 + 500])
    lon1, lat0 = rasterio.warp.transform(GRID.crs, "EPSG:4326", [x1 + 500], [y0 - 500])
    h, w = 137, 181
    transform = rasterio.transform.from_bounds(lon0[0], lat0[0], lon1[0], lat1[0], w, h)
    codes = np.random.default_rng(5).choice(np.array([0, 10, 40, 80], np.uint8), (h, w))
    _write_tif(tmp_path / "noise.tif", codes, "EPSG:4326", transform, 0)
    source = RasterFileLabels(str(tmp_path / "noise.tif"), mapping)
    ctx = _ctx({}, schema, n_time=2)
    whole = source.label_tile(ctx)
    assert len(np.unique(whole)) == 4  # three classes and ignore
    for top, bottom in ((0, 7), (7, 23), (23, GRID.height)):
        np.testing.assert_array_equal(source.label_rows(ctx, top, bottom), whole[:, top:bottom])
    # a tile taller than one band of the warp (1024 rows), on a grid the raster shares
    tall = TileGrid("T", GRID.crs, Affine(10.0, 0, 500_000.0, 0, -10.0, 5_030_000.0), 2500, 24)
    grid_codes = np.random.default_rng(6).choice(np.array([0, 10, 40, 80], np.uint8), (2500, 24))
    _write_tif(tmp_path / "tall.tif", grid_codes, tall.crs, tall.transform, 0)
    tall_source = RasterFileLabels(str(tmp_path / "tall.tif"), mapping)
    tall_ctx = TileLabelContext(tall, ["a"], schema, lambda name: np.zeros(1))
    tall_whole = tall_source.label_tile(tall_ctx)
    for top, bottom in ((0, 1000), (1000, 2100), (2100, 2500)):
        got = tall_source.label_rows(tall_ctx, top, bottom)
        np.testing.assert_array_equal(got, tall_whole[:, top:bottom])


def test_raster_file_without_crs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    _write_tif(path, np.full((10, 10), 10, np.uint8), None, Affine(1, 0, 0, 0, -1, 10), None)
    with pytest.raises(InputError, match="no CRS"):
        RasterFileLabels(str(path), ClassMapping({"tree": (10,)})).label_tile(
            _ctx({}, LabelSpec(classes=("tree",), scl_groups={}))
        )


def test_raster_file_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot be opened"):
        RasterFileLabels(str(tmp_path / "x.tif"), ClassMapping({"tree": (1,)})).label_tile(
            _ctx({}, LabelSpec(classes=("tree",), scl_groups={}))
        )
