"""Writing a loaded tile into the cube chunk by chunk: memory bounded by the chunk, not the tile.

Each (variable, time slice) is read in blocks aligned with the Zarr chunks, a few blocks at a
time on a small thread pool (GDAL releases the GIL while it reads), converted to the cube's
units (:mod:`eoforge.cube.units`) and written to its own chunk file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from eoforge.config import CubeSpec
from eoforge.cube.units import Encoding, convert, slice_encoding

__all__ = ["blocks", "slice_items", "write_tile"]

#: ``read(fn, what, slice_ids, variable)``: runs the read ``fn`` of one block of ``variable``
#: in the slice of items ``slice_ids`` ("A+B"), with retries (:mod:`eoforge.cube.build`).
Reader = Callable[[Callable[[], Any], str, str, str], Any]
#: The error to raise for a slice without one valid pixel: (tile, item id, variable, nodata).
EmptySlice = Callable[[str, str, str, Any], Exception]


def blocks(height: int, width: int, chunk: int) -> list[tuple[slice, slice]]:
    """Row-major (y, x) windows of at most ``chunk`` x ``chunk`` pixels covering the grid."""
    return [
        (slice(y, min(y + chunk, height)), slice(x, min(x + chunk, width)))
        for y in range(0, height, chunk)
        for x in range(0, width, chunk)
    ]


def slice_items(items: Sequence[dict[str, Any]], ds: xr.Dataset) -> list[list[dict[str, Any]]]:
    """The items of each time slice of a loaded tile (by its ``item_ids`` attribute)."""
    by_id = {str(it["id"]): it for it in items}
    return [[by_id[i] for i in str(ids).split("+") if i in by_id] for ids in ds.attrs["item_ids"]]


def _read_block(var: xr.DataArray, t: int, ys: slice, xs: slice) -> np.ndarray[Any, Any]:
    return np.asarray(var.isel(time=t, y=ys, x=xs).values)


def _write_block(
    block: tuple[slice, slice],
    *,
    var: xr.DataArray,
    target: Any,
    t: int,
    source: Encoding | None,
    units: Encoding,
    nodata: Any,
    what: str,
    slice_ids: str,
    read: Reader,
) -> bool:
    ys, xs = block
    values = read(functools.partial(_read_block, var, t, ys, xs), what, slice_ids, str(var.name))
    target[t, ys, xs] = convert(values, source, units, nodata)
    return bool(np.any(values != nodata))


def write_tile(
    ds: xr.Dataset,
    tile: str,
    staging: Path,
    items_per_slice: Sequence[Sequence[dict[str, Any]]],
    grid: CubeSpec,
    read: Reader,
    empty_slice: EmptySlice,
) -> None:
    """Write one tile as group ``tile`` of the store at ``staging``: metadata first, then every
    (variable, slice) chunk by chunk, read through ``read`` (retries).

    The group's ``units`` attribute records the scale/offset of every harmonised variable.

    Raises:
        Exception: ``empty_slice(...)`` for a slice of a variable with no valid pixel.
    """
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    height, width = int(ds.sizes["y"]), int(ds.sizes["x"])
    chunks = (1, min(grid.chunk, height), min(grid.chunk, width))
    ds.to_zarr(
        staging,
        group=tile,
        mode="w-",
        zarr_format=3,
        consolidated=False,
        encoding={v: {"chunks": chunks} for v in ds.data_vars},
        compute=False,  # metadata and coordinates now; pixels below, chunk by chunk
    )
    ids = list(ds.attrs["item_ids"])
    group = zarr.open_group(str(staging / tile), mode="r+")
    recorded: dict[str, dict[str, float]] = {}
    windows = blocks(height, width, grid.chunk)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for name in ds.data_vars:
            target = group[str(name)]
            assert isinstance(target, zarr.Array)
            nodata = ds[name].attrs.get("nodata", 0)
            encodings = [slice_encoding(items, str(name)) for items in items_per_slice]
            if grid.harmonise and any(e is not None for e in encodings):
                recorded[str(name)] = {"scale": grid.scale, "offset": grid.offset}
            for t in range(int(ds.sizes["time"])):
                write = functools.partial(
                    _write_block,
                    var=ds[name],
                    target=target,
                    t=t,
                    source=encodings[t] if grid.harmonise else None,
                    units=(grid.scale, grid.offset),
                    nodata=nodata,
                    what=f"variable '{name}' of {ids[t]} (tile {tile})",
                    slice_ids=str(ids[t]),
                    read=read,
                )
                if not any(list(pool.map(write, windows))):
                    raise empty_slice(tile, ids[t], str(name), nodata)
    group.attrs["units"] = recorded
