"""Tiles read a chunk row at a time: input masks, labels and chip windows with memory bounded by
the strip (and the chips cut), never by the tile's band stack.

A 10980 x 10980 tile of ten uint16 bands and two dates is 4.8 GB as one ``(time, band, y, x)``
stack; chipping and evaluation need only a ``(time, y, x)`` nodata mask (a bit per pixel and
date, :class:`~eoforge.chips.masks.PackedMask`) and the label raster of it (a byte) plus one
band's chunk row at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from eoforge.chips.masks import PackedMask
from eoforge.config import LabelSpec
from eoforge.cube.tiles import CubeTile
from eoforge.errors import InputError, InternalError
from eoforge.labels.classes import LabelSource, TileLabelContext

__all__ = [
    "band_dtype",
    "check_label_rows",
    "gather_band_windows",
    "gather_windows",
    "iter_band_windows",
    "iter_row_windows",
    "no_labels",
    "nodata_mask",
    "tile_labels",
    "value_mask",
]


def gather_windows(
    cube: NDArray[Any],
    t: NDArray[np.int64],
    r: NDArray[np.int64],
    c: NDArray[np.int64],
    size: int,
) -> NDArray[Any]:
    """Copy square windows out of a ``(time, [bands,] h, w)`` array in one fancy-index.

    Args:
        cube: the tile, time first, rows and columns last.
        t: time index of each window.
        r: top row of each window.
        c: left column of each window.
        size: window edge.

    Returns:
        ``(n, [bands,] size, size)``, contiguous.
    """
    win = sliding_window_view(cube, (size, size), axis=(-2, -1))  # (t, [c,] h', w', s, s)
    if cube.ndim == 3:
        return np.ascontiguousarray(win[t, r, c])
    # advanced indices separated by a slice: their dimension goes first -> (n, c, s, s)
    return np.ascontiguousarray(win[t, :, r, c])


def nodata_mask(tile: CubeTile, bands: Sequence[str]) -> PackedMask:
    """``(time, y, x)``: True where any of ``bands`` is 0 (nodata), read strip by strip and held
    as bits."""

    def strips() -> Iterator[tuple[int, int, NDArray[np.bool_]]]:
        for top, bottom in tile.strips():
            rows = np.zeros((len(tile.item_ids), bottom - top, tile.grid.width), dtype=np.bool_)
            for band in bands:
                rows |= tile.read_rows(band, top, bottom) == 0
            yield top, bottom, rows

    return PackedMask.from_strips(_shape(tile), strips())


def value_mask(tile: CubeTile, variable: str, codes: Sequence[int]) -> PackedMask:
    """``(time, y, x)``: True where ``variable`` holds one of ``codes``, read strip by strip and
    held as bits."""
    return PackedMask.from_strips(
        _shape(tile),
        (
            (top, bottom, np.isin(tile.read_rows(variable, top, bottom), codes))
            for top, bottom in tile.strips()
        ),
    )


def _shape(tile: CubeTile) -> tuple[int, int, int]:
    return len(tile.item_ids), tile.grid.height, tile.grid.width


def band_dtype(tile: CubeTile, bands: Sequence[str]) -> np.dtype[Any]:
    """The dtype of a tile's windows over ``bands``: their dtypes promoted (uint16 for none)."""
    dtypes = [tile.read_rows(b, 0, 0).dtype for b in bands]
    return np.result_type(*dtypes) if dtypes else np.dtype(np.uint16)


def gather_band_windows(
    tile: CubeTile,
    bands: Sequence[str],
    t: NDArray[np.int64],
    r: NDArray[np.int64],
    c: NDArray[np.int64],
    size: int,
) -> NDArray[Any]:
    """The ``(n, bands, size, size)`` windows of a tile, each stored chunk decoded once
    (:func:`iter_band_windows` gathered into one array)."""
    dtype = band_dtype(tile, bands)
    out = np.empty((len(t), len(bands), size, size), dtype=dtype)
    for sel, windows in iter_band_windows(tile, bands, t, r, c, size):
        out[sel] = windows
    return out


def iter_band_windows(
    tile: CubeTile,
    bands: Sequence[str],
    t: NDArray[np.int64],
    r: NDArray[np.int64],
    c: NDArray[np.int64],
    size: int,
    batch: int = 4096,
) -> Iterator[tuple[NDArray[np.intp], NDArray[Any]]]:
    """``(positions, windows (k, bands, size, size))``, at most ``batch`` windows at a time,
    strip by strip: the windows whose bottom row lies in each chunk row of the tile, each
    stored chunk decoded once.

    Strips go down the tile a chunk row at a time; each band keeps the last ``size - 1`` rows of
    the strip before, so a window is cut from the strip holding its bottom row. Memory: one
    strip of every band (plus ``size - 1`` carried rows each) and one batch of windows, however
    densely the windows overlap.
    """
    readers = [functools.partial(tile.read_rows, band) for band in bands]
    dtype = band_dtype(tile, bands)
    yield from iter_row_windows(tile.strips(), readers, t, r, c, size, dtype, batch)


def iter_row_windows(
    strips: Iterable[tuple[int, int]],
    readers: Sequence[Callable[[int, int], NDArray[Any]]],
    t: NDArray[np.int64],
    r: NDArray[np.int64],
    c: NDArray[np.int64],
    size: int,
    dtype: Any,
    batch: int = 4096,
) -> Iterator[tuple[NDArray[np.intp], NDArray[Any]]]:
    """:func:`iter_band_windows` over any arrays read by rows: ``readers[i](top, bottom)``
    returns rows ``[top, bottom)`` ``(time, rows, x)`` of array ``i``; windows come as
    ``(k, len(readers), size, size)`` of ``dtype``, cut from the strip holding their bottom row
    plus the ``size - 1`` rows each array carries from the strip before."""
    last_row = np.asarray(r, dtype=np.int64) + size - 1
    carried: list[NDArray[Any] | None] = [None] * len(readers)
    for top, bottom in strips:
        sel = np.flatnonzero((last_row >= top) & (last_row < bottom))
        buffers = []
        for i, read in enumerate(readers):
            rows = read(top, bottom)
            previous = carried[i]
            buffer = rows if previous is None else np.concatenate([previous, rows], axis=1)
            buffers.append(buffer)
            carried[i] = buffer[:, max(buffer.shape[1] - (size - 1), 0) :].copy()
        for lo in range(0, sel.size, batch):
            part = sel[lo : lo + batch]
            out = np.empty((part.size, len(readers), size, size), dtype=dtype)
            for i, buffer in enumerate(buffers):
                first = bottom - buffer.shape[1]  # tile row of the buffer's first row
                out[:, i] = gather_windows(buffer, t[part], r[part] - first, c[part], size)
            yield part, out
        del buffers


def check_label_rows(y: NDArray[np.uint8], labels: LabelSpec, source: LabelSource) -> bool:
    """Whether ``y`` (class indices) labels any pixel.

    Raises:
        InternalError: a class index is out of range.
    """
    known = y != labels.ignore_index
    if (known & (y >= len(labels.classes))).any():
        raise InternalError(
            f"label source {source.describe()} produced class indices out of range."
        )
    return bool(known.any())


def no_labels(source: LabelSource, tile: str) -> InputError:
    """The error for a tile on whose input data ``source`` labels no pixel."""
    return InputError(
        f"{source.describe()} label no pixel of tile '{tile}' that has input data: "
        "the labels lie outside the area or only on nodata; check their extent and CRS, or "
        "the tiles named in the chip spec."
    )


def tile_labels(
    tile: CubeTile, source: LabelSource, labels: LabelSpec, nodata: PackedMask
) -> NDArray[np.uint8]:
    """Class indices ``(time, y, x)`` of one cube tile from ``source``, ignored under nodata.

    Args:
        tile: the open cube tile.
        source: where labels come from.
        labels: class schema.
        nodata: ``(time, y, x)`` input nodata (any band == 0) from :func:`nodata_mask`,
            applied a strip at a time.

    Raises:
        InputError: the source labels no pixel of the tile that has input data.
        InternalError: the source returned the wrong shape, dtype or class indices.
    """
    ctx = TileLabelContext(
        tile.grid, tile.item_ids, labels, tile.variable, rows=tile.read_rows, strips=tile.strips
    )
    y = np.asarray(source.label_tile(ctx))
    tile.release()  # the variables a source read (e.g. SCL) are not kept with the tile
    expected = (len(tile.item_ids), tile.grid.height, tile.grid.width)
    if y.shape != expected or y.dtype != np.uint8:
        raise InternalError(
            f"label source {source.describe()} returned {y.dtype}{y.shape} for tile "
            f"'{tile.grid.tile}', expected uint8{expected}."
        )
    # no label where the input is empty (in place only in an array the source handed over)
    if not (y.flags.writeable and y.flags.owndata):
        y = y.copy()
    for top, bottom in tile.strips():
        y[:, top:bottom][nodata.rows(top, bottom)] = labels.ignore_index
    if not check_label_rows(y, labels, source):
        raise no_labels(source, tile.grid.tile)
    return y
