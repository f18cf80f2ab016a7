"""Small embedding collections written in code (one D-band COG asset per item), the shape
AlphaEarth-style collections are served in, for tests of the cube and products paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["directions", "embedding_item"]


def embedding_item(
    folder: Path,
    item_id: str,
    values: NDArray[Any],
    *,
    tile: str = "33TWL",
    datetime: str = "2024-01-01T00:00:00Z",
    origin: tuple[float, float] = (500000.0, 5100000.0),
    resolution: float = 120.0,
    nodata: float | None = -128,
    bands: bool = True,
) -> dict[str, Any]:
    """Write ``values`` ``(D, h, w)`` as a COG in ``folder`` and return its STAC item (UTM 33N,
    ``grid:code`` MGRS-``tile``, asset ``embedding`` with ``raster:bands`` unless ``bands`` is
    False)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    d, h, w = values.shape
    transform = from_origin(origin[0], origin[1], resolution, resolution)
    tif = Path(folder) / f"{item_id}.tif"
    tif.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "COG", "width": w, "height": h, "count": d, "dtype": str(values.dtype),
               "crs": "EPSG:32633", "transform": transform, "nodata": nodata}  # fmt: skip
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(values)
    x0, y1 = origin
    x1, y0 = x0 + w * resolution, y1 - h * resolution
    west, south, east, north = transform_bounds("EPSG:32633", "EPSG:4326", x0, y0, x1, y1)
    band: dict[str, Any] = {"data_type": str(values.dtype)}
    if nodata is not None:
        band["nodata"] = nodata if np.isfinite(nodata) else "nan"
    asset: dict[str, Any] = {
        "href": tif.resolve().as_uri(),
        "type": "image/tiff",
        "roles": ["data"],
    }
    if bands:
        asset["raster:bands"] = [band] * d
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [west, south, east, north],
        "properties": {
            "datetime": datetime,
            "grid:code": f"MGRS-{tile}",
            "proj:code": "EPSG:32633",
            "proj:shape": [h, w],
            "proj:transform": list(transform)[:6],
        },
        "assets": {"embedding": asset},
        "links": [],
    }


def directions(d: int, k: int, seed: int = 0) -> NDArray[np.float32]:
    """``k`` random unit vectors of ``d`` components, well apart (for clusters to find)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(k, d)).astype(np.float32)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), np.float32)
