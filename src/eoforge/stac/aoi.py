"""The area of interest of a run: ``stac.bbox`` or ``stac.aoi`` (GeoJSON or a vector file) as
one lon/lat geometry, and which items meet it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eoforge.config import StacSpec
from eoforge.errors import InputError

__all__ = ["aoi_digest", "aoi_geometry", "item_footprint", "items_meeting"]


def _from_geojson(obj: dict[str, Any], what: str) -> Any:
    import shapely.geometry
    from shapely.ops import unary_union

    kind = obj.get("type")
    try:
        if kind == "FeatureCollection":
            shapes = [shapely.geometry.shape(f["geometry"]) for f in obj.get("features", [])]
            if not shapes:
                raise ValueError("it has no features")
            return unary_union(shapes)
        if kind == "Feature":
            return shapely.geometry.shape(obj["geometry"])
        return shapely.geometry.shape(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(
            f"{what} is not a GeoJSON geometry, Feature or FeatureCollection ({exc}); give "
            "one in lon/lat (EPSG:4326)."
        ) from exc


def _from_file(path: str) -> Any:
    import geopandas as gpd
    from shapely.ops import unary_union

    p = Path(path)
    if "://" not in path and not p.is_file():
        raise InputError(
            f"stac.aoi: vector file '{path}' does not exist; fix the path or give the area "
            "inline as GeoJSON."
        )
    try:
        frame = gpd.read_file(path)
    except Exception as exc:
        raise InputError(
            f"stac.aoi: '{path}' cannot be read as a vector file ({type(exc).__name__}: "
            f"{str(exc)[:200]}); give a GeoJSON, GeoPackage or GeoParquet file."
        ) from exc
    if frame.empty:
        raise InputError(f"stac.aoi: vector file '{path}' has no features; it needs one area.")
    if frame.crs is not None:
        frame = frame.to_crs("EPSG:4326")
    return unary_union(list(frame.geometry))


def aoi_geometry(spec: StacSpec) -> Any | None:
    """The run's area of interest as a shapely geometry in lon/lat, or None (no AOI).

    Raises:
        InputError: the AOI is not a valid, non-empty lon/lat area.
    """
    import shapely.geometry

    if spec.bbox is not None:
        west, south, east, north = spec.bbox
        geom = shapely.geometry.box(west, south, east, north)
        what = f"stac.bbox {list(spec.bbox)}"
    elif spec.aoi is not None:
        what = "stac.aoi"
        geom = _from_file(spec.aoi) if isinstance(spec.aoi, str) else _from_geojson(spec.aoi, what)
    else:
        return None
    if geom.is_empty or geom.area == 0:
        raise InputError(f"{what} has no area; give a polygon or a box with west < east.")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise InputError(
            f"{what} is not in lon/lat (bounds {[round(v, 4) for v in geom.bounds]}); give "
            "EPSG:4326 coordinates, or a vector file that records its CRS."
        )
    return geom


def aoi_digest(spec: StacSpec) -> str:
    """A stable text for the AOI (empty without one), for cache keys."""
    geom = aoi_geometry(spec)
    return "" if geom is None else geom.normalize().wkb_hex


def item_footprint(item: dict[str, Any]) -> Any | None:
    """An item's footprint (lon/lat): its geometry, else its bbox, else None.

    Raises:
        ValueError, TypeError, KeyError, AttributeError, shapely.errors.GEOSException: the
            geometry or bbox is malformed.
    """
    import shapely.geometry

    if item.get("geometry"):
        return shapely.geometry.shape(item["geometry"])
    if item.get("bbox"):
        return shapely.geometry.box(*item["bbox"][:4])
    return None


def items_meeting(items: Sequence[dict[str, Any]], aoi: Any | None) -> list[dict[str, Any]]:
    """The items whose footprint meets the AOI (all of them without an AOI). An item without
    a geometry is kept when its bbox meets the AOI."""
    import shapely.errors

    if aoi is None:
        return list(items)
    kept = []
    for it in items:
        try:
            footprint = item_footprint(it)
            meets = footprint is None or bool(footprint.intersects(aoi))
        except (AttributeError, KeyError, TypeError, ValueError, shapely.errors.GEOSException):
            meets = True  # malformed: kept, so that item validation names what is wrong
        if meets:
            kept.append(it)
    return kept
