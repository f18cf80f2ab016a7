"""Where a tile's pixels go: the odc-stac load parameters of one MGRS tile, from the cube spec
and the run's area of interest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eoforge.config import CubeSpec
from eoforge.errors import InputError
from eoforge.stac.aoi import item_footprint

__all__ = [
    "common_grid",
    "load_parameters",
    "native_resolution",
    "resampling_for",
    "tile_area",
    "utm_epsg",
]


def tile_area(items: Sequence[dict[str, Any]], aoi: Any | None) -> Any | None:
    """The part of the AOI (lon/lat) that the tile's items cover, or None without an AOI.

    Raises:
        InputError: the items of the tile do not meet the AOI.
    """
    if aoi is None:
        return None
    from shapely.ops import unary_union

    shapes = [f for f in map(item_footprint, items) if f is not None]
    if not shapes:
        return aoi
    area = unary_union(shapes).intersection(aoi)
    if area.is_empty or area.area == 0:
        raise InputError(
            f"items {[it['id'] for it in items]} do not meet the area of interest; they should "
            "have been left out by the search (check their geometry)."
        )
    return area


def resampling_for(
    grid: CubeSpec, variables: Sequence[str], label_variables: Sequence[str]
) -> dict[str, str]:
    """Resampling per variable: named ones as given, class rasters nearest unless named,
    every other variable the ``'*'`` entry (bilinear by default)."""
    default = grid.resampling.get("*", "bilinear")
    out: dict[str, str] = {}
    for v in variables:
        if v in grid.resampling:
            out[v] = grid.resampling[v]
        else:
            out[v] = "nearest" if v in label_variables else default
    return out


def load_parameters(
    grid: CubeSpec | None,
    variables: Sequence[str],
    label_variables: Sequence[str],
    area: Any | None,
) -> dict[str, Any]:
    """Keyword arguments for ``odc.stac.load`` of one tile.

    Without an area, resolution or CRS the tile keeps its items' own grid (odc-stac picks the
    finest native resolution of the loaded bands, in the items' CRS, with their pixel anchor).
    """
    chunk = grid.chunk if grid is not None else CubeSpec.model_fields["chunk"].default
    kwargs: dict[str, Any] = {"chunks": {"x": chunk, "y": chunk}}
    if grid is None:
        return kwargs
    kwargs["resampling"] = resampling_for(grid, variables, label_variables)
    if grid.resolution is not None:
        kwargs["resolution"] = grid.resolution
    if grid.crs is not None:
        kwargs["crs"] = grid.crs
    if area is not None:
        from odc.geo.geom import Geometry

        kwargs["geopolygon"] = Geometry(area, "EPSG:4326")
    return kwargs


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone holding (lon, lat)."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def native_resolution(items: Sequence[dict[str, Any]], variables: Sequence[str]) -> float | None:
    """The finest pixel size the items' records declare for ``variables`` (``raster:bands``
    ``spatial_resolution``, else ``proj:transform``, else ``gsd``), or None."""
    sizes: list[float] = []
    for it in items:
        for v in variables:
            asset = it.get("assets", {}).get(v, {})
            bands = asset.get("raster:bands") or [{}]
            size = bands[0].get("spatial_resolution") if isinstance(bands[0], dict) else None
            if size is None and asset.get("proj:transform"):
                size = abs(float(asset["proj:transform"][0]))
            if size is None:
                size = asset.get("gsd")
            if size is not None:
                sizes.append(float(size))
    return min(sizes) if sizes else None


def common_grid(
    grid: CubeSpec,
    items: Sequence[dict[str, Any]],
    variables: Sequence[str],
    epsgs: Sequence[int],
    aoi: Any | None,
) -> CubeSpec:
    """``grid``, with a CRS and resolution filled in when the tiles are in several CRSs (an
    area across UTM zones) and the spec names none: the UTM zone of the AOI's centre (of the
    items' footprints without an AOI) at the finest native resolution, so that every tile lies
    on one pixel lattice."""
    if grid.crs is not None or len(set(epsgs)) <= 1:
        return grid
    from shapely.ops import unary_union

    area = aoi
    if area is None:
        shapes = [item_footprint(it) for it in items if it.get("geometry")]
        area = unary_union(shapes) if shapes else None
    if area is None:
        raise InputError(
            f"the items are in several CRSs ({sorted(set(epsgs))}) and have no footprints; "
            "set cube.crs and cube.resolution."
        )
    centre = area.centroid
    resolution = grid.resolution or native_resolution(items, variables)
    if resolution is None:
        raise InputError(
            f"the items are in several CRSs ({sorted(set(epsgs))}) and declare no pixel size; "
            "set cube.resolution."
        )
    update = {"crs": f"EPSG:{utm_epsg(centre.x, centre.y)}", "resolution": resolution}
    return grid.model_copy(update=update)
