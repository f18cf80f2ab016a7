"""Point labels: pixels they fall in, conflicts, per-item points, the join to pixel values."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import xarray as xr
from affine import Affine

from eoforge.config import LabelSpec
from eoforge.cube.grid import TileGrid
from eoforge.errors import InputError
from eoforge.labels.classes import TileLabelContext
from eoforge.labels.points import PointLabels, sample_points

SCHEMA = LabelSpec(classes=("crop", "forest"), scl_groups={})
GRID = TileGrid("T", "EPSG:32633", Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_200.0), 20, 30)
BANDS = ("blue", "nir")


def _ctx(n_time: int = 2) -> TileLabelContext:
    return TileLabelContext(
        GRID, [f"item{t}" for t in range(n_time)], SCHEMA, lambda n: np.zeros(1)
    )


def _pt(col: float, row: float) -> shapely.Point:
    return shapely.Point(*(GRID.transform * (col, row)))


def _points(
    pts: list[shapely.Geometry], classes: list[str], **cols: list[object]
) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"class": classes, **cols}, geometry=pts, crs=GRID.crs)


def test_points_label_their_pixel_only() -> None:
    frame = _points([_pt(3.5, 4.5), _pt(10.2, 7.9)], ["crop", "forest"])
    y = PointLabels("mem", frame=frame).label_tile(_ctx())
    assert y.shape == (2, 20, 30)
    assert y[0, 4, 3] == 0 and y[1, 7, 10] == 1 and (y != 255).sum() == 4


def test_points_in_another_crs_and_multipoints() -> None:
    frame = _points([shapely.MultiPoint([_pt(1.5, 1.5), _pt(2.5, 2.5)])], ["crop"]).to_crs(
        "EPSG:4326"
    )
    y = PointLabels("mem", frame=frame).label_tile(_ctx(1))
    assert y[0, 1, 1] == 0 and y[0, 2, 2] == 0 and (y != 255).sum() == 2


def test_conflicting_points_make_the_pixel_unlabelled() -> None:
    frame = _points(
        [_pt(5.2, 5.2), _pt(5.8, 5.8), _pt(8.5, 8.5), _pt(8.4, 8.6)],
        ["crop", "forest", "crop", "crop"],
    )
    y = PointLabels("mem", frame=frame).label_tile(_ctx(1))
    assert y[0, 5, 5] == 255  # crop and forest disagree
    assert y[0, 8, 8] == 0  # two crop points agree


def test_item_specific_points() -> None:
    frame = _points([_pt(1.5, 1.5), _pt(3.5, 3.5)], ["crop", "forest"], item_id=["item1", None])
    y = PointLabels("mem", frame=frame).label_tile(_ctx())
    assert y[0, 1, 1] == 255 and y[1, 1, 1] == 0
    assert y[0, 3, 3] == 1 and y[1, 3, 3] == 1


def test_label_rows_are_the_rows_of_label_tile() -> None:
    rng = np.random.default_rng(0)
    n = 200
    pts = [_pt(c, r) for c, r in zip(rng.uniform(0, 30, n), rng.uniform(0, 20, n), strict=True)]
    items = [None if i % 3 else "item1" for i in range(n)]
    frame = _points(pts, list(rng.choice(["crop", "forest"], n)), item=items)
    source = PointLabels("mem", frame=frame, item_column="item")
    whole = source.label_tile(_ctx())
    assert (whole != 255).sum() > 50
    for top, bottom in ((0, 7), (7, 8), (8, 20)):
        np.testing.assert_array_equal(source.label_rows(_ctx(), top, bottom), whole[:, top:bottom])


def test_bad_points() -> None:
    with pytest.raises(InputError, match="outside the area"):
        PointLabels("mem", frame=_points([shapely.Point(0, 0)], ["crop"])).label_tile(_ctx())
    with pytest.raises(InputError, match="not in the schema"):
        PointLabels("mem", frame=_points([_pt(1, 1)], ["rice"])).label_tile(_ctx())
    with pytest.raises(InputError, match="Polygon"):
        PointLabels("mem", frame=_points([shapely.box(0, 0, 1, 1)], ["crop"])).label_tile(_ctx())
    with pytest.raises(InputError, match="null or empty"):
        PointLabels("mem", frame=_points([_pt(1, 1), None], ["crop", "crop"])).label_tile(_ctx())
    nocrs = _points([_pt(1, 1)], ["crop"]).set_crs(None, allow_override=True)
    with pytest.raises(InputError, match="no CRS"):
        PointLabels("mem", frame=nocrs).label_tile(_ctx())


def _cube(path: Path) -> xr.Dataset:
    rng = np.random.default_rng(0)
    data = {
        b: (("time", "y", "x"), rng.integers(1, 5000, (2, 20, 30), dtype=np.uint16)) for b in BANDS
    }
    data["blue"][1][1, 7, 9] = 0  # one nodata pixel in slice 1
    ds = xr.Dataset(
        data,
        attrs={
            "crs": GRID.crs,
            "transform": list(GRID.transform)[:6],
            "item_ids": ["item0", "item1"],
        },
    )
    ds.to_zarr(path, group="T", mode="w-", zarr_format=3, consolidated=False)
    return ds


def test_sample_points_joins_pixel_values(tmp_path: Path) -> None:
    ds = _cube(tmp_path / "cube.zarr")
    frame = _points([_pt(2.5, 3.5), _pt(9.5, 7.5), shapely.Point(0, 0)], ["crop", "forest", "crop"])
    table = sample_points(
        PointLabels("mem", frame=frame), str(tmp_path / "cube.zarr"), BANDS, SCHEMA
    )
    # point 0 in both slices, point 1 only in slice 0 (nodata in slice 1), point 2 outside
    assert sorted(zip(table.point, table.time_index, strict=True)) == [(0, 0), (0, 1), (1, 0)]
    row = table[(table.point == 0) & (table.time_index == 1)].iloc[0]
    assert (row["row"], row["col"], row["class_index"]) == (3, 2, 0)
    assert row["nir"] == ds["nir"].values[1, 3, 2] and row["blue"] == ds["blue"].values[1, 3, 2]
    assert set(table.columns) >= {"tile", "item_id", "class", *BANDS}
    far = _points([shapely.Point(0, 0)], ["crop"])
    with pytest.raises(InputError, match="outside the area"):
        sample_points(PointLabels("far", frame=far), str(tmp_path / "cube.zarr"), BANDS, SCHEMA)
