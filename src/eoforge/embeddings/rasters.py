"""Rasters the embedding products publish (class maps, similarity, embedding COGs), written
row block by row block into a COG, and their STAC items.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from rasterio.windows import Window

from eoforge.cube.grid import TileGrid
from eoforge.inference.cog import compression_threads
from eoforge.io.atomic import sha256_file, staged_file, staging_path

__all__ = ["RowCog", "raster_item"]


class RowCog:
    """A COG of ``count`` bands written by blocks of rows (bounded memory), atomically.

    Rows go to a hidden striped GeoTIFF beside ``out``; on a clean exit GDAL copies it into a
    COG (DEFLATE, internal overviews) renamed onto ``out``. :attr:`sha256` is set on exit.
    """

    def __init__(
        self, out: Path, grid: TileGrid, *, dtype: str, count: int = 1,
        nodata: float | None = None, resampling: str = "NEAREST",
        descriptions: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        self.out = Path(out)
        self.grid = grid
        self.profile: dict[str, Any] = {
            "driver": "GTiff", "width": grid.width, "height": grid.height, "count": count,
            "dtype": dtype, "crs": CRS.from_user_input(grid.crs),
            "transform": Affine(*list(grid.transform)[:6]), "nodata": nodata,
        }  # fmt: skip
        self.resampling = resampling
        self.descriptions = list(descriptions or [])
        self.sha256: str | None = None
        self._tmp = staging_path(self.out)
        self._dst: Any = None

    def __enter__(self) -> RowCog:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._dst = rasterio.open(self._tmp, "w", **self.profile)
        for i, text in enumerate(self.descriptions, start=1):
            self._dst.set_band_description(i, text)
        return self

    def write(self, rows: slice, values: NDArray[Any]) -> None:
        """Write ``(h, w)`` or ``(count, h, w)`` values at rows ``rows``."""
        arr = values if values.ndim == 3 else values[None]
        window = Window(0, rows.start, self.grid.width, rows.stop - rows.start)  # type: ignore[no-untyped-call]
        self._dst.write(arr.astype(self.profile["dtype"], copy=False), window=window)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self._dst.close()
        try:
            if exc_type is None:
                with staged_file(self.out) as final, rasterio.Env(GDAL_PAM_ENABLED="NO"):
                    rasterio.shutil.copy(
                        self._tmp, final, driver="COG", compress="DEFLATE", blocksize=512,
                        overview_resampling=self.resampling, num_threads=compression_threads(),
                    )  # fmt: skip
                self.sha256 = sha256_file(self.out)
        finally:
            self._tmp.unlink(missing_ok=True)


def _footprint(grid: TileGrid) -> dict[str, Any]:
    geom = transform_geom(grid.crs, "EPSG:4326", grid.footprint().__geo_interface__)
    return dict(geom)


def raster_item(
    item_id: str,
    grid: TileGrid,
    assets: dict[str, dict[str, Any]],
    *,
    datetime: str | None = None,
    properties: dict[str, Any] | None = None,
    derived_from: Sequence[str] = (),
) -> dict[str, Any]:
    """A STAC item (projection + file extensions) for one tile's product.

    ``assets`` maps key -> asset dict (``href`` relative to the item, ``type``, ``roles``...).
    """
    geom = _footprint(grid)
    xs = [c[0] for c in geom["coordinates"][0]]
    ys = [c[1] for c in geom["coordinates"][0]]
    props: dict[str, Any] = {
        "datetime": datetime or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "proj:code": grid.crs,
        "proj:shape": [grid.height, grid.width],
        "proj:transform": list(grid.transform)[:6],
        "eoforge:tile": grid.tile,
        **(properties or {}),
    }
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
        ],
        "id": item_id,
        "geometry": geom,
        "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "properties": props,
        "assets": assets,
        "links": [
            {"rel": "derived_from", "href": h, "type": "application/json"} for h in derived_from
        ],
    }


def cog_asset(path: Path, sha256: str, roles: Sequence[str], **extra: Any) -> dict[str, Any]:
    """An asset dict for a COG written beside its item."""
    return {
        "href": f"./{path.name}",
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": list(roles),
        "file:size": path.stat().st_size,
        "file:checksum": "1220" + sha256,
        **extra,
    }


def valid_rows(values: NDArray[Any], valid: NDArray[np.bool_], fill: Any) -> NDArray[Any]:
    """``values`` with ``fill`` where not ``valid``."""
    return np.where(valid, values, fill)
