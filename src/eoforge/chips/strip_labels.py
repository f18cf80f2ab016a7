"""A tile's labels computed a chunk row at a time, never held whole.

Where the label source can label rows (``label_rows``: class codes of a cube variable, Sen2Cor's
SCL by default; polygons; points; a class raster), chipping does not need the tile's
``(time, y, x)`` label raster at all: the sampler counts labelled and per-class pixels under
its candidate windows from summed-area tables of row bands
(:class:`eoforge.chips.sampling.WindowCounts`), and the label chips are cut strip by strip like
the bands. Each pass relabels the rows it reads (a lookup of the codes read from the cube), so
memory is bounded by the strip, whatever the tile's size and number of dates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.chips.masks import PackedMask
from eoforge.chips.strips import gather_windows
from eoforge.config import LabelSpec
from eoforge.cube.tiles import CubeTile
from eoforge.errors import InputError, InternalError
from eoforge.labels.classes import LabelSource, TileLabelContext

__all__ = ["StripLabels", "strip_labels"]


class StripLabels:
    """Class indices ``(time, y, x)`` of a tile, produced by rows: ``ignore_index`` where the
    source has no label or the input has no data.

    Has ``shape``, ``size`` and :meth:`rows`, as :class:`~eoforge.chips.masks.PackedMask` does, so
    :class:`~eoforge.chips.sampling.WindowCounts` counts it band by band.
    """

    def __init__(self, tile: CubeTile, source: Any, labels: LabelSpec, nodata: PackedMask) -> None:
        self.tile = tile
        self.source = source
        self.labels = labels
        self.nodata = nodata
        self.ctx = TileLabelContext(
            tile.grid,
            tile.item_ids,
            labels,
            tile.variable,
            rows=tile.read_rows,
            strips=tile.strips,
        )
        self.shape = (len(tile.item_ids), tile.grid.height, tile.grid.width)
        self.size = int(np.prod(self.shape))

    def rows(self, top: int, bottom: int) -> NDArray[np.uint8]:
        """Labels of rows ``[top, bottom)``: ``(time, bottom - top, width)`` uint8.

        Raises:
            InternalError: the source returned the wrong shape or dtype.
        """
        y = np.asarray(self.source.label_rows(self.ctx, top, bottom))
        expected = (self.shape[0], bottom - top, self.shape[2])
        if y.shape != expected or y.dtype != np.uint8:
            raise InternalError(
                f"label source {self.source.describe()} returned {y.dtype}{y.shape} for rows "
                f"[{top}, {bottom}) of tile '{self.tile.grid.tile}', expected uint8{expected}."
            )
        if not (y.flags.writeable and y.flags.owndata):
            y = y.copy()
        y[self.nodata.rows(top, bottom)] = self.labels.ignore_index
        return y

    def check(self) -> None:
        """One pass over the tile: class indices in range, and at least one labelled pixel.

        Raises:
            InputError: the source labels no pixel of the tile that has input data.
            InternalError: the source produced class indices out of range.
        """
        ignore, k = self.labels.ignore_index, len(self.labels.classes)
        labelled = False
        for top, bottom in self.tile.strips():
            y = self.rows(top, bottom)
            known = y != ignore
            if (known & (y >= k)).any():
                raise InternalError(
                    f"label source {self.source.describe()} produced class indices out of range."
                )
            labelled = labelled or bool(known.any())
        if not labelled:
            raise InputError(
                f"{self.source.describe()} label no pixel of tile '{self.tile.grid.tile}' that "
                "has input data: the labels lie outside the area or only on nodata; check their "
                "extent and CRS, or the tiles named in the chip spec."
            )

    def windows(
        self, t: NDArray[np.int64], r: NDArray[np.int64], c: NDArray[np.int64], size: int
    ) -> NDArray[np.uint8]:
        """The ``(n, size, size)`` label windows at (t, r, c), in that order, read strip by
        strip: each window is cut from the rows of the strip holding its bottom row plus the
        ``size - 1`` rows carried from before."""
        out = np.empty((len(t), size, size), dtype=np.uint8)
        last_row = np.asarray(r, dtype=np.int64) + size - 1
        carried: NDArray[np.uint8] | None = None
        for top, bottom in self.tile.strips():
            sel = np.flatnonzero((last_row >= top) & (last_row < bottom))
            rows = self.rows(top, bottom)
            buffer = rows if carried is None else np.concatenate([carried, rows], axis=1)
            carried = buffer[:, max(buffer.shape[1] - (size - 1), 0) :].copy()
            if sel.size:
                first = bottom - buffer.shape[1]  # tile row of the buffer's first row
                out[sel] = gather_windows(buffer, t[sel], r[sel] - first, c[sel], size)
        return out


def strip_labels(
    tile: CubeTile, source: LabelSource, labels: LabelSpec, nodata: PackedMask
) -> StripLabels | None:
    """The tile's labels by rows, checked (:meth:`StripLabels.check`), where ``source`` can
    label rows; None where it labels whole tiles only.

    Raises:
        InputError: the source labels no pixel of the tile that has input data.
        InternalError: the source produced wrong rows or class indices out of range.
    """
    if not callable(getattr(source, "label_rows", None)):
        return None
    out = StripLabels(tile, source, labels, nodata)
    out.check()
    return out
