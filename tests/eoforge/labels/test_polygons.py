"""Polygon labels: the shipped real label set on the bundled sample, formats, rules, bad input."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from eoforge_test_helpers import WholeTilesOnly  # type: ignore[import-not-found]

from eoforge.config import BUNDLED_CATALOG, ChipSpec, LabelSpec
from eoforge.cube.grid import TileGrid
from eoforge.cube.tiles import CubeTile, open_cube_tile
from eoforge.errors import InputError
from eoforge.labels.classes import TileLabelContext
from eoforge.labels.polygons import (
    LabelRepairWarning,
    PolygonLabels,
    class_polygons,
    read_label_file,
)

SHIPPED = (
    Path(__file__).resolve().parents[3]
    / "examples"
    / "data"
    / "labels"
    / "s2-l2a-mini-water-cloud.parquet"
)
SCHEMA = LabelSpec(classes=("other", "water", "cloud"), scl_groups={})
BANDS = ("blue", "green", "red", "nir")
# a small UTM grid: 20 x 30 pixels of 10 m
GRID = TileGrid("T", "EPSG:32633", Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_200.0), 20, 30)


@pytest.fixture(scope="module")
def mini_cube() -> Iterator[Path]:
    """The bundled real mini sample as a cube store (written straight from the catalog files)."""
    from eoforge.cube.build import write_cube
    from eoforge.stac.server import prepare_served_catalog

    with tempfile.TemporaryDirectory() as tmp:
        files = prepare_served_catalog(BUNDLED_CATALOG, Path(tmp) / "cat")
        items = [json.loads(p.read_text()) for p in files[1:]]
        write_cube(items, [*BANDS, "scl"], Path(tmp) / "cube.zarr")
        yield Path(tmp) / "cube.zarr"


def _ctx(tile: CubeTile, schema: LabelSpec = SCHEMA) -> TileLabelContext:
    return TileLabelContext(tile.grid, tile.item_ids, schema, tile.variable)


def _small_ctx(n_time: int = 1, schema: LabelSpec = SCHEMA) -> TileLabelContext:
    def none(name: str) -> np.ndarray:
        raise AssertionError(name)

    return TileLabelContext(GRID, [f"item{t}" for t in range(n_time)], schema, none)


def _frame(
    geoms: list[shapely.Geometry],
    classes: list[str],
    crs: str | None = GRID.crs,
    **cols: list[object],
) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"class": classes, **cols}, geometry=geoms, crs=crs)


def _box(c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    """A box in GRID's CRS from pixel coordinates (col, row)."""
    (x0, y0), (x1, y1) = GRID.transform * (c0, r0), GRID.transform * (c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


# --------------------------------------------------------------------------- real data


def test_shipped_labels_reproduce_scl_masks_exactly(mini_cube: Path) -> None:
    """The derived EPSG:4326 polygons land back on the UTM cube grid pixel for pixel."""
    labels = PolygonLabels(str(SHIPPED), background="other")
    frame = labels.load()
    assert frame.crs.to_epsg() == 4326 and set(frame["class"]) == {"water", "cloud"}
    for name in ("33TWL", "33TWM"):
        tile = open_cube_tile(str(mini_cube), name)
        y = labels.label_tile(_ctx(tile))
        scl = tile.variable("scl")
        expected = np.zeros_like(scl)
        expected[scl == 6] = 1
        expected[np.isin(scl, (8, 9, 10))] = 2
        assert y.shape == scl.shape
        assert np.array_equal(y, expected), f"{name}: {(y != expected).sum()} pixels differ"


@pytest.mark.parametrize("all_touched", [False, True])
def test_label_rows_are_the_rows_of_label_tile(mini_cube: Path, all_touched: bool) -> None:
    """Burned a band of rows at a time (chipping never holds the labels whole): the same pixels."""
    labels = PolygonLabels(str(SHIPPED), background="other", all_touched=all_touched)
    tile = open_cube_tile(str(mini_cube), "33TWL")
    ctx = _ctx(tile)
    whole = labels.label_tile(ctx)
    h = tile.grid.height
    for top, bottom in ((0, 37), (37, 100), (100, h)):
        np.testing.assert_array_equal(labels.label_rows(ctx, top, bottom), whole[:, top:bottom])
    with pytest.raises(ValueError, match="not inside"):
        labels.label_rows(ctx, 10, h + 1)


def test_shipped_labels_make_chips(mini_cube: Path, tmp_path: Path) -> None:
    from eoforge.chips.cut import ChipsInfo, build_chips, read_split
    from eoforge.chips.index import read_chip_index

    def chips(name: str, source: object) -> ChipsInfo:
        spec = ChipSpec(size=64, stride=64, min_labelled_fraction=0.9)
        return build_chips(mini_cube, tmp_path / name, spec, SCHEMA, BANDS, label_source=source)

    info = chips("chips.zarr", PolygonLabels(str(SHIPPED), background="other"))
    assert info.counts["train"] > 0 and info.counts["test"] > 0
    assert info.class_counts["train"]["cloud"] > 0 and info.class_counts["test"]["water"] > 0
    assert info.label_source.startswith("polygon labels")
    index = read_chip_index(tmp_path / "chips.zarr")
    assert {"px_other", "px_water", "px_cloud", "px_ignore"} <= set(index.columns)
    # the same polygons labelling whole tiles give the same chips
    whole = chips("whole.zarr", WholeTilesOnly(PolygonLabels(str(SHIPPED), background="other")))
    assert whole.counts == info.counts and whole.class_counts == info.class_counts
    for split in ("train", "val", "test"):
        a, b = (
            read_split(tmp_path / "chips.zarr", split),
            read_split(tmp_path / "whole.zarr", split),
        )
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".parquet"])
def test_formats_read_alike(tmp_path: Path, mini_cube: Path, suffix: str) -> None:
    tile = open_cube_tile(str(mini_cube), "33TWL")
    subset = read_label_file(SHIPPED)
    subset = subset[subset["item_id"] == tile.item_ids[0]].head(300)
    path = tmp_path / f"labels{suffix}"
    if suffix == ".parquet":
        subset.to_parquet(path)
    else:
        subset.to_file(path)
    y = PolygonLabels(str(path)).label_tile(_ctx(tile))
    reference = PolygonLabels("mem", frame=subset).label_tile(_ctx(tile))
    assert np.array_equal(y, reference) and (y[0] != 255).sum() > 0
    assert (y[1:] == 255).all()  # polygons of one item label that item's slice only


def test_class_polygons_round_trip() -> None:
    raster = np.zeros((20, 30), np.uint8)
    raster[2:6, 3:9] = 1
    raster[10:18, 20:28] = 2
    frame = class_polygons(raster, GRID.transform, GRID.crs, {1: "water", 2: "cloud"})
    assert sorted(frame["class"]) == ["cloud", "water"]
    y = PolygonLabels("mem", frame=frame).label_tile(_small_ctx())
    assert np.array_equal(y[0] == 1, raster == 1) and np.array_equal(y[0] == 2, raster == 2)


# --------------------------------------------------------------------------- rules


def test_centre_rule_vs_all_touched() -> None:
    """A strip thinner than a pixel and off the pixel centres: only all_touched labels it."""
    strip = _box(2, 5.1, 20, 5.4)
    centre = PolygonLabels("mem", frame=_frame([strip], ["water"])).label_tile(_small_ctx())
    touched = PolygonLabels("mem", frame=_frame([strip], ["water"]), all_touched=True).label_tile(
        _small_ctx()
    )
    assert (centre != 255).sum() == 0
    assert (touched[0, 5, 2:20] == 1).all() and (touched != 255).sum() == 18


def test_overlap_ignored_unless_priority() -> None:
    frame = _frame([_box(0, 0, 10, 10), _box(5, 5, 15, 15)], ["water", "cloud"])
    plain = PolygonLabels("mem", frame=frame).label_tile(_small_ctx())[0]
    assert plain[7, 7] == 255 and plain[2, 2] == 1 and plain[12, 12] == 2
    ranked = PolygonLabels("mem", frame=frame, priority=("cloud", "water")).label_tile(
        _small_ctx()
    )[0]
    assert ranked[7, 7] == 2 and ranked[2, 2] == 1
    ranked = PolygonLabels("mem", frame=frame, priority=("water", "cloud")).label_tile(
        _small_ctx()
    )[0]
    assert ranked[7, 7] == 1
    with pytest.raises(InputError, match="does not rank"):
        PolygonLabels("mem", frame=frame, priority=("water",)).label_tile(_small_ctx())


def test_background_and_rename() -> None:
    frame = _frame([_box(0, 0, 10, 10)], ["Lake"])
    y = PolygonLabels("mem", frame=frame, rename={"Lake": "water"}, background="other").label_tile(
        _small_ctx()
    )[0]
    assert y[2, 2] == 1 and y[15, 25] == 0 and (y != 255).all()


def test_item_specific_and_static_polygons() -> None:
    frame = _frame(
        [_box(0, 0, 5, 5), _box(10, 10, 15, 15), _box(20, 0, 25, 5)],
        ["water", "cloud", "water"],
        item_id=["item1", None, "elsewhere"],
    )
    y = PolygonLabels("mem", frame=frame).label_tile(_small_ctx(n_time=2))
    assert y[0, 2, 2] == 255 and y[1, 2, 2] == 1  # item1 only
    assert y[0, 12, 12] == 2 and y[1, 12, 12] == 2  # no item: every slice
    assert (y[:, 0:5, 20:25] == 255).all()  # an item not in this tile labels nothing


# --------------------------------------------------------------------------- bad input


def test_no_crs_is_refused() -> None:
    with pytest.raises(InputError, match="no CRS"):
        PolygonLabels("mem", frame=_frame([_box(0, 0, 5, 5)], ["water"], crs=None)).label_tile(
            _small_ctx()
        )


def test_another_crs_is_reprojected() -> None:
    utm = _frame([_box(0, 0, 10, 10)], ["water"])
    y_utm = PolygonLabels("mem", frame=utm).label_tile(_small_ctx())
    y_geo = PolygonLabels("mem", frame=utm.to_crs("EPSG:4326")).label_tile(_small_ctx())
    assert np.array_equal(y_utm, y_geo) and (y_geo == 1).sum() == 100


def test_invalid_geometry_is_repaired_or_refused() -> None:
    bowtie = shapely.Polygon([GRID.transform * p for p in [(0, 0), (10, 10), (10, 0), (0, 10)]])
    assert not bowtie.is_valid
    frame = _frame([bowtie], ["water"])
    with pytest.warns(LabelRepairWarning, match="repaired 1"):
        y = PolygonLabels("mem", frame=frame).label_tile(_small_ctx())
    assert (y == 1).sum() > 30  # both triangles of the bow-tie survive the repair
    with pytest.raises(InputError, match="invalid geometr"):
        PolygonLabels("mem", frame=frame, on_invalid="error").label_tile(_small_ctx())


@pytest.mark.parametrize("geom", [None, shapely.Polygon()])
def test_empty_geometry_is_refused(geom: shapely.Geometry | None) -> None:
    frame = _frame([_box(0, 0, 5, 5), geom], ["water", "cloud"])
    with pytest.raises(InputError, match="null or empty geometry"):
        PolygonLabels("mem", frame=frame).label_tile(_small_ctx())


def test_unknown_class_is_refused() -> None:
    frame = _frame([_box(0, 0, 5, 5), _box(5, 5, 9, 9)], ["water", "lava"])
    with pytest.raises(InputError, match=r"\['lava'\] that are not in the schema"):
        PolygonLabels("mem", frame=frame).label_tile(_small_ctx())


def test_missing_class_column_and_wrong_type() -> None:
    frame = _frame([_box(0, 0, 5, 5)], ["water"])
    with pytest.raises(InputError, match="no column 'landcover'"):
        PolygonLabels("mem", frame=frame, class_column="landcover").label_tile(_small_ctx())
    lines = _frame([shapely.LineString([(500_000, 5_000_000), (500_100, 5_000_100)])], ["water"])
    with pytest.raises(InputError, match="LineString"):
        PolygonLabels("mem", frame=lines).label_tile(_small_ctx())


def test_labels_outside_the_area_are_refused() -> None:
    far = _frame([shapely.box(600_000, 4_000_000, 601_000, 4_001_000)], ["water"])
    with pytest.raises(InputError, match=r"cover nothing of tile 'T'.*check the file's CRS"):
        PolygonLabels("mem", frame=far).label_tile(_small_ctx())
    # UTM coordinates mislabelled as lon/lat cannot even be projected
    wrong = _frame([_box(0, 0, 5, 5)], ["water"]).set_crs("EPSG:4326", allow_override=True)
    with pytest.raises(InputError, match="CRS written in the file is probably wrong"):
        PolygonLabels("mem", frame=wrong).label_tile(_small_ctx())


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_label_file(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot be read as vector data"):
        read_label_file(bad)


def test_labels_missing_a_tile_fail_the_chips(tmp_path: Path, mini_cube: Path) -> None:
    """Labels covering only the train tile: a clear error, never silently empty test chips."""
    from eoforge.chips.cut import build_chips

    frame = read_label_file(SHIPPED)
    only_twl = frame[frame["tile"] == "33TWL"]
    with pytest.raises(InputError, match="33TWM"):
        build_chips(
            mini_cube,
            tmp_path / "c.zarr",
            ChipSpec(),
            SCHEMA,
            BANDS,
            label_source=PolygonLabels("twl-only", frame=only_twl),
        )
    assert not (tmp_path / "c.zarr").exists()
