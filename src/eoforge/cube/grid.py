"""The pixel grid of one cube tile: CRS, affine transform and shape, as labels and chips see it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray

from eoforge.errors import InputError

__all__ = ["TileGrid", "exclude_covered"]


@dataclass(frozen=True)
class TileGrid:
    """Where the pixels of one tile of the cube lie on the ground."""

    tile: str
    """Tile id (the cube group name, e.g. ``33TWL``)."""
    crs: str
    """CRS of the pixel grid, e.g. ``EPSG:32633``."""
    transform: Affine
    """Pixel (col, row) -> CRS (x, y) of the top-left pixel corner."""
    height: int
    """Rows."""
    width: int
    """Columns."""

    @classmethod
    def from_attrs(cls, tile: str, attrs: Mapping[str, Any], height: int, width: int) -> TileGrid:
        """The grid of a cube tile group from its ``crs`` / ``transform`` attributes (ADR 0001).

        Raises:
            InputError: the attributes are missing or malformed.
        """
        crs = attrs.get("crs")
        transform = attrs.get("transform")
        if not isinstance(crs, str) or not isinstance(transform, Sequence) or len(transform) < 6:
            raise InputError(
                f"cube tile '{tile}' lacks the 'crs' and 6-number 'transform' attributes "
                f"(got crs={crs!r}, transform={transform!r}); re-run ingest (ADR 0001 layout)."
            )
        return cls(tile, crs, Affine(*(float(v) for v in transform[:6])), int(height), int(width))

    def rows(self, top: int, bottom: int) -> TileGrid:
        """The grid of rows ``[top, bottom)`` (same tile, CRS, columns and pixel size)."""
        if not 0 <= top < bottom <= self.height:
            raise ValueError(f"rows [{top}, {bottom}) are not inside 0..{self.height}")
        return replace(
            self, transform=self.transform * Affine.translation(0, top), height=bottom - top
        )

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(min x, min y, max x, max y) of the whole grid in its CRS."""
        xs, ys = zip(
            *(self.transform * (c, r) for r in (0, self.height) for c in (0, self.width)),
            strict=True,
        )
        return min(xs), min(ys), max(xs), max(ys)

    def footprint(self) -> shapely.Polygon:
        """The grid's outline as a polygon in its CRS."""
        return shapely.box(*self.bounds)

    def window_bounds(
        self, rows: NDArray[np.integer[Any]], cols: NDArray[np.integer[Any]], size: int
    ) -> NDArray[np.float64]:
        """CRS bounds ``(n, 4)`` (min x, min y, max x, max y) of square windows at (row, col)."""
        r0 = np.asarray(rows, dtype=np.float64)
        c0 = np.asarray(cols, dtype=np.float64)
        x0, y0 = self._apply(c0, r0)
        x1, y1 = self._apply(c0 + size, r0 + size)
        return np.stack(
            [np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)],
            axis=1,
        )

    def _apply(
        self, cols: NDArray[np.float64], rows: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        a, b, c, d, e, f = self.transform[:6]
        return a * cols + b * rows + c, d * cols + e * rows + f

    def rowcol(
        self, xs: NDArray[np.floating[Any]], ys: NDArray[np.floating[Any]]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Pixel (row, col) containing each CRS point; may fall outside the grid."""
        a, b, c, d, e, f = (~self.transform)[:6]
        x = np.asarray(xs, np.float64)
        y = np.asarray(ys, np.float64)
        cols, rows = a * x + b * y + c, d * x + e * y + f
        return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


def exclude_covered(grid: TileGrid, others: Sequence[TileGrid]) -> NDArray[np.bool_]:
    """Pixels of ``grid`` that any footprint in ``others`` touches (reprojected if needed).

    Sentinel-2 tiles overlap by ~10 km; chips are only cut where a pixel is not already covered
    by a tile earlier in the sampling order, so no ground is ever sampled twice.
    """
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    shapes = []
    for other in others:
        geom = other.footprint()
        if other.crs != grid.crs:
            # densify first: a reprojected rectangle is not a rectangle
            geom = shapely.geometry.shape(
                transform_geom(
                    other.crs,
                    grid.crs,
                    shapely.segmentize(geom, geom.length / 400).__geo_interface__,
                )
            )
        if geom.intersects(grid.footprint()):
            shapes.append((geom, 1))
    if not shapes:
        return np.zeros((grid.height, grid.width), dtype=bool)
    covered = rasterize(
        shapes,
        out_shape=(grid.height, grid.width),
        transform=grid.transform,
        all_touched=True,
        dtype=np.uint8,
    )
    return np.asarray(covered, dtype=bool)
