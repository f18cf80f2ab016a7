"""Read cube tiles (ADR 0001 layout) as plain numpy arrays with their grid, from paths or URIs.

Chips read every variable of a tile exactly once, straight through zarr (no xarray / dask
graph), so a tile costs one decode per stored chunk however many chips are cut from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from eoforge.cube.grid import TileGrid
from eoforge.errors import InputError
from eoforge.io.stores import open_group

__all__ = ["CubeTile", "iter_cube_tiles", "list_cube_tiles", "open_cube_tile"]


@dataclass
class CubeTile:
    """One tile group of a cube, variables read on first use and kept."""

    cube: str
    """The cube store's path or URI."""
    grid: TileGrid
    """Pixel grid of the tile."""
    item_ids: list[str]
    """STAC item id of each time slice."""
    times: NDArray[np.datetime64]
    """Acquisition time of each slice (``NaT`` when the store has no decodable time)."""
    group: zarr.Group = field(repr=False)
    variables: list[str] = field(default_factory=list)
    """The ``(time, y, x)`` variables of the tile."""
    _arrays: dict[str, NDArray[Any]] = field(default_factory=dict, repr=False)

    def variable(self, name: str) -> NDArray[Any]:
        """A ``(time, y, x)`` variable as a numpy array (read once, then cached).

        Raises:
            InputError: the tile has no such variable.
        """
        if name not in self._arrays:
            self._arrays[name] = np.asarray(self._array(name)[...])
        return self._arrays[name]

    def _array(self, name: str) -> zarr.Array[Any]:
        if name not in self.variables:
            raise InputError(
                f"cube '{self.cube}' tile '{self.grid.tile}' lacks variable '{name}' (it has "
                f"{self.variables}); re-run ingest with it or choose another variable."
            )
        arr = self.group[name]
        assert isinstance(arr, zarr.Array)
        return arr

    def release(self) -> None:
        """Drop cached arrays (the next :meth:`variable` call reads again)."""
        self._arrays.clear()

    @property
    def strip_rows(self) -> int:
        """Rows of one stored chunk row: the unit :meth:`read_rows` and :meth:`strips` read."""
        if not self.variables:
            return max(self.grid.height, 1)
        return max(int(self._array(self.variables[0]).chunks[1]), 1)

    def strips(self) -> Iterator[tuple[int, int]]:
        """``(top, bottom)`` row ranges, one chunk row each, covering the tile top to bottom."""
        step = self.strip_rows
        for top in range(0, self.grid.height, step):
            yield top, min(top + step, self.grid.height)

    def read_rows(self, name: str, top: int, bottom: int, t: int | None = None) -> NDArray[Any]:
        """Rows ``[top, bottom)`` of a variable, ``(time, rows, x)`` (or ``(rows, x)`` of slice
        ``t``), read from the store and not kept: memory bounded by the strip, not the tile.

        Raises:
            InputError: the tile has no such variable.
        """
        if name in self._arrays:
            cached = self._arrays[name]
            return cached[:, top:bottom] if t is None else cached[t, top:bottom]
        arr = self._array(name)
        if t is None:
            return np.asarray(arr[:, top:bottom, :])
        return np.asarray(arr[t, top:bottom, :])


def list_cube_tiles(cube: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Tile groups of a cube store.

    Raises:
        InputError: the store does not exist.
    """
    return sorted(open_group(cube, "r", storage_options).group_keys())


def _times(arr: zarr.Array[Any] | None, n: int) -> NDArray[np.datetime64]:
    if arr is None:
        return np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    values = np.asarray(arr[...])
    if values.dtype.kind == "M":
        return values.astype("datetime64[ns]")
    units = arr.attrs.get("units")
    if not isinstance(units, str):
        return np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    from xarray.coding.times import decode_cf_datetime

    decoded = decode_cf_datetime(values, units, str(arr.attrs.get("calendar", "standard")))
    return np.asarray(decoded, dtype="datetime64[ns]")


def open_cube_tile(
    cube: str, tile: str, storage_options: Mapping[str, Any] | None = None
) -> CubeTile:
    """Open one tile of a cube store (nothing but metadata is read).

    Raises:
        InputError: the tile is missing or its attributes are torn.
    """
    root = open_group(cube, "r", storage_options)
    tiles = sorted(root.group_keys())
    if tile not in tiles:
        raise InputError(
            f"tile '{tile}' is not in cube '{cube}' (it has {tiles}); check the tile ids."
        )
    group = root[tile]
    assert isinstance(group, zarr.Group)
    arrays: dict[str, zarr.Array[Any]] = dict(group.arrays())
    cubes = sorted(k for k, a in arrays.items() if len(a.shape) == 3)
    shapes = {tuple(arrays[k].shape) for k in cubes}
    if len(shapes) != 1:
        raise InputError(
            f"cube '{cube}' tile '{tile}' holds no (time, y, x) variables of one shape "
            f"(found {sorted(shapes)}); re-run ingest."
        )
    n_time, height, width = next(iter(shapes))
    attrs: dict[str, Any] = dict(group.attrs)
    ids = [str(i) for i in attrs.get("item_ids", [])]
    if len(ids) != n_time:
        raise InputError(
            f"cube '{cube}' tile '{tile}' is torn: {len(ids)} item_ids for {n_time} time slices."
        )
    grid = TileGrid.from_attrs(tile, attrs, height, width)
    return CubeTile(cube, grid, ids, _times(arrays.get("time"), n_time), group, cubes)


def iter_cube_tiles(
    cube: str, tiles: Sequence[str] | None = None, storage_options: Mapping[str, Any] | None = None
) -> Iterator[CubeTile]:
    """Open the given tiles (default: all) one after another."""
    for tile in tiles if tiles is not None else list_cube_tiles(cube, storage_options):
        yield open_cube_tile(cube, tile, storage_options)
