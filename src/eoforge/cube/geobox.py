"""Where a tile's pixels go: the odc-stac load parameters of one MGRS tile, from the cube spec
and the run's area of interest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eoforge.config import CubeSpec
from eoforge.errors import InputError

__all__ = ["load_parameters", "resampling_for", "tile_area"]


def tile_area(items: Sequence[dict[str, Any]], aoi: Any | None) -> Any | None:
    """The part of the AOI (lon/lat) that the tile's items cover, or None without an AOI.

    Raises:
        InputError: the items of the tile do not meet the AOI.
    """
    if aoi is None:
        return None
    import shapely.geometry
    from shapely.ops import unary_union

    shapes = []
    for it in items:
        if it.get("geometry"):
            shapes.append(shapely.geometry.shape(it["geometry"]))
        elif it.get("bbox"):
            shapes.append(shapely.geometry.box(*it["bbox"][:4]))
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
