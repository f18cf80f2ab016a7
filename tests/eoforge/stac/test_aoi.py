"""Tests of eoforge.stac.aoi: the run's area of interest and the items that meet it."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import shapely.geometry

from eoforge.config import StacSpec
from eoforge.errors import InputError
from eoforge.stac.aoi import aoi_digest, aoi_geometry, items_meeting

BOX = {"type": "Polygon", "coordinates": [[[15, 45], [16, 45], [16, 46], [15, 46], [15, 45]]]}


def test_bbox_and_geojson_forms() -> None:
    assert aoi_geometry(StacSpec()) is None and aoi_digest(StacSpec()) == ""
    from_bbox = aoi_geometry(StacSpec(bbox=(15, 45, 16, 46)))
    feature = {"type": "Feature", "geometry": BOX, "properties": {}}
    collection = {"type": "FeatureCollection", "features": [feature]}
    for aoi in (BOX, feature, collection):
        geom = aoi_geometry(StacSpec(aoi=aoi))
        assert geom.equals(from_bbox)
        assert aoi_digest(StacSpec(aoi=aoi)) == aoi_digest(StacSpec(bbox=(15, 45, 16, 46)))


def test_vector_file_in_any_crs(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(geometry=[shapely.geometry.shape(BOX)], crs="EPSG:4326")
    path = tmp_path / "aoi.gpkg"
    frame.to_crs("EPSG:32633").to_file(path)
    geom = aoi_geometry(StacSpec(aoi=str(path)))
    assert geom.bounds == pytest.approx((15, 45, 16, 46), abs=0.02)


@pytest.mark.parametrize(
    ("aoi", "match"),
    [
        ({"type": "Polygon", "coordinates": "nope"}, "not a GeoJSON"),
        ({"type": "FeatureCollection", "features": []}, "not a GeoJSON"),
        ({"type": "Point", "coordinates": [15, 45]}, "has no area"),
        (
            {
                "type": "Polygon",
                "coordinates": [
                    [[500000, 5000000], [510000, 5000000], [510000, 5010000], [500000, 5000000]]
                ],
            },
            "not in lon/lat",
        ),
        ("missing.geojson", "does not exist"),
    ],
)
def test_bad_aoi_is_an_input_error(aoi: object, match: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=match):
        aoi_geometry(StacSpec(aoi=aoi))  # type: ignore[arg-type]


def test_unreadable_vector_file(tmp_path: Path) -> None:
    bad = tmp_path / "aoi.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot be read"):
        aoi_geometry(StacSpec(aoi=str(bad)))


def test_bbox_and_aoi_together_are_refused() -> None:
    with pytest.raises(ValueError, match="either `bbox` or `aoi`"):
        StacSpec(bbox=(15, 45, 16, 46), aoi=BOX)


def test_items_meeting_drops_only_items_outside() -> None:
    aoi = aoi_geometry(StacSpec(bbox=(15, 45, 16, 46)))
    inside = {"id": "in", "geometry": BOX}
    outside = {"id": "out", "bbox": [100, 10, 101, 11]}
    across_180 = {"id": "far", "bbox": [179, -17, -179, -16]}  # crosses the antimeridian
    broken = {"id": "broken", "geometry": {"type": "Polygon", "coordinates": "x"}}
    bare = {"id": "bare"}
    kept = items_meeting([inside, outside, across_180, broken, bare], aoi)
    assert [it["id"] for it in kept] == ["in", "broken", "bare"]
    assert items_meeting([outside], None) == [outside]
    json.dumps(kept)  # still plain dicts
