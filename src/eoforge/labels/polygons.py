"""Polygon labels: read GeoParquet / GeoJSON / GeoPackage, check, reproject, rasterise per tile.

Rules (docs/adr/0002-chips-and-labels.md):

- **Pixel rule**: by default a pixel is labelled when its *centre* lies in a polygon (GDAL's
  rule); ``all_touched=True`` labels every pixel a polygon touches (keeps thin features such as
  rivers, widens every polygon by up to one pixel).
- **Overlaps**: where polygons of different classes cover one pixel, the pixel is unlabelled
  (``ignore_index``) unless ``priority`` ranks the classes; then the first listed class wins.
- **Unlabelled ground**: pixels no polygon covers are ``ignore_index``, or ``background``.
- **Time**: a polygon with an ``item_id`` labels only that item's time slice; one without
  labels every slice.
- **Bad input**: a file without a CRS, empty or non-polygonal geometries, classes outside the
  schema, and labels that miss a tile entirely raise :class:`~eoforge.errors.InputError`.
  Invalid geometries (self-intersections, bow-ties) are repaired with
  ``shapely.make_valid(method="structure")`` keeping their polygonal parts, with a
  :class:`LabelRepairWarning`; ``on_invalid="error"`` refuses them instead.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import shapely
from numpy.typing import NDArray

from eoforge.config import LabelSpec
from eoforge.cube.grid import TileGrid
from eoforge.errors import InputError
from eoforge.labels.classes import TileLabelContext, class_index

if TYPE_CHECKING:
    import geopandas as gpd
    from affine import Affine

__all__ = [
    "LabelRepairWarning",
    "PolygonLabels",
    "class_polygons",
    "clean_geometries",
    "rasterize_classes",
    "read_label_file",
]

_PARQUET = (".parquet", ".geoparquet")


class LabelRepairWarning(UserWarning):
    """Label geometries were repaired (e.g. invalid polygons made valid)."""


def read_label_file(
    path: str | Path, storage_options: Mapping[str, Any] | None = None
) -> gpd.GeoDataFrame:
    """Read a vector label file: GeoParquet by suffix, else anything GDAL/pyogrio reads.

    ``path`` may be local or an fsspec URI (``s3://...``).

    Raises:
        InputError: the file is missing or cannot be read as vector data.
    """
    import fsspec
    import geopandas as gpd

    from eoforge.io.stores import is_remote

    uri = str(path)
    source: Any = uri
    if is_remote(uri):
        try:
            with fsspec.open(uri, "rb", **dict(storage_options or {})) as f:
                source = io.BytesIO(f.read())
        except FileNotFoundError as exc:
            raise InputError(f"label file '{uri}' does not exist; check the path.") from exc
    elif not Path(uri).is_file():
        raise InputError(f"label file '{uri}' does not exist; check the path.")
    try:
        if uri.lower().endswith(_PARQUET):
            return gpd.read_parquet(source)
        return gpd.read_file(source)
    except Exception as exc:  # pyogrio / pyarrow raise many types for unreadable files
        raise InputError(
            f"label file '{uri}' cannot be read as vector data ({type(exc).__name__}: {exc}); "
            "use GeoParquet, GeoJSON or GeoPackage."
        ) from exc


def read_labels_with_column(
    path: str | Path,
    class_column: str,
    frame: gpd.GeoDataFrame | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> gpd.GeoDataFrame:
    """A label file (or the in-memory ``frame`` it names) that has the ``class_column``.

    Raises:
        InputError: the column is missing (the message lists the columns there are).
    """
    raw = frame if frame is not None else read_label_file(path, storage_options)
    if class_column not in raw.columns:
        raise InputError(
            f"labels '{path}' have no column '{class_column}' (columns: "
            f"{[c for c in raw.columns if c != raw.geometry.name]}); set class_column."
        )
    return raw


def clean_geometries(
    frame: gpd.GeoDataFrame,
    source: str,
    kinds: Sequence[str],
    on_invalid: Literal["repair", "error"] = "repair",
) -> gpd.GeoDataFrame:
    """Check a label frame's CRS and geometries; repair invalid polygons if allowed.

    Args:
        frame: the labels.
        source: name of the input for messages.
        kinds: allowed geometry types, e.g. ``("Polygon", "MultiPolygon")``.
        on_invalid: ``repair`` (make_valid, keep parts of ``kinds``) or ``error``.

    Returns:
        A copy with valid geometries of ``kinds`` only.

    Raises:
        InputError: no CRS, null / empty geometries, other geometry types, or invalid ones
            with ``on_invalid="error"`` (or that repair to nothing).
    """
    if frame.crs is None:
        raise InputError(
            f"labels '{source}' have no CRS, so they cannot be placed on the cube's grid; "
            "write the CRS into the file (e.g. GeoDataFrame.set_crs('EPSG:4326'))."
        )
    geoms = frame.geometry.to_numpy()
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if empty.any():
        rows = frame.index[empty].tolist()
        raise InputError(
            f"labels '{source}': {int(empty.sum())} row(s) have a null or empty geometry "
            f"(rows {rows[:10]}); remove them or give them a geometry."
        )
    types = shapely.get_type_id(geoms)
    allowed_ids = {_TYPE_IDS[k] for k in kinds}
    wrong = ~np.isin(types, list(allowed_ids))
    if wrong.any():
        found = sorted({_TYPE_NAMES[int(t)] for t in types[wrong]})
        raise InputError(
            f"labels '{source}': {int(wrong.sum())} geometr(ies) are {found}, expected "
            f"{list(kinds)}; put other geometry types in their own label file."
        )
    invalid = ~shapely.is_valid(geoms)
    out = frame.copy()
    if invalid.any():
        rows = frame.index[invalid].tolist()
        if on_invalid == "error":
            reasons = [shapely.is_valid_reason(g) for g in geoms[invalid][:3]]
            raise InputError(
                f"labels '{source}': {int(invalid.sum())} invalid geometr(ies) (rows "
                f"{rows[:10]}: {reasons}); repair them (shapely.make_valid) or pass "
                "on_invalid='repair'."
            )
        repaired = [_polygonal(shapely.make_valid(g, method="structure")) for g in geoms[invalid]]
        lost = [r for r, g in zip(rows, repaired, strict=True) if g is None]
        if lost:
            raise InputError(
                f"labels '{source}': invalid geometr(ies) in rows {lost[:10]} have no area "
                "once repaired; remove them."
            )
        geo_col = out.geometry.name
        out.loc[invalid, geo_col] = repaired
        warnings.warn(
            f"labels '{source}': repaired {int(invalid.sum())} invalid geometr(ies) (rows "
            f"{rows[:10]}) with shapely.make_valid(method='structure').",
            LabelRepairWarning,
            stacklevel=2,
        )
    return out


_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    2: "LinearRing",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}
_TYPE_IDS = {v: k for k, v in _TYPE_NAMES.items()}


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry | None:
    parts = [p for p in shapely.get_parts(geom) if shapely.get_type_id(p) in (3, 6)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def rasterize_classes(
    geoms: Sequence[shapely.Geometry] | NDArray[Any],
    classes: NDArray[np.uint8],
    grid: TileGrid,
    schema: LabelSpec,
    all_touched: bool = False,
    priority: Sequence[int] | None = None,
    background: int | None = None,
) -> NDArray[np.uint8]:
    """Burn polygons (in ``grid.crs``) of class indices ``classes`` onto ``grid``.

    Args:
        geoms: polygons already in the grid's CRS.
        classes: class index of each polygon.
        grid: target grid.
        schema: class names and ignore index.
        all_touched: label every touched pixel instead of pixels whose centre is covered.
        priority: class indices, winner first, for pixels covered by several classes; None
            makes such pixels ``ignore_index``.
        background: class index of uncovered pixels; None leaves them ``ignore_index``.

    Returns:
        ``(height, width)`` uint8 class indices.
    """
    from rasterio.features import rasterize

    shape = (grid.height, grid.width)
    out = np.full(shape, schema.ignore_index if background is None else background, np.uint8)
    present = [int(k) for k in np.unique(classes)]
    masks: dict[int, NDArray[np.bool_]] = {}
    for k in present:
        sel = [g for g, c in zip(geoms, classes, strict=True) if c == k]
        burned = rasterize(
            ((g, 1) for g in sel),
            out_shape=shape,
            transform=grid.transform,
            all_touched=all_touched,
            dtype=np.uint8,
        )
        masks[k] = np.asarray(burned, dtype=bool)
    if priority is None:
        count = np.zeros(shape, np.uint8)
        for m in masks.values():
            count += m
        for k, m in masks.items():
            out[m] = k
        out[count > 1] = schema.ignore_index
    else:
        for k in reversed(list(priority)):  # lowest rank first: higher ranks overwrite
            if k in masks:
                out[masks[k]] = k
    return out


@dataclass
class PolygonLabels:
    """Polygon labels from a vector file, rasterised onto each tile's grid (see module doc)."""

    path: str
    """GeoParquet (``.parquet``), GeoJSON, GeoPackage, ...; local or fsspec URI."""
    class_column: str = "class"
    """Column holding class names of the schema."""
    item_column: str = "item_id"
    """Column restricting a polygon to one STAC item's time slice (optional in the file)."""
    all_touched: bool = False
    """Label every pixel a polygon touches instead of those whose centre it covers."""
    priority: tuple[str, ...] | None = None
    """Class names, winner first, for overlaps of different classes; None: overlaps ignored."""
    background: str | None = None
    """Class of pixels no polygon covers; None: unlabelled."""
    rename: Mapping[str, str] | None = None
    """Map values of ``class_column`` to schema class names before checking them."""
    on_invalid: Literal["repair", "error"] = "repair"
    """What to do with invalid geometries (see module doc)."""
    storage_options: Mapping[str, Any] | None = None
    """fsspec options for a remote ``path``."""
    frame: gpd.GeoDataFrame | None = field(default=None, repr=False, compare=False)
    """Labels already in memory (then ``path`` only names them in messages)."""
    _by_crs: dict[str, gpd.GeoDataFrame] = field(default_factory=dict, repr=False, init=False)
    #: the last tile's plan (classes, priority, background, geometries, time slices), kept so
    #: labelling a tile by rows does not redo it for every band of rows
    _plan: tuple[Any, Any] | None = field(default=None, repr=False, init=False, compare=False)

    def describe(self) -> str:
        """See :meth:`eoforge.labels.classes.LabelSource.describe`."""
        return f"polygon labels '{self.path}'"

    def load(self) -> gpd.GeoDataFrame:
        """The checked labels in their own CRS (read once)."""
        if "source" not in self._by_crs:
            raw = read_labels_with_column(
                self.path, self.class_column, self.frame, self.storage_options
            )
            clean = clean_geometries(raw, self.path, ("Polygon", "MultiPolygon"), self.on_invalid)
            if self.rename:
                clean[self.class_column] = clean[self.class_column].map(
                    lambda v: self.rename.get(str(v), v) if self.rename else v
                )
            self._by_crs["source"] = clean
        return self._by_crs["source"]

    def _in_crs(self, crs: str) -> gpd.GeoDataFrame:
        if crs not in self._by_crs:
            source = self.load()
            moved = source.to_crs(crs)
            bad = ~np.isfinite(shapely.get_coordinates(moved.geometry.to_numpy())).all(axis=1)
            if bad.any():
                raise InputError(
                    f"labels '{self.path}': {int(bad.sum())} coordinate(s) cannot be projected "
                    f"from {source.crs.to_string()} to {crs} (outside that CRS's valid range); "
                    "the CRS written in the file is probably wrong."
                )
            self._by_crs[crs] = moved
        return self._by_crs[crs]

    def check(self, schema: LabelSpec) -> None:
        """Read the file and check it against ``schema`` without rasterising anything.

        Raises:
            InputError: what :meth:`label_tile` would raise for the file as a whole (missing or
                unreadable file, no class column, no CRS, bad geometries, unknown classes).
        """
        self._class_plan(self.load(), schema)

    def _class_plan(
        self, frame: gpd.GeoDataFrame, schema: LabelSpec
    ) -> tuple[NDArray[np.uint8], list[int] | None, int | None]:
        """Class index of each row, the priority as class indices, the background index."""
        classes = class_index(list(frame[self.class_column]), schema, self.path, self.class_column)
        priority = None
        if self.priority is not None:
            priority = list(class_index(list(self.priority), schema, self.path, "priority"))
            missing = sorted({schema.classes[k] for k in classes} - set(self.priority))
            if missing:
                raise InputError(
                    f"labels '{self.path}': priority {list(self.priority)} does not rank "
                    f"class(es) {missing} present in the file; list every class or drop priority."
                )
        background = None
        if self.background is not None:
            background = int(class_index([self.background], schema, self.path, "background")[0])
        return classes, priority, background

    def label_tile(self, ctx: TileLabelContext) -> NDArray[np.uint8]:
        """See :meth:`eoforge.labels.classes.LabelSource.label_tile`."""
        return self._label(ctx, ctx.grid)

    def label_rows(self, ctx: TileLabelContext, top: int, bottom: int) -> NDArray[np.uint8]:
        """Class indices of rows ``[top, bottom)`` of the tile, ``(time, rows, x)`` uint8: only
        the polygons meeting those rows are burned, onto those rows (the same pixels as
        :meth:`label_tile`; chipping never holds the tile's labels whole).

        Raises:
            InputError: as :meth:`label_tile` (checked against the whole tile).
        """
        return self._label(ctx, ctx.grid.rows(top, bottom))

    def _tile_plan(self, ctx: TileLabelContext) -> tuple[Any, ...]:
        """(classes, priority, background, geometries, time slices) of the polygons for the
        tile of ``ctx``, checked to cover some of it; the last tile's is reused."""
        schema, tile = ctx.schema, ctx.grid
        key = (tile, tuple(ctx.item_ids), schema)
        if self._plan is not None and self._plan[0] == key:
            return tuple(self._plan[1])
        frame = self._in_crs(tile.crs)
        classes, priority, background = self._class_plan(frame, schema)
        geoms = frame.geometry.to_numpy()
        if not shapely.intersects(geoms, tile.footprint()).any():
            raise InputError(
                f"labels '{self.path}' cover nothing of tile '{tile.tile}': their bounds in "
                f"{tile.crs} are {tuple(round(v) for v in frame.total_bounds)}, the tile's "
                f"{tuple(round(v) for v in tile.bounds)}. The labels lie outside the area; check "
                "the file's CRS and extent, or the tiles the chips use."
            )
        plan = (classes, priority, background, geoms, self._slices(frame, ctx))
        self._plan = (key, plan)
        return plan

    def _label(self, ctx: TileLabelContext, grid: TileGrid) -> NDArray[np.uint8]:
        schema = ctx.schema
        classes, priority, background, geoms, slices = self._tile_plan(ctx)
        hits = shapely.intersects(geoms, grid.footprint())
        out = np.full((len(ctx.item_ids), grid.height, grid.width), schema.ignore_index, np.uint8)
        for t in range(len(ctx.item_ids)):
            sel = hits & ((slices == t) | (slices == -1))
            if background is None and not sel.any():
                continue
            out[t] = rasterize_classes(
                geoms[sel], classes[sel], grid, schema, self.all_touched, priority, background
            )
        return out

    def _slices(self, frame: gpd.GeoDataFrame, ctx: TileLabelContext) -> NDArray[np.int64]:
        """Time slice of each row: -1 for every slice, -2 for an item not in this tile."""
        if self.item_column not in frame.columns:
            return np.full(len(frame), -1, dtype=np.int64)
        out = np.empty(len(frame), dtype=np.int64)
        lookup: dict[str, int] = {}
        for i, value in enumerate(frame[self.item_column].to_numpy()):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                out[i] = -1
                continue
            key = str(value)
            if key not in lookup:
                t = ctx.slice_of(key)
                lookup[key] = -2 if t is None else t
            out[i] = lookup[key]
        return out


def class_polygons(
    classes: NDArray[np.integer[Any]],
    transform: Affine,
    crs: str,
    names: Mapping[int, str],
    min_pixels: int = 1,
) -> gpd.GeoDataFrame:
    """Polygons of the connected regions of a class raster (``rasterio.features.shapes``).

    Used to derive the shipped sample polygons from SCL masks. Regions smaller than
    ``min_pixels`` are first merged into their neighbours (``rasterio.features.sieve``).

    Args:
        classes: 2-D integer raster of codes.
        transform: its affine transform.
        crs: its CRS.
        names: code -> class name; other codes produce no polygon.
        min_pixels: sieve threshold (connected regions smaller than this are absorbed).

    Returns:
        One row per polygon: ``class``, ``geometry`` (in ``crs``).
    """
    import geopandas as gpd
    from rasterio.features import shapes, sieve

    raster = np.asarray(classes).astype(np.int32)
    if min_pixels > 1:
        raster = sieve(raster, size=min_pixels, connectivity=8)
    mask = np.isin(raster, list(names))
    rows = [
        (names[int(value)], shapely.geometry.shape(geom))
        for geom, value in shapes(raster, mask=mask, transform=transform, connectivity=4)
    ]
    return gpd.GeoDataFrame({"class": [r[0] for r in rows]}, geometry=[r[1] for r in rows], crs=crs)
