"""Labels: class schemas, raster class maps (SCL-like) and the source interface chips read labels from.

A *label source* turns one cube tile into a ``(time, y, x)`` uint8 raster of class indices
(``ignore_index`` where unlabelled) on the tile's own grid. Three kinds exist:

- raster class maps: a cube variable such as Sen2Cor SCL (:class:`CubeClassMap`) or a GeoTIFF
  in any CRS (:class:`RasterFileLabels`), with codes grouped into classes by a class mapping;
- vector polygons (:class:`eoforge.labels.polygons.PolygonLabels`);
- points (:class:`eoforge.labels.points.PointLabels`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import yaml
from numpy.typing import NDArray

from eoforge.config import LabelSpec
from eoforge.cube.grid import TileGrid
from eoforge.errors import InputError

__all__ = [
    "ClassMapping",
    "CubeClassMap",
    "LabelSource",
    "RasterFileLabels",
    "TileLabelContext",
    "class_index",
    "scl_lookup",
    "scl_to_classes",
]


def scl_lookup(spec: LabelSpec) -> NDArray[np.uint8]:
    """A 256-entry table mapping each SCL code to a class index (``ignore_index`` if unmapped)."""
    return ClassMapping.from_label_spec(spec).lookup(256, spec)


def scl_to_classes(scl: NDArray[np.integer[Any]], spec: LabelSpec) -> NDArray[np.uint8]:
    """Map an SCL raster (any shape, uint8 codes) to class indices; unmapped codes -> ignore."""
    return scl_lookup(spec)[np.asarray(scl, dtype=np.uint8)]


def class_index(
    values: Sequence[Any], schema: LabelSpec, source: str, column: str
) -> NDArray[np.uint8]:
    """Class indices of class *names* found in a label file.

    Raises:
        InputError: a value is not a class of the schema.
    """
    lookup = {name: i for i, name in enumerate(schema.classes)}
    unknown = sorted({str(v) for v in values} - set(lookup))
    if unknown:
        raise InputError(
            f"labels '{source}': column '{column}' holds class(es) {unknown[:10]} that are not in "
            f"the schema {list(schema.classes)}; rename them, map them with a class mapping, or "
            "add them to labels.classes."
        )
    return np.asarray([lookup[str(v)] for v in values], dtype=np.uint8)


@dataclass(frozen=True)
class ClassMapping:
    """Which raster codes make up which class (a "class mapping file" in YAML or JSON).

    File format::

        classes: [vegetation, bare, water, cloud, shadow]   # optional: must equal the schema
        codes: {vegetation: [4], bare: [5], water: [6], cloud: [8, 9, 10], shadow: [3]}

    Codes not listed are unlabelled (``ignore_index``), e.g. SCL 0 no data, 7 unclassified.
    """

    codes: Mapping[str, tuple[int, ...]]
    """Class name -> raster codes (0..65535)."""
    source: str = "class mapping"
    """Where the mapping came from, for messages."""
    declared: tuple[str, ...] = ()
    """Class order the file declares (empty: not declared); must equal the schema's."""

    @classmethod
    def from_label_spec(cls, spec: LabelSpec) -> ClassMapping:
        """The SCL grouping of a :class:`~eoforge.config.LabelSpec`."""
        return cls({k: tuple(v) for k, v in spec.scl_groups.items()}, "labels.scl_groups")

    @classmethod
    def from_file(cls, path: Path | str) -> ClassMapping:
        """Read a class mapping file (``.yaml``/``.yml``/``.json``).

        Raises:
            InputError: the file is missing, unparsable, or not a mapping of name -> codes.
        """
        p = Path(path)
        if not p.is_file():
            raise InputError(f"class mapping file '{p}' does not exist; pass an existing file.")
        try:
            raw = (
                json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
            )
        except (ValueError, yaml.YAMLError) as exc:
            raise InputError(f"class mapping file '{p}' cannot be parsed: {exc}.") from exc
        codes = raw.get("codes") if isinstance(raw, dict) else None
        if not isinstance(codes, dict) or not all(
            isinstance(v, list) and all(isinstance(c, int) and 0 <= c < 65536 for c in v)
            for v in codes.values()
        ):
            raise InputError(
                f"class mapping file '{p}' needs 'codes: {{class name: [integer codes]}}' with "
                "codes in 0..65535."
            )
        declared = raw.get("classes")
        if declared is not None and not isinstance(declared, list):
            raise InputError(f"class mapping file '{p}': 'classes' must be a list of names.")
        return cls(
            {str(k): tuple(v) for k, v in codes.items()},
            str(p),
            tuple(str(c) for c in declared or ()),
        )

    def check(self, schema: LabelSpec) -> None:
        """Raise unless every class named here is in the schema and no code is in two classes.

        Raises:
            InputError: a class is unknown, a code is listed twice, or the file's ``classes``
                differ from the schema.
        """
        if self.declared and self.declared != tuple(schema.classes):
            raise InputError(
                f"{self.source}: declares classes {list(self.declared)} but the run's schema is "
                f"{list(schema.classes)}; make labels.classes match the file."
            )
        unknown = sorted(set(self.codes) - set(schema.classes))
        if unknown:
            raise InputError(
                f"{self.source}: class(es) {unknown} are not in the schema "
                f"{list(schema.classes)}; add them to labels.classes or fix the mapping."
            )
        seen: dict[int, str] = {}
        for name, codes in self.codes.items():
            for code in codes:
                if code in seen and seen[code] != name:
                    raise InputError(
                        f"{self.source}: code {code} is in both '{seen[code]}' and '{name}'."
                    )
                seen[code] = name

    def lookup(self, size: int, schema: LabelSpec) -> NDArray[np.uint8]:
        """A table ``code -> class index`` of ``size`` entries (unmapped -> ignore_index)."""
        lut = np.full(size, schema.ignore_index, dtype=np.uint8)
        for idx, name in enumerate(schema.classes):
            for code in self.codes.get(name, ()):
                if code < size:
                    lut[code] = idx
        return lut


@dataclass
class TileLabelContext:
    """What a label source may know about the tile it labels."""

    grid: TileGrid
    """The tile's pixel grid."""
    item_ids: list[str]
    """STAC item id of each time slice (same-day items joined with ``+``)."""
    schema: LabelSpec
    """Class names and ignore index the labels must use."""
    variable: Callable[[str], NDArray[Any]] = field(repr=False)
    """Reads a ``(time, y, x)`` cube variable of the tile (raises InputError if absent)."""
    rows: Callable[[str, int, int], NDArray[Any]] | None = field(default=None, repr=False)
    """Reads rows ``[top, bottom)`` of a cube variable, ``(time, rows, x)``, not kept (None:
    only :attr:`variable`)."""
    strips: Callable[[], Iterable[tuple[int, int]]] | None = field(default=None, repr=False)
    """``(top, bottom)`` row ranges covering the tile, one chunk row each (with :attr:`rows`)."""

    def slice_of(self, item_id: str) -> int | None:
        """Time index whose item id equals ``item_id`` (or contains it, for same-day groups)."""
        for t, ids in enumerate(self.item_ids):
            if item_id == ids or item_id in ids.split("+"):
                return t
        return None


@runtime_checkable
class LabelSource(Protocol):
    """Anything that rasterises class labels onto a cube tile's grid."""

    def describe(self) -> str:
        """A short human description (file name and kind) for messages and provenance."""
        ...

    def label_tile(self, ctx: TileLabelContext) -> NDArray[np.uint8]:
        """Class indices ``(time, y, x)`` uint8 on ``ctx.grid``; ``ignore_index`` = unlabelled."""
        ...


@dataclass(frozen=True)
class CubeClassMap:
    """Labels from a class-coded variable of the cube itself (default: Sen2Cor ``scl``)."""

    variable: str = "scl"
    """Cube variable holding the class codes."""
    mapping: ClassMapping | None = None
    """Code -> class grouping; None uses the schema's ``scl_groups``."""

    def describe(self) -> str:
        """See :meth:`LabelSource.describe`."""
        return f"cube variable '{self.variable}'"

    def label_tile(self, ctx: TileLabelContext) -> NDArray[np.uint8]:
        """See :meth:`LabelSource.label_tile`."""
        mapping = self.mapping or ClassMapping.from_label_spec(ctx.schema)
        mapping.check(ctx.schema)
        if ctx.rows is None or ctx.strips is None:
            return self._lookup(ctx, mapping, ctx.variable(self.variable))
        # a chunk row at a time: the codes are never held whole beside the labels
        out = np.empty((len(ctx.item_ids), ctx.grid.height, ctx.grid.width), dtype=np.uint8)
        for top, bottom in ctx.strips():
            out[:, top:bottom] = self.label_rows(ctx, top, bottom)
        return out

    def label_rows(self, ctx: TileLabelContext, top: int, bottom: int) -> NDArray[np.uint8]:
        """Class indices of rows ``[top, bottom)``, ``(time, rows, x)`` uint8: the codes of
        those rows only are read (chipping never holds the tile's labels whole).

        Raises:
            InputError: the context cannot read rows, the variable is absent or not integer.
        """
        if ctx.rows is None:
            raise InputError(
                f"cube variable '{self.variable}' of tile '{ctx.grid.tile}' cannot be read by rows "
                "here; label the whole tile instead."
            )
        mapping = self.mapping or ClassMapping.from_label_spec(ctx.schema)
        mapping.check(ctx.schema)
        return self._lookup(ctx, mapping, ctx.rows(self.variable, top, bottom))

    def _lookup(
        self, ctx: TileLabelContext, mapping: ClassMapping, codes: NDArray[Any]
    ) -> NDArray[np.uint8]:
        if codes.dtype.kind not in "ui":
            raise InputError(
                f"cube variable '{self.variable}' of tile '{ctx.grid.tile}' is {codes.dtype}; "
                "a class map must hold integer codes."
            )
        lut = mapping.lookup(256 if codes.dtype.itemsize == 1 else 65536, ctx.schema)
        out: NDArray[np.uint8] = lut[codes]
        return out


@dataclass(frozen=True)
class RasterFileLabels:
    """Labels from a class-coded GeoTIFF (any CRS), resampled onto each tile's grid.

    The raster is warped with *nearest neighbour* (class codes must never be averaged); pixels
    it does not cover, and its nodata, are unlabelled. It labels every time slice alike.
    """

    path: str
    """GeoTIFF path or URI (anything rasterio opens)."""
    mapping: ClassMapping
    """Code -> class grouping (see :meth:`ClassMapping.from_file`)."""
    _plane: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The last tile's class plane (:meth:`label_rows`), under key ``key``."""

    def describe(self) -> str:
        """See :meth:`LabelSource.describe`."""
        return f"raster labels '{self.path}'"

    def check(self, schema: LabelSpec) -> None:
        """Open the raster and check it and the mapping against ``schema`` (reads no pixels).

        Raises:
            InputError: the mapping does not fit the schema, or the raster cannot be opened,
                has no CRS or no integer codes.
        """
        self.mapping.check(schema)
        with self._open():
            pass

    def _open(self) -> Any:
        """The opened raster (a rasterio dataset), checked to hold integer codes with a CRS."""
        import rasterio
        from rasterio.errors import RasterioIOError

        try:
            src = rasterio.open(self.path)
        except RasterioIOError as exc:
            raise InputError(
                f"raster labels '{self.path}' cannot be opened: {exc}; check the path."
            ) from exc
        if src.crs is None:
            src.close()
            raise InputError(
                f"raster labels '{self.path}' have no CRS; write one into the file "
                "(e.g. gdal_edit.py -a_srs EPSG:xxxx)."
            )
        if src.dtypes[0] not in ("uint8", "uint16", "int16", "int32", "uint32"):
            src.close()
            raise InputError(
                f"raster labels '{self.path}' are {src.dtypes[0]}; a class map holds integer codes."
            )
        return src

    def label_tile(self, ctx: TileLabelContext) -> NDArray[np.uint8]:
        """See :meth:`LabelSource.label_tile`."""
        return self._warp(ctx, ctx.grid, len(ctx.item_ids))

    def label_rows(self, ctx: TileLabelContext, top: int, bottom: int) -> NDArray[np.uint8]:
        """Class indices of rows ``[top, bottom)`` of the tile, ``(time, rows, x)`` uint8.

        The labels are the same for every time slice, so the tile is warped once, a band of
        rows at a time, into one ``(y, x)`` uint8 plane kept for the tile (a byte per pixel,
        whatever the number of dates; never the int32 codes of the whole tile), and each call
        copies its rows for every slice.
        """
        key = (ctx.grid, ctx.schema)
        if self._plane.get("key") != key:
            self._plane.clear()
            grid = ctx.grid
            plane = np.empty((grid.height, grid.width), dtype=np.uint8)
            step = 1024
            for first in range(0, grid.height, step):
                last = min(first + step, grid.height)
                plane[first:last] = self._warp(ctx, grid.rows(first, last), 1)[0]
            self._plane.update(key=key, plane=plane)
        rows: NDArray[np.uint8] = self._plane["plane"][top:bottom]
        return np.repeat(rows[None], len(ctx.item_ids), axis=0)

    def _warp(self, ctx: TileLabelContext, grid: TileGrid, slices: int) -> NDArray[np.uint8]:
        """The raster warped onto ``grid``: class indices ``(slices, y, x)``."""
        import rasterio
        from rasterio.warp import Resampling, reproject

        self.mapping.check(ctx.schema)
        with self._open() as src:
            codes = np.full((grid.height, grid.width), -1, dtype=np.int32)
            reproject(
                source=rasterio.band(src, 1),
                destination=codes,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                dst_nodata=-1,
                resampling=Resampling.nearest,
            )
            nodata = src.nodata
        lut = self.mapping.lookup(65536, ctx.schema)
        valid = (codes >= 0) & (codes < 65536)
        if nodata is not None:
            valid &= codes != int(nodata)
        out = np.full(codes.shape, ctx.schema.ignore_index, dtype=np.uint8)
        out[valid] = lut[codes[valid]]
        return np.broadcast_to(out, (slices, *out.shape)).copy()
