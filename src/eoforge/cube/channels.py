"""Multi-band assets (e.g. embedding COGs: one asset of D bands) as one cube variable with D
channels, loaded through odc-stac like every other cube variable.

odc-stac loads the asset as one variable with a band dimension (a ``stac_cfg`` declaring the
asset's ``dims``: every band of a window in one read), lazily (dask); it is transposed to
``(time, channel, y, x)``, named after the asset and written chunk by chunk into one Zarr v3 group per tile (memory bounded by the chunk), with
the same group attributes as a band cube (``crs``, ``transform``, ``item_ids``) and the store's
integrity manifest (:func:`eoforge.cube.build.verify_cube`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from numpy.typing import NDArray

from eoforge.config import CubeSpec
from eoforge.cube.grid import TileGrid
from eoforge.errors import InputError
from eoforge.io.atomic import staged_dir
from eoforge.io.redact import redact

__all__ = [
    "CHANNEL_DIM",
    "ChannelTile",
    "asset_channels",
    "channel_variables",
    "load_channels",
    "open_channel_tile",
    "write_channel_cube",
]

#: Name of the channel dimension of a multi-band variable.
CHANNEL_DIM = "channel"
_DEFAULT_CHUNK = 256


def asset_channels(items: Sequence[dict[str, Any]], asset: str) -> int:
    """Number of bands of ``asset``, the same in every item (from ``raster:bands`` or
    ``eo:bands``, which odc-stac reads too).

    Raises:
        InputError: an item lacks the asset or its band list, or items disagree.
    """
    counts: dict[int, list[str]] = defaultdict(list)
    for item in items:
        spec = item.get("assets", {}).get(asset)
        if not spec:
            raise InputError(
                f"item '{item.get('id')}' has no '{asset}' asset (it has "
                f"{sorted(item.get('assets', {}))}); pick the asset holding the D-band raster."
            )
        bands = spec.get("raster:bands") or spec.get("eo:bands")
        if not isinstance(bands, list) or not bands:
            raise InputError(
                f"asset '{asset}' of item '{item.get('id')}' lists no 'raster:bands'; a multi-band "
                "asset needs one entry per band so that its bands can be loaded (add them to "
                "the item, e.g. [{'data_type': 'int8', 'nodata': -128}] * D)."
            )
        counts[len(bands)].append(str(item.get("id")))
    if len(counts) != 1:
        raise InputError(
            f"items disagree on the bands of asset '{asset}': "
            f"{ {n: ids[:3] for n, ids in counts.items()} }; load one collection at a time."
        )
    return next(iter(counts))


def _tile_key(item: dict[str, Any]) -> str:
    from eoforge.stac.items import item_tile

    try:
        return item_tile(item)
    except InputError:
        return str(item["id"])  # collections without a tiling: one group per item


def load_channels(
    items: Sequence[dict[str, Any]],
    asset: str,
    grid: CubeSpec | None = None,
    chunk: int = _DEFAULT_CHUNK,
) -> xr.DataArray:
    """Lazily load ``asset`` of one tile's items as a ``(time, channel, y, x)`` dask array.

    Without ``grid`` the items keep their native pixel grid; with one, its resolution and CRS
    (resampling ``nearest`` unless the spec names one for ``asset``: components of different
    pixels are not averaged).

    Raises:
        InputError: odc-stac cannot load the items (see :func:`asset_channels` too).
    """
    import odc.stac
    import pystac

    from eoforge.cube.sources import decoded_local_hrefs, slice_item_ids

    d = asset_channels(items, asset)
    first = (items[0]["assets"][asset].get("raster:bands") or [{}])[0]
    # one variable with a band dimension: odc-stac reads every band of a window at once
    # (without ``dims`` it splits the asset into D variables, each read on its own)
    band_cfg: dict[str, Any] = {"dims": ["y", "x", CHANNEL_DIM]}
    if "data_type" in first:
        band_cfg["data_type"] = first["data_type"]
    if first.get("nodata") is not None:
        band_cfg["nodata"] = _number(first["nodata"])
    stac_cfg = {"assets": {asset: band_cfg}, "dims": {CHANNEL_DIM: d}}  # any collection
    kwargs: dict[str, Any] = {"chunks": {"x": chunk, "y": chunk}}
    if grid is not None:
        kwargs["resampling"] = grid.resampling.get(asset, "nearest")
        if grid.resolution is not None:
            kwargs["resolution"] = grid.resolution
        if grid.crs is not None:
            kwargs["crs"] = grid.crs
    py_items = [pystac.Item.from_dict(decoded_local_hrefs(it), preserve_dict=True) for it in items]
    try:
        ds = odc.stac.load(py_items, bands=[asset], groupby="solar_day", fail_on_error=True,
                           stac_cfg=stac_cfg, **kwargs)  # fmt: skip
    except ValueError as exc:
        raise InputError(
            f"odc-stac cannot load asset '{asset}' of items {[i['id'] for i in items]}: "
            f"{redact(str(exc))}"
        ) from exc
    crs = ds.odc.geobox.crs
    if crs is None or crs.epsg is None:
        raise InputError(f"items {[i['id'] for i in items]} have no EPSG CRS; eoforge needs one.")
    if ds[asset].sizes.get(CHANNEL_DIM) != d:
        raise InputError(
            f"odc-stac loaded {ds[asset].sizes.get(CHANNEL_DIM)} bands of asset '{asset}' for "
            f"{d} listed in raster:bands; fix the items' band list."
        )
    out = ds[asset].transpose("time", CHANNEL_DIM, "y", "x")
    ((mid_lon, _),) = ds.odc.geobox.extent.centroid.to_crs("epsg:4326").points  # as odc-stac
    out.attrs.update(
        crs=f"EPSG:{crs.epsg}",
        transform=list(ds.odc.geobox.transform)[:6],
        item_ids=slice_item_ids(items, ds.time.values, float(mid_lon)),
        nodata=_number(ds[asset].attrs.get("nodata")),
    )
    return out


def write_channel_cube(
    items: Sequence[dict[str, Any]],
    asset: str,
    out: Path,
    grid: CubeSpec | None = None,
    chunk: int = _DEFAULT_CHUNK,
) -> dict[str, dict[str, Any]]:
    """Load ``asset`` of every tile of ``items`` and write a cube store at ``out``: per tile, a
    ``(time, channel, y, x)`` variable named ``asset`` in chunks of ``(1, D, chunk, chunk)``.

    Published atomically; returns per tile its shape, dtype and share of pixels with data.

    Raises:
        InputError: no items, or items that cannot be loaded (see :func:`load_channels`).
    """
    from eoforge.cube.build import MANIFEST_ATTR, _manifest
    from eoforge.cube.stream import blocks

    if not items:
        raise InputError(f"no items to load asset '{asset}' from; check the search.")
    by_tile: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        by_tile[_tile_key(it)].append(it)
    stats: dict[str, dict[str, Any]] = {}
    with staged_dir(Path(out)) as staging:
        root = zarr.open_group(str(staging), mode="w", zarr_format=3)
        for tile in sorted(by_tile):
            arr = load_channels(by_tile[tile], asset, grid, chunk)
            n_t, d, h, w = (int(s) for s in arr.shape)
            group = root.create_group(tile)
            group.attrs.update({
                "tile": tile, "crs": arr.attrs["crs"], "transform": arr.attrs["transform"],
                "item_ids": arr.attrs["item_ids"], "channels": {asset: d},
            })  # fmt: skip
            nodata = arr.attrs.get("nodata")
            fill = np.nan if arr.dtype.kind == "f" else (nodata if nodata is not None else 0)
            target = group.create_array(
                asset, shape=(n_t, d, h, w), dtype=arr.dtype, chunks=(1, d, chunk, chunk),
                fill_value=fill, dimension_names=("time", CHANNEL_DIM, "y", "x"),
                attributes={"nodata": None if nodata is None else float(nodata)},
            )  # fmt: skip
            times = group.create_array("time", shape=(n_t,), dtype="int64", chunks=(n_t,),
                                       dimension_names=("time",),
                                       attributes={"units": "seconds since 1970-01-01"})  # fmt: skip
            times[:] = arr.time.values.astype("datetime64[s]").astype(np.int64)
            valid = 0
            for t in range(n_t):
                for ys, xs in blocks(h, w, chunk):
                    values = np.asarray(arr[t, :, ys, xs].values)
                    target[t, :, ys, xs] = values
                    valid += int(_valid(values, nodata).sum())
            stats[tile] = {"shape": [n_t, d, h, w], "dtype": str(arr.dtype),
                           "coverage": valid / max(1, n_t * h * w),
                           "item_ids": arr.attrs["item_ids"]}  # fmt: skip
        root.attrs.update({"eoforge:kind": "channel-cube", "variables": [asset],
                           "source_items": json.dumps([str(i["id"]) for i in items])})  # fmt: skip
        root.attrs[MANIFEST_ATTR] = _manifest(staging)
    return stats


def _number(nodata: Any) -> float | None:
    """A nodata value as a number (STAC JSON writes NaN as the string "nan")."""
    return None if nodata is None else float(nodata)


def _valid(values: NDArray[Any], nodata: Any) -> NDArray[np.bool_]:
    """``(h, w)`` pixels whose every channel holds data."""
    if values.dtype.kind == "f":
        ok = np.isfinite(values).all(axis=0)
        if nodata is not None and np.isfinite(nodata):
            ok &= (values != nodata).any(axis=0)
        return np.asarray(ok)
    if nodata is None:
        return np.ones(values.shape[1:], bool)
    return np.asarray((values != nodata).all(axis=0))


@dataclass
class ChannelTile:
    """One tile of a multi-band cube variable, read by blocks of rows."""

    cube: str
    """The cube store's path."""
    variable: str
    """The ``(time, channel, y, x)`` variable."""
    grid: TileGrid
    """Pixel grid of the tile."""
    item_ids: list[str]
    """STAC item ids of each time slice."""
    array: zarr.Array[Any] = field(repr=False)
    nodata: float | None = None
    """The variable's nodata value (NaN for float data without one)."""

    @property
    def channels(self) -> int:
        """D, the number of channels."""
        return int(self.array.shape[1])

    def read_rows(self, top: int, bottom: int, t: int) -> NDArray[Any]:
        """``(channel, rows, x)`` raw values of slice ``t``, rows ``[top, bottom)``."""
        return np.asarray(self.array[t, :, top:bottom, :])

    def valid(self, values: NDArray[Any]) -> NDArray[np.bool_]:
        """Pixels of ``(channel, ...)`` raw values whose every channel holds data."""
        return _valid(values, self.nodata)


def channel_variables(cube: str | Path, tile: str) -> list[str]:
    """The ``(time, channel, y, x)`` variables of one tile of a cube store."""
    group = zarr.open_group(str(cube), mode="r")[tile]
    assert isinstance(group, zarr.Group)
    return sorted(str(k) for k, a in group.arrays() if len(a.shape) == 4)


def open_channel_tile(cube: str | Path, tile: str, variable: str) -> ChannelTile:
    """Open one tile's multi-band variable (metadata only); the store is verified first.

    Raises:
        InputError: the store, tile or variable is missing, or the store is torn.
    """
    from eoforge.cube.build import list_tiles, verify_cube

    tiles = list_tiles(Path(cube))
    verify_cube(Path(cube))
    if tile not in tiles:
        raise InputError(f"tile '{tile}' is not in cube '{cube}' (it has {tiles}).")
    found = channel_variables(cube, tile)
    if variable not in found:
        raise InputError(
            f"cube '{cube}' tile '{tile}' has no multi-band variable '{variable}' (it has "
            f"{found}); ingest the collection's D-band asset with 'eoforge embed ingest'."
        )
    group = zarr.open_group(str(cube), mode="r")[tile]
    assert isinstance(group, zarr.Group)
    arr = group[variable]
    assert isinstance(arr, zarr.Array)
    attrs: dict[str, Any] = dict(group.attrs)
    _, _, h, w = arr.shape
    ids = [str(i) for i in attrs.get("item_ids", [])]
    if len(ids) != arr.shape[0]:
        raise InputError(
            f"cube '{cube}' tile '{tile}' is torn: {len(ids)} item_ids for {arr.shape[0]} slices."
        )
    nodata: Any = arr.attrs.get("nodata")
    return ChannelTile(str(cube), variable, TileGrid.from_attrs(tile, attrs, h, w), ids, arr,
                       None if nodata is None else float(nodata))  # fmt: skip
