"""Point labels: field samples joined to the pixels they fall in, for per-pixel models and chips.

A point labels the one pixel of the tile grid that contains it (after reprojection to the
tile's CRS). Two points of different classes in one pixel make it unlabelled; a point with an
``item_id`` labels only that item's time slice, one without labels every slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from eoforge.config import LabelSpec
from eoforge.cube.grid import TileGrid
from eoforge.errors import InputError
from eoforge.labels.classes import TileLabelContext, class_index
from eoforge.labels.polygons import clean_geometries, read_labels_with_column

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["PointLabels", "point_pixels", "sample_points"]


def point_pixels(
    frame: gpd.GeoDataFrame, grid: TileGrid
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    """Row, column and inside-the-grid flag of each point of ``frame`` on ``grid``."""
    pts = frame.to_crs(grid.crs).geometry
    rows, cols = grid.rowcol(pts.x.to_numpy(), pts.y.to_numpy())
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    return rows, cols, inside


@dataclass
class PointLabels:
    """Point labels from a vector file (see module doc)."""

    path: str
    """GeoParquet, GeoJSON, GeoPackage, ...; local or fsspec URI."""
    class_column: str = "class"
    """Column holding class names of the schema."""
    item_column: str = "item_id"
    """Column restricting a point to one STAC item's time slice (optional in the file)."""
    on_invalid: Literal["repair", "error"] = "error"
    """Points cannot be repaired meaningfully; kept for symmetry with polygon labels."""
    storage_options: Mapping[str, Any] | None = None
    """fsspec options for a remote ``path``."""
    frame: gpd.GeoDataFrame | None = field(default=None, repr=False, compare=False)
    """Labels already in memory (then ``path`` only names them in messages)."""
    _cache: dict[str, gpd.GeoDataFrame] = field(default_factory=dict, repr=False, init=False)

    def describe(self) -> str:
        """See :meth:`eoforge.labels.classes.LabelSource.describe`."""
        return f"point labels '{self.path}'"

    def load(self) -> gpd.GeoDataFrame:
        """The checked points (multi-points exploded) in their own CRS, read once."""
        if "source" not in self._cache:
            raw = read_labels_with_column(
                self.path, self.class_column, self.frame, self.storage_options
            )
            clean = clean_geometries(raw, self.path, ("Point", "MultiPoint"), "error")
            self._cache["source"] = clean.explode(index_parts=False)
        return self._cache["source"]

    def check(self, schema: LabelSpec) -> None:
        """Read the file and check it against ``schema`` without placing any point.

        Raises:
            InputError: missing or unreadable file, no class column, no CRS, geometries that
                are not points, classes not in the schema.
        """
        frame = self.load()
        class_index(list(frame[self.class_column]), schema, self.path, self.class_column)

    def label_tile(self, ctx: TileLabelContext) -> NDArray[np.uint8]:
        """See :meth:`eoforge.labels.classes.LabelSource.label_tile`."""
        return self._label(ctx, 0, ctx.grid.height)

    def label_rows(self, ctx: TileLabelContext, top: int, bottom: int) -> NDArray[np.uint8]:
        """Class indices of rows ``[top, bottom)`` of the tile, ``(time, rows, x)`` uint8 (the
        same pixels as :meth:`label_tile`; chipping never holds the tile's labels whole).

        Raises:
            InputError: as :meth:`label_tile` (checked against the whole tile).
        """
        return self._label(ctx, top, bottom)

    def _label(self, ctx: TileLabelContext, top: int, bottom: int) -> NDArray[np.uint8]:
        frame = self.load()
        schema, grid = ctx.schema, ctx.grid
        classes = class_index(list(frame[self.class_column]), schema, self.path, self.class_column)
        rows, cols, inside = point_pixels(frame, grid)
        slices = _slices(frame, self.item_column, ctx)
        keep = inside & (slices != -2)
        if not keep.any():
            raise InputError(
                f"labels '{self.path}': none of the {len(frame)} point(s) falls in tile "
                f"'{grid.tile}' (bounds {tuple(round(v) for v in grid.bounds)} in {grid.crs}) "
                "for its dates; the points lie outside the area; check their CRS and extent."
            )
        keep &= (rows >= top) & (rows < bottom)
        n_t, height = len(ctx.item_ids), bottom - top
        out = np.full((n_t, height, grid.width), schema.ignore_index, np.uint8)
        for t in range(n_t):
            sel = keep & ((slices == t) | (slices == -1))
            flat = out[t].reshape(-1)  # a view: writes land in ``out``
            index = (rows[sel] - top) * grid.width + cols[sel]
            pairs = np.unique(np.stack([index, classes[sel]]), axis=1)
            flat[pairs[0]] = pairs[1]
            pixels, n_classes = np.unique(pairs[0], return_counts=True)
            flat[pixels[n_classes > 1]] = schema.ignore_index  # points of 2+ classes disagree
        return out


def _slices(frame: gpd.GeoDataFrame, column: str, ctx: TileLabelContext) -> NDArray[np.int64]:
    """Time slice per row: -1 for every slice, -2 when its item is not in this tile."""
    if column not in frame.columns:
        return np.full(len(frame), -1, dtype=np.int64)
    out = np.full(len(frame), -1, dtype=np.int64)
    for i, value in enumerate(frame[column].to_numpy()):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        t = ctx.slice_of(str(value))
        out[i] = -2 if t is None else t
    return out


def sample_points(
    labels: PointLabels,
    cube_path: str,
    bands: Sequence[str],
    schema: LabelSpec,
    tiles: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Join points to the cube's pixel values: one row per (point, time slice) with valid bands.

    This is the training table of a per-pixel model (e.g. the random-forest baseline).

    Args:
        labels: the points.
        cube_path: cube store (ADR 0001), local path or URI.
        bands: band variables to sample, in order.
        schema: class names of the labels.
        tiles: tiles to use (default: every tile of the cube).
        storage_options: fsspec options for a remote cube.

    Returns:
        Columns ``point`` (row label in the file), ``tile``, ``item_id``, ``time_index``, ``row``,
        ``col``, ``class``, ``class_index`` and one column per band (raw DN). Slices where any
        band is nodata (0) are left out.

    Raises:
        InputError: no point falls in any tile of the cube, or a band is missing.
    """
    from eoforge.cube.tiles import iter_cube_tiles

    frame = labels.load()
    classes = class_index(
        list(frame[labels.class_column]), schema, labels.path, labels.class_column
    )
    parts: list[pd.DataFrame] = []
    for tile_data in iter_cube_tiles(cube_path, tiles, storage_options):
        grid = tile_data.grid
        rows, cols, inside = point_pixels(frame, grid)
        ctx = TileLabelContext(grid, tile_data.item_ids, schema, tile_data.variable)
        slices = _slices(frame, labels.item_column, ctx)
        pick = np.flatnonzero(inside & (slices != -2))
        if pick.size == 0:
            continue
        values = np.stack([tile_data.variable(b) for b in bands], axis=-1)  # (t, h, w, c)
        for t in range(len(tile_data.item_ids)):
            sel = pick[(slices[pick] == t) | (slices[pick] == -1)]
            pix = values[t, rows[sel], cols[sel]]  # (n, c)
            ok = (pix != 0).all(axis=1)
            sel, pix = sel[ok], pix[ok]
            part = pd.DataFrame(
                {
                    "point": frame.index.to_numpy()[sel],
                    "tile": grid.tile,
                    "item_id": tile_data.item_ids[t],
                    "time_index": t,
                    "row": rows[sel],
                    "col": cols[sel],
                    "class": frame[labels.class_column].to_numpy()[sel],
                    "class_index": classes[sel],
                }
            )
            for j, band in enumerate(bands):
                part[band] = pix[:, j]
            parts.append(part)
    if not parts or sum(len(p) for p in parts) == 0:
        raise InputError(
            f"labels '{labels.path}': none of the {len(frame)} point(s) falls on a valid pixel of "
            f"cube '{cube_path}'; the points lie outside the area (check their CRS and extent)."
        )
    return pd.concat(parts, ignore_index=True)
